"""Process heartbeats and metadata reads: tradecache against raw redis-py on the same server.

1. ``processes.heartbeat(id, status=, params=)`` (one Lua script: record, params
   merge, three liveness ZSETs) against a raw redis-py pipeline of HSET + ZADD
   (the minimum a heartbeat needs), the same work as a raw pipeline (HSET
   record, HSET params, three ZADDs), and the reference library's approach
   (GET JSON, modify in Python, SET, HSET: sequential round trips that lose
   concurrent updates).
2. Metadata hit path: ``symbols.get`` / ``exchanges.get`` on a cached entry
   against raw ``GET`` + ``codec.decode``.

Slices of every variant are interleaved (``--rounds`` x ``--slice`` s) in one
process and the median per-call time is reported with the throughput ratio
to the raw baseline (> 1.0x: faster than raw). Round trips are counted at the
connection. Run: ``python benchmarks/bench_processes.py [--url URL]`` (default:
an embedded server from ``tradecache.server``). Pin with ``taskset -c 0`` for
figures of record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection

from tradecache import Cache
from tradecache.models import Exchange, Market
from tradecache.server import RedisServer

Op = Callable[[], Awaitable[Any]]

MARKET = {
    "id": "BTCUSDT",
    "symbol": "BTC/USDT",
    "base": "BTC",
    "quote": "USDT",
    "type": "spot",
    "spot": True,
    "active": True,
    "precision": {"amount": 0.00001, "price": 0.01},
    "limits": {"amount": {"min": 0.00001, "max": 9000.0}, "cost": {"min": 5.0}},
    "taker": 0.001,
    "maker": 0.001,
}


async def round_trips(cycles: int, op: Op) -> float:
    """Commands written to the socket per call of ``op`` (a pipeline counts once)."""
    sent = 0
    original = AbstractConnection.send_packed_command

    async def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal sent
        sent += 1
        await original(self, *args, **kwargs)

    AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        for _ in range(cycles):
            await op()
    finally:
        AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
    return sent / cycles


async def interleaved(ops: dict[str, Op], rounds: int, slice_s: float) -> dict[str, float]:
    """Median µs per call of each op over ``rounds`` alternating time slices."""
    per_op: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(rounds):
        for name, op in ops.items():
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < slice_s:
                await op()
                calls += 1
            per_op[name].append((time.perf_counter() - started) / calls * 1e6)
    return {name: statistics.median(values) for name, values in per_op.items()}


async def heartbeat_ops(cache: Cache) -> dict[str, Op]:
    client, keys = cache.client, cache.keys
    info = await cache.processes.register("tick", "binance:BTC/USDT", {"ticks": 0})
    rid, counter = info.id, iter(range(10**12))
    record, params = keys.process(rid), keys.process_params(rid)
    live = keys.process_index()
    kind_index = keys.process_kind_index("tick")
    component_index = keys.process_component_index("binance:BTC/USDT")
    legacy_data, legacy_active = "bench:legacy:data", "bench:legacy:active"
    await client.set(legacy_data, json.dumps(info.to_dict()))

    async def ours() -> None:
        await cache.processes.heartbeat(rid, status="running", params={"ticks": next(counter)})

    async def raw_minimal() -> None:
        now = time.time_ns() // 1_000_000
        pipe = client.pipeline(transaction=False)
        pipe.hset(record, mapping={"updated": now, "status": "running"})
        pipe.zadd(live, {rid: now})
        await pipe.execute()

    async def raw_same_work() -> None:
        now = time.time_ns() // 1_000_000
        pipe = client.pipeline(transaction=False)
        pipe.hset(record, mapping={"updated": now, "status": "running"})
        pipe.hset(params, "ticks", json.dumps(next(counter)))
        for index in (live, kind_index, component_index):
            pipe.zadd(index, {rid: now})
        await pipe.execute()

    async def reference_style() -> None:
        data = json.loads(await client.get(legacy_data))
        data["status"] = "running"
        data.setdefault("params", {})["ticks"] = next(counter)
        data["updated"] = time.time()
        await client.set(legacy_data, json.dumps(data), ex=86400)
        await client.hset(legacy_active, rid, str(data["updated"]))

    return {
        "raw HSET+ZADD pipeline": raw_minimal,
        "raw same-work pipeline (HSET x2, ZADD x3)": raw_same_work,
        "reference style (GET+SET+HSET)": reference_style,
        "processes.heartbeat": ours,
    }


async def metadata_ops(cache: Cache) -> dict[str, Op]:
    client, codec = cache.client, cache.codec
    await cache.symbols.put(MARKET, exchange="binance")
    await cache.exchanges.put(Exchange(id="binance", name="Binance", has={"watchTicker": True}))
    symbol_key = cache.keys.symbol_meta("binance", "BTC/USDT")
    exchange_key = cache.keys.exchange_meta("binance")

    async def never(*_: Any) -> None:
        raise AssertionError("a hit never loads")

    cache.symbols.loader = never
    cache.exchanges.loader = never

    async def raw_symbol() -> Market:
        return codec.decode(await client.get(symbol_key), Market)

    async def raw_exchange() -> Exchange:
        return codec.decode(await client.get(exchange_key), Exchange)

    async def ours_symbol() -> Market | None:
        return await cache.symbols.get("binance", "BTC/USDT")

    async def ours_exchange() -> Exchange | None:
        return await cache.exchanges.get("binance")

    return {
        "raw GET + decode Market": raw_symbol,
        "symbols.get (hit)": ours_symbol,
        "raw GET + decode Exchange": raw_exchange,
        "exchanges.get (hit)": ours_exchange,
    }


def table(title: str, latency: dict[str, float], trips: dict[str, float], base: str) -> None:
    print(f"\n### {title}\n")
    print("| variant | µs per call | calls/s | vs raw | round trips |")
    print("|---|---|---|---|---|")
    for name, micros in latency.items():
        ratio = latency[base] / micros
        print(f"| {name} | {micros:.1f} | {1e6 / micros:,.0f} | {ratio:.2f}x | {trips[name]:.0f} |")


async def run(url: str, rounds: int, slice_s: float) -> None:
    async with Cache.connect(url, namespace="bench") as cache:
        heartbeats = await heartbeat_ops(cache)
        reads = await metadata_ops(cache)
        for op in [*heartbeats.values(), *reads.values()]:
            await op()  # warm up: scripts loaded, decoders built
        trips = {name: await round_trips(100, op) for name, op in {**heartbeats, **reads}.items()}
        hb = await interleaved(heartbeats, rounds, slice_s)
        table("Heartbeat (one process record)", hb, trips, "raw HSET+ZADD pipeline")
        sym = await interleaved(
            {k: v for k, v in reads.items() if "Market" in k or "symbols" in k}, rounds, slice_s
        )
        table("Metadata hit path: symbols", sym, trips, "raw GET + decode Market")
        ex = await interleaved(
            {k: v for k, v in reads.items() if "Exchange" in k or "exchanges" in k},
            rounds,
            slice_s,
        )
        table("Metadata hit path: exchanges", ex, trips, "raw GET + decode Exchange")
        await cache.client.delete("bench:legacy:data", "bench:legacy:active")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis URL (default: an embedded server)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--slice", type=float, default=0.2, help="seconds per slice")
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        server = RedisServer(port=0).start()
        url = server.url
    try:
        asyncio.run(run(url, args.rounds, args.slice))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
