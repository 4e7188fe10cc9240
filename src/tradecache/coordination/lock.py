"""Distributed locks with fencing tokens, renewal, loss detection and push handoff.

``cache.lock(name, ttl=10, wait=None, renew=True, on_lost=None)`` returns a
:class:`Lock`; entering it grants a :class:`Lease`::

    async with cache.lock("rebalance", ttl=10) as lease:
        lease.fence                  # int, strictly increasing over every grant of "rebalance"
        lease.ensure_held()          # raises LockLost once the lease may have run out
        await lease.fenced_set(key, value)   # rejected if a newer fence already wrote `key`
        if lease.lost.is_set(): ...  # an asyncio.Event; on_lost=callback runs once too

Guarantees (each one fixes a fault of the existing Python locks):

* **Ownership is the lease's.** Every acquisition gets its own random 128-bit
  token; release and renewal are Lua compare-and-act on it. A :class:`Lock`
  object holds no ownership state, so two tasks sharing one cannot release
  each other's lease.
* **Fencing.** ``lease.fence`` comes from the acquire script:
  ``fence = max(previous fence + 1, server time in µs, floor + 1)``. It
  strictly increases over every grant of the name while the counter key (no
  TTL) exists, and across a restart with persistence. If the counter is lost
  (evicted under an ``allkeys-*`` policy, a restart without fsync, a failover
  to a replica that missed the last grants) the server clock, the fence's
  epoch, keeps fences above every earlier one, unless that clock is behind by
  more than the lost interval; ``floor``, the highest fence of the name this
  process has seen, keeps this process's own fences rising even then.
* **Bounded lease, renewed.** A TTL is mandatory. With ``renew=True`` a
  watchdog renews at ``ttl/3`` on a dedicated connection (never starved by a
  busy pool). The holder keeps a local monotonic deadline
  (``ttl - 1% - 2 ms`` after it *sent* the last successful acquire or renewal):
  once it passes, the lease is lost even if Redis is unreachable, ``lost`` is
  set, ``on_lost`` runs, and ``ensure_held()`` raises :class:`LockLost`.
  A renewal that finds another token (or none) reports the loss at once.
* **Loss is reported, never hidden.** Leaving ``async with`` raises
  :class:`LockLost` if the lease was lost while the block ran (unless the
  block raised itself).
* **Push handoff, FIFO.** A waiter subscribes (one shared pub/sub connection
  per cache, subscriptions kept for the next wait), then tries; the failed
  try queues it atomically. The release script hands the lock to the oldest
  waiter in the same step (new fence, the waiter's TTL) and publishes to it:
  no thundering herd, no retry round trip, no starvation. A handoff whose
  waiter left is handed on. Every wait is bounded by the remaining TTL the
  failed try returned (and by ``ttl/2``), so a lost message costs at most one
  slice: the next try finds the lock already granted to it. A handed-over
  lease counts its TTL from the waiter's last try (a safe lower bound).
  ``wait=None`` blocks, ``wait=0`` tries once, ``wait=s`` raises
  :class:`WaitTimeout` after ``s``.
* **Cancellation-safe.** Acquire and release commands run as shielded
  tasks; an acquire cancelled (or failed) after the command may have run is
  followed by a token-checked release in the background, so cancellation
  never strands a lock. An uncontended acquire + release is 2 round trips.
* **Cluster-safe.** The lease, its fence counter, its waiter queue and its
  channels share the ``{name}`` hash tag.

Limits: this is a Redis lock (efficiency, plus safety *through fencing*), not
a consensus lock. Replication is asynchronous: a failover may lose a lease
(two holders until the old one notices); fenced writes stay safe.
``wait_replicas=n`` grants a lease only once ``n`` replicas confirmed it
(``WAIT`` on the connection of the grant), else releases it and raises
:class:`~tradecache.errors.NotReplicated`: such a lease survives the
failover of its master (see the operations guide, "Failover"). An eviction
policy other than ``noeviction`` may evict a live lease (``cache.health()``
warns). Locks are not reentrant: acquiring a lock the same task holds waits.
If a waiting process dies just as the lock is handed to it, that lease
expires after the waiter's TTL, like any crashed holder's.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import EllipsisType, TracebackType
from typing import Any, Final, TypeVar, cast

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from .._tasks import cancel_and_wait
from ..connection import send_commands
from ..context import Context
from ..errors import (
    ConnectionLost,
    LockLost,
    NotReplicated,
    TradecacheError,
    ValidationError,
    WaitTimeout,
    redis_errors,
)
from ..keys import validate_part
from ..metrics import instrumented
from ..replication import check_replicas, refresh_routing, run_replicated
from ..scripts import Script

__all__ = ["Fenced", "Lease", "Lock", "LockHolder", "LockManager", "LockSpec"]

log = logging.getLogger(__name__)

ACQUIRE: Final = Script("lock_acquire", include=("lock",))
RENEW: Final = Script("lock_renew")
RELEASE: Final = Script("lock_release", include=("lock",))
LEAVE: Final = Script("lock_leave", include=("lock",))
FENCED_SET: Final = Script("lock_fenced_set")

T = TypeVar("T")
OnLost = Callable[["Lease"], object]

# The local deadline is this much shorter than the TTL: clock drift between the
# client's monotonic clock and the server's expiry clock (Redlock's allowance).
_DRIFT_FACTOR: Final = 0.01
_DRIFT_MIN: Final = 0.002
# A waiter re-tries this long after the holder's TTL should have run out.
_SLICE_MARGIN: Final = 0.001
# Locks whose last fence a LockManager remembers.
_MAX_FENCES: Final = 10_000
# How long close() lets background releases finish.
_CLOSE_GRACE: Final = 2.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise ValidationError("ttl", "must be a number of seconds")
    if not math.isfinite(ttl) or ttl < 0.01:
        raise ValidationError("ttl", "must be a finite number of seconds >= 0.01")
    return float(ttl)


def _check_wait(wait: object) -> float | None:
    if wait is None:
        return None
    if isinstance(wait, bool) or not isinstance(wait, int | float):
        raise ValidationError("wait", "must be None or a number of seconds")
    if math.isnan(wait) or wait < 0:
        raise ValidationError("wait", "must be None or a number of seconds >= 0")
    return None if math.isinf(wait) else float(wait)


@dataclass(frozen=True, slots=True)
class LockSpec:
    """The keys of one lock: lease hash, fence counter, waiter queue, wake-up channel prefix.

    ``index`` (optional) is a sorted set in the same slot that the scripts keep
    in step with the lease (``member`` scored by its expiry in server ms): the
    bot claims use it to list claims without a SCAN.
    """

    name: str
    key: str
    fence_key: str
    queue: str
    channel: str
    index: str | None = None
    member: str = ""

    @property
    def keys(self) -> list[str]:
        """``KEYS`` of the acquire, release and leave scripts."""
        keys = [self.key, self.fence_key, self.queue]
        return [*keys, self.index] if self.index else keys

    @property
    def renew_keys(self) -> list[str]:
        """``KEYS`` of the renew script."""
        return [self.key, self.index] if self.index else [self.key]


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds a lock now: ``owner``, ``fence``, and ``ttl`` seconds left."""

    owner: str
    fence: int
    ttl: float


