"""An OS process writing ever-increasing ticker versions (test_local_cache.py).

Run with the ``spawn`` context: ``run(url, namespace, exchange, symbols, stop, written)``.
Each write of a symbol carries ``last = version`` (1, 2, 3 ...); ``written`` (a shared
int) counts the writes, and the process stops when the ``stop`` event is set.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tradecache import Cache


def run(
    url: str, namespace: str, exchange: str, symbols: list[str], stop: Any, written: Any
) -> None:
    """Process entry point: write versions of ``symbols`` round-robin until ``stop``."""
    asyncio.run(_main(url, namespace, exchange, symbols, stop, written))


async def _main(
    url: str, namespace: str, exchange: str, symbols: list[str], stop: Any, written: Any
) -> None:
    async with Cache.connect(url, namespace=namespace) as cache:
        version = 0
        while not stop.is_set():
            version += 1
            for symbol in symbols:
                await cache.tickers.set({"symbol": symbol, "last": float(version)}, exchange)
            with written.get_lock():
                written.value += 1
