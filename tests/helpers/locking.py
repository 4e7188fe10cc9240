"""Real-process and fault helpers for the lock and bot-claim tests.

Workers run in OS processes started with the ``spawn`` context; they talk to
the test through a ``multiprocessing`` queue and record hold intervals with
``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process of a Linux
host), so intervals of different processes can be compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster

from tradecache import Cache
from tradecache.errors import Claimed

SPAWN = multiprocessing.get_context("spawn")
# Workers start together on a busy machine: a generous budget, the tests are about exclusion.
PATIENT = {"connect_timeout": 5.0, "socket_timeout": 5.0, "pool_timeout": 5.0}


@dataclass(frozen=True)
class Grant:
    """One hold of a lock by a worker: [acquired, released] on the monotonic clock."""

    pid: int
    fence: int
    acquired: float
    released: float


def check_exclusive(grants: Sequence[Grant]) -> list[Grant]:
    """Assert no two holds overlap and fences increase in grant order; return them sorted."""
    ordered = sorted(grants, key=lambda g: g.acquired)
    for before, after in itertools.pairwise(ordered):
        assert before.released <= after.acquired, f"overlap: {before} and {after}"
        assert before.fence < after.fence, f"fence went back: {before} then {after}"
    return ordered


@contextlib.contextmanager
def processes(
    target: Callable[..., Any], argsets: Sequence[tuple[Any, ...]]
) -> Iterator[list[Any]]:
    """Start one spawned process per argument tuple; always stop and reap them all."""
    procs = [SPAWN.Process(target=target, args=args, daemon=True) for args in argsets]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                    os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.join(10)


def receive(results: Any, count: int, timeout: float, procs: Sequence[Any] = ()) -> list[Any]:
    """Take ``count`` messages from a queue, failing early if a worker died with an error."""
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {count} messages after {timeout}s"
        try:
            out.append(results.get(timeout=min(left, 0.5)))
        except queue.Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0, -signal.SIGKILL)]
            assert not failed, f"a worker failed: exit codes {failed}"
            continue
        if isinstance(out[-1], BaseException):
            raise out[-1]
    return out


# --- fault injection ---------------------------------------------------------------------------


async def client_ids(cache: Cache, name_part: str) -> list[tuple[Any, int]]:
    """``(node, client id)`` of every connection whose name contains ``name_part``."""
    client = cache.client
    if isinstance(client, RedisCluster):
        found = []
        for node in client.get_primaries():
            for entry in await client.client_list(target_nodes=node):
                if name_part in entry.get("name", ""):
                    found.append((node, int(entry["id"])))
        return found
    return [
        (None, int(entry["id"]))
        for entry in await client.client_list()
        if name_part in entry.get("name", "")
    ]


async def kill_clients(cache: Cache, name_part: str) -> int:
    """``CLIENT KILL ID`` every connection whose name contains ``name_part``."""
    killed = 0
    for node, client_id in await client_ids(cache, name_part):
        if node is None:
            killed += await cache.client.client_kill_filter(_id=str(client_id))
        else:
            killed += await cache.client.client_kill_filter(_id=str(client_id), target_nodes=node)
    return killed


# --- workers (run in spawned processes) ----------------------------------------------------------


def mutex_worker(url: str, namespace: str, name: str, grants: int, results: Any) -> None:
    """Take the lock ``grants`` times; inside, bump an unprotected counter (GET, yield, SET)."""

    async def main() -> list[Grant]:
        async with Cache.connect(url, namespace=namespace, **PATIENT) as cache:
            counter = cache.keys.key("counter", name)
            lock = cache.lock(name, ttl=5)
            out = []
            for _ in range(grants):
                async with lock as lease:
                    acquired = time.monotonic()
                    value = int(await cache.client.get(counter) or 0)
                    await asyncio.sleep(0)  # let anything that could interleave do so
                    await cache.client.set(counter, value + 1)
                    released = time.monotonic()
                out.append(Grant(os.getpid(), lease.fence, acquired, released))
            return out

    try:
        results.put(asyncio.run(main()))
    except BaseException as exc:
        results.put(RuntimeError(f"worker {os.getpid()}: {exc!r}"))
        raise


def stale_holder(
    url: str, namespace: str, name: str, resource: str, commands: Any, results: Any
) -> None:
    """Hold ``name`` (ttl 1 s), write ``resource`` fenced, then wait for the test's "go".

    Between the two the test SIGSTOPs this process past its TTL. After "go" it
    reports what a stale holder sees: lost flag, ensure_held, a fenced write
    and its release.
    """

    async def main() -> dict[str, Any]:
        async with Cache.connect(url, namespace=namespace, **PATIENT) as cache:
            lost_calls: list[str | None] = []
            lock = cache.lock(
                name, ttl=1, on_lost=lambda lease: lost_calls.append(lease.lost_reason)
            )
            lease = await lock.acquire()
            await lease.fenced_set(resource, "stale-holder")
            results.put(("held", os.getpid(), lease.fence))
            assert await asyncio.to_thread(commands.get, True, 60) == "go"
            report: dict[str, Any] = {
                "lost": lease.lost.is_set(),
                "callbacks": list(lost_calls),
            }
            try:
                lease.ensure_held()
                report["ensure_held"] = "held"
            except Exception as exc:
                report["ensure_held"] = type(exc).__name__
            try:
                await lease.fenced_set(resource, "stale-write")
                report["fenced_set"] = "written"
            except Exception as exc:
                report["fenced_set"] = type(exc).__name__
            report["released"] = await lease.release()
            return report

    try:
        results.put(("report", asyncio.run(main())))
    except BaseException as exc:
        results.put(RuntimeError(f"worker {os.getpid()}: {exc!r}"))
        raise


def bot_racer(
    url: str, namespace: str, bot_id: str, rounds: int, start: Any, go: Any, results: Any
) -> None:
    """Race for one symbol: one try (the winner holds it until ``go``), then ``rounds`` waits."""

    async def main() -> None:
        async with Cache.connect(url, namespace=namespace, **PATIENT) as cache:
            bots = cache.bots
            await cache.ping()
            await asyncio.to_thread(start.wait, 60)
            try:
                claim = await bots.claim("binance", "BTC/USDT", bot_id, ttl=2)
            except Claimed as busy:
                results.put(("lost", bot_id, busy.holder))
            else:
                acquired = time.monotonic()
                results.put(("won", bot_id, claim.fence))
                await asyncio.to_thread(go.wait, 60)
                released = time.monotonic()
                assert await claim.release()
                results.put(("grant", Grant(os.getpid(), claim.fence, acquired, released)))
            await asyncio.to_thread(go.wait, 60)
            for _ in range(rounds):
                async with bots.claim("binance", "BTC/USDT", bot_id, ttl=2, wait=60) as claim:
                    acquired = time.monotonic()
                    await asyncio.sleep(0.002)
                    released = time.monotonic()
                results.put(("grant", Grant(os.getpid(), claim.fence, acquired, released)))
            results.put(("done", bot_id, None))

    try:
        asyncio.run(main())
    except BaseException as exc:
        results.put(RuntimeError(f"bot {bot_id}: {exc!r}"))
        raise


def bot_holder(url: str, namespace: str, bot_id: str, ttl: float, report: Any) -> None:
    """Wait for the claim, report on ``report`` (this worker's own pipe), hold until killed.

    Not a shared Queue: a worker SIGKILLed between writing to a Queue and
    releasing its cross-process write lock would block every other writer.
    """

    async def main() -> None:
        async with (
            Cache.connect(url, namespace=namespace, **PATIENT) as cache,
            cache.bots.claim("binance", "ETH/USDT", bot_id, ttl=ttl, wait=120) as claim,
        ):
            report.send((bot_id, os.getpid(), claim.fence, time.monotonic()))
            await asyncio.Event().wait()  # until SIGKILL

    try:
        asyncio.run(main())
    except BaseException as exc:
        report.send(RuntimeError(f"bot {bot_id}: {exc!r}"))
        raise


def receive_from(pipes: Sequence[Any], timeout: float) -> Any:
    """The next message on any of ``pipes`` (read ends), or fail after ``timeout``."""
    ready = multiprocessing.connection.wait(list(pipes), timeout)
    assert ready, f"no message after {timeout}s"
    message = ready[0].recv()
    if isinstance(message, BaseException):
        raise message
    return message