@dataclass(frozen=True, slots=True)
class Fenced:
    """A value written by :meth:`Lease.fenced_set`, with the fence it was written under."""

    value: bytes
    fence: int


def _connection_for(
    client: Any, key: str | None, name: str, failures: int = 0
) -> AbstractConnection:
    """A new, unpooled connection like the client's (to ``key``'s node on a Cluster).

    Without a key, a Cluster connection goes to the default node, or, after
    ``failures`` failed connections in a row, to the next known node in turn:
    a dead default node (a failover) is only replaced when a command of the
    client fails on it, which may never happen.
    """
    if isinstance(client, RedisCluster):
        if key is not None:
            found = client.get_node_from_key(key)
        elif failures:
            nodes = client.get_nodes()
            found = nodes[failures % len(nodes)]
        else:
            found = client.get_default_node()
        node = cast("ClusterNode", found)
        cls, kwargs = node.connection_class, node.connection_kwargs
    else:
        pool = client.connection_pool
        cls, kwargs = pool.connection_class, pool.connection_kwargs
    base = kwargs.get("client_name") or "tradecache"
    connection: AbstractConnection = cls(**{**kwargs, "client_name": f"{base}:{name}"})
    return connection


class _Link:
    """A dedicated connection running one command at a time (lease renewals).

    Duck-types the ``evalsha``/``eval`` a :class:`~tradecache.scripts.Script`
    needs. It reconnects on the next command after a failure.
    """

    __slots__ = ("_connection", "_mutex")

    def __init__(self, connection: AbstractConnection) -> None:
        self._connection = connection
        self._mutex = asyncio.Lock()

    async def execute_command(self, *args: Any) -> Any:
        async with self._mutex:
            try:
                await send_commands(self._connection, args)
                return await self._connection.read_response()
            except ResponseError:
                raise  # a complete error reply: the connection is still in step
            except BaseException:
                # Cancelled or failed mid-command: a late reply would be read by
                # the next command, so start over on a fresh connection.
                await self._connection.disconnect(nowait=True)
                raise

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return await self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    async def eval(self, source: str, numkeys: int, *keys_and_args: Any) -> Any:
        return await self.execute_command("EVAL", source, numkeys, *keys_and_args)

    async def aclose(self) -> None:
        await self._connection.disconnect(nowait=True)


class _Waiter:
    """A waiting acquisition: woken by ``event``; ``fence`` is set when handed the lock."""

    __slots__ = ("event", "fence")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.fence: int | None = None


