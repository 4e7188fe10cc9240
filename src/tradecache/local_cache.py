"""Client-side caching of hot reads, kept correct by server-assisted invalidation.

Opt in with ``Cache.connect(..., local_cache=True)`` (or ``TRADECACHE_LOCAL_CACHE=1``).
Then ``tickers.get``/``get_all`` and ``exchanges.get``/``symbols.get`` answer
repeated reads from process memory, without a round trip::

    async with Cache.connect(url, local_cache=True, local_cache_size=50_000) as cache:
        await cache.tickers.get("binance", "BTC/USDT")    # miss: HGET, remembered
        await cache.tickers.get("binance", "BTC/USDT")    # hit: no I/O
        cache.local_cache.stats()                         # hits, misses, invalidations ...

**How it stays correct.** One dedicated connection per Redis node (per master
on a Cluster) runs ``CLIENT TRACKING on REDIRECT <its own id> BCAST PREFIX
<ns>:ticker: PREFIX <ns>:exmeta: PREFIX <ns>:symmeta:`` and subscribes to
``__redis__:invalidate`` (RESP2 pub/sub; Redis 6.2 and 7.x). With ``BCAST`` the
server keeps no per-read state: every write to a key under those prefixes, from
any client, sends the key's name to us. Then:

* an invalidation drops every entry of that key (a ticker hash: all its cached
  symbols); a ``null`` one (``FLUSHALL``/``FLUSHDB``) drops everything;
* a read stores its reply only if no invalidation of its key arrived between
  sending the read and receiving the reply (a per-key invalidation counter,
  checked against a ticket taken before the read): a reply that was in flight
  while a write happened is returned to its caller but never cached;
* when a tracking connection is lost or stays silent (no answer to a ``PING``
  within ``local_cache_health_interval``), the whole local cache is flushed and
  nothing is served from it (reads go to Redis) until every node's connection
  is back and tracking again;
* on a Cluster the cache follows the topology: a changed set of masters
  rebuilds the connections (and flushes), and a reply from a node without a
  tracking connection is not cached.

**Guarantee.** A read that starts after the invalidation of a write arrived
never returns the value from before that write (reads must go to the masters,
redis-py's default: with ``read_from_replicas`` a lagging replica's answer
could be cached). Staleness is bounded by the
delivery of one invalidation message (normally well under a millisecond on a
LAN); while the connection silently hangs, by at most twice the health
interval, after which the cache stops serving.

**Cost.** Entries are bounded by ``local_cache_size`` (least recently used
first out). Every write under the tracked prefixes costs the server one
message to every process with a local cache. A ticker write invalidates its
whole exchange hash, so under a busy feed the hit rate of that exchange drops:
the cache pays off for data read more often than it changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._tasks import cancel_and_wait
from .connection import send_commands

__all__ = ["MISS", "LocalCache", "LocalCacheStats"]

logger = logging.getLogger("tradecache.local_cache")

R = TypeVar("R")

#: What :meth:`LocalCache.get` returns when the key is not cached (``None`` is a value).
MISS: Final[Any] = object()

_CHANNEL: Final = "__redis__:invalidate"
_CHANNELS: Final = (_CHANNEL.encode(), _CHANNEL)  # bytes, or str with decode_responses
_BACKOFF_MIN: Final = 0.05
_BACKOFF_MAX: Final = 1.0
_ERRORS: Final = (RedisError, OSError)


@dataclass(frozen=True, slots=True)
class LocalCacheStats:
    """Counters of one local cache (since it was created).

    ``invalidations`` counts invalidated keys (a ``null`` invalidation counts as
    a ``flush``); ``flushes`` counts full flushes (reconnects, ``FLUSHALL``,
    topology changes); ``discarded`` counts replies not cached because an
    invalidation raced them; ``serving`` is False while a tracking connection is
    down.
    """

    hits: int
    misses: int
    invalidations: int
    flushes: int
    evictions: int
    discarded: int
    reconnects: int
    size: int
    max_size: int
    serving: bool


async def _next(conn: Any, silence: float) -> Any:
    """The next reply of a tracking connection, or None after ``silence`` seconds."""
    return await conn.read_response(timeout=silence, push_request=True)


class _Link:
    """One tracking connection: redirected to itself, subscribed to invalidations."""

    __slots__ = ("client_id", "conn", "name")

    def __init__(self, conn: Any, name: str) -> None:
        self.conn = conn
        self.name = name  # the node's name on a Cluster ("host:port"), else "redis"
        self.client_id = 0  # CLIENT ID on the server, once open

    async def open(self, prefixes: Sequence[str]) -> None:
        conn = self.conn
        await conn.connect()
        await send_commands(conn, ("CLIENT", "ID"))
        self.client_id = client_id = int(await conn.read_response())
        tracking = ["CLIENT", "TRACKING", "on", "REDIRECT", client_id, "BCAST"]
        for prefix in prefixes:
            tracking += ["PREFIX", prefix]
        await send_commands(conn, tracking, ("SUBSCRIBE", _CHANNEL))
        await conn.read_response()  # OK (an error reply raises)
        await conn.read_response(push_request=True)  # the subscribe acknowledgement

    async def close(self) -> None:
        await self.conn.disconnect(nowait=True)


class LocalCache:
    """An LRU of decoded values, flushed by Redis invalidation messages.

    Built and started by the :class:`~tradecache.Cache` facade when the
    ``local_cache`` setting is on (``cache.local_cache``); stores consult it
    through :meth:`get` and :meth:`fill`. Values must be immutable (frozen
    models, tuples): they are shared between callers.
    """

    def __init__(
        self,
        client: Any,
        prefixes: Sequence[str],
        max_size: int = 10_000,
        health_interval: float = 1.0,
        connect_timeout: float = 1.0,
    ) -> None:
        self.client = client
        self.prefixes = tuple(prefixes)
        self.max_size = max_size
        self.health_interval = health_interval
        self.connect_timeout = connect_timeout
        self._entries: OrderedDict[tuple[str, object], tuple[Any, float | None]] = OrderedDict()
        self._fields: dict[str, set[object]] = {}
        # Race detection: a counter of invalidation messages, and per key with a read in
        # flight the counter value of its last invalidation (dropped when no read is left).
        self._seq = 0
        self._epoch = 0
        self._inflight: dict[str, int] = {}
        self._touched: dict[str, int] = {}
        self._serving = False
        self._up = asyncio.Event()
        self._broken = asyncio.Event()
        self._links: list[_Link] = []
        self._nodes: frozenset[str] = frozenset()
        self._task: asyncio.Task[None] | None = None
        self._tracked_before = False
        self.hits = self.misses = self.invalidations = self.flushes = 0
        self.evictions = self.discarded = self.reconnects = 0

    def __repr__(self) -> str:
        state = "serving" if self._serving else "not serving"
        return f"<LocalCache {state} size={len(self._entries)}/{self.max_size}>"

    @property
    def links(self) -> list[tuple[str, int]]:
        """``(node name, CLIENT ID)`` of each open tracking connection (for admin and tests).

        Example: ``[(node, cid)] = cache.local_cache.links``
        """
        return [(link.name, link.client_id) for link in self._links]

    @property
    def serving(self) -> bool:
        """True while every tracking connection is up (entries are served and stored).

        Example: ``await wait_until(lambda: cache.local_cache.serving)``
        """
        return self._serving

    def __len__(self) -> int:
        """The number of cached entries: ``len(cache.local_cache)``."""
        return len(self._entries)

    def stats(self) -> LocalCacheStats:
        """Hit, miss, invalidation and flush counters, and the current size.

        Example::

            s = cache.local_cache.stats()
            print(f"hit rate {s.hits / max(1, s.hits + s.misses):.0%}")
        """
        return LocalCacheStats(
            hits=self.hits,
            misses=self.misses,
            invalidations=self.invalidations,
            flushes=self.flushes,
            evictions=self.evictions,
            discarded=self.discarded,
            reconnects=self.reconnects,
            size=len(self._entries),
            max_size=self.max_size,
            serving=self._serving,
        )

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the tracking connections; return once serving or after ``connect_timeout``.

        A cache that could not connect yet is not an error: reads go to Redis
        until the background task succeeds.

        Example: ``await local.start()``
        """
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tradecache local cache")
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._up.wait()
        except TimeoutError:
            logger.warning("local cache: tracking not up yet; reading from Redis meanwhile")

    async def close(self) -> None:
        """Stop tracking and drop every entry. Safe to call twice.

        Example: ``await local.close()`` (``Cache.close`` calls it)
        """
        await cancel_and_wait(self._task)
        self._task = None
        self._down()
        await self._drop_links()

    # --- the read path -------------------------------------------------------------------------

    def get(self, key: str, field: object = None) -> Any:
        """The cached value of ``(key, field)``, or :data:`MISS`.

        Example::

            value = local.get(hash_key, "BTC/USDT")
            if value is MISS:
                read = client.hget(hash_key, "BTC/USDT")
                value = await local.fill(hash_key, "BTC/USDT", read, decode)
        """
        entries = self._entries
        entry = entries.get((key, field))
        if entry is None or not self._serving:
            self.misses += 1
            return MISS
        expires = entry[1]
        if expires is not None and time.monotonic() >= expires:
            self.misses += 1
            return MISS
        entries.move_to_end((key, field))
        self.hits += 1
        return entry[0]

    def begin(self, key: str) -> tuple[int, int] | None:
        """A ticket for a read of ``key`` about to be sent; None when not serving.

        Every ticket must be handed back to :meth:`store` or :meth:`abandon`.

        Example::

            ticket = local.begin(key)
            try:
                raw = await client.get(key)
            except BaseException:
                local.abandon(key, ticket)
                raise
            local.store(key, None, decode(raw), ticket)
        """
        if not self._serving:
            return None
        self._inflight[key] = self._inflight.get(key, 0) + 1
        return (self._epoch, self._seq)

    def abandon(self, key: str, ticket: tuple[int, int] | None) -> None:
        """Hand back a ticket without storing (the read failed).

        Example: ``local.abandon(key, ticket)`` (see :meth:`begin`)
        """
        if ticket is None:
            return
        left = self._inflight[key] - 1
        if left:
            self._inflight[key] = left
        else:
            del self._inflight[key]
            self._touched.pop(key, None)

    def store(
        self,
        key: str,
        field: object,
        value: Any,
        ticket: tuple[int, int] | None,
        ttl: float | None = None,
    ) -> bool:
        """Cache ``value`` read with ``ticket`` unless an invalidation raced it; True if cached.

        ``ttl`` (seconds) bounds the entry's life locally (a key with a TTL
        expires lazily on the server, without an invalidation until then).

        Example: ``local.store(key, None, record, ticket, ttl=pttl / 1000)`` (see :meth:`begin`)
        """
        if ticket is None:
            return False
        touched = self._touched.get(key, -1)
        self.abandon(key, ticket)
        epoch, seq = ticket
        if epoch != self._epoch or touched > seq or not self._owned(key):
            self.discarded += 1
            return False
        entries = self._entries
        expires = None if ttl is None else time.monotonic() + ttl
        entries[(key, field)] = (value, expires)
        entries.move_to_end((key, field))
        self._fields.setdefault(key, set()).add(field)
        while len(entries) > self.max_size:
            (old_key, old_field), _ = entries.popitem(last=False)
            self._forget_field(old_key, old_field)
            self.evictions += 1
        return True

    async def fill(
        self, key: str, field: object, read: Awaitable[R], convert: Callable[[R], Any]
    ) -> Any:
        """Await ``read`` (the Redis read of ``key``), cache and return ``convert(reply)``.

        Example::

            ticker = await local.fill(key, symbol, client.hget(key, symbol), decode)
        """
        ticket = self.begin(key)
        try:
            value = convert(await read)
        except BaseException:
            self.abandon(key, ticket)
            raise
        self.store(key, field, value, ticket)
        return value

    def _owned(self, key: str) -> bool:
        """On a Cluster: True when the node serving ``key`` has a tracking connection."""
        client = self.client
        if not isinstance(client, RedisCluster):
            return True
        node = client.nodes_manager.get_node_from_slot(client.keyslot(key))
        if node.name in self._nodes:
            return True
        self._broken.set()  # the topology moved under us: rebuild the connections
        return False

    # --- invalidation --------------------------------------------------------------------------

    def invalidate(self, keys: Sequence[bytes | str] | None) -> None:
        """Apply one invalidation message: drop ``keys``' entries, or everything on None.

        Example: ``local.invalidate([b"tc:ticker:{binance}"])``
        """
        self._seq += 1
        if keys is None:
            self._flush()
            return
        seq = self._seq
        for raw in keys:
            key = raw.decode() if isinstance(raw, bytes) else raw
            self.invalidations += 1
            if key in self._inflight:
                self._touched[key] = seq
            fields = self._fields.pop(key, None)
            if fields:
                for field in fields:
                    del self._entries[(key, field)]

    def _forget_field(self, key: str, field: object) -> None:
        fields = self._fields[key]
        fields.discard(field)
        if not fields:
            del self._fields[key]

    def _flush(self) -> None:
        """Drop every entry and void every ticket handed out so far."""
        self._entries.clear()
        self._fields.clear()
        self._epoch += 1
        self.flushes += 1

    def _down(self, lost: bool = True) -> None:
        """Stop serving and flush (idempotent: nothing is cached while not serving)."""
        self._up.clear()
        if self._serving:
            if lost:
                logger.warning("local cache: invalidations lost; flushed, reading from Redis")
            self._serving = False
            self._flush()

    # --- the tracking connections --------------------------------------------------------------

    def _targets(self) -> list[tuple[str, Any]]:
        """``(node name, new connection)`` for every node to track."""
        client = self.client
        if isinstance(client, RedisCluster):
            targets = []
            for node in client.get_primaries():
                kwargs = {**node.connection_kwargs, "protocol": 2}
                targets.append((node.name, node.connection_class(**kwargs)))
            return targets
        pool: Any = client.connection_pool  # Sentinel's pool finds the current master
        kwargs = {**pool.connection_kwargs, "protocol": 2}
        return [("redis", pool.connection_class(**kwargs))]

    async def _drop_links(self) -> None:
        links, self._links = self._links, []
        for link in links:
            await link.close()

    async def _run(self) -> None:
        """Keep every node tracked; flush and stop serving whenever one is lost."""
        delay = 0.0
        try:
            while True:
                try:
                    if self._tracked_before and isinstance(self.client, RedisCluster):
                        await self.client.nodes_manager.initialize()  # did a failover move it?
                    await self._connect()
                    delay = 0.0
                    await self._watch()
                except _ERRORS as exc:
                    logger.warning("local cache: tracking connection failed: %r", exc)
                self._down()
                await self._drop_links()
                await asyncio.sleep(delay)
                delay = min(max(delay * 2, _BACKOFF_MIN), _BACKOFF_MAX)
        finally:
            self._down(lost=False)  # closed (or a bug): never serve without invalidations

    async def _connect(self) -> None:
        targets = self._targets()
        self._links = [_Link(conn, name) for name, conn in targets]
        opened = await asyncio.gather(
            *(link.open(self.prefixes) for link in self._links), return_exceptions=True
        )
        for outcome in opened:
            if isinstance(outcome, BaseException):
                raise outcome
        self._nodes = frozenset(name for name, _ in targets)
        self._broken.clear()
        # Nothing is cached now: _down() flushed and voided every ticket, and none was
        # handed out since. Entries stored from here on are covered by invalidations.
        self._serving = True
        self._up.set()
        if self._tracked_before:
            self.reconnects += 1
        self._tracked_before = True

    async def _watch(self) -> None:
        """Read every link until one fails or the Cluster's masters change."""
        readers = [asyncio.create_task(self._read(link)) for link in self._links]
        try:
            while not self._broken.is_set():
                try:
                    async with asyncio.timeout(self.health_interval):
                        await self._broken.wait()
                except TimeoutError:
                    if self._topology_changed():
                        return
            for task in readers:
                if task.done():
                    task.result()  # raises the reader's connection error
        finally:
            self._down(lost=False)  # first: no entry is served while the readers stop
            await cancel_and_wait(*readers)

    def _topology_changed(self) -> bool:
        client = self.client
        if not isinstance(client, RedisCluster):
            return False
        return frozenset(node.name for node in client.get_primaries()) != self._nodes

    async def _read(self, link: _Link) -> None:
        try:
            conn = link.conn
            pinged = False
            interval = self.health_interval
            while True:
                # One line per reply: coverage.py loses the line after an await whose callee
                # swallowed a timeout's cancellation (see subscription.py), so logic is in _on.
                pinged = await self._on(conn, await _next(conn, interval), pinged)
        except _ERRORS:
            self._down()  # at once: the next read must not be served from memory
            self._broken.set()
            raise

    async def _on(self, conn: Any, reply: Any, pinged: bool) -> bool:
        """Handle one reply or a silence (None); return True while a PING is unanswered."""
        if reply is None:
            if pinged:  # silence even after a PING: the server is gone or hung
                raise RedisTimeoutError(f"no answer to PING within {self.health_interval}s")
            await send_commands(conn, ("PING",))
            return True
        if isinstance(reply, list) and len(reply) == 3 and reply[1] in _CHANNELS:
            self.invalidate(reply[2])
        return False
