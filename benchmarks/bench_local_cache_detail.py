"""Local cache benchmarks: reads served from memory against raw redis-py, in one process.

Variants, each measured in short slices, all interleaved in shuffled order per round
(research/perf_baseline.md §5-6), so every ratio compares figures taken side by side:

* **get**: ``cache.tickers.get(exchange, symbol)`` with ``local_cache=True`` (a hit:
  no I/O) vs raw redis-py ``HGET`` + msgspec decode of the same ticker JSON into the same
  ``Ticker`` model, vs a bare raw ``HGET`` (no decode), and vs ``tickers.get`` without
  the local cache;
* **get_all(20)**: ``cache.tickers.get_all`` of a 20-symbol exchange (a hit: a dict
  copy) vs raw ``HGETALL`` + decode of 20 tickers;
* **symbols.get**: a cached market vs raw ``GET`` + decode of the same bytes.

A ratio is ours / baseline throughput; the table gives the median over rounds and
the p10..p90 of the per-round ratios, and p50/p99 call latencies over all slices.
The goal (issue 7) is local-cache ticker reads >= 20x raw ``HGET``.

Run: ``python benchmarks/bench_local_cache_detail.py [--url URL] [--rounds 20] [--slice 0.2]``
(default: an embedded server from ``tradecache.server``). Pin with ``taskset -c 0`` for
figures of record (the embedded server inherits the affinity).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from tradecache import Cache
from tradecache.models import Market, Ticker, dec_hook, enc_hook, utc_now
from tradecache.server import RedisServer

EXCHANGE = "binance"
SYMBOL = "BTC/USDT"
SYMBOLS = 20

_encode = msgspec.json.Encoder(enc_hook=enc_hook).encode
_decode_ticker = msgspec.json.Decoder(Ticker, dec_hook=dec_hook).decode


def make_ticker(symbol: str, price: float) -> Ticker:
    return Ticker(
        symbol=symbol,
        exchange=EXCHANGE,
        timestamp=utc_now(),
        received=utc_now(),
        bid=price - 0.5,
        bid_volume=1.5,
        ask=price + 0.5,
        ask_volume=2.0,
        last=price,
        open=price * 0.98,
        high=price * 1.01,
        low=price * 0.97,
        close=price,
        change=price * 0.02,
        percentage=2.0,
        base_volume=1234.5,
        quote_volume=price * 1234.5,
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(len(ordered) * q / 100) - 1))]


async def measure(op: Callable[[], Awaitable[Any]], slice_s: float, samples: list[float]) -> float:
    """Calls per second of ``op`` over one slice; appends each call's µs to ``samples``."""
    done, started = 0, time.perf_counter()
    now = started
    while now - started < slice_s:
        await op()
        end = time.perf_counter()
        samples.append((end - now) * 1e6)
        now = end
        done += 1
    return done / (now - started)


