"""Runnable examples: the code to copy, each a module with ``async def main(url=None)``.

Run one against your server, or against an embedded ``redis-server`` it starts
and stops itself when no URL is given::

    python -m tradecache.examples.basic_usage                      # embedded server
    python -m tradecache.examples.queues redis://localhost:6379/0  # your server

or from Python::

    import asyncio
    from tradecache.examples import basic_usage

    asyncio.run(basic_usage.main("redis://localhost:6379/0"))

The examples (:data:`EXAMPLES`): ``basic_usage`` (connect, tickers, candles,
balances, shared state, errors), ``pubsub`` (event bus and ticker push),
``queues`` (order queue and trade streams: consume, ack, reclaim),
``bot_coordination`` (symbol claims, locks with fencing), ``idempotent_orders``
(submit an order once, whatever the retries), ``circuit_breaker`` (one breaker
for every worker), ``pytest_plugin`` (tests on real Redis, standalone and
Cluster), ``performance`` (batching and ``cache.stats()``).

Each ``main`` takes a ``namespace`` too (default ``"example"``), so it never
touches the keys of anything else on the server.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from ..server import RedisServer

__all__ = ["EXAMPLES", "redis_url", "run"]

EXAMPLES = (
    "basic_usage",
    "pubsub",
    "queues",
    "bot_coordination",
    "idempotent_orders",
    "circuit_breaker",
    "pytest_plugin",
    "performance",
)


@asynccontextmanager
async def redis_url(url: str | None) -> AsyncIterator[str]:
    """Yield ``url``; with ``None``, start an embedded ``redis-server`` and yield its URL.

    The embedded server (:class:`~tradecache.server.RedisServer`: a unix
    socket, no persistence) is stopped when the block ends.

    Example::

        async with redis_url(None) as url, Cache.connect(url) as cache:
            await cache.ping()
    """
    if url is not None:
        yield url
        return
    with RedisServer() as server:
        print(f"started an embedded redis-server {server.binary.version_string} at {server.url}")
        yield server.url
    print("stopped the embedded redis-server")


def run(main: Callable[[str | None], Coroutine[Any, Any, Any]]) -> None:
    """Run an example's ``main`` with the URL given on the command line, if any.

    Example: ``python -m tradecache.examples.pubsub redis://localhost:6379/0``
    """
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
