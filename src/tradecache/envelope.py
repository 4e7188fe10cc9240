"""The one message envelope of every pub/sub message tradecache publishes.

On the wire an envelope is a JSON object with fixed keys, so it can be built
by a Lua script by string concatenation (the script knows the sequence number
and the server time, Python knows the payload)::

    {"v":1,"type":"ticker","topic":"binance:BTC/USDT","seq":42,"time":1700000000123,
     "source":"host:1234","payload":{...}}

* ``v``: schema version (:data:`VERSION`); a receiver rejects versions it does not know;
* ``type``: what the payload is (``"event"``, ``"ticker"``, ``"candle"``, ``"breaker"`` ...);
* ``topic``: the logical stream the ``seq`` counts in;
* ``seq``: strictly increasing per topic; a receiver that sees a jump knows it missed messages;
* ``time``: epoch milliseconds (server clock when built in Lua);
* ``source``: who published it (free text, may be empty);
* ``payload``: any JSON value; kept raw (:class:`msgspec.Raw`) until asked for.

Receivers call :func:`decode_envelope`, which raises
:class:`~tradecache.errors.ValidationError` for a malformed message, so a
subscriber can count and report it instead of crashing.

Lua scripts build the same bytes with ``scripts/lib/envelope.lua``
(``Script(name, include=("envelope",))``).
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, overload

import msgspec

from .codec import get_codec
from .errors import ValidationError

__all__ = ["VERSION", "Envelope", "decode_envelope", "encode_envelope"]

VERSION: Final = 1

T = TypeVar("T")


class Envelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A decoded pub/sub message. ``payload`` stays raw JSON until :meth:`decode`."""

    v: int
    type: str
    topic: str
    seq: int
    time: int
    source: str = ""
    payload: msgspec.Raw = msgspec.Raw(b"null")

    @property
    def datetime(self) -> datetime:
        """``time`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.time / 1000, tz=UTC)

    @overload
    def decode(self) -> Any: ...

    @overload
    def decode(self, type_: builtins.type[T]) -> T: ...

    def decode(self, type_: Any = Any) -> Any:
        """Decode the payload, into ``type_`` when given (a model, ``dict`` ...).

        Raises :class:`~tradecache.codec.CodecError` (a ``ValidationError``)
        when the payload does not fit ``type_``.
        """
        # The JSON codec knows the models' wire forms (epoch-ms datetimes, Decimal strings).
        return get_codec("json").decode(self.payload, type_)


_DECODER: Final = msgspec.json.Decoder(Envelope)
_ENCODER: Final = msgspec.json.Encoder()


def encode_envelope(
    type_: str, topic: str, seq: int, time_ms: int, payload: bytes, source: str = ""
) -> bytes:
    """Build envelope bytes around ``payload`` (already JSON-encoded bytes).

    Example::

        encode_envelope("event", "orders", 7, 1700000000000, b'{"id": "1"}')
    """
    return _ENCODER.encode(
        Envelope(
            v=VERSION,
            type=type_,
            topic=topic,
            seq=seq,
            time=time_ms,
            source=source,
            payload=msgspec.Raw(payload),
        )
    )


def decode_envelope(data: bytes | str) -> Envelope:
    """Parse and check an envelope; ``ValidationError`` when it is not one.

    Example::

        env = decode_envelope(message["data"])
        ticker = env.decode(Ticker)
    """
    try:
        envelope = _DECODER.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValidationError("envelope", str(exc)) from None
    if envelope.v != VERSION:
        raise ValidationError("envelope", f"unknown schema version {envelope.v}")
    return envelope
