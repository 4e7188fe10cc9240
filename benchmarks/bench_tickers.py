"""Ticker store benchmarks: tradecache against raw redis-py on the same server, in one process.

Variants, each measured in short slices, all interleaved in shuffled order per round
(research/perf_baseline.md §5-6), so every ratio compares figures taken side by side:

* **set**: ``cache.tickers.set(ticker)`` (encode, one EVALSHA: HSET + INCRBY + PUBLISH)
  vs raw redis-py pipelined ``HSET`` + ``PUBLISH`` of the same pre-encoded JSON payload
  (one round trip, no encoding) vs the reference library's approach mimicked with raw
  redis-py: three sequential commands per ticker (``HSET``, ``SET ticker_time``,
  ``PUBLISH``; the reference also sent a PING before each, left out here in its favour);
* **set_many(1000)**: tickers/s of ``cache.tickers.set_many`` of 1000 tickers vs one raw
  pipeline of 1000 x (``HSET`` + ``PUBLISH``) of pre-encoded payloads, and vs the reference
  approach (it has no batch call: one ticker at a time, the **set** reference figure);
* **get**: ``cache.tickers.get(exchange, symbol)`` (HGET, decode + validate into a
  ``Ticker``) vs raw ``HGET`` + msgspec decode of the plain ticker JSON into the same
  ``Ticker`` model, vs the reference (``PING`` + ``HGET`` + stdlib ``json.loads``).

A ratio is ours / baseline throughput (1.0 = as fast; 2.0 = twice as fast); the table
gives the median over rounds and the p10..p90 of the per-round ratios, and p50/p99 call
latencies over all slices.

Run: ``python benchmarks/bench_tickers.py [--url URL] [--rounds 20] [--slice 0.2]``
(default: an embedded server from ``tradecache.server``). Pin with ``taskset -c 0`` for
figures of record (the embedded server inherits the affinity).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from tradecache import Cache
from tradecache.models import Ticker, dec_hook, enc_hook, utc_now
from tradecache.server import RedisServer

EXCHANGE = "binance"
SYMBOL = "BTC/USDT"
BATCH = 1000

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
    async with Cache.connect(url, namespace="benchtickers") as cache:
        client: Any = cache.client
        tickers = cache.tickers
        keys = cache.keys
        one = make_ticker(SYMBOL, 60_000.0)
        payload = _encode(one)
        batch = [make_ticker(f"C{i}/USDT", 100.0 + i) for i in range(BATCH)]
        batch_payloads = [(t.symbol, _encode(t)) for t in batch]
        raw_hash = keys.key("bench-raw", EXCHANGE)
        raw_channel = keys.channel("bench-raw", EXCHANGE)
        ref_hash = f"benchtickers:ref:tickers:{EXCHANGE}"  # the reference's raw key names
        ref_time = f"benchtickers:ref:ticker_time:{EXCHANGE}:{SYMBOL}"
        ref_channel = f"benchtickers:ref:ticker_updates:{EXCHANGE}:{SYMBOL}"
        ref_json = json.dumps(one.to_dict())

        async def ours_set() -> None:
            await tickers.set(one)

        async def raw_set() -> None:
            pipe = client.pipeline(transaction=False)
            pipe.hset(raw_hash, SYMBOL, payload)
            pipe.publish(raw_channel, payload)
            await pipe.execute()

        async def ref_set() -> None:
            await client.hset(ref_hash, SYMBOL, ref_json)
            await client.set(ref_time, "1700000000.0")
            await client.publish(ref_channel, ref_json)

        async def ours_set_many() -> None:
            await tickers.set_many(batch)

        async def raw_set_many() -> None:
            pipe = client.pipeline(transaction=False)
            for symbol, data in batch_payloads:
                pipe.hset(raw_hash, symbol, data)
                pipe.publish(raw_channel, data)
            await pipe.execute()

        async def ours_get() -> None:
            ticker = await tickers.get(EXCHANGE, SYMBOL)
            assert ticker is not None

        async def raw_get() -> None:
            _decode_ticker(await client.hget(raw_hash, SYMBOL))

        async def ref_get() -> None:
            await client.ping()
            json.loads(await client.hget(ref_hash, SYMBOL))

        variants: dict[str, Callable[[], Awaitable[Any]]] = {
            "ours_set": ours_set,
            "raw_set": raw_set,
            "ref_set": ref_set,
            "ours_set_many": ours_set_many,
            "raw_set_many": raw_set_many,
            "ours_get": ours_get,
            "raw_get": raw_get,
            "ref_get": ref_get,
        }
        for op in variants.values():  # warm up: scripts loaded, connections open, keys exist
            for _ in range(20):
                await op()

        rates: dict[str, list[float]] = {name: [] for name in variants}
        samples: dict[str, list[float]] = {name: [] for name in variants}
        shuffle = random.Random(7)
        for _ in range(rounds):
            order = list(variants)
            shuffle.shuffle(order)
            for name in order:
                rates[name].append(await measure(variants[name], slice_s, samples[name]))

        for key in (raw_hash, ref_hash, ref_time, keys.ticker_hash(EXCHANGE)):
            await client.delete(key)

        def ratios(ours: str, base: str, scale: float = 1.0) -> list[float]:
            return [a / (b * scale) for a, b in zip(rates[ours], rates[base], strict=True)]

        def cell(values: list[float]) -> str:
            spread = f"[{pct(values, 10):.2f}..{pct(values, 90):.2f}]"
            return f"**{statistics.median(values):.2f}** {spread}"

        def speed(name: str, per_call: int = 1) -> str:
            return f"{statistics.median(rates[name]) * per_call:,.0f}/s"

        def latency(name: str) -> str:
            return f"{pct(samples[name], 50):.0f} / {pct(samples[name], 99):.0f} µs"

        print(f"\nTicker store vs raw redis-py ({rounds} rounds x {slice_s}s slices, {url})\n")
        print(
            "| operation | ours | raw redis-py | reference approach | ours/raw | ours/reference |"
        )
        print("|---|---|---|---|---|---|")
        print(
            f"| set (tickers/s) | {speed('ours_set')} | {speed('raw_set')} | {speed('ref_set')} "
            f"| {cell(ratios('ours_set', 'raw_set'))} | {cell(ratios('ours_set', 'ref_set'))} |"
        )
        # the reference has no batch call: its tickers/s is one ticker at a time (ref_set)
        print(
            f"| set_many({BATCH}) (tickers/s) | {speed('ours_set_many', BATCH)} "
            f"| {speed('raw_set_many', BATCH)} | {speed('ref_set')} "
            f"| {cell(ratios('ours_set_many', 'raw_set_many'))} "
            f"| {cell([r * BATCH for r in ratios('ours_set_many', 'ref_set')])} |"
        )
        print(
            f"| get (reads/s) | {speed('ours_get')} | {speed('raw_get')} | {speed('ref_get')} "
            f"| {cell(ratios('ours_get', 'raw_get'))} | {cell(ratios('ours_get', 'ref_get'))} |"
        )
        print("\n| call latency p50 / p99 | ours | raw redis-py | reference |")
        print("|---|---|---|---|")
        print(f"| set | {latency('ours_set')} | {latency('raw_set')} | {latency('ref_set')} |")
        print(f"| set_many({BATCH}) | {latency('ours_set_many')} | {latency('raw_set_many')} | - |")
        print(f"| get | {latency('ours_get')} | {latency('raw_get')} | {latency('ref_get')} |")


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