class _Channel:
    __slots__ = ("ready", "spec", "waiters")

    def __init__(self, spec: LockSpec) -> None:
        self.spec = spec
        self.waiters: dict[str, _Waiter] = {}  # by token
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class _WakeHub:
    """One pub/sub connection shared by every waiter of a :class:`LockManager`.

    A waiting process listens on ``<lock channel prefix>:<hub id>``; the
    release script hands the lock to the oldest waiter and publishes
    ``<token>:<fence>`` there, and the hub wakes that waiter. A channel stays
    subscribed after its last waiter left (the ``max_idle`` most recent
    ones), so the next wait on that lock needs no SUBSCRIBE round trip.

    A reader task owns the connection: it reconnects with backoff,
    resubscribes every channel, and wakes all waiters whenever it
    (re)subscribes or loses the connection, since a handoff message may have
    been missed meanwhile (a woken waiter's try finds the lock already its
    own). A writer task sends SUBSCRIBE/UNSUBSCRIBE in the order they were
    asked for. An idle connection is probed with PING, so a silently dead
    peer is noticed.
    """

    max_idle = 64  # subscribed channels kept without waiters (least recently used go)

    def __init__(
        self,
        connect: Callable[[int], AbstractConnection],
        idle: float,
        orphan: Callable[[LockSpec, str], object],
    ) -> None:
        self.id = secrets.token_hex(6)
        self._connect = connect
        self._orphan = orphan  # called for a handoff whose waiter is gone: hand it on
        self._idle = idle
        self._channels: dict[bytes, _Channel] = {}
        self._idle_channels: dict[bytes, None] = {}  # no waiters, oldest first
        self._outstanding: dict[bytes, int] = {}  # SUBSCRIBEs sent, not yet acknowledged
        self._queue: asyncio.Queue[tuple[bytes, ...] | None] = asyncio.Queue()
        self._connection: AbstractConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._down = False
        self._heard = False
        self._failures = 0  # connections lost in a row (picks the node on a Cluster)
        self.connects = 0

    @property
    def channels(self) -> int:
        """How many channels are subscribed (with or without waiters)."""
        return len(self._channels)

    @property
    def waiting(self) -> int:
        """How many waiters are registered."""
        return sum(len(entry.waiters) for entry in self._channels.values())

    def live(self, prefix: str) -> bool:
        """True when this lock's channel is subscribed and acknowledged on a live connection."""
        entry = self._channels.get(f"{prefix}:{self.id}".encode())
        return entry is not None and entry.ready.done() and self._connection is not None

    def waiter(self, token: str, ttl_ms: int, owner: str) -> str:
        """The queue entry of a waiter of this hub (what a handoff needs to grant it)."""
        return f"{self.id}:{token}:{ttl_ms}:{owner}"

    async def watch(self, spec: LockSpec, token: str, waiter: _Waiter, ack_wait: float) -> None:
        """Wake ``waiter`` when a release hands it the lock; wait (bounded) for the subscription."""
        name = f"{spec.channel}:{self.id}".encode()
        entry = self._channels.get(name)
        if entry is None:
            entry = self._channels[name] = _Channel(spec)
            if self._task is None:
                self._task = asyncio.create_task(self._run(), name="tradecache-lock-wake")
            elif self._connection is not None:
                self._send(b"SUBSCRIBE", name)
        self._idle_channels.pop(name, None)
        entry.waiters[token] = waiter
        if ack_wait > 0 and not entry.ready.done() and not self._down:
            await asyncio.wait([entry.ready], timeout=ack_wait)

    def unwatch(self, prefix: str, token: str) -> None:
        """Forget ``token``; past ``max_idle`` idle channels, unsubscribe the oldest."""
        name = f"{prefix}:{self.id}".encode()
        entry = self._channels.get(name)
        if entry is None or entry.waiters.pop(token, None) is None:
            return
        if entry.waiters:
            return
        self._idle_channels[name] = None
        while len(self._idle_channels) > self.max_idle:
            oldest = next(iter(self._idle_channels))
            del self._idle_channels[oldest], self._channels[oldest]
            if self._connection is not None:
                self._send(b"UNSUBSCRIBE", oldest)

    def _send(self, *command: bytes) -> None:
        if command[0] == b"SUBSCRIBE":
            for name in command[1:]:
                self._outstanding[name] = self._outstanding.get(name, 0) + 1
        self._queue.put_nowait(command)

    async def _run(self) -> None:
        delay = 0.05
        while True:
            connection = self._connect(self._failures)
            writer: asyncio.Task[None] | None = None
            try:
                await connection.connect()  # type: ignore[no-untyped-call]
                self.connects += 1
                self._failures = -1  # this node worked: the next loss tries it once more
                self._down = False
                delay = 0.05
                writer = asyncio.create_task(self._write(connection))
                await self._read(connection)
            except Exception as exc:
                log.debug("lock wake-up connection failed: %r", exc, extra={"error": repr(exc)})
            finally:
                self._connection = None
                if writer is not None:  # a failed send also breaks the read: we get here
                    self._queue.put_nowait(None)
                    await asyncio.gather(writer, return_exceptions=True)
                await connection.disconnect(nowait=True)
            self._failures += 1
            self._lost()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _lost(self) -> None:
        # Waiters stop waiting for acks and retry now: a release may have been
        # missed. Until we are back they wait in TTL slices.
        self._down = True
        self._outstanding.clear()
        self._queue = asyncio.Queue()  # unsent commands: resubscribing replaces them
        for entry in self._channels.values():
            self._wake_all(entry)

    @staticmethod
    def _wake_all(entry: _Channel) -> None:
        if not entry.ready.done():
            entry.ready.set_result(None)
        for waiter in entry.waiters.values():
            waiter.event.set()

    async def _write(self, connection: AbstractConnection) -> None:
        # Stopped by a None in the queue, not by cancel() (see send_commands).
        while (command := await self._queue.get()) is not None:
            await send_commands(connection, command)

    async def _read(self, connection: AbstractConnection) -> None:
        self._connection = connection
        names = list(self._channels)
        for entry in self._channels.values():  # not live until acknowledged again
            if entry.ready.done():
                entry.ready = asyncio.get_running_loop().create_future()
        self._outstanding = {}
        if names:
            self._send(b"SUBSCRIBE", *names)
        prober = asyncio.create_task(self._probe(connection))
        try:
            while True:
                reply = await connection.read_response(timeout=math.inf, disconnect_on_error=False)
                self._heard = True
                self._dispatch(reply)
        finally:
            prober.cancel()
            await asyncio.gather(prober, return_exceptions=True)

    async def _probe(self, connection: AbstractConnection) -> None:
        # Silence for `idle` seconds sends a PING; silence for as long again means
        # the peer is gone (a half-open TCP connection reads nothing, forever):
        # closing the connection makes the reader fail and reconnect.
        while True:
            self._heard = False
            await asyncio.sleep(self._idle)
            if self._heard:
                continue
            self._queue.put_nowait((b"PING",))
            await asyncio.sleep(self._idle)
            if not self._heard:
                await connection.disconnect(nowait=True)
                return

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return  # PONG
        kind = _text(reply[0])
        name = reply[1] if isinstance(reply[1], bytes) else _text(reply[1]).encode()
        if kind == "subscribe":
            left = self._outstanding.get(name, 1) - 1
            if left > 0:
                self._outstanding[name] = left
                return
            self._outstanding.pop(name, None)
        entry = self._channels.get(name)
        if entry is None:
            return
        if kind == "message":
            token, _, fence = _text(reply[2]).partition(":")
            waiter = entry.waiters.get(token)
            if waiter is None:
                self._orphan(entry.spec, token)  # its waiter left: hand the lock on
            else:
                waiter.fence = int(fence)
                waiter.event.set()
        elif kind == "subscribe":
            self._wake_all(entry)  # (re)subscribed: anything published before was missed

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


