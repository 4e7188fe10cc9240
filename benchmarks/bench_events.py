"""Event bus benchmarks: tradecache against raw redis-py pub/sub on the same server, in one process.

Interleaved rounds (research/perf_baseline.md §5-6), alternating which side goes first:

1. **publish throughput**: sequential ``cache.events.publish(topic, payload)`` (one Lua call:
   sequence number, capped backlog append, PUBLISH) vs raw ``PUBLISH`` of the same JSON
   bytes, both with one subscriber listening;
2. **publish -> receive latency** (one message in flight): the time from calling publish
   to the consumer getting the message, ours (``Subscription``: reader task, envelope
   decode, sequence check, bounded queue) vs redis-py ``PubSub.listen()`` in a reader task
   feeding an ``asyncio.Queue`` (how an asyncio app consumes redis-py pub/sub); p50 and
   p99 of all samples.

Both subscribers read all the time, so both sides pay for reading during the throughput
slices.

A throughput ratio is ours / raw (1.0 = as fast as raw redis-py); a latency ratio is
ours / raw (1.0 = as quick; 1.2 = 20% slower). The table gives the median over rounds
and the p10..p90 of the per-round ratios.

Run: ``python benchmarks/bench_events.py [--url URL] [--rounds 15] [--slice 0.2]``
(default: an embedded server from ``tradecache.server``). Pin with ``taskset -c 0`` for
figures of record (the embedded server inherits the affinity).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from tradecache import Cache
from tradecache.server import RedisServer

PAYLOAD = {"order": "o-123", "symbol": "BTC/USDT", "qty": "0.01", "price": "60000.5"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(len(ordered) * q / 100) - 1))]


async def rate(op: Callable[[], Awaitable[Any]], slice_s: float) -> float:
    """Calls per second of ``op`` over one slice."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < slice_s:
        await op()
        done += 1
    return done / (time.perf_counter() - started)


async def latencies(
    send: Callable[[], Awaitable[Any]], receive: Callable[[], Awaitable[Any]], count: int
) -> list[float]:
    """``count`` publish -> receive times in µs, one message in flight."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await send()
        await receive()
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


async def run(url: str, rounds: int, slice_s: float, samples: int) -> None:
    async with Cache.connect(url, namespace="benchevents") as cache:
        client: Any = cache.client
        bus = cache.events
        data = msgspec.json.encode(PAYLOAD)
        raw_channel = cache.keys.channel("bench", "raw")
        sub = await bus.subscribe("bench")
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(raw_channel)
        received: asyncio.Queue[Any] = asyncio.Queue()

        async def raw_reader() -> None:
            async for message in pubsub.listen():
                received.put_nowait(message)

        reader = asyncio.create_task(raw_reader())

        async def ours_publish() -> None:
            await bus.publish("bench", PAYLOAD)

        async def raw_publish() -> None:
            await client.publish(raw_channel, data)

        async def ours_receive() -> None:
            await anext(sub)

        async def raw_receive() -> None:
            await received.get()

        async def drain() -> None:  # the throughput slices leave messages queued
            await asyncio.sleep(0.05)
            while sub.pending:
                await anext(sub)
            while not received.empty():
                received.get_nowait()

        for _ in range(2):  # warm up: script loaded, connections open
            await latencies(ours_publish, ours_receive, 50)
            await latencies(raw_publish, raw_receive, 50)

        tput: dict[str, list[float]] = {"ours": [], "raw": []}
        tput_ratio: list[float] = []
        lat: dict[str, list[float]] = {"ours": [], "raw": []}
        p50_ratio: list[float] = []
        p99_ratio: list[float] = []
        for index in range(rounds):
            order = ["ours", "raw"] if index % 2 == 0 else ["raw", "ours"]
            measured: dict[str, float] = {}
            for side in order:
                op = ours_publish if side == "ours" else raw_publish
                measured[side] = await rate(op, slice_s)
                tput[side].append(measured[side])
                await drain()
            tput_ratio.append(measured["ours"] / measured["raw"])
            round_lat: dict[str, list[float]] = {}
            for side in order:
                if side == "ours":
                    round_lat[side] = await latencies(ours_publish, ours_receive, samples)
                else:
                    round_lat[side] = await latencies(raw_publish, raw_receive, samples)
                lat[side].extend(round_lat[side])
            p50_ratio.append(
                statistics.median(round_lat["ours"]) / statistics.median(round_lat["raw"])
            )
            p99_ratio.append(pct(round_lat["ours"], 99) / pct(round_lat["raw"], 99))

        assert sub.gaps == 0 and sub.malformed == 0
        await sub.close()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await pubsub.aclose()
        await client.delete(cache.keys.events("bench"))

        def ratio(values: list[float]) -> str:
            spread = f"[{pct(values, 10):.2f}..{pct(values, 90):.2f}]"
            return f"**{statistics.median(values):.2f}** {spread}"

        print(f"\nEvent bus vs raw redis-py pub/sub ({rounds} rounds, {url})\n")
        print("| measure | ours | raw redis-py | ratio ours/raw [p10..p90] |")
        print("|---|---|---|---|")
        print(
            f"| publish throughput, 1 subscriber ({slice_s}s slices) "
            f"| {statistics.median(tput['ours']):,.0f}/s "
            f"| {statistics.median(tput['raw']):,.0f}/s | {ratio(tput_ratio)} |"
        )
        print(
            f"| publish -> receive latency p50 ({samples}/round) "
            f"| {statistics.median(lat['ours']):.0f} µs "
            f"| {statistics.median(lat['raw']):.0f} µs | {ratio(p50_ratio)} |"
        )
        print(
            f"| publish -> receive latency p99 ({samples}/round) "
            f"| {pct(lat['ours'], 99):.0f} µs "
            f"| {pct(lat['raw'], 99):.0f} µs | {ratio(p99_ratio)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis URL (default: an embedded server)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--slice", type=float, default=0.2, help="seconds per throughput slice")
    parser.add_argument("--samples", type=int, default=200, help="latency samples per round")
    args = parser.parse_args()
    if args.url:
        asyncio.run(run(args.url, args.rounds, args.slice, args.samples))
        return
    with RedisServer() as server:
        asyncio.run(run(server.url, args.rounds, args.slice, args.samples))


if __name__ == "__main__":
    main()
