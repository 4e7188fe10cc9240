"""The read-through engine behind ``cache.exchanges`` and ``cache.symbols``.

Both caches keep records that change rarely and come from somewhere slower
(a SQL database, an exchange's REST API). A :class:`ReadThrough` serves them
from Redis and, on a miss, calls a *loader* (a plain async callable) exactly
once per key:

* **in one process**, concurrent callers of a cold key share one load (a task
  per key; a cancelled caller does not cancel the others' load);
* **across processes**, the loading process holds a short fill lock
  (``SET NX PX settings.metadata_load_timeout``) taken by the same script that
  re-checks the entry; the others poll the entry with a short backoff (2 ms
  doubling to 50 ms) until it appears or the lock disappears, in which case one
  of them loads. A loader that fails releases the lock at once; one that
  crashes leaves it to expire after ``metadata_load_timeout``;
* the loaded record is stored for ``settings.metadata_ttl`` seconds; a loader
  miss (``None``) is stored as a negative entry for ``settings.negative_ttl``
  seconds, so a storm of lookups for an unknown symbol does not reach the
  database;
* a ``put``/``delete``/``invalidate`` during a load removes the fill lock, so
  the load's result (read before the write) is returned to its callers but not
  stored: the cache never goes back to the old value. A loader slower than
  ``metadata_load_timeout`` loses its lock the same way.

Layout of one *space* (the exchanges, or the symbols of one exchange), all
keys under one hash tag (``keys.py``): an entry and a fill lock per member,
a SET indexing every member with an entry or a fill (so invalidating a whole
space needs no SCAN), a SET holding a complete list (plus the member ``""``,
so an empty list is still a cached list) and the list's fill lock.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, Final, Generic, TypeVar

from redis.exceptions import RedisError

from ..context import Context
from ..errors import ValidationError, WaitTimeout, redis_errors, translate
from ..local_cache import MISS, LocalCache
from ..models import Model
from ..scripts import Script

__all__ = ["NEGATIVE", "ReadThrough", "Space", "ttl_seconds"]

M = TypeVar("M", bound=Model)
T = TypeVar("T")

#: Stored for a loader miss; no codec output is a lone "-".
NEGATIVE: Final = b"-"

_CLAIM: Final = Script("meta_claim", include=("meta",))
_FILL: Final = Script("meta_fill", include=("meta",))
_RELEASE: Final = Script("meta_release")
_PUT: Final = Script("meta_put", include=("meta",))
_FILL_LIST: Final = Script("meta_fill_list", include=("meta",))
_INVALIDATE_ALL: Final = Script("meta_invalidate_all")

_FOUND: Final = 1
_CLAIMED: Final = 2
_POLL_FIRST: Final = 0.002
_POLL_MAX: Final = 0.05


def ttl_seconds(value: object, field: str = "ttl") -> float:
    """A positive, finite duration in seconds from a timedelta or a number.

    Example::

        >>> ttl_seconds(timedelta(minutes=1))
        60.0
    """
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValidationError(field, f"expected a timedelta or seconds, not {type(value).__name__}")
    if not 0 < seconds < float("inf"):
        raise ValidationError(field, f"must be a positive, finite duration, got {value!r}")
    return float(seconds)


@dataclass(frozen=True, slots=True)
class Space:
    """The keys of one metadata space (built from ``keys.py``)."""

    entry_prefix: str
    lock_prefix: str
    index: str
    all: str
    all_lock: str

    def entry(self, member: str) -> str:
        """The entry key of ``member``."""
        return self.entry_prefix + member

    def lock(self, member: str) -> str:
        """The fill-lock key of ``member``."""
        return self.lock_prefix + member


class ReadThrough(Generic[M]):
    """Read-through storage of one model type: single-flight loads, TTLs, negative entries.

    Used by :class:`~tradecache.stores.exchanges.ExchangeCache` and
    :class:`~tradecache.stores.symbols.SymbolCache`; not a public API.
    """

    def __init__(self, ctx: Context, model: type[M]) -> None:
        self.client = ctx.client
        self.codec = ctx.codec
        self.settings = ctx.settings
        self.model = model
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._local = ctx.local_cache  # entries served from memory (local_cache.py), or None

    # --- helpers -------------------------------------------------------------------------------

    def _ms(self, seconds: float) -> int:
        return max(1, int(seconds * 1000))

    @property
    def _index_ms(self) -> int:
        s = self.settings
        return self._ms(max(s.metadata_ttl, s.negative_ttl, s.metadata_load_timeout))

    def decode(self, raw: bytes | str) -> M | None:
        """Decode an entry; None for a negative one."""
        if raw == NEGATIVE:
            return None
        return self.codec.decode(raw, self.model)

    async def _flight(self, key: str, start: Callable[[], Awaitable[T]]) -> T:
        """Run ``start()`` once per ``key`` for every concurrent caller in this process."""
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(start())
            self._flights[key] = flight
            flight.add_done_callback(partial(self._landed, key))
        result: T = await asyncio.shield(flight)
        return result

    def _landed(self, key: str, flight: asyncio.Future[Any]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        # Mark the outcome retrieved: callers that were cancelled must not leave a warning.
        flight.cancelled() or flight.exception()

    def forget(self, prefix: str) -> None:
        """Detach in-process loads of keys starting with ``prefix`` (after an invalidation)."""
        for key in [k for k in self._flights if k.startswith(prefix)]:
            del self._flights[key]

    async def _claim(self, keys: Sequence[str], token: str, member: str) -> tuple[bool, Any]:
        """Poll until the entry exists ``(True, value)`` or this caller holds the lock.

        For a list (``member == ""``) the value is the list's members.
        """
        lock_ms = self._ms(self.settings.metadata_load_timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2 * self.settings.metadata_load_timeout
        delay = _POLL_FIRST
        while True:
            reply = await _CLAIM(self.client, keys, [token, lock_ms, member, self._index_ms])
            if reply[0] == _FOUND:
                return True, reply[1]
            if reply[0] == _CLAIMED:
                return False, None
            if loop.time() >= deadline:
                raise WaitTimeout(
                    f"{keys[0]} is being loaded by another process and did not appear "
                    f"within {2 * self.settings.metadata_load_timeout:g}s"
                )
            # Another process is loading: its result appears soon (polling is the price of
            # not holding a pub/sub connection per cold key; loads are rare).
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    # --- one entry -----------------------------------------------------------------------------

    async def get(
        self, space: Space, member: str, load: Callable[[], Awaitable[M | None]] | None
    ) -> M | None:
        """The entry of ``member``: from Redis, else from ``load()`` (once), else None.

        ``load`` returns the validated record or None (a miss, cached negatively).
        The hit path is one GET and a decode, with no wrapper in between.
        """
        local = self._local
        if local is None:
            try:
                raw = await self.client.get(space.entry_prefix + member)
            except (RedisError, OSError) as exc:
                raise translate(exc) from exc
            if raw is not None:
                return self.decode(raw)
        else:
            found = local.get(space.entry_prefix + member)
            if found is MISS:
                found = await self._get_remembered(local, space.entry_prefix + member)
            if found is not MISS:
                return found  # type: ignore[no-any-return]
        if load is None:
            return None
        return await self._flight(space.entry(member), lambda: self._fill(space, member, load))

    @redis_errors
    async def _get_remembered(self, local: LocalCache, key: str) -> Any:
        """Read entry ``key`` and its TTL, remember it locally; :data:`MISS` when absent."""
        ticket = local.begin(key)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(key)
            pipe.pttl(key)
            raw, pttl = await pipe.execute()
            if raw is None:
                local.abandon(key, ticket)
                return MISS
            value = self.decode(raw)
        except BaseException:
            local.abandon(key, ticket)
            raise
        # Expiry is lazy on the server (no invalidation until the key is evicted): the
        # local entry ends with the key's TTL by itself.
        local.store(key, None, value, ticket, ttl=pttl / 1000 if pttl >= 0 else None)
        return value

    @redis_errors
    async def _fill(
        self, space: Space, member: str, load: Callable[[], Awaitable[M | None]]
    ) -> M | None:
        keys = [space.entry(member), space.lock(member), space.index]
        token = secrets.token_hex(8)
        found, raw = await self._claim(keys, token, member)
        if found:
            assert raw is not None
            return self.decode(raw)
        try:
            value = await load()
        except BaseException:
            await _RELEASE(self.client, [keys[1]], [token])
            raise
        if value is None:
            data, ttl = NEGATIVE, self.settings.negative_ttl
        else:
            data, ttl = self.codec.encode(value), self.settings.metadata_ttl
        await _FILL(self.client, keys, [token, data, self._ms(ttl), member, self._index_ms])
        return value

    @redis_errors
    async def put(self, space: Space, items: Sequence[tuple[str, M]], ttl: float) -> int:
        """Store ``(member, value)`` pairs with ``ttl`` seconds; one script, atomic."""
        keys = [space.index, space.all]
        args: list[Any] = [self._ms(ttl), self._ms(max(ttl, self._index_ms / 1000))]
        for member, value in items:
            keys += [space.entry(member), space.lock(member)]
            args += [member, self.codec.encode(value)]
        for member, _ in items:
            self.forget(space.entry(member))
        return int(await _PUT(self.client, keys, args))

    @redis_errors
    async def delete(
        self, space: Space, member: str, also: Callable[[Any], None] | None = None
    ) -> bool:
        """Remove ``member`` (and run ``also(pipe)``'s commands) in one MULTI; True if cached."""
        self.forget(space.entry(member))
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(space.entry(member))
        pipe.delete(space.lock(member))
        pipe.srem(space.index, member)
        pipe.srem(space.all, member)
        if also is not None:
            also(pipe)
        replies = await pipe.execute()
        return bool(replies[0])

    @redis_errors
    async def invalidate(self, space: Space, member: str | None) -> int:
        """Drop one member (and the cached list), or everything of the space.

        Returns the number of entries removed.
        """
        if member is None:
            self.forget(space.entry_prefix)
            self.forget(space.all)
            keys = [space.index, space.all, space.all_lock]
            args = [space.entry_prefix, space.lock_prefix]
            return int(await _INVALIDATE_ALL(self.client, keys, args))
        self.forget(space.entry(member))
        self.forget(space.all)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(space.entry(member))
        pipe.delete(space.lock(member), space.all, space.all_lock)
        replies = await pipe.execute()
        return int(replies[0])

    # --- lists ---------------------------------------------------------------------------------

    @redis_errors
    async def _members_values(self, space: Space, members: Sequence[bytes | str]) -> list[M]:
        names = sorted(m.decode() if isinstance(m, bytes) else m for m in members if m)
        if not names:
            return []
        raws = await self.client.mget([space.entry(name) for name in names])
        return [v for v in (self.decode(r) for r in raws if r is not None) if v is not None]

    @redis_errors
    async def cached_list(self, space: Space) -> list[M] | None:
        """The cached complete list (sorted by member), or None when there is none."""
        members = await self.client.smembers(space.all)
        if not members:
            return None
        return await self._members_values(space, list(members))

    @redis_errors
    async def cached_members(self, space: Space) -> list[M]:
        """Every entry cached in the space (no loader involved), sorted by member."""
        members = await self.client.smembers(space.index)
        return await self._members_values(space, list(members))

    async def load_list(
        self, space: Space, load: Callable[[], Awaitable[list[tuple[str, M]]]] | None
    ) -> list[M]:
        """The complete list: cached, else loaded once; without a loader, what is cached."""
        if load is None:
            return await self.cached_members(space)
        cached = await self.cached_list(space)
        if cached is not None:
            return cached
        return await self._flight(space.all, lambda: self._fill_list(space, load))

    @redis_errors
    async def _fill_list(
        self, space: Space, load: Callable[[], Awaitable[list[tuple[str, M]]]]
    ) -> list[M]:
        token = secrets.token_hex(8)
        lock_keys = [space.all, space.all_lock, space.index]
        found, members = await self._claim(lock_keys, token, "")
        if found:
            return await self._members_values(space, members)
        try:
            items = await load()
        except BaseException:
            await _RELEASE(self.client, [space.all_lock], [token])
            raise
        await self.store_list(space, items, token, self.settings.metadata_ttl)
        return [value for _, value in sorted(items, key=lambda item: item[0])]

    @redis_errors
    async def store_list(
        self, space: Space, items: Sequence[tuple[str, M]], token: str, ttl: float
    ) -> bool:
        """Store a complete list; with ``token``, only if that fill lock is still held."""
        keys = [space.index, space.all, space.all_lock]
        args: list[Any] = [token, self._ms(ttl), self._ms(max(ttl, self._index_ms / 1000))]
        for member, value in items:
            keys.append(space.entry(member))
            args += [member, self.codec.encode(value)]
            self.forget(space.entry(member))
        return bool(await _FILL_LIST(self.client, keys, args))