class LockManager:
    """The lock machinery of one cache: scripts, renewal links, the wake-up hub.

    ``cache.lock(...)`` uses the cache's manager; stores that hold leases (bot
    claims) are handed it. Build one by hand with a context::

        locks = LockManager(cache.context)
        async with locks.lock("x") as lease: ...
        await locks.aclose()
    """

    def __init__(self, ctx: Context, *, wake_idle: float | None = None) -> None:
        self.ctx = ctx
        # Silence on the wake-up connection for this long sends a PING; no answer
        # within as long again counts as a dead connection.
        self.wake_idle = wake_idle or max(5.0, 10 * ctx.settings.socket_timeout)
        self.client = ctx.client
        self.metrics = ctx.metrics
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        # Names its dedicated connections (CLIENT LIST shows ...:lock-renew:<id>).
        self.id = secrets.token_hex(4)
        self._links: dict[str, _Link] = {}
        self._hub: _WakeHub | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._holding: dict[str, Lease] = {}  # this process's live leases, by token
        # The highest fence seen per lock key (most recent last): the floor of the next
        # fence this process asks for, so its fences rise even if a failover lost the
        # counter and the promoted server's clock is behind.
        self._fences: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<LockManager {self.ctx.keys.namespace!r} background={len(self._tasks)}>"

    def lock(
        self,
        name: str,
        ttl: float = 10.0,
        wait: float | None = None,
        renew: bool = True,
        on_lost: OnLost | None = None,
        *,
        owner: str | None = None,
        wait_replicas: int | None = None,
    ) -> Lock:
        """A :class:`Lock` named ``name`` (see :meth:`tradecache.Cache.lock`).

        Example::

            async with locks.lock("rebalance", ttl=5, wait=1) as lease:
                await lease.fenced_set(cache.keys.key("plan", "current"), plan_json)
        """
        keys = self.ctx.keys
        validate_part(name, "name")
        spec = LockSpec(
            name=name, key=keys.lock(name), fence_key=keys.lock_fence(name),
            queue=keys.lock_queue(name), channel=keys.lock_channel(name),
        )  # fmt: skip
        return Lock(
            self, spec, ttl=ttl, wait=wait, renew=renew, on_lost=on_lost, owner=owner,
            wait_replicas=wait_replicas,
        )  # fmt: skip

    # --- fenced writes ---------------------------------------------------------------------

    async def fenced_set(
        self, key: str, value: bytes | str | int | float, fence: int, ttl: float | None = None
    ) -> tuple[bool, int]:
        """Write ``value`` to ``key`` unless a newer fence already wrote it.

        ``key`` becomes a hash (``value``, ``fence``); equal fences may write
        again. Returns ``(written, fence now stored)``. Most code calls
        :meth:`Lease.fenced_set`, which raises instead.

        Example::

            written, stored = await locks.fenced_set("prod:plan", b"...", lease.fence)
        """
        if ttl is not None:
            ttl = _check_ttl(ttl)
        ttl_ms = 0 if ttl is None else max(1, round(ttl * 1000))
        reply = await FENCED_SET(self.client, [key], [fence, value, ttl_ms])
        return reply[0] == 1, int(reply[1])

    @redis_errors
    async def fenced_get(self, key: str) -> Fenced | None:
        """The value and fence a fenced write left at ``key``, or ``None``.

        Example::

            current = await locks.fenced_get("prod:plan")   # Fenced(value=b'...', fence=17)
        """
        value, fence = await self.client.hmget(key, ["value", "fence"])
        if value is None or fence is None:
            return None
        return Fenced(value=value if isinstance(value, bytes) else value.encode(), fence=int(fence))

    # --- internals shared by Lock and Lease ------------------------------------------------

    @property
    def hub(self) -> _WakeHub:
        """The shared wake-up subscriber (it connects on the first contended acquire).

        Example: ``cache.locks.hub.waiting  # waiters of this process``
        """
        if self._hub is None:
            self._hub = _WakeHub(
                lambda failures: _connection_for(
                    self.client, None, f"lock-wake:{self.id}", failures
                ),
                idle=self.wake_idle,
                orphan=self._orphaned,
            )
        return self._hub

    def _link(self, key: str) -> _Link:
        """The dedicated renewal connection for ``key`` (one per Cluster node)."""
        if isinstance(self.client, RedisCluster):
            name = cast("ClusterNode", self.client.get_node_from_key(key)).name
        else:
            name = ""
        found = self._links.get(name)
        if found is None:
            connection = _connection_for(self.client, key, f"lock-renew:{self.id}")
            found = self._links[name] = _Link(connection)
        return found

    async def _renew(self, spec: LockSpec, token: str, ttl_ms: int) -> bool:
        """Extend the lease ``token`` holds, on the dedicated link; False if it is gone."""
        try:
            reply = await RENEW(self._link(spec.key), spec.renew_keys, [token, ttl_ms, spec.member])
        except ConnectionLost:
            # A failover? The link goes to the key's node as the client knows it:
            # make the client re-read the slot table, so the next renewal finds the
            # promoted replica.
            await refresh_routing(self.client, spec.key)
            raise
        return bool(reply == 1)

    async def _release(self, spec: LockSpec, token: str) -> bool:
        """Delete the lease if ``token`` still holds it and wake the waiters."""
        reply = await RELEASE(self.client, spec.keys, [token, spec.channel, spec.member])
        return bool(reply == 1)

    def _orphaned(self, spec: LockSpec, token: str) -> None:
        # A handoff for a waiter that is gone: release it to the next waiter,
        # unless the waiter got the lock by its own try meanwhile (then it is ours).
        if token not in self._holding:
            self._spawn(self._leave(spec, token, ""))

    async def _leave(self, spec: LockSpec, token: str, waiter: str) -> bool:
        """Undo what a wait may have left behind: the queue entry, a handoff to ``token``.

        Then, if the lock is free, it goes to the oldest waiter (True when so).
        """
        args = [token, waiter, spec.channel, spec.member]
        return bool(await LEAVE(self.client, spec.keys, args) == 1)

    def _saw(self, key: str, fence: int) -> None:
        """Remember ``fence`` as seen for the lock ``key`` (bounded: the oldest go first)."""
        fences = self._fences
        fence = max(fence, fences.pop(key, 0))
        fences[key] = fence
        if len(fences) > _MAX_FENCES:
            del fences[next(iter(fences))]

    def _spawn(self, awaitable: Awaitable[T]) -> asyncio.Task[T]:
        """Run ``awaitable`` in the background; kept alive and awaited by :meth:`aclose`."""
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._settled)
        return task

    def _shielded(self, awaitable: Awaitable[T]) -> tuple[asyncio.Task[T], asyncio.Future[T]]:
        """Run ``awaitable`` in the background; the future gets its outcome when it ends.

        ``await future`` is ``await asyncio.shield(task)`` (cancelling the caller
        leaves the task running) minus one event-loop round: the task settles the
        future in its own last step, not from a done callback that settles
        another future.
        """
        outcome: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        async def run() -> T:
            try:
                result = await awaitable
            except asyncio.CancelledError:
                outcome.cancel()  # a no-op once the caller stopped waiting
                raise
            except BaseException as exc:
                if not outcome.done():
                    outcome.set_exception(exc)
                raise
            if not outcome.done():
                outcome.set_result(result)
            return result

        return self._spawn(run()), outcome

    def _settled(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug(
                "background lock task failed: %r",
                task.exception(),
                extra={"error": repr(task.exception())},
            )

    async def aclose(self) -> None:
        """Release the leases still held, let background releases finish (briefly), then
        close the dedicated connections.

        Whoever held a lease is going away with this manager and could not renew it:
        handing it back spares the others the wait for its TTL.
        ``Cache.close()`` calls it. Example: ``await locks.aclose()``
        """
        for lease in list(self._holding.values()):
            self._spawn(lease.release())
        deadline = time.monotonic() + _CLOSE_GRACE
        # A task that ends may start another (the release compensating a cancelled
        # acquire): wait for those too, or they would be cancelled before they ran.
        while self._tasks and (left := deadline - time.monotonic()) > 0:
            _, pending = await asyncio.wait(list(self._tasks), timeout=left)
            if pending:
                break
        for task in list(self._tasks):
            task.cancel()
        if self._hub is not None:
            await self._hub.aclose()
        for link in self._links.values():
            await link.aclose()
        self._links.clear()


class Lease:
    """One grant of a lock. Ownership (the token) lives here, never in the :class:`Lock`.

    Attributes: ``name``, ``owner``, ``fence`` (int, strictly increasing per
    name), ``ttl``, ``lost`` (:class:`asyncio.Event`), ``lost_reason``.
    A lease is an async context manager that releases it::

        lease = await cache.lock("x").acquire()
        async with lease:
            lease.ensure_held()
    """

    __slots__ = (
        "_deadline",
        "_lock",
        "_released",
        "_timer",
        "_watchdog",
        "fence",
        "granted_at",
        "lost",
        "lost_reason",
        "metrics",
        "name",
        "owner",
        "token",
        "ttl",
    )

    def __init__(self, lock: Lock, token: str, fence: int, granted_at: float) -> None:
        self._lock = lock
        self.name = lock.name
        self.owner = lock.owner
        self.token = token
        self.fence = fence
        self.ttl = lock.ttl
        self.granted_at = granted_at
        self.metrics = lock.metrics
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self._released = False
        lock.manager._holding[token] = self
        lock.manager._saw(lock.spec.key, fence)
        self._deadline = granted_at + lock.lifetime
        self._watchdog: asyncio.Task[None] | None = None
        if lock.renew:
            # One timer, not a task, until the first renewal is due (most leases are
            # released before): it fires before the deadline and arms that timer.
            delay = max(0.0, granted_at + self.ttl / 3 - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._start_watchdog)
        else:
            self._timer = self._schedule_expiry()

    def __repr__(self) -> str:
        state = "released" if self._released else "lost" if self.lost.is_set() else "held"
        return f"<Lease {self.name!r} fence={self.fence} owner={self.owner!r} {state}>"

    # --- state -----------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        """True while neither released nor lost, and the local deadline has not passed.

        Example: ``if not lease.held: return``
        """
        return not self._released and not self.lost.is_set() and self.remaining() > 0

    def remaining(self) -> float:
        """Seconds until the local deadline (negative once passed).

        Example: ``if lease.remaining() < 1: checkpoint()``
        """
        return self._deadline - time.monotonic()

    def ensure_held(self) -> None:
        """Raise :class:`LockLost` unless the lease is still held.

        Call it before each step that needs exclusion; it costs no round trip.

        Example::

            for chunk in work:
                lease.ensure_held()
                await process(chunk)
        """
        if not self._released and not self.lost.is_set() and self.remaining() <= 0:
            self._lose("the local deadline passed before a renewal succeeded", cleanup=True)
        if not self.held:
            why = "it was released" if self._released else self.lost_reason
            raise LockLost(f"lock {self.name!r} (fence {self.fence}) is not held: {why}")

    # --- renewal ---------------------------------------------------------------------------

    async def renew(self) -> None:
        """Extend the lease by its TTL now; raises :class:`LockLost` if it is gone.

        The watchdog does this on its own; call it with ``renew=False``.

        Example: ``await lease.renew()``
        """
        self.ensure_held()
        started = time.monotonic()
        if not await self._lock.manager._renew(self._lock.spec, self.token, self._lock.ttl_ms):
            self._lose("the lease expired or was taken over", cleanup=False)
        self._extend(started)
        self.ensure_held()  # also lost or released while the renewal was under way

    def _start_watchdog(self) -> None:
        if self.remaining() <= 0:
            # The loop stalled past the deadline (a pause, SIGSTOP): lost now, before
            # anything else this turn of the loop runs, not one timer later.
            self._expired()
            return
        self._timer = self._schedule_expiry()
        self._watchdog = asyncio.create_task(
            self._renew_loop(), name=f"tradecache-lock-renew:{self.name}"
        )

    async def _renew_loop(self) -> None:
        interval = self.ttl / 3
        due = time.monotonic()
        while True:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if self._released:
                return  # released, and the cancel() of _stop was dropped (see send_commands)
            started = time.monotonic()
            try:
                renewed = await self._lock.manager._renew(
                    self._lock.spec, self.token, self._lock.ttl_ms
                )
            except TradecacheError as exc:
                # Transient (or so we hope): try again soon. If Redis stays away,
                # the local deadline declares the loss, not this loop.
                log.debug(
                    "renewal of lock %r failed: %r",
                    self.name,
                    exc,
                    extra={"lock": self.name, "fence": self.fence},
                )
                due = time.monotonic() + interval / 4
                continue
            if not renewed:
                self._lose("the lease expired or was taken over", cleanup=False)
                return
            self._extend(started)
            due = started + interval

    def _extend(self, started: float) -> None:
        if self._released or self.lost.is_set():
            return
        self._deadline = started + self._lock.lifetime
        self._timer.cancel()
        if self._lock.renew and self._watchdog is None:  # renewed by hand before the watchdog
            delay = max(0.0, started + self.ttl / 3 - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._start_watchdog)
        else:
            self._timer = self._schedule_expiry()

    def _schedule_expiry(self) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, self.remaining()), self._expired)

    def _expired(self) -> None:
        self._lose("the local deadline passed before a renewal succeeded", cleanup=True)

    def _stop(self) -> None:
        self._timer.cancel()
        watchdog = self._watchdog
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()
        self._watchdog = None

    def _lose(self, reason: str, *, cleanup: bool) -> None:
        if not self.lost.is_set() and not self._released:
            self._report_lost(reason, cleanup=cleanup)

    def _report_lost(self, reason: str, *, cleanup: bool) -> None:
        self._lock.manager._holding.pop(self.token, None)
        self.lost_reason = reason
        self.lost.set()
        self._stop()
        held_for = time.monotonic() - self.granted_at
        self.metrics.observe("lock.lost", held_for, error=True)
        log.warning(
            "lock %r (fence %d) lost after %.3fs: %s",
            self.name,
            self.fence,
            held_for,
            reason,
            extra={"lock": self.name, "fence": self.fence, "reason": reason},
        )
        manager = self._lock.manager
        if cleanup:
            # A renewal may have landed after our deadline: the key could still be
            # ours, and nobody would use it. The release only deletes our token.
            manager._spawn(manager._release(self._lock.spec, self.token))
        callback = self._lock.on_lost
        if callback is None:
            return
        try:
            result = callback(self)
            if inspect.isawaitable(result):
                manager._spawn(result)
        except Exception:
            log.exception(
                "on_lost callback of lock %r failed",
                self.name,
                extra={"lock": self.name, "fence": self.fence},
            )

    # --- fenced writes ---------------------------------------------------------------------

    async def fenced_set(
        self, key: str, value: bytes | str | int | float, ttl: float | None = None
    ) -> None:
        """Write ``value`` to ``key`` under this lease's fence; the server is the judge.

        ``key`` (a full Redis key, any slot) becomes a hash (``value``, ``fence``).
        If a write with a newer fence already happened, nothing is written, the
        lease is marked lost and :class:`LockLost` is raised: a paused holder
        whose lease ran out cannot overwrite its successor's work.
        Read it back with ``await locks.fenced_get(key)``.

        Example::

            async with cache.lock("plan") as lease:
                await lease.fenced_set(cache.keys.key("plan", "current"), plan_json)
        """
        written, stored = await self._lock.manager.fenced_set(key, value, self.fence, ttl)
        if not written:
            self._lose(f"a write with the newer fence {stored} happened", cleanup=False)
            raise LockLost(f"stale fence {self.fence} < {stored} for {key!r}: write rejected")

    # --- release ---------------------------------------------------------------------------

    async def release(self) -> bool:
        """Release the lease; True if it was held right up to this release.

        Cancellation-safe: once called, the release completes in the
        background even if the caller is cancelled. It only ever deletes this
        lease's token. A second call returns False.

        Example::

            lease = await lock.acquire()
            try: ...
            finally:
                await lease.release()
        """
        if self._released:
            return False
        if not self.lost.is_set() and self.remaining() <= 0:
            self._lose("the local deadline passed before a renewal succeeded", cleanup=False)
        self._stop()
        self._released = True
        manager = self._lock.manager
        started = time.perf_counter()
        _, outcome = manager._shielded(manager._release(self._lock.spec, self.token))
        try:
            deleted = await outcome
        except TradecacheError:
            self.metrics.observe("lock.release", time.perf_counter() - started, error=True)
            raise
        finally:
            manager._holding.pop(self.token, None)
        self.metrics.observe("lock.release", time.perf_counter() - started)
        if not deleted and not self.lost.is_set():
            self._report_lost("the lease was gone when it was released", cleanup=False)
        return deleted and not self.lost.is_set()

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            held = await self.release()
        except TradecacheError as error:
            if exc_type is None:
                raise
            log.warning(
                "release of lock %r failed: %r",
                self.name,
                error,
                extra={"lock": self.name, "fence": self.fence},
            )
            return
        if not held and exc_type is None:
            raise LockLost(
                f"lock {self.name!r} (fence {self.fence}) was lost while held: {self.lost_reason}"
            )


class Lock:
    """A named lock: a factory of :class:`Lease` objects, safe to share between tasks.

    Build it with ``cache.lock(name, ttl=10, wait=None, renew=True, on_lost=None)``.
    ``async with lock as lease`` acquires (waiting as ``wait`` says) and
    releases; ``await lock.acquire()`` returns a lease to release yourself.

    Example::

        lock = cache.lock("rebalance", ttl=5, wait=2)
        async with lock as lease:
            print(lease.fence)
    """

    def __init__(
        self,
        manager: LockManager,
        spec: LockSpec,
        *,
        ttl: float = 10.0,
        wait: float | None = None,
        renew: bool = True,
        on_lost: OnLost | None = None,
        owner: str | None = None,
        wait_replicas: int | None = None,
    ) -> None:
        self.manager = manager
        self.metrics = manager.metrics
        self.spec = spec
        self.name = spec.name
        self.ttl = _check_ttl(ttl)
        self.ttl_ms = max(1, round(self.ttl * 1000))
        self.lifetime = self.ttl - (self.ttl * _DRIFT_FACTOR + _DRIFT_MIN)
        self.wait = _check_wait(wait)
        self.renew = bool(renew)
        self.on_lost = on_lost
        self.owner = manager.owner if owner is None else validate_part(owner, "owner")
        settings = manager.ctx.settings
        self.wait_replicas = check_replicas(
            settings.wait_replicas if wait_replicas is None else wait_replicas
        )
        self.wait_replicas_timeout = settings.wait_replicas_timeout
        self._entered: dict[asyncio.Task[Any] | None, list[Lease]] = {}

    def __repr__(self) -> str:
        return f"<Lock {self.name!r} ttl={self.ttl} wait={self.wait} renew={self.renew}>"

    # --- acquire ---------------------------------------------------------------------------

    @instrumented("lock.acquire")
    async def acquire(self, wait: float | EllipsisType | None = ...) -> Lease:
        """Acquire a new lease; ``wait`` overrides the lock's (None blocks, 0 tries once).

        Raises :class:`WaitTimeout` when the wait runs out, and
        :class:`~tradecache.errors.ConnectionLost` when Redis is unreachable.

        Example::

            lease = await cache.lock("x", ttl=5).acquire(wait=1.5)
            async with lease:
                ...
        """
        lease, owner = await self.try_acquire(self.wait if wait is ... else _check_wait(wait))
        if lease is None:
            raise WaitTimeout(f"lock {self.name!r} is held by {owner!r}")
        return lease

    async def try_acquire(self, wait: float | None = 0) -> tuple[Lease | None, str | None]:
        """``(lease, None)`` when granted, else ``(None, owner of the lock)``; never raises on wait.

        Example::

            lease, holder = await lock.try_acquire()
            if lease is None:
                print("busy, held by", holder)
        """
        wait = _check_wait(wait)
        token = secrets.token_hex(16)
        if wait == 0:
            lease, _, owner = await self._attempt(token, "")
            return lease, owner
        hub = self.manager.hub
        waiter = hub.waiter(token, self.ttl_ms, self.owner)
        if not hub.live(self.spec.channel):
            # The uncontended path: one try, no subscription. With a live one (this
            # process waited for the lock before) the first try queues us too.
            lease, _, owner = await self._attempt(token, "")
            if lease is not None:
                return lease, None
        deadline = math.inf if wait is None else time.monotonic() + wait
        lease = None
        woken = _Waiter()
        try:
            # Subscribe (and wait for the ack) before the try that queues us, so a
            # handoff right after that try still reaches us.
            ack_timeout = min(deadline - time.monotonic(), self.manager.ctx.settings.socket_timeout)
            await hub.watch(self.spec, token, woken, ack_timeout)
            while True:
                woken.event.clear()
                sent = time.monotonic()
                lease, ttl_left, owner = await self._attempt(token, waiter)
                if lease is not None:
                    return lease, None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, owner
                # Handed the lock by a release, or woken when the holder's TTL ran out.
                # A slice is at most ttl/2: a handoff counts our TTL from our last try.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(ttl_left, remaining, self.ttl / 2)):
                        await woken.event.wait()
                if woken.fence is not None:
                    # The release granted it to us (no later than our last try was sent).
                    if not self.wait_replicas:
                        lease = Lease(self, token, woken.fence, sent)
                        return lease, None
                    # The releaser's write is not ours to WAIT for: the next try finds
                    # the lock ours and writes (PEXPIRE), and WAIT covers everything before.
                    woken.fence = None
        finally:
            hub.unwatch(self.spec.channel, token)
            if lease is None:  # leave the queue; a handoff we missed goes to the next waiter
                self.manager._spawn(self.manager._leave(self.spec, token, waiter))

    async def _attempt(self, token: str, waiter: str) -> tuple[Lease | None, float, str | None]:
        """One acquire script call: ``(lease, 0, None)`` or ``(None, seconds left, owner)``.

        A non-empty ``waiter`` queues the caller when the lock is taken.
        """
        manager = self.manager
        started = time.monotonic()
        floor = manager._fences.get(self.spec.key, 0)
        args: list[str | int] = [token, self.ttl_ms, self.owner, self.spec.member, waiter, floor]
        if self.wait_replicas:
            call = run_replicated(
                manager.client, self.spec.key, ACQUIRE, self.spec.keys, args,
                replicas=self.wait_replicas, timeout=self.wait_replicas_timeout,
            )  # fmt: skip
        else:
            call = ACQUIRE(manager.client, self.spec.keys, args)
        task, outcome = manager._shielded(call)
        try:
            try:
                reply = await outcome
            except NotReplicated as exc:
                if exc.reply[0] == 1:
                    raise  # granted, but a failover could lose it: released below
                reply = exc.reply  # not granted: nothing to confirm
        except asyncio.CancelledError:
            # The script may run (or have run) anyway: release whatever it granted.
            task.add_done_callback(lambda done: self._compensate(done, token))
            raise
        except TradecacheError:
            manager._spawn(manager._release(self.spec, token))  # the outcome is unknown
            raise
        if reply[0] == 1:
            return Lease(self, token, int(reply[1]), started), 0.0, None
        pttl = int(reply[1])
        ttl_left = pttl / 1000 if pttl >= 0 else self.ttl
        owner = None if reply[2] is None else _text(reply[2])
        return None, ttl_left + _SLICE_MARGIN, owner

    def _compensate(self, task: asyncio.Task[Any], token: str) -> None:
        if not task.cancelled() and task.exception() is None and task.result()[0] != 1:
            return  # not granted: nothing to undo
        self.manager._spawn(self.manager._release(self.spec, token))

    # --- context manager -------------------------------------------------------------------

    async def __aenter__(self) -> Lease:
        lease = await self.acquire()
        self._entered.setdefault(asyncio.current_task(), []).append(lease)
        return lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = asyncio.current_task()
        stack = self._entered[task]
        lease = stack.pop()
        if not stack:
            del self._entered[task]
        await lease.__aexit__(exc_type, exc, tb)

    # --- inspection ------------------------------------------------------------------------

    @redis_errors
    async def holder(self) -> LockHolder | None:
        """Who holds the lock now, or ``None`` when it is free (one round trip).

        Example: ``info = await lock.holder(); info.owner, info.fence, info.ttl``
        """
        pipe = self.manager.client.pipeline(transaction=False)
        pipe.hmget(self.spec.key, ["owner", "fence"])
        pipe.pttl(self.spec.key)
        (owner, fence), pttl = await pipe.execute()
        if owner is None or fence is None:
            return None
        return LockHolder(owner=_text(owner), fence=int(fence), ttl=max(0, pttl) / 1000)

    @redis_errors
    async def locked(self) -> bool:
        """True when someone (anyone) holds the lock.

        Example: ``if await cache.lock("x").locked(): ...``
        """
        return bool(await self.manager.client.exists(self.spec.key))
