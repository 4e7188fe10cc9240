"""Real-process workers for the breaker and idempotency acceptance tests.

Workers are OS processes started from a ``forkserver`` that has already
imported tradecache, so starting 32 of them costs milliseconds, not 32
interpreter start-ups (each child is a fresh fork of a clean server process,
never of the test's process with its event loop). They talk to the test
through ``multiprocessing`` queues and events; :func:`processes` always kills
and reaps them, even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import random
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

from tradecache import Cache, CircuitOpen, ConnectionLost, InProgress, WaitTimeout
from tradecache.scripts import Script
from tradecache.testing import wait_until

CTX = multiprocessing.get_context("forkserver")
CTX.set_forkserver_preload(["helpers.coordination_workers"])

# The downstream service of the breaker tests: each call it receives is logged with
# the breaker's sequence number at that instant (so a hit is attributed to a state).
HIT = Script(
    "test_breaker_hit",
    source="""
local seq = redis.call('HGET', KEYS[1], 'seq') or '0'
redis.call('RPUSH', KEYS[2], seq)
return seq
""",
)


class Boom(Exception):
    """The downstream is broken."""


@contextlib.contextmanager
def processes(
    target: Callable[..., Any], argsets: Sequence[tuple[Any, ...]]
) -> Iterator[list[Any]]:
    """Start one process per argument tuple; always kill and reap them all."""
    procs = [CTX.Process(target=target, args=args, daemon=True) for args in argsets]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.join(10)


async def receive(results: Any, count: int, within: float, procs: Sequence[Any] = ()) -> list[Any]:
    """Take ``count`` messages from a queue without blocking the event loop.

    Fails early when a worker died with an error (any exit but 0 or SIGKILL).
    """
    out: list[Any] = []
    deadline = time.monotonic() + within
    loop = asyncio.get_running_loop()
    while len(out) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {count} messages after {within}s: {out}"
        try:
            out.append(await loop.run_in_executor(None, results.get, True, min(left, 0.2)))
        except queue.Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0, -signal.SIGKILL)]
            assert not failed, f"a worker failed: exit codes {failed}"
            continue
        if isinstance(out[-1], BaseException):
            raise out[-1]
    return out


async def wait_event(event: Any) -> None:
    """Wait for a ``multiprocessing.Event`` without blocking the event loop."""
    loop = asyncio.get_running_loop()
    while not await loop.run_in_executor(None, event.wait, 0.2):
        pass


async def connect(url: str, namespace: str) -> Cache:
    """Connect, retrying for a while: on a loaded CI host a Cluster may answer slowly."""
    deadline = time.monotonic() + 120
    while True:
        try:
            # Generous timeouts: 32 processes on a loaded 2-core host answer slowly.
            return await Cache.connect(
                url, namespace=namespace, connect_timeout=5.0, socket_timeout=5.0
            )
        except ConnectionLost:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)  # retry backoff


def _run(coro_fn: Callable[..., Any], *args: Any) -> None:
    results = args[-1]
    try:
        asyncio.run(coro_fn(*args))
    except BaseException as exc:  # report it, so the test fails with the cause
        results.put(RuntimeError(f"worker {os.getpid()}: {exc!r}"))
        raise


# --- breaker ---------------------------------------------------------------------------------


def breaker_worker(*args: Any) -> None:
    """16-process scenario: call a failing downstream until told to stop, then report."""
    _run(_breaker_worker, *args)


async def _breaker_worker(
    url: str,
    namespace: str,
    name: str,
    options: dict[str, Any],
    go: Any,
    stop: Any,
    report: Any,
    results: Any,
) -> None:
    async with await connect(url, namespace) as cache:
        breaker = cache.breaker(name, **options)
        seen: list[tuple[int | None, str, str, str, bool]] = []
        breaker.on_change(
            lambda t: seen.append((t.seq, str(t.previous), str(t.state), t.reason, t.local))
        )
        await breaker.sync()
        state_key = cache.keys.breaker(name)
        hits_key = cache.keys.key("breaker", name, "hits")

        async def downstream() -> None:
            await HIT(cache.client, keys=[state_key, hits_key])
            raise Boom

        results.put(("ready", os.getpid()))
        await wait_event(go)
        rejected = 0
        while not stop.is_set():
            try:
                await breaker.call(downstream)
            except Boom:
                pass
            except CircuitOpen as exc:
                rejected += 1
                await asyncio.sleep(min(exc.retry_after, 0.01))  # a client backing off
        results.put(("stopped", os.getpid()))
        await wait_event(report)
        # Every transition made so far must reach this process's listeners exactly once.
        await breaker.sync()
        with contextlib.suppress(WaitTimeout):  # the test reports what is missing
            await wait_until(lambda: seen and seen[-1][0] == breaker.seq, timeout=120)
        results.put(("report", os.getpid(), seen, str(breaker.state), rejected))


def fallback_worker(*args: Any) -> None:
    """Redis goes away: the local breaker must still trip after the threshold."""
    _run(_fallback_worker, *args)


async def _fallback_worker(
    url: str, name: str, options: dict[str, Any], go: Any, results: Any
) -> None:
    async with await connect(url, "fallback") as cache:
        breaker = cache.breaker(name, **options)
        await breaker.sync()
        results.put(("ready", os.getpid()))
        await wait_event(go)  # the test stopped Redis before setting it
        hits, slowest, outcome = 0, 0.0, "never opened"

        async def downstream() -> None:
            nonlocal hits
            hits += 1
            raise Boom

        for _ in range(3 * options["failure_threshold"]):
            started = time.monotonic()
            try:
                await breaker.call(downstream)
            except Boom:
                pass
            except CircuitOpen:
                outcome = "open"
                break
            finally:
                slowest = max(slowest, time.monotonic() - started)
        results.put(("done", os.getpid(), hits, outcome, breaker.fallback, slowest))


# --- idempotency ---------------------------------------------------------------------------------


def order_content(seed: int) -> dict[str, Any]:
    """The same order, written differently by each process (key order, number forms)."""
    rng = random.Random(seed)
    items = [
        ("symbol", "BTC/USDT"),
        ("side", "buy"),
        ("type", "limit"),
        ("amount", rng.choice([Decimal("0.5"), Decimal("0.50"), 0.5])),
        ("price", rng.choice([Decimal("60000"), 60000, Decimal("6E+4"), 60000.0])),
        ("clientOrderId", "strategy-7-0001"),
    ]
    if seed % 2:
        items.append(("reduceOnly", None))  # None is the same as absent
    rng.shuffle(items)
    return dict(items)


def submit_worker(*args: Any) -> None:
    """32-process scenario: everyone submits the same order at once."""
    _run(_submit_worker, *args)


async def _submit_worker(
    url: str, namespace: str, counter: str, index: int, go: Any, results: Any
) -> None:
    async with await connect(url, namespace) as cache:
        idem = cache.idempotency("orders", in_flight_ttl=30)
        await cache.ping()
        results.put(("ready", os.getpid()))
        await wait_event(go)
        ran = False

        async def submit() -> dict[str, str]:
            nonlocal ran
            ran = True
            await cache.client.incr(counter)  # the side effect, counted outside
            await asyncio.sleep(0.2)  # the exchange takes its time: duplicates find it in flight
            return {"exchangeId": "ex-42", "by": str(os.getpid())}

        wait = 120.0 if index % 2 else None  # half of them wait for the result
        try:
            result = await idem.run(order_content(index), submit, wait=wait)
        except InProgress:
            results.put(("in_progress", os.getpid(), None))
            return
        results.put(("ran" if ran else "replayed", os.getpid(), result))


def executor_worker(*args: Any) -> None:
    """Claims the order, reports it is inside the call, then hangs until SIGKILLed."""
    _run(_executor_worker, *args)


async def _executor_worker(
    url: str, namespace: str, counter: str, in_flight_ttl: float, results: Any
) -> None:
    async with await connect(url, namespace) as cache:
        idem = cache.idempotency("orders", in_flight_ttl=in_flight_ttl)

        async def submit() -> str:
            await cache.client.incr(counter)
            results.put(("in_call", os.getpid(), time.monotonic()))
            await asyncio.Event().wait()  # never answers: killed here
            return "never"

        await idem.run(order_content(0), submit)


def retry_worker(*args: Any) -> None:
    """After the executor died: retry the same order, waiting for the outcome."""
    _run(_retry_worker, *args)


async def _retry_worker(
    url: str, namespace: str, counter: str, in_flight_ttl: float, index: int, results: Any
) -> None:
    async with await connect(url, namespace) as cache:
        idem = cache.idempotency("orders", in_flight_ttl=in_flight_ttl)
        started: list[float] = []

        async def submit() -> str:
            started.append(time.monotonic())
            await cache.client.incr(counter)
            await asyncio.sleep(0.1)
            return "placed-by-retry"

        result = await idem.run(order_content(index), submit, wait=120)
        results.put(("retried", os.getpid(), result, started[0] if started else None))
