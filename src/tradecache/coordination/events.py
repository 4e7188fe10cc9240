"""The event bus (``cache.events``): pub/sub with sequence numbers, backfill and gaps.

Publishing is one Lua script (``scripts/events_publish.lua``): it takes the
topic's next sequence number, appends the envelope to the topic's capped
backlog stream (``settings.event_backlog`` entries) and publishes it, all
atomically, in one round trip. On a Cluster of Redis 7 or later it uses
sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``); the stream and the channel of
a topic share the ``{topic}`` hash tag. ::

    seq = await cache.events.publish("fills", {"order": "42", "qty": "0.5"})

    async with cache.events.subscribe("fills", "alerts") as sub:  # returns once subscribed
        async for item in sub:
            if isinstance(item, Event):
                print(item.topic, item.seq, item.payload)
            else:  # Gap: these could not be delivered (trimmed, overflow, reset)
                log.warning("missed %s %s..%s (%s)", item.topic, item.first_seq,
                            item.last_seq, item.reason)

A subscriber keeps a cursor per topic. A jump in sequence numbers, or a
reconnect after a lost connection, is filled from the backlog stream; what the
backlog no longer holds is reported as a :class:`Gap`. So every message
published after ``subscribe()`` returned is either delivered exactly once, in
order, or covered by a ``Gap``: never lost silently.

The machinery lives in :mod:`tradecache.coordination.subscription`
(:class:`Subscription`, reusable by stores with their own channels); this
module re-exports its public names.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from ..context import Context
from ..envelope import decode_envelope
from ..errors import ValidationError, redis_errors
from ..keys import validate_part
from ..metrics import instrumented
from ..scripts import Script
from .subscription import (
    Event,
    Gap,
    Overflow,
    Subscription,
    SubscriptionOverflow,
    publish_command,
    use_sharded,
)

__all__ = [
    "Event",
    "EventBus",
    "Gap",
    "Subscription",
    "SubscriptionOverflow",
    "default_source",
    "encode_payload",
]

_PUBLISH: Final = Script("events_publish", include=("envelope",))


def default_source() -> str:
    """``host:pid`` of this process: the default ``source`` of what it publishes.

    Example: ``default_source()  # 'worker-3:4711'``
    """
    return f"{socket.gethostname()}:{os.getpid()}"


def encode_payload(payload: Any) -> bytes:
    """JSON-encode a payload (msgspec rules: Decimal as str, datetime as ISO 8601 ...).

    Raises ``ValidationError("payload")`` for a value JSON cannot hold.

    >>> encode_payload({"qty": 1})
    b'{"qty":1}'
    """
    try:
        return msgspec.json.encode(payload)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValidationError("payload", f"cannot be encoded as JSON: {exc}") from None


def _seq(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])


def _field(fields: Mapping[Any, Any]) -> Any:
    return fields.get(b"e") or fields.get("e") or b""


class EventBus:
    """Publish and subscribe to topics; attached as ``cache.events``.

    A topic is any key-safe name (``"fills"``, ``"bot:7:alerts"``): no braces,
    globs or whitespace.
    """

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.metrics = ctx.metrics
        self.sharded = use_sharded(ctx)
        self._command = publish_command(ctx)
        self._source = default_source()

    def __repr__(self) -> str:
        return f"<EventBus namespace={self._ctx.keys.namespace!r} sharded={self.sharded}>"

    @instrumented("events.publish")
    async def publish(
        self, topic: str, payload: Any, *, type: str = "event", source: str | None = None
    ) -> int:
        """Publish ``payload`` (any JSON value) on ``topic``; return its sequence number.

        One round trip: sequence number, backlog append and publish are one Lua
        script. ``type`` labels the payload for receivers; ``source`` defaults to
        ``host:pid``. Bad input raises ``ValidationError`` and publishes nothing.

        Example::

            seq = await cache.events.publish("fills", {"order": "42"}, type="fill")
        """
        key = self._ctx.keys.events(topic)
        channel = self._ctx.keys.events_channel(topic)
        validate_part(type, "type", max_length=64)
        source = self._source if source is None else source
        if not isinstance(source, str) or len(source) > 200:
            raise ValidationError("source", "must be a str of at most 200 characters")
        data = encode_payload(payload)
        cap = self._ctx.settings.event_backlog
        args: list[str | bytes | int] = [channel, type, topic, source, data, cap, self._command]
        return int(await _PUBLISH(self._ctx.client, keys=[key], args=args))

    def subscribe(
        self,
        *topics: str,
        queue_size: int | None = None,
        overflow: Overflow = "drop_oldest",
        backfill: bool = True,
    ) -> Subscription:
        """Subscribe to ``topics``; await the result (or ``async with`` it).

        ``await`` returns once the server acknowledged the subscription, so
        nothing published afterwards is missed. Iterating yields
        :class:`Event` and :class:`Gap` items. ``queue_size`` (default
        ``settings.subscriber_queue``) bounds the queue; ``overflow`` is
        ``"drop_oldest"``, ``"drop_newest"`` or ``"error"``. With
        ``backfill=False`` missed messages are only reported as gaps.

        Example::

            sub = await cache.events.subscribe("fills")
            item = await sub.get(timeout=5)
            await sub.close()
        """
        if not topics:
            raise ValidationError("topics", "subscribe to at least one topic")
        channels = {self._ctx.keys.events_channel(topic): topic for topic in topics}
        return Subscription(
            self._ctx,
            channels,
            sharded=self.sharded,
            backfill=self._backfill if backfill else None,
            positions=self._positions,
            queue_size=queue_size,
            overflow=overflow,
            name="events",
        )

    @instrumented("events.last_seq")
    @redis_errors
    async def last_seq(self, topic: str) -> int:
        """The sequence number of the newest event of ``topic``; 0 if none.

        Example: ``await cache.events.last_seq("fills")``
        """
        latest = await self._positions([topic])
        return latest.get(topic, (0, 0))[0]

    @instrumented("events.recent")
    @redis_errors
    async def recent(self, topic: str, n: int = 100) -> list[Event]:
        """The newest ``n`` events of ``topic`` still in the backlog, oldest first.

        Reading never consumes anything. Example: ``await cache.events.recent("fills", 10)``
        """
        if not isinstance(n, int) or n < 1:
            raise ValidationError("n", "must be an int >= 1")
        key = self._ctx.keys.events(topic)
        entries: Any = await self._ctx.client.xrevrange(key, count=n)
        events = []
        for _, fields in reversed(entries):
            try:
                events.append(Event(decode_envelope(_field(fields))))
            except ValidationError:
                continue  # written by someone else; not ours to show
        return events

    # --- hooks of the subscription ---------------------------------------------------------

    @redis_errors
    async def _positions(self, topics: Sequence[str]) -> dict[str, tuple[int, int]]:
        pipe = self._ctx.client.pipeline(transaction=False)
        for topic in topics:
            pipe.xrevrange(self._ctx.keys.events(topic), count=1)
        replies: list[Any] = await pipe.execute()
        latest = {}
        for topic, entries in zip(topics, replies, strict=True):
            if entries:
                entry_id, fields = entries[0]
                try:
                    time_ms = decode_envelope(_field(fields)).time
                except ValidationError:
                    time_ms = 0
                latest[topic] = (_seq(entry_id), time_ms)
        return latest

    @redis_errors
    async def _backfill(self, topic: str, first: int, last: int | None) -> list[bytes]:
        key = self._ctx.keys.events(topic)
        end = "+" if last is None else str(last)
        count = self._ctx.settings.event_backlog
        entries: Any = await self._ctx.client.xrange(key, min=str(first), max=end, count=count)
        return [_field(fields) for _, fields in entries]
