"""Worker processes for the multi-process probes: lock handoff and Cluster scaling.

A :class:`Pool` spawns ``n`` processes (multiprocessing "spawn"), each
connected to one server with its own :class:`~tradecache.cache.Cache` (the
namespace of the run), and sends them commands; a phase may use the first
``k`` workers only. Two commands exist:

* ``("lock", kind, name, grants, hold_s, think_s, start_at)``: take the lock
  ``grants`` times (``kind``: ``"ours"`` or ``"redis-py"``), returns
  ``(grants, cpu_seconds)`` with ``(pid, requested, acquired, released)`` per grant;
* ``("ring", procs, name, grants, hold_s, think_s, start_at)``: the floor of a
  handoff. Worker ``i`` of the first ``procs`` takes a token from its channel
  and, after holding it, passes it to worker ``i + 1`` (mod ``procs``) with a
  bare ``PUBLISH``; one ``PING`` round trip per grant stands for a lock's
  queueing try. Connections are opened (AUTH, TLS, unix socket as the URL says)
  by redis-py, then used as raw asyncio streams: no client library, no script
  on the path, so the gaps are what process scheduling alone costs. Returns
  what ``"lock"`` returns;
* ``("ops", op, side, start_at, duration)``: run ``op`` (``tickers.set``,
  ``tickers.get``, ``lock``) as ``side`` (``"ours"`` or ``"raw"``) for
  ``duration`` seconds from ``start_at`` (``time.monotonic()``, system-wide on
  Linux), returns ``(operations, µs per call)``.

Example::

    with Pool(4, url, namespace) as pool:
        replies = pool.run(2, ("ops", "tickers.set", "ours", time.monotonic() + 0.2, 1.0))
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import queue
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Final

import msgspec
from redis.asyncio.lock import Lock as RedisPyLock

from ..cache import Cache
from ..errors import TradecacheError
from ..models import Ticker, dec_hook, enc_hook, utc_now
from .harness import percentile

__all__ = ["OPS", "Pool", "WorkerError", "handoff_stats", "pass_token", "resp", "serve"]

SPAWN: Final = multiprocessing.get_context("spawn")
OPS: Final = ("tickers.set", "tickers.get", "lock")
EXCHANGE: Final = "binance"
_RELEASE: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_encode = msgspec.json.Encoder(enc_hook=enc_hook).encode
_decode_ticker = msgspec.json.Decoder(Ticker, dec_hook=dec_hook).decode


class WorkerError(TradecacheError, RuntimeError):
    """A worker process failed, or did not answer in time (``tradecache bench`` prints it)."""


def _ops(cache: Cache, index: int) -> dict[tuple[str, str], Callable[[], Awaitable[None]]]:
    """The ``(op, side)`` callables of worker ``index``: its own symbol, lock and raw keys."""
    client: Any = cache.client
    symbol = f"W{index}/USDT"
    now = utc_now()
    ticker = Ticker(symbol=symbol, exchange=EXCHANGE, timestamp=now, received=now, last=1.0)
    payload = _encode(ticker)
    raw_hash = cache.keys.key("bench-raw", EXCHANGE)
    raw_channel = cache.keys.channel("bench-raw", EXCHANGE)
    lock = cache.lock(f"scaling-{index}", ttl=10)
    lock_key = cache.keys.key("bench-raw", f"lock-{index}")
    release = client.register_script(_RELEASE)

    async def ours_set() -> None:
        await cache.tickers.set(ticker)

    async def raw_set() -> None:  # redis-py's cluster pipeline refuses PUBLISH
        await client.hset(raw_hash, symbol, payload)
        await client.publish(raw_channel, payload)

    async def ours_get() -> None:
        await cache.tickers.get(EXCHANGE, symbol)

    async def raw_get() -> None:
        _decode_ticker(await client.hget(raw_hash, symbol))

    async def ours_lock() -> None:
        async with lock:
            pass

    async def raw_lock() -> None:
        token = os.urandom(16).hex()
        await client.set(lock_key, token, nx=True, px=30_000)
        await release(keys=[lock_key], args=[token])

    return {
        ("tickers.set", "ours"): ours_set,
        ("tickers.set", "raw"): raw_set,
        ("tickers.get", "ours"): ours_get,
        ("tickers.get", "raw"): raw_get,
        ("lock", "ours"): ours_lock,
        ("lock", "raw"): raw_lock,
    }


async def _until(start_at: float) -> None:
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))


async def _run_ops(
    ops: dict[tuple[str, str], Callable[[], Awaitable[None]]],
    op: str,
    side: str,
    start_at: float,
    duration: float,
) -> tuple[int, list[float]]:
    call = ops[op, side]
    await _until(start_at)
    samples: list[float] = []
    end = start_at + duration
    now = time.monotonic()
    while not samples or now < end:  # at least one call, even when the command came late
        await call()
        after = time.monotonic()
        samples.append((after - now) * 1e6)
        now = after
    return len(samples), samples


async def _run_lock(
    cache: Cache,
    kind: str,
    name: str,
    grants: int,
    hold: float,
    think: float,
    start_at: float,
) -> tuple[list[tuple[int, float, float, float]], float]:
    if kind == "ours":
        lock: Any = cache.lock(name, ttl=10)
    else:
        key = cache.keys.key("bench-raw", name)
        lock = RedisPyLock(cache.client, key, timeout=10, sleep=0.1, thread_local=False)
    out = []
    await _until(start_at)
    cpu = time.process_time()
    for _ in range(grants):
        requested = time.monotonic()
        async with lock:
            acquired = time.monotonic()
            await asyncio.sleep(hold)
            released = time.monotonic()
        out.append((os.getpid(), requested, acquired, released))
        await asyncio.sleep(think)
    return out, time.process_time() - cpu


def resp(*args: bytes) -> bytes:
    """One command in RESP, an array of bulk strings (what redis-py would send).

    Example: ``resp(b"PING") == b"*1\\r\\n$4\\r\\nPING\\r\\n"``
    """
    return b"".join([b"*%d\r\n" % len(args), *(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)])


async def pass_token(reader: asyncio.StreamReader, writer: Any, publish: bytes) -> None:
    """Send the ``publish`` command until a subscriber heard it (``:0``: the next one is late).

    A token published before the next process of the ring subscribed would be
    lost (and the ring stuck): a process that comes late to the start is
    waited for, 1 ms at a time.

    Example: ``await pass_token(reader, writer, resp(b"PUBLISH", channel, b"go"))``
    """
    writer.write(publish)
    while await reader.readline() == b":0\r\n":
        await asyncio.sleep(0.001)
        writer.write(publish)


async def _run_ring(
    cache: Cache,
    index: int,
    procs: int,
    name: str,
    grants: int,
    hold: float,
    think: float,
    start_at: float,
) -> tuple[list[tuple[int, float, float, float]], float]:
    channel = cache.keys.channel
    mine = channel("bench-raw", name, str(index)).encode()
    publish = resp(b"PUBLISH", channel("bench-raw", name, str((index + 1) % procs)).encode(), b"go")
    ping, pong, message = resp(b"PING"), len(b"+PONG\r\n"), len(resp(b"message", mine, b"go"))
    client: Any = cache.client  # standalone: the bench refuses a Cluster URL
    pool = client.connection_pool
    sub, command = pool.make_connection(), pool.make_connection()
    try:
        await sub.connect()  # the handshake by redis-py, then raw streams only
        await command.connect()
        sub_reader, reader, writer = sub._reader, command._reader, command._writer
        sub._writer.write(resp(b"SUBSCRIBE", mine))
        await sub_reader.readexactly(len(resp(b"subscribe", mine)) + len(b":1\r\n"))
        out = []
        await _until(start_at)
        cpu = time.process_time()
        for grant in range(grants):
            requested = time.monotonic()
            writer.write(ping)  # the lock's queueing try: one round trip
            await reader.readexactly(pong)
            if grant or index:  # worker 0 holds the token first
                await sub_reader.readexactly(message)
            acquired = time.monotonic()
            await asyncio.sleep(hold)
            released = time.monotonic()
            if grant < grants - 1 or index < procs - 1:  # worker 0 is done: the ring ends
                await pass_token(reader, writer, publish)
            out.append((os.getpid(), requested, acquired, released))
            await asyncio.sleep(think)
        return out, time.process_time() - cpu
    finally:
        await sub.disconnect()
        await command.disconnect()


async def serve(url: str, namespace: str, index: int, inbox: Any, outbox: Any) -> None:
    """A worker's loop: connect, warm up, answer commands until ``None`` arrives.

    Replies go to ``outbox`` as ``("ready", index)``, ``("ok", result)`` or
    ``("error", text)``. Runs in a spawned process (see :class:`Pool`) or,
    for tests, in a thread with ``queue.Queue`` boxes.

    Example: ``asyncio.run(serve(url, "tcbench-1", 0, inbox, outbox))``
    """
    try:  # many processes connect at once on a loaded machine: a generous connect timeout
        async with Cache.connect(url, namespace=namespace, connect_timeout=10.0) as cache:
            ops = _ops(cache, index)
            for call in ops.values():  # warm up: scripts loaded, keys exist
                await call()
            outbox.put(("ready", index))
            while (command := await asyncio.to_thread(inbox.get)) is not None:
                if command[0] == "lock":
                    result: Any = await _run_lock(cache, *command[1:])
                elif command[0] == "ring":
                    result = await _run_ring(cache, index, *command[1:])
                else:
                    result = await _run_ops(ops, *command[1:])
                outbox.put(("ok", result))
    except Exception as exc:
        outbox.put(("error", f"worker {index}: {exc!r}"))


def _worker(url: str, namespace: str, index: int, inbox: Any, outbox: Any) -> None:
    asyncio.run(serve(url, namespace, index, inbox, outbox))


class Pool:
    """``n`` spawned workers on ``url`` in ``namespace``; always stopped on exit.

    Example::

        with Pool(16, url, namespace) as pool:
            replies = pool.run(16, ("lock", "ours", "handoff", 30, 0.002, 0.005, start_at))
    """

    def __init__(self, n: int, url: str, namespace: str, timeout: float = 300.0) -> None:
        self.timeout = timeout
        self._outbox: Any = SPAWN.Queue()
        self._inboxes: list[Any] = [SPAWN.Queue() for _ in range(n)]
        self._processes = [
            SPAWN.Process(target=_worker, args=(url, namespace, i, inbox, self._outbox))
            for i, inbox in enumerate(self._inboxes)
        ]

    def __enter__(self) -> Pool:
        try:
            for process in self._processes:
                process.start()
            self._collect(len(self._processes))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _collect(self, n: int) -> list[Any]:
        replies: list[Any] = []
        deadline = time.monotonic() + self.timeout
        while len(replies) < n:
            if time.monotonic() >= deadline:
                raise WorkerError(f"no reply from the workers within {self.timeout} s")
            try:
                status, value = self._outbox.get(timeout=0.5)
            except queue.Empty:
                dead = [p.exitcode for p in self._processes if p.exitcode is not None]
                if dead:
                    raise WorkerError(f"no reply (workers exited: {dead})") from None
                continue
            if status == "error":
                raise WorkerError(value)
            replies.append(value)
        return replies

    def run(self, n: int, command: tuple[Any, ...]) -> list[Any]:
        """Send ``command`` to the first ``n`` workers; their results, in arrival order.

        Example: ``pool.run(2, ("ops", "lock", "raw", time.monotonic() + 0.2, 0.5))``
        """
        for inbox in self._inboxes[:n]:
            inbox.put(command)
        return self._collect(n)

    def close(self) -> None:
        """Ask every worker to stop, then kill any still running after 10 s.

        Example: ``pool.close()``
        """
        for inbox in self._inboxes:
            inbox.put(None)
        for process in self._processes:
            if process.pid is not None:
                process.join(10)
                if process.is_alive():  # pragma: no cover - only a stuck worker
                    process.kill()
                    process.join()


def handoff_stats(
    replies: Sequence[tuple[list[tuple[int, float, float, float]], float]],
) -> dict[str, float]:
    """Throughput, handoff gaps (release -> next process's grant) and waits of a lock run.

    Times in ms, except ``throughput`` (grants/s); ``overlaps`` counts grants
    that began before the previous one ended (0 for a correct lock).

    Example: ``handoff_stats(pool.run(16, ("lock", ...)))["gap_p99"]``
    """
    rows = sorted((row for grants, _ in replies for row in grants), key=lambda row: row[2])
    cpu = sum(seconds for _, seconds in replies)
    pairs = list(itertools.pairwise(rows))
    gaps = [(after[2] - before[3]) * 1000 for before, after in pairs if before[0] != after[0]]
    waits = [(row[2] - row[1]) * 1000 for row in rows]
    span = rows[-1][3] - rows[0][2]
    return {
        "throughput": len(rows) / span,
        "gap_p50": percentile(gaps, 50) or 0.0,
        "gap_p99": percentile(gaps, 99) or 0.0,
        "wait_p99": percentile(waits, 99) or 0.0,
        "wait_max": max(waits),
        "cpu_per_grant": cpu / len(rows) * 1000,
        "overlaps": sum(1 for before, after in pairs if after[2] < before[3]),
    }
