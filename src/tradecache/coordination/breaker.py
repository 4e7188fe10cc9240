"""A circuit breaker whose state every process shares, with a local fallback.

``cache.breaker(name, ...)`` returns the :class:`CircuitBreaker` of that name
(one instance per name and cache)::

    breaker = cache.breaker("binance-rest", failure_threshold=5, window=60, reset_timeout=30)

    async with breaker:                      # raises CircuitOpen while open
        await exchange.create_order(...)

    order = await breaker.call(exchange.create_order, "BTC/USDT", "limit", "buy", 1, 30_000)

    breaker.on_change(lambda t: log.warning("%s: %s -> %s", t.name, t.previous, t.state))

**States.** *closed*: calls go through and their outcomes are counted.
*open*: calls fail fast with :class:`~tradecache.errors.CircuitOpen` (its
``retry_after`` says when a trial call may go) until ``reset_timeout`` has
passed on the **server's** clock. *half-open*: at most ``half_open_probes``
trial calls are in flight across **all** processes (permits are granted
atomically in Redis, each with a lease of ``probe_timeout``, so a crashed
prober cannot wedge the breaker); ``success_threshold`` successful trials close
it, one failed trial opens it again.

**Policies** (evaluated in Redis, over a sliding window of ``window`` seconds
made of 20 time buckets):

* count (default): open after ``failure_threshold`` failures within ``window``;
* failure rate (``failure_rate=0.5``): open once at least ``minimum_calls``
  calls were recorded in the window and at least that fraction failed; the
  rate policy replaces the count policy.

An exception counts as a failure unless ``exclude`` matches it (an exception
type, or a predicate ``exc -> bool``): excluded exceptions mean the service
answered, so they count as successes. ``CancelledError`` and other
non-``Exception`` errors count as nothing (a trial permit is handed back).

**Atomicity and clocks.** Every recorded outcome and every transition is one
Lua script (``scripts/breaker_*.lua``); the open period is measured with
``TIME`` inside the script, so the clock of a client never matters. Guarded
calls run concurrently: no lock is held while the call runs.

**Push.** Each transition carries a per-breaker sequence number, is kept in a
short log and published on the breaker's channel. Every process keeps a local
view of the state updated by that push, and calls its ``on_change`` listeners
exactly once per transition, in order: duplicates (the push and the script
reply of the process that made the transition) are dropped by sequence number,
and a gap (a lost message, a reconnect) is backfilled from the log.

**Cost when closed** (Redis round trips per guarded call, measured by
``benchmarks/bench_breaker.py``; ``breaker.redis_calls`` counts the round trips
of calls and admin methods, not the push subscription's own reads):

* the check is free: the state comes from the pushed local view;
* a success costs 0 round trips with the count policy (successes do not change
  it), and 0 with the rate policy too: successes are counted locally and sent
  in one batch at most every 0.1 s per process (or with the next failure);
* a failure costs 1 round trip (one script);
* half-open: 1 round trip to get a permit, 1 to record the trial's outcome;
* when the push feed is down, each call reads the state first (1 round trip)
  until the feed is back.

**Redis unreachable.** A Redis call is bounded by the settings' timeouts.
After a :class:`~tradecache.errors.ConnectionLost`, the breaker stops asking
Redis for ``redis_backoff`` seconds and decides with an in-process breaker of
the same configuration, seeded with the last known state and fed with the
recent outcomes of this process: it keeps tripping on failures, so protection
never stops. Re-checking Redis happens in the background, never in a caller's
path. Local transitions are reported to listeners with ``local=True`` and
``seq=None``. The local outcomes are not sent to Redis afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import math
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, ParamSpec, TypeAlias, TypeVar

import msgspec

from .._tasks import cancel_and_wait
from ..context import Context
from ..envelope import decode_envelope
from ..errors import CircuitOpen, ConnectionLost, TradecacheError, ValidationError
from ..errors import translate_redis_errors as _translate
from ..scripts import Script
from .subscription import Event, Gap, Subscription, publish_command, use_sharded

__all__ = [
    "BreakerConfig",
    "BreakerState",
    "Breakers",
    "CircuitBreaker",
    "Transition",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_INCLUDE = ("envelope", "breaker")
_STATE: Final = Script("breaker_state", include=_INCLUDE)
_RECORD: Final = Script("breaker_record", include=_INCLUDE)
_ACQUIRE: Final = Script("breaker_acquire", include=_INCLUDE)
_PROBE: Final = Script("breaker_probe", include=_INCLUDE)
_FORCE: Final = Script("breaker_force", include=_INCLUDE)

_BUCKETS: Final = 20  # sliding-window resolution: window / 20
_FLUSH_INTERVAL: Final = 0.1  # batched successes (rate policy) reach Redis this often


class BreakerState(StrEnum):
    """The state of a breaker: ``closed``, ``open`` or ``half_open``."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, as passed to ``on_change`` listeners.

    * ``seq``: the per-breaker sequence number (``None`` for a local fallback
      transition, made while Redis was unreachable, with ``local=True``);
    * ``reason``: ``failure_threshold``, ``failure_rate``, ``reset_timeout``,
      ``probe_success``, ``probe_failure`` or ``forced``;
    * ``time``: when it happened (the server's clock for shared transitions);
    * ``failures`` / ``calls``: the window's counts when it opened on a policy.
    """

    name: str
    previous: BreakerState
    state: BreakerState
    reason: str
    seq: int | None
    time: datetime
    local: bool = False
    failures: int | None = None
    calls: int | None = None


Exclusion: TypeAlias = "type[BaseException] | Callable[[BaseException], bool]"
Listener: TypeAlias = Callable[[Transition], Any]


def _finite(value: float, field: str, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field, f"must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value <= minimum:
        raise ValidationError(field, f"must be a finite number > {minimum:g}")
    return float(value)


def _count(value: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(field, "must be an int >= 1")
    return value


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """The policy of a breaker; every argument of ``cache.breaker`` except the name.

    Durations are seconds. ``probe_timeout`` (default: ``reset_timeout``) is
    the lease of a trial-call permit; ``redis_backoff`` is how long the local
    fallback decides alone after Redis failed to answer.
    """

    failure_threshold: int = 5
    window: float = 60.0
    reset_timeout: float = 30.0
    half_open_probes: int = 1
    success_threshold: int = 1
    exclude: tuple[Exclusion, ...] = ()
    failure_rate: float | None = None
    minimum_calls: int = 10
    probe_timeout: float | None = None
    redis_backoff: float = 1.0

    def __post_init__(self) -> None:
        _count(self.failure_threshold, "failure_threshold")
        _finite(self.window, "window", minimum=0.001)
        _finite(self.reset_timeout, "reset_timeout", minimum=0.0)
        _count(self.half_open_probes, "half_open_probes")
        _count(self.success_threshold, "success_threshold")
        _count(self.minimum_calls, "minimum_calls")
        _finite(self.redis_backoff, "redis_backoff")
        if self.probe_timeout is not None:
            _finite(self.probe_timeout, "probe_timeout")
        if self.failure_rate is not None:
            rate = _finite(self.failure_rate, "failure_rate")
            if rate > 1:
                raise ValidationError("failure_rate", "must be in (0, 1]")
        exclude = tuple(self.exclude)
        for rule in exclude:
            if not ((isinstance(rule, type) and issubclass(rule, BaseException)) or callable(rule)):
                raise ValidationError(
                    "exclude", f"{rule!r} is neither an exception type nor a predicate"
                )
        object.__setattr__(self, "exclude", exclude)

    @property
    def probe_lease(self) -> float:
        """Lease of a trial-call permit, in seconds.

        Example: ``BreakerConfig(reset_timeout=10).probe_lease == 10``
        """
        return self.reset_timeout if self.probe_timeout is None else self.probe_timeout

    def trips(self, failures: int, calls: int) -> bool:
        """True when ``failures`` out of ``calls`` in the window open the breaker.

        The same rule as the Lua script (exact integer arithmetic for rates).
        Example: ``BreakerConfig(failure_rate=0.5, minimum_calls=4).trips(2, 4)  # True``
        """
        if self.failure_rate is None:
            return failures >= self.failure_threshold
        return (
            failures > 0
            and calls >= self.minimum_calls
            and failures * 1_000_000 >= round(self.failure_rate * 1_000_000) * calls
        )


# --- outcomes and permits ----------------------------------------------------------------------

_SUCCESS: Final = 0
_FAILURE: Final = 1
_NEUTRAL: Final = 2
_WORDS: Final = ("success", "failure", "release")


class _Permit:
    """What a guarded call holds between its check and its outcome."""

    __slots__ = ("kind", "token")

    def __init__(self, kind: str, token: str = "") -> None:
        self.kind = kind  # "closed" | "probe" | "local" | "local_probe"
        self.token = token


_CLOSED_PERMIT: Final = _Permit("closed")
_LOCAL_PERMIT: Final = _Permit("local")
_LOCAL_PROBE: Final = _Permit("local_probe")

# Permits of the `async with breaker:` blocks of the current task, innermost last.
_PERMITS: contextvars.ContextVar[tuple[tuple[CircuitBreaker, _Permit], ...]] = (
    contextvars.ContextVar("tradecache_breaker_permits", default=())
)


class _Window:
    """In-process sliding window: the same buckets as the Lua script, monotonic clock."""

    __slots__ = ("_bucket", "_buckets", "_entries")

    def __init__(self, window: float) -> None:
        self._buckets = _BUCKETS
        self._bucket = window / _BUCKETS
        self._entries: deque[list[int]] = deque()  # [bucket index, failures, calls]

    def add(self, failures: int, calls: int, now: float) -> None:
        index = int(now // self._bucket)
        entries = self._entries
        if entries and entries[-1][0] == index:
            entry = entries[-1]
            entry[1] += failures
            entry[2] += calls
        else:
            entries.append([index, failures, calls])

    def totals(self, now: float) -> tuple[int, int]:
        oldest = int(now // self._bucket) - self._buckets
        entries = self._entries
        while entries and entries[0][0] <= oldest:
            entries.popleft()
        return sum(e[1] for e in entries), sum(e[2] for e in entries)

    def clear(self) -> None:
        self._entries.clear()


class _Payload(msgspec.Struct, frozen=True):
    state: BreakerState
    previous: BreakerState
    reason: str
    open_ms: int = 0
    epoch: str = ""
    failures: int | None = None
    calls: int | None = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- the in-process fallback ------------------------------------------------------------------


class _LocalBreaker:
    """The same state machine in memory; decides while Redis is unreachable."""

    def __init__(self, owner: CircuitBreaker) -> None:
        self._owner = owner
        self._config = owner.config
        self.window = _Window(owner.config.window)
        self.state = BreakerState.CLOSED
        self.deadline = 0.0
        self.probes = 0
        self.successes = 0

    def seed(self, state: BreakerState, deadline: float) -> None:
        self.state, self.deadline, self.probes, self.successes = state, deadline, 0, 0

    def permit(self, now: float) -> _Permit:
        if self.state is BreakerState.OPEN:
            if now < self.deadline:
                raise CircuitOpen(self._owner.name, self.deadline - now)
            self._move(BreakerState.HALF_OPEN, "reset_timeout", now)
        if self.state is BreakerState.HALF_OPEN:
            if self.probes >= self._config.half_open_probes:
                raise CircuitOpen(self._owner.name, self._config.probe_lease)
            self.probes += 1
            return _LOCAL_PROBE
        return _LOCAL_PERMIT

    def evaluate(self, now: float) -> None:
        if self.state is BreakerState.CLOSED:
            failures, calls = self.window.totals(now)
            if self._config.trips(failures, calls):
                reason = (
                    "failure_threshold" if self._config.failure_rate is None else "failure_rate"
                )
                self._move(BreakerState.OPEN, reason, now, failures, calls)

    def done(self, permit: _Permit, outcome: int, now: float) -> None:
        if permit is _LOCAL_PERMIT:
            if outcome != _NEUTRAL:
                self.window.add(int(outcome == _FAILURE), 1, now)
                self.evaluate(now)
            return
        self.probes = max(0, self.probes - 1)
        self.finish_probe(outcome, now)

    def finish_probe(self, outcome: int, now: float) -> None:
        if self.state is not BreakerState.HALF_OPEN or outcome == _NEUTRAL:
            return
        if outcome == _FAILURE:
            self._move(BreakerState.OPEN, "probe_failure", now)
            return
        self.successes += 1
        if self.successes >= self._config.success_threshold:
            self._move(BreakerState.CLOSED, "probe_success", now)

    def _move(
        self,
        state: BreakerState,
        reason: str,
        now: float,
        failures: int | None = None,
        calls: int | None = None,
    ) -> None:
        previous, self.state = self.state, state
        self.successes = 0
        self.window.clear()
        self.deadline = now + self._config.reset_timeout if state is BreakerState.OPEN else 0.0
        if state is not BreakerState.HALF_OPEN:
            self.probes = 0
        log.warning(
            "breaker %r (local fallback): %s -> %s (%s)",
            self._owner.name,
            previous,
            state,
            reason,
            extra={"breaker": self._owner.name, "state": str(state), "reason": reason},
        )
        self._owner._fire(
            Transition(
                name=self._owner.name,
                previous=previous,
                state=state,
                reason=reason,
                seq=None,
                time=datetime.now(UTC),
                local=True,
                failures=failures,
                calls=calls,
            )
        )


# --- the shared breaker ------------------------------------------------------------------------


class CircuitBreaker:
    """A circuit breaker shared through Redis by every process using ``name``.

    Build it with ``cache.breaker(name, ...)`` (see the module documentation
    for the semantics). Use it as ``async with breaker:`` or
    ``await breaker.call(fn, *args, **kwargs)``. ``redis_calls`` counts the
    round trips its calls and admin methods made (for measurements and tests).

    Example::

        breaker = cache.breaker("kraken", failure_threshold=3, reset_timeout=10)
        try:
            balance = await breaker.call(exchange.fetch_balance)
        except CircuitOpen as exc:
            await asyncio.sleep(exc.retry_after)
    """

    def __init__(
        self,
        ctx: Context,
        name: str,
        config: BreakerConfig | None = None,
    ) -> None:
        keys = ctx.keys
        self._ctx = ctx
        self.name = name
        self.config = config = config or BreakerConfig()
        self.metrics = ctx.metrics
        self._client = ctx.client
        self._keys = [
            keys.breaker(name),
            keys.breaker_window(name),
            keys.breaker_probes(name),
            keys.breaker_log(name),
        ]
        self._channel = keys.breaker_channel(name)
        source = f"{socket.gethostname()}:{os.getpid()}"
        self._head: list[str | int] = [
            self._channel,
            source,
            secrets.token_hex(8),
            name,
            publish_command(ctx),
        ]
        self._rate = config.failure_rate is not None
        window_ms = max(1, math.ceil(config.window * 1000))
        bucket_ms = max(1, math.ceil(window_ms / _BUCKETS))
        self._policy: list[str | int] = [
            config.failure_threshold,
            bucket_ms,
            math.ceil(window_ms / bucket_ms),
            -1 if config.failure_rate is None else round(config.failure_rate * 1_000_000),
            config.minimum_calls,
            max(1, round(config.reset_timeout * 1000)),
        ]
        self._lease_ms = max(1, round(config.probe_lease * 1000))
        # The local view, maintained by push and by every script reply.
        self._state = BreakerState.CLOSED
        self._seq = -1
        self._epoch: str | None = None
        self._deadline = 0.0  # end of the open period, monotonic clock
        self._hint = 0.0  # seconds until a permit may be free (half-open)
        self._synced = False
        # Push: a reliable subscription (ordered, deduplicated, gaps backfilled from the log).
        self._sub: Subscription | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listeners: list[Listener] = []
        # The local fallback.
        self._local = _LocalBreaker(self)
        self._fallback = False
        self._retry_redis_at = 0.0
        self._recovering = False
        # Batched successes (rate policy).
        self._pending = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.redis_calls = 0

    def __repr__(self) -> str:
        mode = " fallback" if self._fallback else ""
        return f"<CircuitBreaker {self.name!r} {self.state}{mode} seq={self._seq}>"

    # --- public view -------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state as this process knows it (no round trip).

        While Redis is unreachable this is the local fallback's state.
        Example: ``if breaker.state is BreakerState.OPEN: skip_exchange()``.
        """
        return self._local.state if self._fallback else self._state

    @property
    def fallback(self) -> bool:
        """True while Redis is unreachable and the in-process breaker decides.

        Example: ``metrics.gauge("breaker_degraded", breaker.fallback)``.
        """
        return self._fallback

    @property
    def seq(self) -> int:
        """Sequence number of the last shared transition seen (``-1``: never synced).

        Example: ``log.info("breaker %s at transition %d", breaker.name, breaker.seq)``
        """
        return self._seq

    def on_change(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(transition)`` on every state change; returns a function to remove it.

        A listener may be a plain function or a coroutine function (run as a
        task). It fires once per transition in this process, in sequence
        order, whichever process made the transition. Exceptions it raises
        are logged, never propagated. Call :meth:`sync` once to be sure the
        push subscription is up.

        Example::

            remove = breaker.on_change(lambda t: print(t.seq, t.previous, "->", t.state))
            await breaker.sync()
            ...
            remove()
        """
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    async def sync(self) -> BreakerState:
        """Subscribe to the breaker's transitions (once) and read its state from Redis.

        Guarded calls do this on their own the first time; call it to make
        listeners live before any call. Raises ``ConnectionLost`` when Redis is
        unreachable.

        Example: ``state = await breaker.sync()``
        """
        await self._refresh()
        return self._state

    # --- guarded calls -----------------------------------------------------------------------

    async def __aenter__(self) -> CircuitBreaker:
        if (
            self._state is BreakerState.CLOSED
            and self._synced
            and not self._fallback
            and self._sub is not None
            and self._sub.connected
        ):
            permit = _CLOSED_PERMIT
        else:
            permit = await self._permit()
        _PERMITS.set((*_PERMITS.get(), (self, permit)))
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        stack = _PERMITS.get()
        owner, permit = stack[-1]
        if owner is not self:  # pragma: no cover - `async with` blocks always nest
            raise RuntimeError("breaker blocks exited out of order")
        _PERMITS.set(stack[:-1])
        outcome = self._classify(exc)
        if permit is _CLOSED_PERMIT and outcome == _SUCCESS:
            self._closed_success()
        else:
            await self._after(permit, outcome)

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``await fn(*args, **kwargs)`` through the breaker.

        Raises :class:`~tradecache.errors.CircuitOpen` (with ``retry_after``)
        without calling ``fn`` while the breaker is open, or half-open with
        every trial permit taken. Whatever ``fn`` raises is re-raised as is,
        after its outcome was recorded.

        Example::

            ticker = await breaker.call(exchange.fetch_ticker, "BTC/USDT")
        """
        if (
            self._state is BreakerState.CLOSED
            and self._synced
            and not self._fallback
            and self._sub is not None
            and self._sub.connected
        ):
            permit = _CLOSED_PERMIT
        else:
            permit = await self._permit()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            await self._after(permit, self._classify(exc))
            raise
        if permit is _CLOSED_PERMIT:
            self._closed_success()
        else:
            await self._after(permit, _SUCCESS)
        return result

    def _classify(self, exc: BaseException | None) -> int:
        if exc is None:
            return _SUCCESS
        if not isinstance(exc, Exception):
            return _NEUTRAL
        for rule in self.config.exclude:
            if isinstance(rule, type):
                if isinstance(exc, rule):
                    return _SUCCESS
            elif rule(exc):
                return _SUCCESS
        return _FAILURE

    async def _permit(self) -> _Permit:
        if self._fallback:
            now = time.monotonic()
            if now >= self._retry_redis_at:
                self._start_recovery(now)
            return self._local.permit(now)
        try:
            if not (self._synced and self._sub is not None and self._sub.connected):
                await self._refresh()
            if self._state is BreakerState.CLOSED:
                return _CLOSED_PERMIT
            now = time.monotonic()
            if self._state is BreakerState.OPEN and now < self._deadline:
                raise CircuitOpen(self.name, self._deadline - now)
            token = secrets.token_hex(8)
            reply = await self._run(
                _ACQUIRE, "breaker.acquire", token, self._lease_ms, self.config.half_open_probes
            )
        except ConnectionLost as exc:
            self._enter_fallback(exc)
            return self._local.permit(time.monotonic())
        code = self._apply_reply(reply)
        if code == 1:
            return _Permit("probe", token)
        if code == 2:
            return _CLOSED_PERMIT
        raise CircuitOpen(self.name, self._retry_after())

    def _retry_after(self) -> float:
        if self._state is BreakerState.OPEN:
            return max(0.0, self._deadline - time.monotonic())
        return self._hint

    async def _after(self, permit: _Permit, outcome: int) -> None:
        kind = permit.kind
        if kind == "closed":
            if outcome == _FAILURE:
                await self._record_failure()
            elif outcome == _SUCCESS:
                self._closed_success()
        elif kind == "probe":
            if outcome == _NEUTRAL:
                # Hand the permit back without holding up a cancellation.
                self._spawn(self._probe_done(permit.token, outcome))
            else:
                await self._probe_done(permit.token, outcome)
        else:
            self._local.done(permit, outcome, time.monotonic())

    def _closed_success(self) -> None:
        now = time.monotonic()
        self._local.window.add(0, 1, now)
        if self._fallback:
            self._local.evaluate(now)
        elif self._rate:
            self._pending += 1
            if self._flush_handle is None:
                loop = asyncio.get_running_loop()
                self._flush_handle = loop.call_later(_FLUSH_INTERVAL, self._flush_later)

    async def _record_failure(self) -> None:
        now = time.monotonic()
        self._local.window.add(1, 1, now)
        if self._fallback:
            self._local.evaluate(now)
            return
        pending, self._pending = self._pending, 0
        try:
            reply = await self._run(_RECORD, "breaker.record", 1, 1 + pending, *self._policy)
        except ConnectionLost as exc:
            self._enter_fallback(exc)
            self._local.evaluate(time.monotonic())
            return
        self._apply_reply(reply)

    def _flush_later(self) -> None:
        self._flush_handle = None
        self._spawn(self.flush())

    async def flush(self) -> None:
        """Send the successes counted locally (failure-rate policy) to Redis now.

        Successes are batched, so a success costs no round trip; this runs on
        its own every 0.1 s while there are any. Example: ``await breaker.flush()``
        """
        pending, self._pending = self._pending, 0
        if not pending or self._fallback:
            return
        try:
            reply = await self._run(_RECORD, "breaker.record", 0, pending, *self._policy)
        except ConnectionLost as exc:
            self._enter_fallback(exc)
            return
        self._apply_reply(reply)

    async def _probe_done(self, token: str, outcome: int) -> None:
        try:
            reply = await self._run(
                _PROBE,
                "breaker.probe",
                token,
                _WORDS[outcome],
                self.config.success_threshold,
                self._policy[-1],
            )
        except ConnectionLost as exc:
            self._enter_fallback(exc)
            self._local.finish_probe(outcome, time.monotonic())
            return
        self._apply_reply(reply)

    # --- administration ----------------------------------------------------------------------

    async def reset(self) -> None:
        """Force the breaker closed in every process (an operator override).

        Raises ``ConnectionLost`` when Redis is unreachable.
        Example: ``await breaker.reset()``
        """
        reply = await self._run(_FORCE, "breaker.force", "closed", self._policy[-1])
        self._apply_reply(reply)

    async def trip(self) -> None:
        """Force the breaker open in every process for ``reset_timeout``.

        Raises ``ConnectionLost`` when Redis is unreachable.
        Example: ``await breaker.trip()  # exchange maintenance``
        """
        reply = await self._run(_FORCE, "breaker.force", "open", self._policy[-1])
        self._apply_reply(reply)

    async def close(self) -> None:
        """Stop listening for transitions and cancel background work. Safe to call twice.

        Example: ``await breaker.close()``
        """
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        sub, self._sub = self._sub, None
        listener, self._listener = self._listener, None
        self._synced = False
        if sub is not None:
            await sub.close()
        if listener is not None:
            await listener  # it ends with the subscription
        await cancel_and_wait(*self._tasks)

    # --- Redis -------------------------------------------------------------------------------

    async def _run(self, script: Script, operation: str, *args: str | int) -> list[Any]:
        self.redis_calls += 1
        started = time.perf_counter()
        try:
            head = self._head
            head[2] = secrets.token_hex(8)  # the epoch, should this call create the breaker
            reply: list[Any] = await script(self._client, self._keys, [*head, *args])
        except TradecacheError:
            self.metrics.observe(operation, time.perf_counter() - started, error=True)
            raise
        self.metrics.observe(operation, time.perf_counter() - started)
        return reply

    async def _refresh(self) -> None:
        if self._sub is None:
            await self._subscribe()
        reply = await self._run(_STATE, "breaker.state")
        self._apply_reply(reply)
        self._synced = True

    def _apply_reply(self, reply: list[Any]) -> int:
        code, state, seq, remaining, epoch, envelope = reply
        if envelope:  # this call made a transition: the view learns it now, listeners by push
            made = decode_envelope(envelope)
            self._observe(made.seq, made.decode(_Payload))
        epoch = _text(epoch)
        if epoch != self._epoch:
            self._new_epoch(epoch)
        seq = int(seq)
        if seq >= self._seq:  # else an older reply than what the push already told us
            if seq > self._seq:
                self._local.window.clear()
            self._seq, self._state = seq, BreakerState(_text(state))
            self._hint = int(remaining) / 1000
            if self._state is BreakerState.OPEN:
                self._deadline = time.monotonic() + self._hint
        return int(code)

    def _observe(self, seq: int, payload: _Payload) -> None:
        if payload.epoch != self._epoch:
            self._new_epoch(payload.epoch)
        if seq > self._seq:
            self._seq, self._state = seq, payload.state
            self._hint = payload.open_ms / 1000
            self._deadline = time.monotonic() + self._hint
            self._local.window.clear()  # Redis starts a new window at every transition

    def _new_epoch(self, epoch: str) -> None:
        if self._epoch is not None:
            # The breaker was created anew (Redis lost its data): its sequence restarts.
            log.warning(
                "breaker %r was recreated in Redis (epoch %s)",
                self.name,
                epoch,
                extra={"breaker": self.name, "epoch": epoch},
            )
            self._seq = -1
        self._epoch = epoch

    # --- push ----------------------------------------------------------------------------------

    async def _subscribe(self) -> None:
        sub = Subscription(
            self._ctx,
            {self._channel: self.name},
            sharded=use_sharded(self._ctx),
            positions=self._positions,
            backfill=self._backfill,
            queue_size=1024,
            name=f"breaker {self.name}",
        )
        await sub.start()
        self._sub = sub
        self._listener = asyncio.create_task(self._listen(sub), name=f"breaker {self.name}")
        self._listener.add_done_callback(self._task_done)

    async def _positions(self, topics: Sequence[str]) -> dict[str, tuple[int, int]]:
        # The newest logged transition: where this process's listeners start.
        with _translate():
            newest = await self._client.lindex(self._keys[3], -1)
        try:
            envelope = decode_envelope(newest) if newest is not None else None
        except ValidationError:
            envelope = None  # a corrupt log entry: start from the next transition
        return {} if envelope is None else {self.name: (envelope.seq, envelope.time)}

    async def _backfill(self, topic: str, first: int, last: int | None) -> list[bytes]:
        with _translate():
            entries: list[bytes] = await self._client.lrange(self._keys[3], 0, -1)  # type: ignore[assignment]
        return entries  # the subscription keeps the ones it misses, in order

    async def _listen(self, sub: Subscription) -> None:
        try:
            async for item in sub:
                if isinstance(item, Event):
                    self._on_event(item)
                else:
                    self._on_gap(item)
        finally:
            if self._sub is sub:
                self._sub = None
                self._synced = False

    def _on_event(self, event: Event) -> None:
        try:
            payload: _Payload = event.decode(_Payload)
        except ValidationError as exc:
            log.warning(
                "breaker %r: ignoring a malformed transition: %s",
                self.name,
                exc,
                extra={"breaker": self.name},
            )
            return
        self._observe(event.seq, payload)
        self._fire(
            Transition(
                name=self.name,
                previous=payload.previous,
                state=payload.state,
                reason=payload.reason,
                seq=event.seq,
                time=event.time,
                failures=payload.failures,
                calls=payload.calls,
            )
        )

    def _on_gap(self, gap: Gap) -> None:
        # Older than the log keeps (or the breaker was recreated): report it, re-read the state.
        log.warning(
            "breaker %r: transitions %s..%s were missed (%s)",
            self.name,
            gap.first_seq,
            gap.last_seq,
            gap.reason,
            extra={"breaker": self.name, "first_seq": gap.first_seq, "last_seq": gap.last_seq},
        )
        self._synced = False

    def _fire(self, transition: Transition) -> None:
        for listener in list(self._listeners):
            try:
                result = listener(transition)
                if inspect.isawaitable(result):
                    self._spawn(result)
            except Exception:
                log.exception(
                    "breaker %r: on_change listener failed", self.name, extra={"breaker": self.name}
                )

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "breaker %r: background task failed",
                self.name,
                exc_info=task.exception(),
                extra={"breaker": self.name},
            )

    # --- fallback ------------------------------------------------------------------------------

    def _enter_fallback(self, exc: ConnectionLost) -> None:
        self._retry_redis_at = time.monotonic() + self.config.redis_backoff
        self._synced = False
        if not self._fallback:
            self._fallback = True
            self._local.seed(self._state, self._deadline)
            log.warning(
                "breaker %r: Redis unreachable (%s); the local breaker decides for now",
                self.name,
                exc,
                extra={"breaker": self.name},
            )

    def _start_recovery(self, now: float) -> None:
        if not self._recovering:
            self._recovering = True
            self._retry_redis_at = now + self.config.redis_backoff
            self._spawn(self._recover())

    async def _recover(self) -> None:
        try:
            await self._refresh()
        except ConnectionLost:
            self._retry_redis_at = time.monotonic() + self.config.redis_backoff
        else:
            self._fallback = False
            log.warning(
                "breaker %r: Redis is reachable again", self.name, extra={"breaker": self.name}
            )
        finally:
            self._recovering = False


class Breakers:
    """The breakers of one cache: one instance per name.

    ``cache.breaker(name, **options)`` goes through this registry. Asking
    again for a name returns the same instance; asking with another
    configuration raises ``ValidationError("name", ...)``.

    Example::

        breakers = Breakers(ctx)
        breaker = breakers.get("binance", failure_threshold=3)
        await breakers.close()
    """

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._items: dict[str, CircuitBreaker] = {}

    def get(self, name: str, **options: Any) -> CircuitBreaker:
        """The breaker called ``name``, created with ``options`` (see :class:`BreakerConfig`).

        Example: ``breakers.get("okx", failure_rate=0.5, minimum_calls=20)``
        """
        config = BreakerConfig(**options)
        existing = self._items.get(name)
        if existing is not None:
            if existing.config != config:
                raise ValidationError(
                    "name", f"breaker {name!r} already exists here with another configuration"
                )
            return existing
        breaker = CircuitBreaker(self._ctx, name, config)
        self._items[name] = breaker
        return breaker

    async def close(self) -> None:
        """Close every breaker and the shared push connection.

        Example: ``await breakers.close()``
        """
        for breaker in self._items.values():
            await breaker.close()
        self._items.clear()
