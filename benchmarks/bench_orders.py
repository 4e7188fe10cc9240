"""Order flow benchmarks: tradecache against raw redis-py on the same server, in one process.

Interleaved slices (research/perf_baseline.md §5-6) of:

1. ``orders.submit`` + ``consume`` + ``ack`` per order vs raw ``XADD`` + ``XREADGROUP``
   + ``XACK`` (a batch of ``--batch`` orders submitted, then read and acked one by one);
2. ``orders.submit`` alone vs raw ``XADD`` (the idempotency check rides in the same Lua call);
3. ``accounts.set_position`` (a ``Position``, and a ccxt dict) vs raw ``HSET`` of
   pre-encoded bytes;
4. ``orders.update`` (atomic Lua merge of one field) vs raw ``HSET`` of one field;
5. ``trades.push_many`` of 100 trades vs a raw pipeline of 100 ``XADD``.

A ratio is ours / raw in throughput (1.0 = as fast as raw redis-py; 0.5 = half as
fast); the table gives the median over rounds and the p10..p90 of the per-round ratios.

Run: ``python benchmarks/bench_orders.py [--url URL] [--rounds 15] [--slice 0.2]``
(default: an embedded server from ``tradecache.server``). Pin with ``taskset -c 0`` for
figures of record.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from tradecache import Cache
from tradecache.models import Order, Position, Trade
from tradecache.server import RedisServer

Op = Callable[[], Awaitable[int]]  # runs some work, returns how many operations it did


def order_dict(n: int) -> dict[str, Any]:
    return {
        "id": f"o{n}",
        "clientOrderId": f"c{n}",
        "symbol": "BTC/USDT",
        "side": "buy",
        "type": "limit",
        "amount": "0.01",
        "price": "60000.5",
        "timestamp": 1_700_000_000_000,
    }


def position_dict(n: int) -> dict[str, Any]:
    return {
        "symbol": f"S{n % 50}/USDT:USDT",
        "side": "long",
        "contracts": "0.5",
        "entryPrice": "60000",
        "markPrice": "60100",
        "unrealizedPnl": "50",
        "leverage": "10",
        "timestamp": 1_700_000_000_000,
    }


def build_ops(cache: Cache, other: Cache, batch: int) -> dict[str, tuple[Op, Op]]:
    """name -> (ours, raw)."""
    client: Any = cache.client
    codec = cache.codec
    counter = itertools.count()
    raw_queue = cache.keys.key("bench", "rawq")
    raw_hash = cache.keys.key("bench", "rawpos")
    raw_order = cache.keys.key("bench", "raworder")
    raw_trades = cache.keys.key("bench", "rawtrades")
    position = Position.from_ccxt(position_dict(0))
    position_bytes = codec.encode(position)
    trade_batch = [
        Trade(symbol="BTC/USDT", price=Decimal("60000.1"), amount=Decimal("0.002"), id=str(i))
        for i in range(100)
    ]
    trade_payloads = [codec.encode(t) for t in trade_batch]

    async def ours_cycle() -> int:
        for _ in range(batch):
            await cache.orders.submit(order_dict(next(counter)), exchange="binance")
        done = 0
        async for delivery in cache.orders.consume("bench", "w", count=batch, block=0):
            await delivery.ack()
            done += 1
        assert done == batch
        return batch

    async def raw_cycle() -> int:
        for _ in range(batch):
            model = Order.from_ccxt(order_dict(next(counter)), exchange="binance")
            await client.xadd(raw_queue, {"d": codec.encode(model)})
        reply = await client.xreadgroup("bench", "w", {raw_queue: ">"}, count=batch)
        entries = reply[0][1]
        for entry_id, fields in entries:
            codec.decode(fields[b"d"], Order)
            await client.xack(raw_queue, "bench", entry_id)
        assert len(entries) == batch
        return batch

    async def ours_submit() -> int:  # another namespace: its own queue
        await other.orders.submit(order_dict(next(counter)), exchange="binance")
        return 1

    async def raw_submit() -> int:
        model = Order.from_ccxt(order_dict(next(counter)), exchange="binance")
        await client.xadd(raw_queue + ":only", {"d": codec.encode(model)})
        return 1

    async def ours_position() -> int:
        await cache.accounts.set_position("bench", position)
        return 1

    async def ours_position_ccxt() -> int:
        await cache.accounts.set_position("bench", position_dict(next(counter)))
        return 1

    async def raw_position() -> int:
        await client.hset(raw_hash, "BTC/USDT:USDT", position_bytes)
        return 1

    async def ours_update() -> int:
        await cache.orders.update("binance", "u1", filled=str(next(counter) % 100 + 1))
        return 1

    async def raw_update() -> int:
        await client.hset(raw_order, "filled", f'"{next(counter) % 100 + 1}"')
        return 1

    async def ours_push_many() -> int:
        return await cache.trades.push_many(trade_batch, exchange="binance")

    async def raw_push_many() -> int:
        pipe = client.pipeline(transaction=False)
        for payload in trade_payloads:
            pipe.xadd(raw_trades, {"d": payload}, maxlen=10_000, approximate=True)
        await pipe.execute()
        return len(trade_payloads)

    return {
        f"submit+consume+ack (batch {batch})": (ours_cycle, raw_cycle),
        "orders.submit vs XADD": (ours_submit, raw_submit),
        "set_position(Position) vs HSET": (ours_position, raw_position),
        "set_position(ccxt dict) vs HSET": (ours_position_ccxt, raw_position),
        "orders.update (1 field) vs HSET": (ours_update, raw_update),
        "trades.push_many(100) vs pipelined XADD": (ours_push_many, raw_push_many),
    }


async def rate(op: Op, slice_s: float) -> float:
    """Operations per second of ``op`` over one slice."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < slice_s:
        done += await op()
    return done / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(len(ordered) * q / 100) - 1))]


