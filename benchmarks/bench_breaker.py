"""Circuit-breaker and idempotency overhead against raw redis-py on the same server.

1. Breaker, closed: a guarded call (``breaker.call`` / ``async with``) of a
   downstream doing one redis-py GET, against the same GET unguarded; plus the
   pure CPU overhead over a no-op downstream, the failure path, and pybreaker
   with ``CircuitRedisStorage`` (sync, its only Redis mode) against a sync GET.
2. Propagation: one process trips/resets, another one's ``on_change``
   listener fires (two caches, two connections, one event loop).
3. Idempotency: ``idem.run`` of a first call (claim + store) against a raw
   ``SET NX PX`` + ``SET PX``; a replay against a raw ``GET``.

Every variant runs in short interleaved slices (median of ``--rounds``), so
load on the machine hits them alike. Round trips per call are counted on the
client (every packed command or pipeline sent, async and sync clients alike).
Prints markdown tables.

Run: ``python benchmarks/bench_breaker.py [--url URL] [--rounds 30] [--slice 0.1]``
(default: an embedded server from ``tradecache.server``). Pin with
``taskset -c 0`` for figures of record.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from redis.asyncio.connection import AbstractConnection as AsyncConnection
from redis.connection import AbstractConnection as SyncConnection

from tradecache import Cache
from tradecache.server import RedisServer

try:
    import pybreaker
except ImportError:  # optional: pip install pybreaker
    pybreaker = None  # type: ignore[assignment]


class Boom(Exception):
    """The failing downstream."""


class RoundTrips:
    """Counts what clients send: one packed command or pipeline is one round trip."""

    sent = 0

    @classmethod
    def install(cls) -> None:
        for connection in (AsyncConnection, SyncConnection):
            original = connection.send_packed_command

            def counting(self: Any, *args: Any, _original: Any = original, **kw: Any) -> Any:
                cls.sent += 1
                return _original(self, *args, **kw)

            connection.send_packed_command = counting  # type: ignore[method-assign]


async def interleaved(
    ops: dict[str, Callable[[], Awaitable[Any] | Any]], rounds: int, slice_s: float
) -> dict[str, float]:
    """Median µs per call of each op over ``rounds`` shuffled time slices."""
    per_op: dict[str, list[float]] = {name: [] for name in ops}
    names = list(ops)
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            op = ops[name]
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < slice_s:
                result = op()
                if asyncio.iscoroutine(result):
                    await result
                calls += 1
            per_op[name].append((time.perf_counter() - started) / calls * 1e6)
    return {name: statistics.median(values) for name, values in per_op.items()}


async def trips(op: Callable[[], Awaitable[Any] | Any], n: int = 1000) -> float:
    """Round trips per call of ``op`` (background flushes included)."""
    before = RoundTrips.sent
    started = time.perf_counter()
    for _ in range(n):
        result = op()
        if asyncio.iscoroutine(result):
            await result
    # Batched flushes (every 0.1 s) are part of the cost: count them over the run.
    await asyncio.sleep(max(0.0, 0.15 - (time.perf_counter() - started)))
    return (RoundTrips.sent - before) / n


def table(title: str, rows: list[tuple[str, float, float, float]]) -> None:
    print(f"\n### {title}\n")
    print("| variant | µs per call | vs baseline | round trips per call |")
    print("|---|---|---|---|")
    for name, micros, base, rtt in rows:
        print(f"| {name} | {micros:.1f} | {micros / base:.2f}x | {rtt:.3f} |")


async def breaker_bench(cache: Cache, sync: redis.Redis, rounds: int, slice_s: float) -> None:
    client = cache.client
    key = "bench:breaker:get"
    await client.set(key, "v")
    count = cache.breaker("bench-count", failure_threshold=10**9)
    rate = cache.breaker("bench-rate", failure_rate=0.99, minimum_calls=10**9)
    await count.sync()
    await rate.sync()

    async def get() -> None:
        await client.get(key)

    async def noop() -> None:
        return None

    async def fail() -> None:
        raise Boom

    async def guarded_with() -> None:
        async with count:
            await client.get(key)

    async def unguarded_fail() -> None:
        with contextlib.suppress(Boom):
            await fail()

    async def guarded_fail() -> None:
        with contextlib.suppress(Boom):
            await count.call(fail)

    ops: dict[str, Callable[[], Any]] = {
        "GET, unguarded (baseline)": get,
        "breaker.call(GET), count policy": lambda: count.call(get),
        "async with breaker: GET": guarded_with,
        "breaker.call(GET), failure-rate policy": lambda: rate.call(get),
    }
    times = await interleaved(ops, rounds, slice_s)
    base = times["GET, unguarded (baseline)"]
    rows = [(name, times[name], base, await trips(op)) for name, op in ops.items()]
    table("Breaker closed: guarded GET vs unguarded GET", rows)

    cpu_ops: dict[str, Callable[[], Any]] = {
        "no-op coroutine, unguarded (baseline)": noop,
        "breaker.call(no-op)": lambda: count.call(noop),
    }
    times = await interleaved(cpu_ops, rounds, slice_s)
    base = times["no-op coroutine, unguarded (baseline)"]
    rows = [(name, times[name], base, await trips(op)) for name, op in cpu_ops.items()]
    table("Breaker closed: CPU overhead over a no-op downstream", rows)
    samples = []
    for _ in range(20_000):
        started = time.perf_counter_ns()
        await count.call(noop)
        samples.append(time.perf_counter_ns() - started)
    samples.sort()
    p50, p99 = samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000
    print(f"\nbreaker.call(no-op) latency over 20k calls: p50 {p50:.1f} µs, p99 {p99:.1f} µs")

    fail_ops: dict[str, Callable[[], Any]] = {
        "GET, unguarded (baseline: one round trip)": get,
        "failing coroutine, unguarded": unguarded_fail,
        "breaker.call(failing): the failure is recorded": guarded_fail,
    }
    times = await interleaved(fail_ops, rounds, slice_s)
    base = times["GET, unguarded (baseline: one round trip)"]
    rows = [(name, times[name], base, await trips(op)) for name, op in fail_ops.items()]
    table("Breaker: the failure path (one script call)", rows)

    if pybreaker is None:
        print("\n(pybreaker not installed: `pip install pybreaker` for the comparison)")
        return
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, sync, namespace="bench-pyb")
    theirs = pybreaker.CircuitBreaker(fail_max=10**9, reset_timeout=30, state_storage=storage)

    def sync_get() -> None:
        sync.get(key)

    def sync_fail() -> None:
        raise Boom

    def pyb_fail() -> None:
        with contextlib.suppress(Boom):
            theirs.call(sync_fail)

    py_ops: dict[str, Callable[[], Any]] = {
        "sync GET, unguarded (baseline)": sync_get,
        "pybreaker.call(sync GET), Redis storage": lambda: theirs.call(sync_get),
        "pybreaker.call(failing), Redis storage": pyb_fail,
    }
    times = await interleaved(py_ops, rounds, slice_s)
    base = times["sync GET, unguarded (baseline)"]
    rows = [(name, times[name], base, await trips(op)) for name, op in py_ops.items()]
    table("pybreaker 1.x with CircuitRedisStorage (sync client)", rows)


async def propagation_bench(cache: Cache, other: Cache, n: int) -> None:
    mine = cache.breaker("bench-push", reset_timeout=3600)
    theirs = other.breaker("bench-push", reset_timeout=3600)
    arrived = asyncio.Event()
    at: list[float] = []

    def listener(_: Any) -> None:
        at.append(time.perf_counter())
        arrived.set()

    theirs.on_change(listener)
    await mine.sync()
    await theirs.sync()
    delays = []
    for i in range(n):
        arrived.clear()
        started = time.perf_counter()
        await (mine.trip() if i % 2 == 0 else mine.reset())
        await asyncio.wait_for(arrived.wait(), 5)
        delays.append((at[-1] - started) * 1000)
    delays.sort()
    p50 = delays[len(delays) // 2]
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    print("\n### Propagation: trip/reset in one cache -> listener fires in another\n")
    print("| transitions | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|")
    print(f"| {n} | {p50:.2f} | {p99:.2f} | {delays[-1]:.2f} |")


async def idempotency_bench(cache: Cache, rounds: int, slice_s: float) -> None:
    client = cache.client
    idem = cache.idempotency("bench", ttl=120, in_flight_ttl=30)
    ids = itertools.count()

    async def result() -> dict[str, str]:
        return {"id": "ex-1", "status": "open"}

    encoded = cache.codec.encode({"id": "ex-1", "status": "open"})

    async def raw_first() -> None:
        key = f"bench:idem:raw:{next(ids)}"
        await client.set(key, b"in-flight", nx=True, px=30_000)
        await client.set(key, encoded, px=120_000)

    async def ours_key() -> None:
        await idem.run(f"k{next(ids)}", result)

    async def ours_payload() -> None:
        await idem.run({"symbol": "BTC/USDT", "side": "buy", "amount": "1", "n": next(ids)}, result)

    await client.set("bench:idem:raw:done", encoded)
    await idem.run("done", result)

    async def raw_replay() -> None:
        await client.get("bench:idem:raw:done")

    async def ours_replay() -> None:
        await idem.run("done", result)

    first: dict[str, Callable[[], Any]] = {
        "raw SET NX PX + SET PX (baseline)": raw_first,
        "idem.run(key, fn): claim + store": ours_key,
        "idem.run(payload dict, fn): hash + claim + store": ours_payload,
    }
    times = await interleaved(first, rounds, slice_s)
    base = times["raw SET NX PX + SET PX (baseline)"]
    rows = [(name, times[name], base, await trips(op)) for name, op in first.items()]
    table("Idempotency, first run (fn is a no-op coroutine)", rows)
    replay: dict[str, Callable[[], Any]] = {
        "raw GET (baseline)": raw_replay,
        "idem.run(key, fn): replay of the stored result": ours_replay,
    }
    times = await interleaved(replay, rounds, slice_s)
    base = times["raw GET (baseline)"]
    rows = [(name, times[name], base, await trips(op)) for name, op in replay.items()]
    table("Idempotency, duplicate (replay)", rows)


async def run(url: str, args: argparse.Namespace) -> None:
    RoundTrips.install()
    sync = redis.Redis.from_url(url)
    async with (
        Cache.connect(url, namespace="bench") as cache,
        Cache.connect(url, namespace="bench") as other,
    ):
        print(f"## Breaker and idempotency (server {url.rsplit('@', maxsplit=1)[-1]})")
        await breaker_bench(cache, sync, args.rounds, args.slice)
        await propagation_bench(cache, other, args.transitions)
        await idempotency_bench(cache, args.rounds, args.slice)
    sync.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", help="Redis URL (default: an embedded server)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--slice", type=float, default=0.1, help="seconds per slice")
    parser.add_argument("--transitions", type=int, default=200)
    args = parser.parse_args()
    if args.url:
        asyncio.run(run(args.url, args))
        return
    with RedisServer(port=0) as server:
        asyncio.run(run(server.url, args))


if __name__ == "__main__":
    main()
