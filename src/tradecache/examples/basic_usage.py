"""Basic usage: connect, tickers, candles, balances, shared state, and what errors look like.

Run it: ``python -m tradecache.examples.basic_usage [URL]`` (no URL: an
embedded ``redis-server`` is started and stopped).
"""

from __future__ import annotations

import time
from typing import Any

from tradecache import Cache, ValidationError
from tradecache.examples import redis_url, run


async def main(url: str | None = None, namespace: str = "example") -> dict[str, Any]:
    """Store and read each kind of state once; return what was read back.

    Example: ``result = await main("redis://localhost:6379/0")``
    """
    async with redis_url(url) as address, Cache.connect(address, namespace=namespace) as cache:
        print(f"connected: {cache!r}, PING {await cache.ping() * 1000:.2f} ms")

        # Tickers: a ccxt ticker dict as watch_ticker() returns it; stored and
        # published to watchers in one round trip.
        now_ms = int(time.time() * 1000)
        ccxt_ticker = {"symbol": "BTC/USDT", "timestamp": now_ms, "bid": 59990.0, "ask": 60010.0}
        await cache.tickers.set({**ccxt_ticker, "last": 60000.0}, exchange="binance")
        ticker = await cache.tickers.get("binance", "BTC/USDT")
        assert ticker is not None
        print(f"ticker: {ticker.symbol} last={ticker.last} mid={ticker.mid}")
        price = await cache.tickers.price("BTC/USDT", exchanges=["okx", "binance"])
        print(f"price by preference okx > binance: {price}")

        # A miss is None; bad input raises ValidationError naming the field.
        missing = await cache.tickers.get("binance", "DOGE/USDT")
        print(f"unknown symbol: {missing}")
        rejected = None
        try:
            await cache.tickers.set({"symbol": "ETH/USDT", "last": -1.0}, exchange="binance")
        except ValidationError as exc:
            rejected = exc.field
            print(f"rejected, nothing written: {exc}")

        # Candles: ccxt rows [ts, open, high, low, close, volume], upserted by open time,
        # so re-sending a bar replaces it.
        minute = now_ms // 60_000 * 60_000
        bars = [
            [minute - 120_000, 59900.0, 60050.0, 59880.0, 60000.0, 12.5],
            [minute - 60_000, 60000.0, 60100.0, 59950.0, 60080.0, 9.1],
            [minute, 60080.0, 60090.0, 60010.0, 60020.0, 3.0],
        ]
        await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", bars)
        updated_bar = [minute, 60080.0, 60120.0, 60010.0, 60110.0, 4.2]
        await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", [updated_bar])
        candles = await cache.ohlcv.latest("binance", "BTC/USDT", "1m", 10)
        print(f"candles: {len(candles)}, last close {candles[-1].close}")

        # Balances: money is Decimal, stored as exact strings.
        await cache.accounts.set_balances(
            "main", {"USDT": {"free": "900.5", "used": "100", "total": "1000.5"}}
        )
        usdt = await cache.accounts.get_balance("main", "USDT")
        assert usdt is not None
        print(f"USDT free: {usdt.free!r}")

        # Shared state: one JSON value every process sees; update() is atomic.
        limits = cache.state("risk-limits")
        await limits.set({"max_notional": "25000", "halted": False})
        after = await limits.update(lambda value: {**value, "halted": True})
        print(f"risk limits: {after}")

        health = await cache.health()
        print(f"server: {health.mode} {health.version}, warnings: {list(health.warnings)}")
        return {
            "ticker": ticker,
            "price": price,
            "missing": missing,
            "rejected": rejected,
            "candles": candles,
            "usdt": usdt,
            "limits": after,
            "health": health,
        }


if __name__ == "__main__":
    run(main)