async def run(url: str, rounds: int, slice_s: float, batch: int) -> None:
    async with (
        Cache.connect(url, namespace="benchorders") as cache,
        Cache.connect(url, namespace="benchsubmit") as other,
    ):
        await cache.client.xgroup_create(
            cache.keys.key("bench", "rawq"), "bench", id="0", mkstream=True
        )
        await cache.orders.save(order_dict(0) | {"id": "u1"}, exchange="binance")
        ops = build_ops(cache, other, batch)
        for ours, raw in ops.values():  # warm up: scripts loaded, connections open
            await rate(ours, 0.05)
            await rate(raw, 0.05)
        ratios: dict[str, list[float]] = {name: [] for name in ops}
        ours_rates: dict[str, list[float]] = {name: [] for name in ops}
        raw_rates: dict[str, list[float]] = {name: [] for name in ops}
        for index in range(rounds):
            for name, (ours, raw) in ops.items():
                pair = [(ours, ours_rates), (raw, raw_rates)]
                if index % 2:
                    pair.reverse()
                measured = {}
                for op, sink in pair:
                    measured[id(sink)] = await rate(op, slice_s)
                    sink[name].append(measured[id(sink)])
                ratios[name].append(measured[id(ours_rates)] / measured[id(raw_rates)])
        print(f"\nOrder flow vs raw redis-py ({rounds} rounds x {slice_s}s slices, {url})\n")
        print("| operation | ours µs/op | raw µs/op | ratio ours/raw [p10..p90] |")
        print("|---|---|---|---|")
        for name in ops:
            ours_us = 1e6 / statistics.median(ours_rates[name])
            raw_us = 1e6 / statistics.median(raw_rates[name])
            r = ratios[name]
            print(
                f"| {name} | {ours_us:.1f} | {raw_us:.1f} | "
                f"**{statistics.median(r):.2f}** [{pct(r, 10):.2f}..{pct(r, 90):.2f}] |"
            )
        await cache.client.delete(
            *[cache.keys.key("bench", k) for k in ("rawq", "rawq:only", "rawpos", "raworder")]
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis URL (default: an embedded server)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--slice", type=float, default=0.2, help="seconds per slice")
    parser.add_argument("--batch", type=int, default=100, help="orders per queue cycle")
    args = parser.parse_args()
    if args.url:
        asyncio.run(run(args.url, args.rounds, args.slice, args.batch))
        return
    with RedisServer() as server:
        asyncio.run(run(server.url, args.rounds, args.slice, args.batch))


if __name__ == "__main__":
    main()
