"""Encoders and decoders of everything tradecache stores: JSON (default) or MessagePack.

A :class:`Codec` turns models (and plain data) into bytes and back with msgspec;
it is the hot path of every store, so it keeps one encoder per format and one
decoder per target type, and does no work beyond msgspec's own::

    from tradecache.codec import get_codec
    from tradecache.models import Ticker

    codec = get_codec("json")            # cached: the same instance every call
    data = codec.encode(ticker)          # bytes
    same = codec.decode(data, Ticker)    # a validated Ticker

Wire format (both codecs):

* model fields use ccxt's camelCase names; ``None`` fields, empty containers
  and fields equal to their default are omitted (see :mod:`tradecache.models`);
* model timestamps are ``int`` epoch milliseconds (plain ``datetime`` values
  inside free-form dicts keep msgspec's native RFC 3339 / msgpack timestamp);
* ``Decimal`` is an exact string (``"0.1"``), never a float;
* a :class:`~tradecache.models.Candle` is the array ``[ms, o, h, l, c, v, count]``.

Errors: bytes that are not valid JSON/MessagePack, or that do not fit the
requested type, raise :class:`CodecError` (a
:class:`~tradecache.errors.ValidationError`) naming the snake_case field when
msgspec reports one (``"bid"``, ``"fee.cost"``, ``"[3].price"``), else ``"$"``.
Decoding runs model validation too, so corrupted values are caught, not
returned. An object that cannot be encoded raises :class:`CodecError` as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, Literal, TypeAlias, TypeVar, overload

import msgspec

from tradecache.errors import ValidationError
from tradecache.models import Model, dec_hook, enc_hook, translate_msgspec_error, trusted

__all__ = ["Codec", "CodecError", "CodecName", "get_codec"]

T = TypeVar("T")

CodecName: TypeAlias = Literal["json", "msgpack"]
Buffer: TypeAlias = bytes | bytearray | memoryview | str

_NAMES: Final = ("json", "msgpack")


class CodecError(ValidationError):
    """Bytes could not be decoded into the requested type, or an object could not be encoded.

    ``field`` is the snake_case path of the offending value (``"$"`` for the
    whole input), ``reason`` is msgspec's explanation.

    Example::

        try:
            order = codec.decode(raw, Order)
        except CodecError as exc:
            log.warning("corrupt order %s: %s", exc.field, exc.reason)
    """


class Codec:
    """One serialization format: ``encode(obj) -> bytes``, ``decode(data, type_) -> obj``.

    Build it with :func:`get_codec` (cached). Thread- and task-safe: encoders
    and decoders hold no per-call state.

    Decoding checks every type and shape (msgspec) but, by default, trusts the
    *values* of models: they were validated when written, and skipping the
    Python-level rules halves the cost of a decode. ``validate=True`` runs them
    (NaN, negative prices, candle high/low ...) on decoded data too.

    Example::

        codec = Codec("msgpack")
        codec.decode(codec.encode({"a": 1}))   # {'a': 1}
    """

    __slots__ = ("_decoder_factory", "_decoders", "_encode", "name", "validate")

    def __init__(self, name: CodecName = "json", *, validate: bool = False) -> None:
        factory: Callable[[Any], Any]
        if name == "json":
            self._encode: Callable[[Any], bytes] = msgspec.json.Encoder(
                enc_hook=enc_hook, decimal_format="string"
            ).encode

            def factory(type_: Any) -> Any:
                return msgspec.json.Decoder(type_, dec_hook=dec_hook)

        elif name == "msgpack":
            self._encode = msgspec.msgpack.Encoder(
                enc_hook=enc_hook, decimal_format="string"
            ).encode

            def factory(type_: Any) -> Any:
                return msgspec.msgpack.Decoder(type_, dec_hook=dec_hook)

        else:
            raise ValidationError("codec", f"unknown codec {name!r}: choose one of {_NAMES}")
        self.name: CodecName = name
        self.validate = validate
        self._decoder_factory = factory
        self._decoders: dict[Any, Callable[[Buffer], Any]] = {}

    def __repr__(self) -> str:
        return f"Codec({self.name!r})"

    def encode(self, obj: Any) -> bytes:
        """Serialize a model, a list of models or plain data to bytes.

        Example::

            >>> from decimal import Decimal
            >>> from tradecache.models import Fee
            >>> get_codec("json").encode(Fee(cost=Decimal("0.1")))
            b'{"cost":"0.1"}'
        """
        try:
            return self._encode(obj)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CodecError("$", f"cannot encode {type(obj).__name__}: {exc}") from exc

    def _decoder(self, type_: Any) -> Callable[[Buffer], Any]:
        """Build, cache and return the decode function for a type seen the first time."""
        decode: Callable[[Buffer], Any] = self._decoder_factory(type_).decode
        self._decoders[type_] = decode
        return decode

    @overload
    def decode(self, data: Buffer, type_: type[T]) -> T: ...

    @overload
    def decode(self, data: Buffer, type_: Any = ...) -> Any: ...

    def decode(self, data: Buffer, type_: Any = Any) -> Any:
        """Deserialize ``data`` into ``type_`` (a model, ``list[Model]``, ``dict`` ...).

        Without ``type_`` the result is plain data (dicts, lists, str, numbers).
        Raises :class:`CodecError` for malformed bytes or a value that does not fit.

        Example::

            ticker = codec.decode(await redis.get(key), Ticker)
        """
        decode = self._decoders.get(type_) or self._decoder(type_)
        token = None if self.validate else trusted.set(True)
        try:
            return decode(data)
        except msgspec.ValidationError as exc:
            raise self._error(exc, type_) from exc
        except (msgspec.DecodeError, TypeError) as exc:
            raise CodecError("$", f"malformed {self.name} data: {exc}") from exc
        finally:
            if token is not None:
                trusted.reset(token)

    @overload
    def decode_many(self, items: Iterable[Buffer], type_: type[T]) -> list[T]: ...

    @overload
    def decode_many(self, items: Iterable[Buffer], type_: Any = ...) -> list[Any]: ...

    def decode_many(self, items: Iterable[Buffer], type_: Any = Any) -> list[Any]:
        """Decode each item (an MGET/HVALS/XRANGE batch) into ``type_``.

        ``None`` items (misses) are not allowed: filter them first.

        Example::

            tickers = codec.decode_many(await redis.hvals(key), Ticker)
        """
        decode = self._decoders.get(type_) or self._decoder(type_)
        token = None if self.validate else trusted.set(True)
        try:
            return [decode(item) for item in items]
        except msgspec.ValidationError as exc:
            raise self._error(exc, type_) from exc
        except (msgspec.DecodeError, TypeError) as exc:
            raise CodecError("$", f"malformed {self.name} data: {exc}") from exc
        finally:
            if token is not None:
                trusted.reset(token)

    @staticmethod
    def _error(exc: msgspec.ValidationError, type_: Any) -> ValidationError:
        model = type_ if isinstance(type_, type) and issubclass(type_, Model) else None
        return translate_msgspec_error(exc, model, error=CodecError)


_CODECS: dict[str, Codec] = {}


def get_codec(name: CodecName = "json") -> Codec:
    """Return the shared :class:`Codec` for ``name`` (``"json"`` or ``"msgpack"``).

    Example::

        >>> get_codec("msgpack") is get_codec("msgpack")
        True
    """
    codec = _CODECS.get(name)
    if codec is None:
        codec = _CODECS[name] = Codec(name)
    return codec
