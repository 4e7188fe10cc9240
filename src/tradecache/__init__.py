"""tradecache: one fast, correct shared state layer on Redis for asyncio trading systems.

tradecache gives a multi-process crypto trading system its shared state:
tickers with live push and candles, order and trade queues that never lose an
entry, balances and positions, symbol claims so no two bots trade one symbol,
process heartbeats, and exchange/symbol metadata read through from SQL; plus
locks with fencing tokens, a circuit breaker shared by every worker,
idempotent order submission and an event bus.

Quickstart::

    import asyncio
    from tradecache import Cache

    async def main() -> None:
        async with Cache.connect("redis://localhost:6379/0", namespace="prod") as cache:
            print(await cache.ping())
            print(await cache.health())

    asyncio.run(main())

Configuration is explicit: ``Settings()`` reads ``TRADECACHE_*`` and
``REDIS_URL`` from the environment when you build it, never at import.
Every error is a :class:`tradecache.errors.TradecacheError`: a miss returns
``None``, an outage raises ``ConnectionLost``, bad input raises
``ValidationError`` naming the field.
"""

from __future__ import annotations

import logging

from .cache import Cache, Health, connect
from .config import Settings
from .errors import (
    CircuitOpen,
    Claimed,
    CommandError,
    ConfigError,
    ConnectionLost,
    InProgress,
    KeyReuse,
    LockLost,
    NotFound,
    ReplayedFailure,
    TradecacheError,
    ValidationError,
    WaitTimeout,
)

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "CircuitOpen",
    "Claimed",
    "CommandError",
    "ConfigError",
    "ConnectionLost",
    "Health",
    "InProgress",
    "KeyReuse",
    "LockLost",
    "NotFound",
    "ReplayedFailure",
    "Settings",
    "TradecacheError",
    "ValidationError",
    "WaitTimeout",
    "__version__",
    "connect",
]

# A library adds no handler but NullHandler: the application owns logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())