async def run(url: str, rounds: int, slice_s: float) -> None:
    namespace = "benchlocal"
    async with (
        Cache.connect(url, namespace=namespace, local_cache=True) as cache,
        Cache.connect(url, namespace=namespace) as plain,
    ):
        local = cache.local_cache
        assert local is not None
        client: Any = plain.client
        keys = cache.keys
        tickers = [make_ticker(f"C{i}/USDT", 100.0 + i) for i in range(SYMBOLS - 1)]
        tickers.append(make_ticker(SYMBOL, 60_000.0))
        await plain.tickers.set_many(tickers)
        raw_hash = keys.key("bench-raw", EXCHANGE)
        await client.hset(raw_hash, mapping={t.symbol: _encode(t) for t in tickers})
        market = Market.from_ccxt(
            {"id": "BTCUSDT", "symbol": SYMBOL, "base": "BTC", "quote": "USDT"},
            exchange=EXCHANGE,
        )
        await plain.symbols.put(market, EXCHANGE)
        raw_market = keys.key("bench-raw-market", EXCHANGE)
        await client.set(raw_market, cache.codec.encode(market))

        async def local_get() -> None:
            assert await cache.tickers.get(EXCHANGE, SYMBOL) is not None

        async def plain_get() -> None:
            assert await plain.tickers.get(EXCHANGE, SYMBOL) is not None

        async def raw_get() -> None:
            _decode_ticker(await client.hget(raw_hash, SYMBOL))

        async def raw_hget() -> None:
            await client.hget(raw_hash, SYMBOL)

        async def local_get_all() -> None:
            assert len(await cache.tickers.get_all(EXCHANGE)) == SYMBOLS

        async def raw_get_all() -> None:
            stored = await client.hgetall(raw_hash)
            result = {s.decode(): _decode_ticker(data) for s, data in stored.items()}
            assert len(result) == SYMBOLS

        async def local_symbol() -> None:
            assert await cache.symbols.get(EXCHANGE, SYMBOL) is not None

        async def raw_symbol() -> None:
            cache.codec.decode(await client.get(raw_market), Market)

        variants: dict[str, Callable[[], Awaitable[Any]]] = {
            "local_get": local_get,
            "plain_get": plain_get,
            "raw_get": raw_get,
            "raw_hget": raw_hget,
            "local_get_all": local_get_all,
            "raw_get_all": raw_get_all,
            "local_symbol": local_symbol,
            "raw_symbol": raw_symbol,
        }
        for op in variants.values():  # warm up: connections open, entries remembered
            for _ in range(20):
                await op()
        misses = local.stats().misses

        rates: dict[str, list[float]] = {name: [] for name in variants}
        samples: dict[str, list[float]] = {name: [] for name in variants}
        shuffle = random.Random(7)
        for _ in range(rounds):
            order = list(variants)
            shuffle.shuffle(order)
            for name in order:
                rates[name].append(await measure(variants[name], slice_s, samples[name]))
        stats = local.stats()

        for key in (raw_hash, raw_market, keys.ticker_hash(EXCHANGE)):
            await client.delete(key)
        await plain.symbols.invalidate(EXCHANGE)

        def ratios(ours: str, base: str) -> list[float]:
            return [a / b for a, b in zip(rates[ours], rates[base], strict=True)]

        def cell(values: list[float]) -> str:
            spread = f"[{pct(values, 10):.2f}..{pct(values, 90):.2f}]"
            return f"**{statistics.median(values):.1f}** {spread}"

        def speed(name: str) -> str:
            return f"{statistics.median(rates[name]):,.0f}/s"

        def latency(name: str) -> str:
            return f"{pct(samples[name], 50):.1f} / {pct(samples[name], 99):.1f} µs"

        print(f"\nLocal cache vs raw redis-py ({rounds} rounds x {slice_s}s slices, {url})\n")
        print(
            "| read | local cache | baseline | local/baseline | p50 / p99 local | p50 / p99 base |"
        )
        print("|---|---|---|---|---|---|")
        rows = [
            ("tickers.get vs HGET + decode", "local_get", "raw_get"),
            ("tickers.get vs bare HGET", "local_get", "raw_hget"),
            ("tickers.get vs tickers.get uncached", "local_get", "plain_get"),
            (f"tickers.get_all({SYMBOLS}) vs HGETALL + decode", "local_get_all", "raw_get_all"),
            ("symbols.get vs GET + decode", "local_symbol", "raw_symbol"),
        ]
        for label, ours, base in rows:
            print(
                f"| {label} | {speed(ours)} | {speed(base)} | {cell(ratios(ours, base))} "
                f"| {latency(ours)} | {latency(base)} |"
            )
        print(
            f"\nmisses during the measurement: {stats.misses - misses} "
            f"(hits {stats.hits:,}); goal: tickers.get >= 20x bare HGET"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis URL (default: an embedded server)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--slice", type=float, default=0.2, help="seconds per slice")
    args = parser.parse_args()
    if args.url:
        asyncio.run(run(args.url, args.rounds, args.slice))
        return
    with RedisServer() as server:
        asyncio.run(run(server.url, args.rounds, args.slice))


if __name__ == "__main__":
    main()
