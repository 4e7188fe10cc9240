"""The self-check suite: is this Redis fit for tradecache? (``tradecache check``).

Runs a short series of checks against a server and returns a :class:`Report`::

    from tradecache.testing import selfcheck

    report = await selfcheck.run("redis://10.0.0.5:6379/0")
    if not report.ok:
        for check in report.failures:
            print(check.name, check.detail)
    print(report.success_rate, report.timings["load_p99_ms"], report.warnings)

    report = selfcheck.run_sync("redis://10.0.0.5:6379/0")   # from plain (sync) code

The checks, in order:

* ``connection``: connect within the latency budget (``Cache.connect``);
* ``namespace``: the check's namespace holds no key yet (else nothing is written);
* ``server``: version (6.2 or later), mode, node count, PING round trip;
* ``memory``: used memory, ``maxmemory`` and ``maxmemory-policy``; a policy that
  may evict keys without a TTL (locks, claims, queued orders) or memory over 80 %
  of ``maxmemory`` is a *warning*, not a failure;
* ``basic ops``: SET/GET/INCR/HSET/PTTL/UNLINK and a ticker store round trip;
* ``pub/sub``: publish -> receive through ``cache.events`` (sharded on a Cluster
  of Redis 7);
* ``stream``: ``cache.orders`` submit (twice: idempotent) -> consume -> ack, and
  nothing left pending;
* ``lock``: ``cache.lock`` is exclusive and its fences increase;
* ``latency``: a short load (``load`` SET/GET calls from ``concurrency`` tasks),
  reported as p50/p90/p99/max and calls per second;
* ``cluster slots``: on a Cluster, ``CLUSTER SLOTS`` covers 0..16383 and
  ``cluster_state`` is ok (skipped on a standalone server);
* ``cleanup``: every key of the namespace is gone again.

**Isolation.** Everything is written under a fresh namespace
``tcselfcheck-<random>`` (or ``namespace=``: it must be empty, and is then
deleted at the end): keys, streams and channels all carry that prefix. At the
end, whatever happened, the namespace is removed with ``SCAN`` + ``UNLINK`` on
every primary, never ``FLUSHDB``. A check that fails or hangs past ``timeout``
seconds is reported as failed and the run goes on.

**Sync or async.** :func:`run` is a coroutine (use it from async code and
tests); :func:`run_sync` wraps it in ``asyncio.run`` for scripts and the CLI and
must not be called from a running event loop.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster

from ..cache import Cache, Health
from ..connection import redact_url
from ..coordination.events import Event
from ..errors import ValidationError
from ..metrics import Histogram

__all__ = [
    "Check",
    "CheckFailed",
    "Report",
    "iter_keys",
    "run",
    "run_sync",
    "slot_gaps",
    "unlink_prefix",
]

CLUSTER_SLOTS: Final = 16384
MIN_VERSION: Final = (6, 2, 0)
MEMORY_WARNING: Final = 0.8  # share of maxmemory above which a warning is given
_TOPIC: Final = "selfcheck"
_EXCHANGE: Final = "selfcheck"


class CheckFailed(Exception):
    """A check found something wrong; its message becomes the check's detail."""


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one check: ``duration`` in seconds, ``detail`` for humans.

    A skipped check (``skipped=True``, e.g. cluster slots on a standalone
    server) is ``ok`` and does not count in the success rate.
    """

    name: str
    ok: bool
    duration: float
    detail: str
    skipped: bool = False


@dataclass(slots=True)
class Report:
    """What :func:`run` found.

    ``timings`` holds round trips and the load's latency percentiles in
    milliseconds (``ping_ms``, ``pubsub_ms``, ``stream_ms``, ``lock_ms``,
    ``load_p50_ms`` ... ``load_max_ms``) and ``load_ops_per_s``.

    Example::

        report = await selfcheck.run(url)
        print(report.to_json())
        raise SystemExit(0 if report.ok else 1)
    """

    url: str
    namespace: str
    mode: str = "unknown"
    version: str = "unknown"
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    duration: float = 0.0

    @property
    def counted(self) -> list[Check]:
        """The checks that ran (not skipped). Example: ``len(report.counted)``"""
        return [check for check in self.checks if not check.skipped]

    @property
    def failures(self) -> list[Check]:
        """The checks that failed. Example: ``[c.name for c in report.failures]``"""
        return [check for check in self.checks if not check.ok]

    @property
    def ok(self) -> bool:
        """True when every check that ran passed (warnings do not count).

        Example: ``raise SystemExit(0 if report.ok else 1)``
        """
        return bool(self.checks) and not self.failures

    @property
    def success_rate(self) -> float:
        """Passed checks / checks that ran, between 0.0 and 1.0.

        Example: ``f"{report.success_rate:.0%}"``
        """
        counted = self.counted
        return sum(check.ok for check in counted) / len(counted) if counted else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``ok`` and ``success_rate`` included).

        Example: ``json.dumps(report.to_dict())``
        """
        return {
            "ok": self.ok,
            "success_rate": round(self.success_rate, 4),
            "url": self.url,
            "namespace": self.namespace,
            "mode": self.mode,
            "version": self.version,
            "duration": round(self.duration, 6),
            "checks": [asdict(check) for check in self.checks],
            "timings": {name: round(value, 4) for name, value in self.timings.items()},
            "warnings": list(self.warnings),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text.

        Example: ``print(report.to_json())``
        """
        return json.dumps(self.to_dict(), indent=indent)


def describe(exc: BaseException) -> str:
    """One line for a failure: the message, prefixed by the type unless it is ours.

    >>> describe(CheckFailed("fence did not increase"))
    'fence did not increase'
    >>> describe(KeyError("x"))
    "KeyError: 'x'"
    """
    if isinstance(exc, CheckFailed):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def slot_gaps(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The slot ranges of 0..16383 that no range in ``ranges`` covers.

    >>> slot_gaps([(0, 5460), (5461, 10922), (10923, 16383)])
    []
    >>> slot_gaps([(0, 99), (200, 16383)])
    [(100, 199)]
    >>> slot_gaps([])
    [(0, 16383)]
    """
    gaps = []
    start = 0
    for low, high in sorted(ranges):
        if low > start:
            gaps.append((start, low - 1))
        start = max(start, high + 1)
    if start < CLUSTER_SLOTS:
        gaps.append((start, CLUSTER_SLOTS - 1))
    return gaps


def _nodes(client: Any) -> list[Any]:
    return list(client.get_primaries()) if isinstance(client, RedisCluster) else [None]


async def iter_keys(client: Any, pattern: str, *, count: int = 1000) -> AsyncIterator[bytes]:
    """Every key matching ``pattern``, with ``SCAN`` on every primary of a Cluster.

    Read-only. Example::

        async for key in iter_keys(cache.client, cache.keys.all_pattern()):
            print(key)
    """
    for node in _nodes(client):
        cursor: int = 0
        while True:
            if node is None:
                cursor, keys = await client.scan(cursor, match=pattern, count=count)
            else:
                reply, keys = await client.scan(
                    cursor, match=pattern, count=count, target_nodes=node
                )
                cursor = next(iter(reply.values()))
            for key in keys:
                yield key
            if not cursor:
                break


async def unlink_prefix(client: Any, prefix: str, *, batch: int = 500) -> int:
    """``SCAN`` + ``UNLINK`` every key starting with ``prefix`` (every primary); the count.

    ``prefix`` must be a namespace's key prefix (``"<ns>:"``): glob characters
    are not escaped, and namespaces cannot contain them.

    Example: ``await unlink_prefix(cache.client, cache.keys.prefix)``
    """
    removed = 0
    pending: list[bytes] = []
    async for key in iter_keys(client, prefix + "*"):
        pending.append(key)
        if len(pending) >= batch:
            removed += int(await client.unlink(*pending))
            pending.clear()
    if pending:
        removed += int(await client.unlink(*pending))
    return removed


class _Run:
    """The state of one self-check run: the cache, the report, the budget."""

    def __init__(self, cache: Cache, report: Report, timeout: float) -> None:
        self.cache = cache
        self.report = report
        self.timeout = timeout
        self.health: Health | None = None

    async def check(self, name: str, body: Callable[[], Awaitable[str | None]]) -> Check:
        """Run ``body`` within the budget; ``None`` from it means skipped."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                detail = await body()
        except TimeoutError:
            result = Check(
                name, False, time.perf_counter() - started, f"timed out after {self.timeout:g}s"
            )
        except Exception as exc:
            result = Check(name, False, time.perf_counter() - started, describe(exc))
        else:
            elapsed = time.perf_counter() - started
            if detail is None:
                result = Check(name, True, elapsed, "not a Redis Cluster", skipped=True)
            else:
                result = Check(name, True, elapsed, detail)
        self.report.checks.append(result)
        return result

    # --- the checks ----------------------------------------------------------------------------

    async def namespace(self) -> str:
        async for key in iter_keys(self.cache.client, self.cache.keys.all_pattern()):
            raise CheckFailed(
                f"namespace {self.cache.keys.namespace!r} is not empty (holds {key.decode()!r}):"
                " nothing written"
            )
        return f"{self.cache.keys.namespace!r} is empty"

    async def server(self) -> str:
        self.health = health = await self.cache.health()
        self.report.mode = health.mode
        self.report.version = health.version
        self.report.timings["ping_ms"] = health.latency_ms
        self.report.warnings.extend(health.warnings)
        detail = (
            f"Redis {health.version}, {health.mode}, {health.nodes} node(s), "
            f"PING {health.latency_ms:.2f} ms"
        )
        _expect(self.cache.server_version >= MIN_VERSION, f"{detail}: older than 6.2")
        return detail

    async def memory(self) -> str:
        health = self.health or await self.cache.health()
        self.report.warnings.extend(memory_warnings(health.used_memory, health.maxmemory))
        limit = "no maxmemory" if not health.maxmemory else f"maxmemory {_size(health.maxmemory)}"
        return f"used {_size(health.used_memory)}, {limit}, policy {health.maxmemory_policy}"

    async def basic_ops(self) -> str:
        client: Any = self.cache.client
        keys = self.cache.keys
        key, counter, hashed = (keys.key("selfcheck", "basic", part) for part in ("s", "n", "h"))
        value = secrets.token_hex(8).encode()
        await client.set(key, value, px=60_000)
        _expect(await client.get(key) == value, "GET did not return what SET wrote")
        _expect(await client.incr(counter) == 1, "INCR of a new key did not return 1")
        await client.hset(hashed, mapping={"a": "1", "b": "2"})
        _expect(await client.hgetall(hashed) == {b"a": b"1", b"b": b"2"}, "HGETALL mismatch")
        ttl = await client.pttl(key)
        _expect(0 < ttl <= 60_000, f"PTTL {ttl} is not within the 60 s given")
        _expect(await client.unlink(key, counter, hashed) == 3, "UNLINK did not remove 3 keys")
        ticker = {"symbol": "SELF/CHECK", "bid": 1.0, "ask": 1.1, "last": 1.05}
        await self.cache.tickers.set(ticker, exchange=_EXCHANGE)
        stored = await self.cache.tickers.get(_EXCHANGE, "SELF/CHECK")
        _expect(stored is not None and stored.last == 1.05, "ticker round trip mismatch")
        return "SET/GET/INCR/HSET/PTTL/UNLINK and tickers.set/get"

    async def pubsub(self) -> str:
        bus = self.cache.events
        nonce = secrets.token_hex(8)
        async with bus.subscribe(_TOPIC, backfill=False) as sub:
            started = time.perf_counter()
            seq = await bus.publish(_TOPIC, {"nonce": nonce}, type="selfcheck")
            item = await sub.get(timeout=self.timeout)
            elapsed = time.perf_counter() - started
        _expect(isinstance(item, Event), f"received {item!r}, not an event")
        assert isinstance(item, Event)
        _expect(item.seq == seq, f"received seq {item.seq}, published {seq}")
        _expect(item.payload == {"nonce": nonce}, "received a different payload")
        self.report.timings["pubsub_ms"] = elapsed * 1000
        kind = "sharded pub/sub" if bus.sharded else "pub/sub"
        return f"publish -> receive {elapsed * 1000:.2f} ms ({kind}, seq {seq})"

    async def stream(self) -> str:
        orders = self.cache.orders
        order = {
            "id": "selfcheck-1",
            "clientOrderId": "selfcheck-1",
            "symbol": "SELF/CHECK",
            "side": "buy",
            "type": "limit",
            "amount": "1",
            "price": "1",
        }
        started = time.perf_counter()
        entry = await orders.submit(order, exchange=_EXCHANGE)
        _expect(await orders.submit(order, exchange=_EXCHANGE) == entry, "submit not idempotent")
        received = []
        async for delivery in orders.consume("selfcheck", "selfcheck-1", count=10, block=0):
            received.append((delivery.id, delivery.item.id))
            await delivery.ack()
        elapsed = time.perf_counter() - started
        _expect(received == [(entry, "selfcheck-1")], f"consumed {received}, expected [{entry}]")
        pending = await orders.pending("selfcheck")
        _expect(pending == 0, f"{pending} entries still pending after ack")
        self.report.timings["stream_ms"] = elapsed * 1000
        return f"submit (x2, idempotent) -> consume -> ack {elapsed * 1000:.2f} ms"

    async def lock(self) -> str:
        cache = self.cache
        started = time.perf_counter()
        async with cache.lock("selfcheck", ttl=5, wait=self.timeout) as lease:
            first = lease.fence
            # renew=False, short TTL: a (broken) second grant would expire on its own
            other, holder = await cache.lock("selfcheck", ttl=1, renew=False).try_acquire(0)
            _expect(other is None, "a second lease was granted while the first was held")
        async with cache.lock("selfcheck", ttl=5, wait=self.timeout) as lease:
            second = lease.fence
        elapsed = time.perf_counter() - started
        _expect(second > first, f"fence went from {first} to {second}")
        self.report.timings["lock_ms"] = elapsed * 1000
        return f"exclusive (busy for a second taker, held by {holder}), fences increase"

    async def latency(self, load: int, concurrency: int) -> str:
        client: Any = self.cache.client
        keys = [self.cache.keys.key("selfcheck", "load", str(i)) for i in range(16)]
        histogram = Histogram()
        payload = b"x" * 64
        calls = iter(range(load))
        loop = asyncio.get_running_loop()
        # The load stops itself within the budget: on Python 3.11 a client passed in
        # writes through asyncio.wait_for, which can swallow the budget's cancellation.
        limit = 0.8 * self.timeout
        deadline = loop.time() + limit

        async def worker() -> None:
            for n in calls:
                if loop.time() > deadline:
                    return
                key = keys[n % len(keys)]
                started = time.perf_counter()
                if n % 2:
                    await client.get(key)
                else:
                    await client.set(key, payload, px=60_000)
                histogram.record(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        _expect(
            histogram.count == load,
            f"only {histogram.count} of {load} calls done within {limit:g}s",
        )
        timings = {f"load_p{q}_ms": histogram.percentile(q) for q in (50, 90, 99)}
        timings["load_max_ms"] = histogram.max_us / 1000
        timings["load_ops_per_s"] = load / elapsed
        self.report.timings.update(timings)
        return (
            f"{load} SET/GET from {concurrency} tasks: p50 {timings['load_p50_ms']:.2f} ms, "
            f"p99 {timings['load_p99_ms']:.2f} ms, max {timings['load_max_ms']:.2f} ms, "
            f"{timings['load_ops_per_s']:,.0f}/s"
        )

    async def cluster_slots(self) -> str | None:
        client = self.cache.client
        if not isinstance(client, RedisCluster):
            return None
        slots = await client.cluster_slots(target_nodes=RedisCluster.RANDOM)
        info = await client.cluster_info(target_nodes=RedisCluster.RANDOM)
        return cluster_verdict(list(slots), str(info.get("cluster_state")))

    async def cleanup(self) -> str:
        removed = await unlink_prefix(self.cache.client, self.cache.keys.prefix)
        left = [key async for key in iter_keys(self.cache.client, self.cache.keys.all_pattern())]
        _expect(not left, f"{len(left)} key(s) still there after cleanup: {left[:3]}")
        return f"removed {removed} key(s) of {self.cache.keys.namespace!r}"


def cluster_verdict(ranges: list[tuple[int, int]], state: str) -> str:
    """The cluster-slots detail, or :class:`CheckFailed` for gaps or a bad state.

    >>> cluster_verdict([(0, 8191), (8192, 16383)], "ok")
    'all 16384 slots covered by 2 range(s), cluster_state ok'
    """
    gaps = slot_gaps(ranges)
    if gaps:
        missing = sum(high - low + 1 for low, high in gaps)
        shown = ", ".join(f"{low}-{high}" for low, high in gaps[:5])
        raise CheckFailed(f"{missing} slot(s) not covered: {shown}")
    if state != "ok":
        raise CheckFailed(f"cluster_state is {state}")
    return f"all {CLUSTER_SLOTS} slots covered by {len(ranges)} range(s), cluster_state ok"


def memory_warnings(used: int, maxmemory: int) -> list[str]:
    """A warning when ``used`` is above 80 % of a set ``maxmemory``.

    >>> memory_warnings(900, 1000)
    ['memory at 90% of maxmemory (900 B of 1000 B)']
    >>> memory_warnings(900, 0)
    []
    """
    if maxmemory and used >= MEMORY_WARNING * maxmemory:
        return [
            f"memory at {used / maxmemory:.0%} of maxmemory ({_size(used)} of {_size(maxmemory)})"
        ]
    return []


def _size(n: int) -> str:
    """Bytes for humans.

    >>> _size(512), _size(1536), _size(3 * 2**30)
    ('512 B', '1.5 KiB', '3.0 GiB')
    """
    if n < 1024:
        return f"{n} B"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


async def run(
    url: str | None = None,
    *,
    namespace: str | None = None,
    load: int = 500,
    concurrency: int = 8,
    timeout: float = 5.0,  # noqa: ASYNC109 - a budget per check, not for the whole call
    **overrides: Any,
) -> Report:
    """Run the self-check suite against ``url`` (default: ``Settings()``, i.e. ``REDIS_URL``).

    ``namespace`` defaults to a fresh ``tcselfcheck-<random>``; a given one
    must be empty. ``load``/``concurrency`` size the latency check;
    ``timeout`` bounds each check (seconds). Other keywords are
    :class:`~tradecache.config.Settings` overrides (``socket_timeout=2`` ...).
    Never raises for a server problem: an unreachable server gives a report
    with a failed ``connection`` check.

    Example::

        report = await run("redis+cluster://10.0.0.5:7000")
        assert report.ok, [c.detail for c in report.failures]
    """
    if load < 1 or concurrency < 1 or not timeout > 0:
        raise ValidationError("load", "load and concurrency must be >= 1, timeout > 0")
    namespace = namespace or f"tcselfcheck-{secrets.token_hex(6)}"
    report = Report(url=redact_url(url) if url else "(from the environment)", namespace=namespace)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            cache = await Cache.connect(url, namespace=namespace, **overrides)
    except Exception as exc:
        elapsed = time.perf_counter() - started
        detail = f"timed out after {timeout:g}s" if isinstance(exc, TimeoutError) else describe(exc)
        report.checks.append(Check("connection", False, elapsed, detail))
        report.duration = elapsed
        return report
    report.url = redact_url(cache.settings.url)
    report.checks.append(
        Check("connection", True, time.perf_counter() - started, f"{report.url} ({cache.mode})")
    )
    try:
        state = _Run(cache, report, timeout)
        if (await state.check("namespace", state.namespace)).ok:
            await _checks(state, load, concurrency)
            await state.check("cleanup", state.cleanup)
    finally:
        await cache.close()
    report.duration = time.perf_counter() - started
    return report


async def _checks(state: _Run, load: int, concurrency: int) -> None:
    await state.check("server", state.server)
    await state.check("memory", state.memory)
    await state.check("basic ops", state.basic_ops)
    await state.check("pub/sub", state.pubsub)
    await state.check("stream", state.stream)
    await state.check("lock", state.lock)
    await state.check("latency", lambda: state.latency(load, concurrency))
    await state.check("cluster slots", state.cluster_slots)


def run_sync(url: str | None = None, **kwargs: Any) -> Report:
    """:func:`run` for synchronous code (``asyncio.run``); not from inside an event loop.

    Example: ``print(run_sync("redis://localhost:6379/0").to_json())``
    """
    return asyncio.run(run(url, **kwargs))
