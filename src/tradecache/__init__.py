"""tradecache: one fast, correct shared state layer on Redis for asyncio trading systems.

tradecache gives a multi-process crypto trading system its shared state:
tickers with live push and candles, order and trade queues that never lose an
entry, balances and positions, symbol claims so no two bots trade one symbol,
process heartbeats, and exchange/symbol metadata read through from SQL; plus
locks with fencing tokens, a circuit breaker shared by every worker,
idempotent order submission and an event bus. It runs on standalone Redis,
Sentinel and Redis Cluster (6.2 or later).

One :class:`Cache` per process holds the connection and everything else:

* stores: ``cache.tickers``, ``cache.ohlcv``, ``cache.orders``,
  ``cache.trades``, ``cache.accounts``, ``cache.bots``, ``cache.processes``,
  ``cache.exchanges``, ``cache.symbols``;
* coordination: ``cache.events``, ``cache.state(name)``, ``cache.lock(name)``,
  ``cache.breaker(name)``, ``cache.idempotency(scope)``;
* operations: ``cache.ping()``, ``cache.health()``, ``cache.stats()``.

Example::

    import asyncio

    from tradecache import Cache


    async def main() -> None:
        async with Cache.connect("redis://localhost:6379/0", namespace="demo") as cache:
            await cache.tickers.set({"symbol": "BTC/USDT", "last": 60000.0}, exchange="binance")
            ticker = await cache.tickers.get("binance", "BTC/USDT")
            print(ticker.symbol, ticker.last)
            async with cache.bots.claim("binance", "BTC/USDT", "bot-1", ttl=30) as claim:
                print("bot-1 holds BTC/USDT under fence", claim.fence)


    asyncio.run(main())

No server at hand? ``python -m tradecache.examples.basic_usage`` runs the basic
example on an embedded ``redis-server`` it starts and stops.

Every write is atomic and one round trip. Every error is a
:class:`tradecache.errors.TradecacheError`: a miss returns ``None``, an
outage raises ``ConnectionLost`` within the configured latency budget, bad
input raises ``ValidationError`` naming the field and writes nothing.
Configuration is explicit: ``Settings()`` reads ``TRADECACHE_*`` and
``REDIS_URL`` from the environment when you build it, never at import.

More: :mod:`tradecache.docs` (``quickstart``, ``caching_guide``,
``coordination_guide``, ``testing_guide``, ``operations_guide``,
``migration_guide``, ``api_reference``, ``get_all_docs()``) and
:mod:`tradecache.examples` (runnable: ``python -m tradecache.examples.<name>``).
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
    NotReplicated,
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
    "NotReplicated",
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
