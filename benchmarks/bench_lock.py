"""Lock benchmarks: tradecache's lock and bot claims against redis-py on the same server.

1. Handoff under contention: N processes (default 16) each take the lock K
   times, hold it ``--hold`` ms and think ``--think`` ms between grants
   (research/coordination.md experiment B2). Reported: throughput, the
   handoff gap (one process's release to another process's grant: p50/p99),
   wait p99/max. Rounds alternate ours / redis-py ``Lock`` (polling, sleep=0.1).
2. Uncontended acquire + release: round trips (server ``INFO commandstats``)
   and latency, interleaved slices of ours, redis-py ``Lock`` and raw
   ``SET NX PX`` + Lua release.
3. Bot claim acquire + release vs raw ``SET NX PX`` + Lua release.
4. The floor of a handoff on this machine: the same N processes, hold and
   think, passing a token around a ring with bare ``PUBLISH`` -> wake-up on raw
   asyncio sockets (no client library, no script; one PING round trip per
   grant stands for the queueing try). Its gap p99 is what process scheduling
   alone costs: no lock built on Redis pub/sub can hand off faster here.

Run: ``python benchmarks/bench_lock.py [--url URL] [--procs 16] [--rounds 3]``
(default: an embedded server from ``tradecache.server``). Pin with
``taskset -c 0`` for figures of record.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio.connection import AbstractConnection
from redis.asyncio.lock import Lock as RedisPyLock

from tradecache import Cache
from tradecache.server import RedisServer

SPAWN = multiprocessing.get_context("spawn")
RAW_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


# --- contention (worker processes) -------------------------------------------------------------


def _worker(
    kind: str, url: str, name: str, grants: int, hold: float, think: float, start: Any, results: Any
) -> None:
    async def main() -> tuple[list[tuple[int, float, float, float]], float]:
        out = []
        async with Cache.connect(url, namespace="bench") as cache:
            if kind == "ours":
                lock: Any = cache.lock(name, ttl=10)
            else:
                lock = RedisPyLock(
                    cache.client, f"bench:{name}", timeout=10, sleep=0.1, thread_local=False
                )
            await cache.ping()
            await asyncio.to_thread(start.wait)
            cpu = time.process_time()
            for _ in range(grants):
                requested = time.monotonic()
                async with lock:
                    acquired = time.monotonic()
                    await asyncio.sleep(hold)
                    released = time.monotonic()
                out.append((os.getpid(), requested, acquired, released))
                await asyncio.sleep(think)
            cpu = time.process_time() - cpu
        return out, cpu

    results.put(asyncio.run(main()))


async def _open(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return await asyncio.open_unix_connection(parts.path)
    return await asyncio.open_connection(parts.hostname, parts.port or 6379)


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _ring_worker(
    url: str, name: str, index: int, procs: int, grants: int, hold: float, think: float,
    ready: Any, start: Any, results: Any,
) -> None:  # fmt: skip
    """The floor: pass a token to the next process with a bare PUBLISH, read it raw."""

    async def main() -> tuple[list[tuple[int, float, float, float]], float]:
        out = []
        sub_reader, sub_writer = await _open(url)
        reader, writer = await _open(url)
        sub_writer.write(_resp("SUBSCRIBE", f"{name}:{index}"))
        await sub_reader.read(4096)  # the subscribe confirmation
        ready.release()  # a token published before every process listens would be lost
        ping, publish = _resp("PING"), _resp("PUBLISH", f"{name}:{(index + 1) % procs}", "go")
        await asyncio.to_thread(start.wait)
        cpu = time.process_time()
        for grant in range(grants):
            requested = time.monotonic()
            writer.write(ping)  # the lock's queueing try: one round trip
            await reader.read(4096)
            if grant or index:
                await sub_reader.read(4096)  # one message per lap of the ring
            acquired = time.monotonic()
            await asyncio.sleep(hold)
            released = time.monotonic()
            writer.write(publish)
            await reader.read(4096)
            out.append((os.getpid(), requested, acquired, released))
            await asyncio.sleep(think)
        cpu = time.process_time() - cpu
        sub_writer.close()
        writer.close()
        return out, cpu

    results.put(asyncio.run(main()))


def contention(
    kind: str, url: str, procs: int, grants: int, hold: float, think: float, name: str
) -> dict[str, float]:
    start, results, ready = SPAWN.Event(), SPAWN.Queue(), SPAWN.Semaphore(0)
    if kind == "floor":
        workers = [
            SPAWN.Process(
                target=_ring_worker,
                args=(url, name, i, procs, grants, hold, think, ready, start, results),
            )
            for i in range(procs)
        ]
    else:
        workers = [
            SPAWN.Process(
                target=_worker, args=(kind, url, name, grants, hold, think, start, results)
            )
            for _ in range(procs)
        ]
    for worker in workers:
        worker.start()
    time.sleep(0.5 + 0.15 * procs)  # let every process import and connect
    if kind == "floor":
        for _ in workers:
            assert ready.acquire(timeout=60), "a ring process did not subscribe"
    start.set()
    replies = [results.get(timeout=600) for _ in workers]
    rows = [row for batch, _ in replies for row in batch]
    cpu = sum(seconds for _, seconds in replies)
    for worker in workers:
        worker.join()
    rows.sort(key=lambda row: row[2])
    gaps = [
        (after[2] - before[3]) * 1000
        for before, after in itertools.pairwise(rows)
        if before[0] != after[0]
    ]
    for before, after in itertools.pairwise(rows):
        assert before[3] <= after[2], "overlapping grants"
    waits = sorted((row[2] - row[1]) * 1000 for row in rows)
    span = rows[-1][3] - rows[0][2]
    return {
        "throughput": len(rows) / span,
        "gap_p50": percentile(gaps, 50),
        "gap_p99": percentile(gaps, 99),
        "wait_p99": percentile(waits, 99),
        "wait_max": waits[-1],
        "cpu_per_grant": cpu / len(rows) * 1000,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(len(ordered) * q / 100) - 1))]


# --- uncontended (in process, interleaved) ------------------------------------------------------


async def round_trips(cycles: int, op: Callable[[], Awaitable[None]]) -> float:
    """Commands the client sends per call of ``op`` (each is one round trip here)."""
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


async def interleaved(
    ops: dict[str, Callable[[], Awaitable[None]]], rounds: int, slice_s: float
) -> dict[str, float]:
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


async def uncontended(url: str, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    async with Cache.connect(url, namespace="bench") as cache:
        client = cache.client
        raw_release = client.register_script(RAW_RELEASE)
        lock = cache.lock("solo", ttl=10)
        redispy = RedisPyLock(client, "bench:solo-rp", timeout=10, thread_local=False)
        claim_key = "bench:claim-raw"

        async def ours() -> None:
            async with lock:
                pass

        async def redis_py() -> None:
            async with redispy:
                pass

        async def raw() -> None:
            token = os.urandom(16).hex()
            await client.set(claim_key, token, nx=True, px=30_000)
            await raw_release(keys=[claim_key], args=[token])

        async def claim() -> None:
            async with cache.bots.claim("binance", "BTC/USDT", "bench-bot", ttl=30):
                pass

        ops = {"raw SET NX PX + Lua": raw, "redis-py Lock": redis_py, "lock": ours}
        ops["bots.claim"] = claim
        for op in ops.values():  # warm up (scripts loaded)
            await op()
        trips = {name: await round_trips(200, op) for name, op in ops.items()}
        return await interleaved(ops, rounds, 0.2), trips


# --- report ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis URL (default: an embedded server)")
    parser.add_argument("--procs", type=int, default=16)
    parser.add_argument("--grants", type=int, default=30, help="grants per process and round")
    parser.add_argument("--hold", type=float, default=2.0, help="ms inside the lock")
    parser.add_argument("--think", type=float, default=5.0, help="ms between grants")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        server = RedisServer(port=0).start()
        url = server.url
    try:
        run(url, args)
    finally:
        if server is not None:
            server.stop()


def run(url: str, args: argparse.Namespace) -> None:
    results: dict[str, list[dict[str, float]]] = {"ours": [], "redis-py": [], "floor": []}
    for i in range(args.rounds):
        for kind in ("ours", "redis-py", "floor"):
            results[kind].append(
                contention(
                    kind,
                    url,
                    args.procs,
                    args.grants,
                    args.hold / 1000,
                    args.think / 1000,
                    f"handoff-{i}",
                )
            )
    med = {
        kind: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for kind, runs in results.items()
    }
    ours, theirs, floor = med["ours"], med["redis-py"], med["floor"]
    print(
        f"\n### Lock handoff: {args.procs} processes x {args.grants} grants, hold "
        f"{args.hold} ms, think {args.think} ms (median of {args.rounds} rounds)\n"
    )
    print("| metric | tradecache | redis-py Lock | ratio |")
    print("|---|---|---|---|")
    print(
        f"| throughput (grants/s) | {ours['throughput']:.0f} | {theirs['throughput']:.0f} "
        f"| {ours['throughput'] / theirs['throughput']:.2f}x |"
    )
    for key, label in (
        ("gap_p50", "handoff gap p50 (ms)"),
        ("gap_p99", "handoff gap p99 (ms)"),
        ("wait_p99", "wait p99 (ms)"),
        ("wait_max", "wait max (ms)"),
        ("cpu_per_grant", "client CPU per grant (ms)"),
    ):
        ratio = theirs[key] / ours[key] if ours[key] else float("inf")
        print(f"| {label} | {ours[key]:.2f} | {theirs[key]:.2f} | {ratio:.1f}x better |")
    print(
        "\n### The floor: bare PUBLISH -> wake-up ring of the same processes, hold and think"
        " (raw asyncio sockets, no library)\n"
    )
    print("| metric | floor | tradecache | tradecache / floor |")
    print("|---|---|---|---|")
    print(
        f"| throughput (grants/s) | {floor['throughput']:.0f} | {ours['throughput']:.0f} "
        f"| {ours['throughput'] / floor['throughput']:.2f}x |"
    )
    for key, label in (
        ("gap_p50", "handoff gap p50 (ms)"),
        ("gap_p99", "handoff gap p99 (ms)"),
        ("cpu_per_grant", "client CPU per grant (ms)"),
    ):
        ratio = ours[key] / floor[key] if floor[key] else float("inf")
        print(f"| {label} | {floor[key]:.2f} | {ours[key]:.2f} | {ratio:.2f}x |")
    latency, trips = asyncio.run(uncontended(url, max(10, args.rounds * 5)))
    base = latency["raw SET NX PX + Lua"]
    print("\n### Uncontended acquire + release (interleaved slices, median)\n")
    print("| variant | µs per acquire+release | vs raw | commands (round trips) |")
    print("|---|---|---|---|")
    for name, micros in latency.items():
        print(f"| {name} | {micros:.0f} | {base / micros:.2f}x | {trips[name]:.2f} |")


if __name__ == "__main__":
    main()
