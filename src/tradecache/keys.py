"""The whole key and channel schema, and nothing else.

Every Redis key and pub/sub channel tradecache touches is built here, so the
layout can be read (and audited for Cluster safety) in one place. A key is::

    <namespace>:<kind>:{<hash tag>}[:<rest>]

* The namespace isolates deployments and tests sharing one server.
* The ``{hash tag}`` decides the Cluster slot. Keys that one atomic operation
  (a Lua script, a MULTI) touches together share the same tag, so every
  multi-key operation stays in one slot.
* User-supplied parts (exchange, symbol, ids, names) are validated: no input
  can add a brace, a glob character, whitespace or a newline to a key, so no
  input can change a key's slot, match someone else's keys in a SCAN, or
  escape its namespace.

Example::

    keys = Keys("prod")
    keys.key("lock", "rebalance")            # 'prod:lock:{rebalance}'
    keys.key("ticker", "binance", "BTC/USDT")  # 'prod:ticker:{binance}:BTC/USDT'
"""

from __future__ import annotations

import re
from typing import Final

from .errors import ValidationError

__all__ = [
    "MAX_PART_LENGTH",
    "Keys",
    "validate_exchange",
    "validate_part",
    "validate_symbol",
]

MAX_PART_LENGTH: Final = 200

# Braces move a key to another slot, * ? [ ] \ are glob syntax in SCAN/PSUBSCRIBE,
# whitespace and control characters break logs and the wire protocol of old clients.
_FORBIDDEN = re.compile(r"[{}*?\[\]\\\s\x00-\x1f\x7f-\x9f]")
_EXCHANGE = re.compile(r"[A-Za-z0-9_.\-]+")


def validate_part(value: object, field: str, *, max_length: int = MAX_PART_LENGTH) -> str:
    """Return ``value`` if it is safe inside a key, else raise ``ValidationError(field)``.

    >>> validate_part("BTC/USDT:USDT", "symbol")
    'BTC/USDT:USDT'
    """
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a str, not {type(value).__name__}")
    if not value:
        raise ValidationError(field, "must not be empty")
    if len(value) > max_length:
        raise ValidationError(field, f"longer than {max_length} characters")
    bad = _FORBIDDEN.search(value)
    if bad is not None:
        raise ValidationError(field, f"contains the forbidden character {bad.group()!r}")
    return value


def validate_exchange(value: object, field: str = "exchange") -> str:
    """An exchange id: ccxt style, ``[A-Za-z0-9_.-]``, at most 64 characters.

    Exchange ids are lower-cased, so ``"Binance"`` and ``"binance"`` are one exchange.
    """
    text = validate_part(value, field, max_length=64)
    if not _EXCHANGE.fullmatch(text):
        raise ValidationError(field, "only letters, digits, '_', '.' and '-' are allowed")
    return text.lower()


def validate_symbol(value: object, field: str = "symbol") -> str:
    """A market symbol (``BTC/USDT``, ``BTC/USDT:USDT``, ``ETH-PERP``), at most 100 chars."""
    return validate_part(value, field, max_length=100)


class Keys:
    """The key schema of one namespace.

    Methods return ``str`` keys; redis-py encodes them. Methods that take user
    input validate it and raise :class:`~tradecache.errors.ValidationError`.
    """

    __slots__ = ("namespace", "prefix")

    def __init__(self, namespace: str = "tc") -> None:
        validate_exchange(namespace, "namespace")
        self.namespace = namespace
        self.prefix = namespace + ":"

    def __repr__(self) -> str:
        return f"Keys(namespace={self.namespace!r})"

    # --- building blocks -------------------------------------------------------------------

    def key(self, kind: str, tag: str, *rest: str) -> str:
        """``<ns>:<kind>:{<tag>}[:<rest>...]``; parts must be validated by the caller."""
        tail = ":".join(rest)
        return f"{self.prefix}{kind}:{{{tag}}}" + (":" + tail if tail else "")

    def channel(self, kind: str, tag: str, *rest: str) -> str:
        """A pub/sub channel, laid out like a key (sharded pub/sub routes by its tag)."""
        return self.key("ch:" + kind, tag, *rest)

    def pattern(self, kind: str) -> str:
        """A SCAN MATCH pattern for every key of ``kind`` in this namespace."""
        return f"{self.prefix}{kind}:*"

    def all_pattern(self) -> str:
        """A SCAN MATCH pattern for every key of this namespace."""
        return self.prefix + "*"

    # --- tickers (stores/tickers.py) -------------------------------------------------------

    # --- OHLCV (stores/ohlcv.py) -----------------------------------------------------------

    # --- orders (stores/orders.py) ---------------------------------------------------------

    # --- trades (stores/trades.py) ---------------------------------------------------------

    # --- accounts (stores/accounts.py) -----------------------------------------------------

    # --- bots (stores/bots.py) -------------------------------------------------------------

    # --- processes (stores/processes.py) ---------------------------------------------------

    # --- exchange and symbol metadata (stores/exchanges.py, stores/symbols.py) -------------

    # --- coordination: locks (coordination/lock.py) ----------------------------------------

    # --- coordination: circuit breakers (coordination/breaker.py) --------------------------

    # --- coordination: idempotency (coordination/idempotency.py) ---------------------------

    # --- coordination: events (coordination/events.py) -------------------------------------

    # --- coordination: shared state (coordination/state.py) --------------------------------
