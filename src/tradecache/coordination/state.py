"""Shared state (``cache.state(name, ttl=None)``): one JSON value per name, watched by push.

A :class:`SharedState` lives in Redis, so it survives the restart of any
worker, and expires after ``ttl`` seconds without a write (``None``: never)::

    risk = cache.state("risk-limits", ttl=3600)
    await risk.set({"max_notional": "25000", "halted": False})
    await risk.get()                                   # {'max_notional': '25000', ...}
    await risk.update(lambda v: {**v, "halted": True})  # atomic read-modify-write
    await risk.delete()

    async with risk.watch() as values:                 # returns once subscribed
        async for value in values:                     # every later change; None = deleted
            apply(value)

Storage: a hash ``<ns>:state:{name}`` holding a version number that grows with
every write and the value's envelope (:mod:`tradecache.envelope`). Every write
is one Lua script (``scripts/state_write.lua``) that bumps the version, stores
the value, sets the TTL and publishes the envelope on the state's channel.

``update(fn)`` is optimistic: it reads value and version, computes ``fn(value)``
in Python, and writes only if the version is still the one it read (a
compare-and-set in the same Lua script). On a conflict it re-reads and
retries, with a small jittered backoff, up to ``retries`` times, then raises
:class:`UpdateConflict`. So ``fn`` may run more than once: keep it free of
side effects. No update is ever lost.

A delete leaves a tombstone for an hour so the version keeps growing for
watchers. ``watch()`` is built on :class:`~tradecache.coordination.subscription.Subscription`:
after a lost connection it re-reads the current value, so a watcher always
ends on the latest value. Expiry by TTL is not announced (Redis does not
publish it without keyspace notifications); the next write is.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Callable, Generator, Sequence
from types import TracebackType
from typing import Any, Final

import msgspec

from ..context import Context
from ..envelope import decode_envelope
from ..errors import TradecacheError, ValidationError, redis_errors
from ..metrics import instrumented
from ..scripts import Script
from .events import default_source, encode_payload
from .subscription import Event, Subscription, publish_command, use_sharded

__all__ = ["SharedState", "StateWatch", "UpdateConflict"]

_WRITE: Final = Script("state_write", include=("envelope",))
TOMBSTONE_TTL: Final = 3600.0
_DELETE_TYPE: Final = "state.delete"


class UpdateConflict(TradecacheError):
    """``update`` lost the compare-and-set ``retries`` times in a row."""


def _ttl(value: float | None, field: str = "ttl") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValidationError(field, "must be a number of seconds > 0, or None")
    return float(value)


class SharedState:
    """A named JSON value shared by every process; see the module docstring.

    Build it with ``cache.state(name, ttl=None)``; ``ttl`` is the lifetime in
    seconds after each write (``None``: no expiry).
    """

    def __init__(self, ctx: Context, name: str, ttl: float | None = None) -> None:
        self._ctx = ctx
        self.metrics = ctx.metrics
        self.name = name
        self.ttl = _ttl(ttl)
        self._key = ctx.keys.state(name)
        self._channel = ctx.keys.state_channel(name)
        self._source = default_source()

    def __repr__(self) -> str:
        return f"SharedState({self.name!r}, ttl={self.ttl})"

    @instrumented("state.get")
    async def get(self) -> Any:
        """The current value, or ``None`` when unset, deleted or expired.

        Example: ``limits = await cache.state("risk").get()``
        """
        value, _ = await self._read()
        return value

    @instrumented("state.version")
    async def version(self) -> int:
        """The number of writes so far (0 when unset); it grows with every write.

        Example: ``await cache.state("risk").version()``
        """
        _, version = await self._read()
        return version

    @instrumented("state.set")
    async def set(self, value: Any, ttl: float | None = None) -> int:
        """Store ``value`` (any JSON value) and announce it; return the new version.

        ``ttl`` overrides the state's lifetime for this write. One round trip.

        Example: ``await cache.state("risk").set({"halted": True}, ttl=60)``
        """
        return await self._write(encode_payload(value), ttl, expected=-1)

    @instrumented("state.update")
    async def update(
        self, fn: Callable[[Any], Any], *, ttl: float | None = None, retries: int = 64
    ) -> Any:
        """Atomically replace the value with ``fn(value)``; return the new value.

        ``fn`` gets the current value (``None`` when unset) and may be a
        coroutine function. Optimistic: on a concurrent write it re-reads and
        calls ``fn`` again (up to ``retries`` times, then ``UpdateConflict``).

        Example::

            def bump(v):
                return {"n": (v or {}).get("n", 0) + 1}

            await cache.state("counters").update(bump)
        """
        for attempt in range(retries + 1):
            value, version = await self._read()
            new = fn(value)
            if inspect.isawaitable(new):
                new = await new
            if await self._write(encode_payload(new), ttl, expected=version) > 0:
                return new
            # Jittered backoff so contenders spread out instead of colliding again.
            await asyncio.sleep(random.uniform(0, min(0.0005 * 2**attempt, 0.02)))
        raise UpdateConflict(f"state {self.name!r}: {retries + 1} conflicting attempts")

    @instrumented("state.delete")
    async def delete(self) -> bool:
        """Delete the value (watchers get ``None``); ``True`` if there was one.

        Example: ``await cache.state("risk").delete()``
        """
        return await self._write(b"null", TOMBSTONE_TTL, expected=-1, mode="delete") > 0

    def watch(self, *, current: bool = False, queue_size: int | None = None) -> StateWatch:
        """Every later value of the state, by push; ``None`` when it is deleted.

        Await it or use ``async with``: either returns once subscribed, so no
        change after that is missed. With ``current=True`` the first value is
        the current one. Intermediate values may be skipped after a reconnect
        or an overflow; the latest one always arrives.

        Example::

            async with cache.state("risk").watch(current=True) as values:
                async for value in values:
                    apply(value)
        """
        return StateWatch(self, current=current, queue_size=queue_size)

    # --- internals ---------------------------------------------------------------------------

    @redis_errors
    async def _read(self) -> tuple[Any, int]:
        reply: Any = await self._ctx.client.hmget(self._key, ["v", "e", "d"])
        raw_version, raw, deleted = reply
        if raw is None:
            return None, 0
        version = int(raw_version)
        if deleted in (b"1", "1"):
            return None, version
        return msgspec.json.decode(decode_envelope(raw).payload), version

    async def _write(
        self, data: bytes, ttl: float | None, *, expected: int, mode: str = "set"
    ) -> int:
        ttl = _ttl(ttl) or self.ttl
        ttl_ms = max(1, round(ttl * 1000)) if ttl else 0
        args: list[str | bytes | int] = [
            self._channel,
            self.name,
            self._source,
            data,
            ttl_ms,
            expected,
            publish_command(self._ctx),
            mode,
        ]
        return int(await _WRITE(self._ctx.client, keys=[self._key], args=args))

    @redis_errors
    async def _positions(self, topics: Sequence[str]) -> dict[str, tuple[int, int]]:
        raw = await self._ctx.client.hget(self._key, "e")
        if raw is None:
            return {}
        envelope = decode_envelope(raw)
        return {self.name: (envelope.seq, envelope.time)}

    @redis_errors
    async def _backfill(self, topic: str, first: int, last: int | None) -> list[bytes | str]:
        raw = await self._ctx.client.hget(self._key, "e")
        return [] if raw is None else [raw]


class StateWatch:
    """The values of one :class:`SharedState` as they change; from ``state.watch()``.

    Awaitable and an async context manager (both subscribe), an async iterator
    of values, and ``close()``.
    """

    def __init__(self, state: SharedState, *, current: bool, queue_size: int | None) -> None:
        self._state = state
        self._current = current
        self._first: list[Any] = []
        self._skip_upto = 0
        ctx = state._ctx
        self.subscription = Subscription(
            ctx,
            {state._channel: state.name},
            sharded=use_sharded(ctx),
            backfill=state._backfill,
            positions=state._positions,
            queue_size=queue_size,
            name=f"state {state.name}",
        )

    async def start(self) -> StateWatch:
        """Subscribe; return once the server acknowledged it (``await watch`` does this).

        Example: ``values = await state.watch().start()``
        """
        await self.subscription.start()
        if self._current:
            self._current = False
            value, self._skip_upto = await self._state._read()
            self._first.append(value)
        return self

    def __await__(self) -> Generator[Any, None, StateWatch]:
        return self.start().__await__()

    async def __aenter__(self) -> StateWatch:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> StateWatch:
        return self

    async def __anext__(self) -> Any:
        if self._first:
            return self._first.pop()
        async for item in self.subscription:
            if isinstance(item, Event):
                if item.seq <= self._skip_upto:
                    continue  # already reported by a re-read
                self._skip_upto = 0
                return None if item.type == _DELETE_TYPE else item.payload
            if item.reason == "reset":
                # The version restarted (expiry or tombstone gone): re-read.
                value, self._skip_upto = await self._state._read()
                return value
        raise StopAsyncIteration

    async def close(self) -> None:
        """Stop watching. Safe to call twice.

        Example: ``await values.close()`` (or leave ``async with state.watch() as values:``)
        """
        await self.subscription.close()
