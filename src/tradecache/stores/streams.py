"""Consumer-group plumbing shared by the order queue and the trade streams.

Queues in tradecache are Redis Streams read through consumer groups, which
gives at-least-once delivery: an entry handed to a consumer stays *pending*
until it is acknowledged, and the entries of a consumer that crashed are taken
over with :meth:`StreamGroups.reclaim`. Both ``cache.orders`` and
``cache.trades`` use this module; their ``consume`` yields :class:`Delivery`
objects::

    async for delivery in cache.orders.consume("executors", "worker-1"):
        await execute(delivery.item)        # the typed model (an Order here)
        await delivery.ack()                # only now is it done

    # a supervisor, or every worker now and then:
    for delivery in await cache.orders.reclaim("executors", "worker-1", min_idle=30):
        await execute(delivery.item)
        await delivery.ack()

Guarantees:

* **At least once.** ``consume`` first re-delivers the entries this consumer
  name received earlier and never acknowledged (a restarted worker keeps its
  name and finds its work again), then waits for new ones. Entries of a
  consumer that never comes back are taken over by ``reclaim`` once they have
  been idle for ``min_idle`` seconds. A handler must therefore be idempotent.
* **Trimming never drops work silently.** Streams are capped at about
  ``settings.stream_maxlen`` entries, but the cap only removes entries every
  consumer group has received *and* acknowledged: while any group has an entry
  pending or not yet delivered, trimming stops short of it, so a lagging
  consumer makes the stream longer instead of losing entries. With no consumer
  group at all the plain cap applies. An entry that is pending but was deleted
  behind tradecache's back (``XDEL``, a manual ``XTRIM``) is acknowledged,
  logged at WARNING and counted in ``cache.stats()`` under ``<store>.missing``
  when ``consume`` or ``reclaim`` meets it.
* **Blocking respects the socket timeout.** Waiting is done in slices shorter
  than ``settings.socket_timeout``, so a long ``block`` never trips the client's
  read timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..context import Context
from ..errors import CommandError, ValidationError, redis_errors, translate_redis_errors
from ..keys import validate_part
from ..scripts import Script

__all__ = ["Delivery", "StreamGroups", "decode_id"]

T = TypeVar("T")

log = logging.getLogger(__name__)

# Field of a stream entry that holds the encoded item.
FIELD = "d"
_FIELD_BYTES = FIELD.encode()

# Longest single XREADGROUP BLOCK; also capped at half the socket timeout.
MAX_BLOCK_SLICE = 0.5

_RECLAIM = Script("stream_reclaim")

# Errors of a directly routed cluster read after which the normal (redirect-following,
# map-refreshing) path is tried once.
_REROUTE = (
    MovedError,
    AskError,
    TryAgainError,
    ClusterDownError,
    SlotNotCoveredError,
    RedisConnectionError,
    RedisTimeoutError,
)

Resolver = Callable[[], Awaitable[list[list[str]]]]


def decode_id(value: bytes | str) -> str:
    """A stream entry id as ``str`` (redis-py returns bytes)."""
    return value.decode() if isinstance(value, bytes) else value


@dataclass(slots=True, eq=False)
class Delivery(Generic[T]):
    """One entry handed to a consumer: ``item`` (the typed model), ``id``, ``ack()``.

    The entry stays pending in its group until :meth:`ack`; an unacknowledged
    entry is delivered again (to this consumer after a restart, or to another
    one through ``reclaim``).

    Example::

        async for delivery in cache.trades.consume("ohlcv", "w1", "binance", "BTC/USDT"):
            store(delivery.item)
            await delivery.ack()
    """

    item: T
    id: str
    stream: str
    group: str
    _client: Any = field(repr=False)

    @redis_errors
    async def ack(self) -> bool:
        """Acknowledge the entry; False when it was no longer pending (acked already).

        Example::

            if not await delivery.ack():
                log.info("someone else finished %s", delivery.id)
        """
        return bool(await self._client.xack(self.stream, self.group, self.id))


def _check_count(count: object, name: str = "count") -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValidationError(name, f"must be an int >= 1, got {count!r}")
    return count


def _check_seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(name, f"must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValidationError(name, f"must be a finite number >= 0, got {value!r}")
    return float(value)


class StreamGroups(Generic[T]):
    """Consume, reclaim and count pending entries of streams holding ``model`` items.

    ``name`` prefixes the metrics (``"orders"`` -> ``orders.missing``). Streams
    are given by key; ``consume`` takes a resolver returning the keys grouped by
    slot (keys in one group are read with one ``XREADGROUP``), called again on
    every wait so streams created meanwhile are picked up.

    Example::

        groups = StreamGroups(ctx, Order, "orders")
        async for delivery in groups.consume(resolver, "executors", "w1", count=10, block=None):
            ...
    """

    __slots__ = ("_client", "_ctx", "_ready", "metrics", "model", "name")

    def __init__(self, ctx: Context, model: type[T], name: str) -> None:
        self._ctx = ctx
        self._client: Any = ctx.client  # redis-py types replies as bytes | str | ...
        self.model = model
        self.name = name
        self.metrics = ctx.metrics
        self._ready: set[tuple[str, str]] = set()

    # --- helpers -------------------------------------------------------------------------------

    @staticmethod
    def check_names(group: object, consumer: object | None = None) -> None:
        """Validate a group (and consumer) name: ``ValidationError`` when unusable."""
        validate_part(group, "group")
        if consumer is not None:
            validate_part(consumer, "consumer")

    async def ensure_group(self, stream: str, group: str) -> None:
        """Create ``group`` on ``stream`` (from its first entry) unless it exists.

        Example: ``await groups.ensure_group(key, "executors")``
        """
        if (stream, group) in self._ready:
            return
        try:
            await self._client.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._ready.add((stream, group))

    def _forget(self, streams: Sequence[str], group: str) -> None:
        for stream in streams:
            self._ready.discard((stream, group))

    def _report_missing(self, stream: str, group: str, ids: Sequence[str]) -> None:
        for _ in ids:
            self.metrics.observe(f"{self.name}.missing", 0.0, error=True)
        log.warning(
            "%s: %d pending entries of group %r on %s no longer exist (deleted or trimmed "
            "outside tradecache) and were acknowledged: %s",
            self.name,
            len(ids),
            group,
            stream,
            ", ".join(ids),
            extra={"store": self.name, "group": group, "stream": stream},
        )

    async def _delivery(self, stream: str, group: str, entry_id: str, fields: Any) -> Delivery[T]:
        data = fields.get(_FIELD_BYTES) if isinstance(fields, dict) else None
        try:
            if data is None:
                raise ValidationError("entry", f"no {FIELD!r} field")
            item: T = self._ctx.codec.decode(data, self.model)
        except ValidationError as exc:
            # Acknowledged so it cannot wedge the group; it stays in the stream
            # (XRANGE) for inspection, and the caller sees the error.
            await self._client.xack(stream, group, entry_id)
            self.metrics.observe(f"{self.name}.malformed", 0.0, error=True)
            log.error(
                "%s: malformed entry %s on %s: %s",
                self.name,
                entry_id,
                stream,
                exc,
                extra={"store": self.name, "stream": stream, "entry_id": entry_id},
            )
            raise ValidationError(
                "entry", f"{stream} {entry_id} is not a valid {self.model.__name__}: {exc}"
            ) from exc
        return Delivery(item, entry_id, stream, group, self._client)

    def _slice(self) -> float:
        return min(MAX_BLOCK_SLICE, self._ctx.settings.socket_timeout / 2)

    async def _xreadgroup(
        self,
        streams: list[str],
        group: str,
        consumer: str,
        ids: list[str],
        count: int,
        block_ms: int | None,
    ) -> Any:
        if self._ctx.is_cluster:
            # redis-py finds the slot of XREADGROUP (keys after STREAMS) with an extra
            # COMMAND GETKEYS round trip per call; the keys share a slot, so route it.
            args: list[Any] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
            if block_ms is not None:
                args += ["BLOCK", block_ms]
            args += ["STREAMS", *streams, *ids]
            try:
                node = self._client.get_node_from_key(streams[0])
                return await self._client.execute_command(*args, target_nodes=node)
            except _REROUTE:
                pass  # slots moved or a node failed: the routed call refreshes the map
        request = dict(zip(streams, ids, strict=True))
        return await self._client.xreadgroup(group, consumer, request, count=count, block=block_ms)

    async def _read(
        self,
        streams: list[str],
        group: str,
        consumer: str,
        ids: list[str],
        count: int,
        block_ms: int | None,
    ) -> list[tuple[str, list[tuple[Any, Any]]]]:
        """One XREADGROUP; re-creates the group when the stream was deleted meanwhile."""
        try:
            reply = await self._xreadgroup(streams, group, consumer, ids, count, block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._forget(streams, group)
            for stream in streams:
                await self.ensure_group(stream, group)
            reply = await self._xreadgroup(streams, group, consumer, ids, count, block_ms)
        return [(decode_id(stream), entries) for stream, entries in reply or ()]

    # --- consume -------------------------------------------------------------------------------

    async def consume(
        self,
        resolve: Resolver,
        group: str,
        consumer: str,
        *,
        count: int = 10,
        block: float | None = None,
    ) -> AsyncIterator[Delivery[T]]:
        """Yield this consumer's unacknowledged entries, then new ones as they arrive.

        ``block`` is how long to wait, in seconds, while nothing arrives before
        the iteration ends (``None``: forever; ``0``: end as soon as the streams
        are drained). ``count`` entries are fetched per round trip.

        Example::

            async for delivery in groups.consume(resolve, "executors", "w1", block=5):
                ...
        """
        self.check_names(group, consumer)
        _check_count(count)
        limit = None if block is None else _check_seconds(block, "block")
        with translate_redis_errors():
            slots = await resolve()
            for keys in slots:
                for stream in keys:
                    await self.ensure_group(stream, group)
            # 1. entries this consumer name was given before and never acknowledged
            for keys in slots:
                async for delivery in self._history(keys, group, consumer, count):
                    yield delivery
            # 2. new entries; wait in slices shorter than the socket timeout
            idle_since = time.monotonic()
            while True:
                waited = time.monotonic() - idle_since
                wait = self._slice() if limit is None else min(limit - waited, self._slice())
                block_ms = math.ceil(wait * 1000) if wait > 0 else None
                batches = await self._read_new(slots, group, consumer, count, block_ms)
                delivered = False
                for stream, entries in batches:
                    for entry_id, fields in entries:
                        delivered = True
                        yield await self._delivery(stream, group, decode_id(entry_id), fields)
                if delivered:
                    idle_since = time.monotonic()
                elif limit is not None and time.monotonic() - idle_since >= limit:
                    return
                slots = await resolve()
                for keys in slots:
                    for stream in keys:
                        await self.ensure_group(stream, group)

    async def _history(
        self, keys: list[str], group: str, consumer: str, count: int
    ) -> AsyncIterator[Delivery[T]]:
        cursors = dict.fromkeys(keys, "0")
        while cursors:
            streams = list(cursors)
            reply = await self._read(streams, group, consumer, list(cursors.values()), count, None)
            done = set(streams)
            for stream, entries in reply:
                if not entries:
                    continue
                done.discard(stream)
                missing = []
                for raw_id, fields in entries:
                    entry_id = decode_id(raw_id)
                    cursors[stream] = entry_id
                    if not fields:  # pending, but deleted from the stream
                        missing.append(entry_id)
                        continue
                    yield await self._delivery(stream, group, entry_id, fields)
                if missing:
                    await self._client.xack(stream, group, *missing)
                    self._report_missing(stream, group, missing)
            for stream in done:
                del cursors[stream]

    async def _read_new(
        self,
        slots: list[list[str]],
        group: str,
        consumer: str,
        count: int,
        block_ms: int | None,
    ) -> list[tuple[str, list[tuple[Any, Any]]]]:
        if not slots:
            if block_ms:
                # nothing to read yet (no stream known): wait one slice, like a blocked read
                await asyncio.sleep(block_ms / 1000)
            return []
        if len(slots) == 1 or not self._ctx.is_cluster:
            # one server: every stream in one XREADGROUP, whatever its hash tag
            keys = [key for group_keys in slots for key in group_keys]
            return await self._read(keys, group, consumer, [">"] * len(keys), count, block_ms)
        # Streams on different slots (nodes) are read concurrently and all
        # replies kept: an entry the server handed out must reach the caller.
        replies = await asyncio.gather(
            *(self._read(k, group, consumer, [">"] * len(k), count, block_ms) for k in slots)
        )
        return [batch for reply in replies for batch in reply]

    # --- reclaim and pending -------------------------------------------------------------------

    @redis_errors
    async def reclaim(
        self,
        streams: Sequence[str],
        group: str,
        consumer: str,
        min_idle: float,
        *,
        count: int = 100,
    ) -> list[Delivery[T]]:
        """Take over entries pending for at least ``min_idle`` seconds in ``group``.

        Every such entry of every stream is claimed for ``consumer`` (XAUTOCLAIM,
        ``count`` per round trip) and returned; its idle time restarts, so two
        reclaimers never both get it. Pending entries that no longer exist are
        acknowledged and reported (see the module docs).

        Example: ``for d in await groups.reclaim([key], "executors", "w2", 30): ...``
        """
        self.check_names(group, consumer)
        idle_ms = math.ceil(_check_seconds(min_idle, "min_idle") * 1000)
        _check_count(count)
        deliveries: list[Delivery[T]] = []
        for stream in streams:
            cursor = "0-0"
            while True:
                try:
                    reply = await _RECLAIM(
                        self._client,
                        keys=[stream],
                        args=[group, consumer, idle_ms, cursor, count],
                    )
                except CommandError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    break  # no such stream or group: nothing to take over
                cursor = decode_id(reply[0])
                for raw_id, flat in reply[1]:
                    fields = dict(zip(flat[::2], flat[1::2], strict=True))
                    deliveries.append(
                        await self._delivery(stream, group, decode_id(raw_id), fields)
                    )
                if reply[2]:
                    self._report_missing(stream, group, [decode_id(i) for i in reply[2]])
                if cursor == "0-0":
                    break
        return deliveries

    @redis_errors
    async def pending(self, streams: Sequence[str], group: str) -> int:
        """Number of entries delivered to ``group`` and not yet acknowledged.

        A stream or group that does not exist counts 0.

        Example: ``await groups.pending([key], "executors")``
        """
        self.check_names(group)
        if not streams:
            return 0
        pipe = self._client.pipeline(transaction=False)
        for stream in streams:
            pipe.xpending(stream, group)
        total = 0
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, ResponseError) and "NOGROUP" in str(reply):
                continue
            if isinstance(reply, Exception):
                raise reply
            total += int(reply["pending"])
        return total
