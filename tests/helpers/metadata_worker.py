"""An OS process that reads one cold symbol many times at once (test_metadata.py).

Run with the ``spawn`` context: ``run(url, namespace, count, barrier, callers)``.
Every process uses a loader that increments the shared ``count``; the test asserts
that the loader ran once over all processes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tradecache import Cache


def run(url: str, namespace: str, count: Any, barrier: Any, callers: int) -> None:
    """Process entry point: wait for the others, then ``callers`` concurrent gets."""
    asyncio.run(_main(url, namespace, count, barrier, callers))


async def _main(url: str, namespace: str, count: Any, barrier: Any, callers: int) -> None:
    async with Cache.connect(url, namespace=namespace, pool_size=callers + 2) as cache:

        async def loader(exchange: str, symbol: str) -> dict[str, Any]:
            with count.get_lock():
                count.value += 1
            await asyncio.sleep(0.2)  # a slow database: the others are waiting meanwhile
            return {"id": "BTCUSDT", "symbol": symbol, "base": "BTC", "quote": "USDT"}

        cache.symbols.loader = loader
        await asyncio.to_thread(barrier.wait, 30)
        results = await asyncio.gather(
            *(cache.symbols.get("binance", "BTC/USDT") for _ in range(callers))
        )
        assert all(r is not None and r.symbol == "BTC/USDT" for r in results)
