"""Performance: batch what you can, run independent calls concurrently, watch ``cache.stats()``.

Run it: ``python -m tradecache.examples.performance [URL]``.

Every tradecache write is one round trip, so the round trip is the unit of
cost: ``set_many`` sends a whole ``watch_tickers()`` snapshot in one pipeline,
``get_all`` reads an exchange in one command, and ``asyncio.gather`` overlaps
independent reads on the connection pool (which pays off when the network,
not a local socket, dominates the round trip).
``cache.stats()`` gives per-operation counts and latency percentiles of this
process (bounded memory), to export to your metrics. The ratios against raw
redis-py are measured by ``benchmarks/`` (see BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tradecache import Cache
from tradecache.examples import redis_url, run

SYMBOLS = 200


def snapshot(round_: int) -> list[dict[str, Any]]:
    """Tickers of every symbol, as ccxt's ``watch_tickers()`` gives them."""
    return [
        {
            "symbol": f"COIN{i}/USDT",
            "bid": 100.0 + i + round_,
            "ask": 100.1 + i + round_,
            "last": 100.05 + i + round_,
        }
        for i in range(SYMBOLS)
    ]


async def main(url: str | None = None, namespace: str = "example") -> dict[str, float]:
    """Time one-by-one writes, a batch, sequential and concurrent reads; return ops/s.

    Example: ``rates = await main("redis://localhost:6379/0")``
    """
    async with redis_url(url) as address, Cache.connect(address, namespace=namespace) as cache:
        rates: dict[str, float] = {}

        started = time.perf_counter()
        for ticker in snapshot(0):
            await cache.tickers.set(ticker, exchange="binance")  # one round trip each
        rates["set one by one"] = SYMBOLS / (time.perf_counter() - started)

        started = time.perf_counter()
        await cache.tickers.set_many(snapshot(1), exchange="binance")  # one round trip
        rates["set_many"] = SYMBOLS / (time.perf_counter() - started)

        symbols = [ticker["symbol"] for ticker in snapshot(0)]
        started = time.perf_counter()
        for symbol in symbols:
            await cache.tickers.get("binance", symbol)
        rates["get one by one"] = SYMBOLS / (time.perf_counter() - started)

        # Keep at most pool_size commands in flight: more would wait for a free
        # connection, and past settings.pool_timeout raise ConnectionLost.
        width = cache.settings.pool_size
        started = time.perf_counter()
        for i in range(0, SYMBOLS, width):
            await asyncio.gather(*(cache.tickers.get("binance", s) for s in symbols[i : i + width]))
        rates["get with gather"] = SYMBOLS / (time.perf_counter() - started)

        started = time.perf_counter()
        everything = await cache.tickers.get_all("binance")  # one HGETALL
        rates["get_all (tickers/s)"] = len(everything) / (time.perf_counter() - started)

        print(f"{'operation':<22}{'tickers/s':>12}")
        for name, rate in rates.items():
            print(f"{name:<22}{rate:>12,.0f}")
        print(f"\n{'cache.stats()':<22}{'count':>8}{'p50 ms':>9}{'p99 ms':>9}")
        for operation, stats in sorted(cache.stats().items()):
            print(f"{operation:<22}{stats.count:>8}{stats.p50_ms:>9.3f}{stats.p99_ms:>9.3f}")
        return rates


if __name__ == "__main__":
    run(main)
