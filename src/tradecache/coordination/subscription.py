"""Reliable push subscriptions: the core of the event bus, reusable by every store.

Redis pub/sub is fire-and-forget: a message published while a subscriber is
reconnecting is gone, and redis-py reconnects without telling anyone (see
research/coordination.md, experiment B3). A :class:`Subscription` closes that
hole for any channel whose messages are tradecache envelopes
(:mod:`tradecache.envelope`), which carry a per-topic sequence number:

* ``await sub`` (or ``async with sub``) returns only after the server
  acknowledged every channel, so a message published after that is never missed;
* ``async for item in sub`` yields :class:`Event` objects in sequence order per
  topic and, where messages could not be recovered, :class:`Gap` objects naming
  the missing sequence numbers: nothing is ever lost silently;
* a jump in a topic's sequence, or a reconnect, is filled through the
  ``backfill`` hook; duplicates (a message both backfilled and received live)
  are dropped;
* after a lost connection it reconnects at once and then with backoff (up to
  1 s), resubscribes and resynchronises every topic it tracks;
* the queue between the reader and the consumer is bounded (``queue_size``);
  the ``overflow`` policy decides what goes, and what goes is reported as a
  ``Gap(reason="overflow")``;
* a malformed message (not an envelope, wrong topic for its channel) is
  counted in :attr:`Subscription.malformed` and logged, never raised;
* it reads on its own connection (one per node with sharded pub/sub on a
  Cluster), never from the shared pool. Idle periods are not errors: after
  ``health_interval`` seconds of silence it sends a ``PING``, and only a
  missing answer counts as a dead connection.

Two optional hooks make it reusable by stores with their own storage:

``positions(topics) -> {topic: (seq, time_ms)}``
    The latest published sequence number (and its server time, epoch ms) of
    each topic; topics never published are left out. Called just *before*
    subscribing, to set each topic's cursor, and after every reconnect, to
    learn what was missed. Without it a topic's cursor starts at its first
    received message, and missed messages are only noticed when the next one
    arrives.

``backfill(topic, first_seq, last_seq) -> [Envelope | bytes, ...]``
    Whatever it can still produce of ``first_seq..last_seq`` (``last_seq`` is
    ``None`` when unknown: "everything after ``first_seq``"), in any order.
    The event bus reads its backlog stream; a store that keeps only the
    current value returns that value's envelope. Sequence numbers the hook
    does not return are reported as a :class:`Gap`. An exception other than
    a lost connection is logged and counts as "nothing recovered".

Example: the ticker store watches one channel per exchange, envelopes of
type ``"ticker"`` with per-symbol topics and sequence numbers, and on a gap
re-reads the current ticker (an intermediate tick is worthless once a newer
one exists)::

    from tradecache.coordination.subscription import Event, Gap, Subscription, use_sharded

    async def current(topic, first_seq, last_seq):
        raw = await ctx.client.hget(ctx.keys.key("ticker", exchange), topic)  # stored envelope
        return [raw] if raw is not None else []

    sub = Subscription(
        ctx,
        {ctx.keys.channel("ticker", exchange): None},  # None: any topic on this channel
        sharded=use_sharded(ctx),
        backfill=current,
    )
    async with sub:  # returns once subscribed
        async for item in sub:
            if isinstance(item, Event):
                ticker = item.decode(Ticker)
            else:  # a Gap: ticks skipped; the newest one follows as an Event
                log.info("skipped %s..%s of %s", item.first_seq, item.last_seq, item.topic)

A channel mapped to a topic (``{channel: "orders"}``) only accepts envelopes of
that topic; anything else on it is counted as malformed.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal, TypeVar, get_args

import msgspec
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._tasks import cancel_and_wait
from ..connection import send_commands
from ..context import Context
from ..envelope import Envelope, decode_envelope
from ..errors import TradecacheError, ValidationError, WaitTimeout, translate_redis_errors

__all__ = [
    "Backfill",
    "Event",
    "Gap",
    "Overflow",
    "Positions",
    "Subscription",
    "SubscriptionOverflow",
    "publish_command",
    "use_sharded",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

Overflow = Literal["drop_oldest", "drop_newest", "error"]
Backfill = Callable[[str, int, int | None], Awaitable[Sequence[Envelope | bytes | str]]]
Positions = Callable[[Sequence[str]], Awaitable[Mapping[str, tuple[int, int]]]]

_OVERFLOWS: Final = frozenset(get_args(Overflow))
_BACKOFF_MIN: Final = 0.05
_BACKOFF_MAX: Final = 1.0
_LOG_EVERY: Final = 1.0  # seconds between two malformed-message warnings
# Failures that end one connection but not the subscription: reconnect and resync.
_LINK_ERRORS: Final = (RedisError, OSError)


def use_sharded(ctx: Context) -> bool:
    """True when channels should use sharded pub/sub: a Cluster of Redis 7 or later.

    Example: ``Subscription(ctx, channels, sharded=use_sharded(ctx))``.
    """
    return ctx.is_cluster and ctx.supports(7)


def publish_command(ctx: Context) -> str:
    """``"SPUBLISH"`` or ``"PUBLISH"``: the command matching :func:`use_sharded`.

    Pass it to a Lua script that publishes, so publisher and subscriber agree::

        await SCRIPT(ctx.client, keys=[key], args=[channel, publish_command(ctx), ...])
    """
    return "SPUBLISH" if use_sharded(ctx) else "PUBLISH"


class SubscriptionOverflow(TradecacheError, BufferError):
    """The consumer fell behind a subscription with ``overflow="error"``."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages ``first_seq..last_seq`` of ``topic`` will not be delivered.

    ``reason`` says why:

    * ``"missed"``: lost while disconnected (or by Redis) and no longer
      available for backfill (trimmed from the backlog, or no backfill);
    * ``"overflow"``: dropped by the subscriber's queue overflow policy;
    * ``"reset"``: the topic's sequence restarted (data lost or deleted on the
      server); ``last_seq`` is ``None`` because how much of the old sequence
      was lost is unknown.
    """

    topic: str
    first_seq: int
    last_seq: int | None
    reason: str = "missed"

    @property
    def count(self) -> int | None:
        """Number of messages missing, ``None`` when unknown (``reason="reset"``)."""
        return None if self.last_seq is None else self.last_seq - self.first_seq + 1


class Event:
    """One delivered message: ``topic``, ``seq``, ``time``, ``payload``, ``type``, ``source``.

    ``payload`` is decoded from JSON on first access; :meth:`decode` decodes
    it into a type instead. ``envelope`` is the raw :class:`Envelope`.
    """

    __slots__ = ("_payload", "envelope")

    _UNSET: Final[Any] = object()

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope
        self._payload: Any = Event._UNSET

    @property
    def topic(self) -> str:
        """The topic the sequence number counts in."""
        return self.envelope.topic

    @property
    def seq(self) -> int:
        """Sequence number, strictly increasing per topic."""
        return self.envelope.seq

    @property
    def type(self) -> str:
        """What the payload is (``"event"``, ``"ticker"``, ``"state"`` ...)."""
        return self.envelope.type

    @property
    def source(self) -> str:
        """Who published it (``host:pid`` by default)."""
        return self.envelope.source

    @property
    def time_ms(self) -> int:
        """Publish time in epoch milliseconds (server clock)."""
        return self.envelope.time

    @property
    def time(self) -> datetime:
        """Publish time as an aware UTC datetime (server clock)."""
        return datetime.fromtimestamp(self.envelope.time / 1000, tz=UTC)

    @property
    def payload(self) -> Any:
        """The payload as plain Python values (dicts, lists, str, numbers ...)."""
        if self._payload is Event._UNSET:
            self._payload = msgspec.json.decode(self.envelope.payload)
        return self._payload

    def decode(self, type_: builtins.type[T]) -> T:
        """The payload decoded into ``type_``; ``ValidationError`` if it does not fit.

        Example: ``ticker = event.decode(Ticker)``
        """
        return self.envelope.decode(type_)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.envelope == self.envelope

    def __hash__(self) -> int:
        return hash((self.envelope.topic, self.envelope.seq, self.envelope.time))

    def __repr__(self) -> str:
        return f"Event(topic={self.topic!r}, seq={self.seq}, type={self.type!r})"


Item = Event | Gap


def _span(item: Item) -> tuple[int, int | None]:
    if isinstance(item, Event):
        return item.seq, item.seq
    return item.first_seq, item.last_seq


class _Buffer:
    """The bounded queue between the reader and the consumer.

    Dropped items are never forgotten: their sequence ranges are merged per
    topic and handed out as ``Gap(reason="overflow")`` at the place the items
    would have been (before the topic's later items).
    """

    __slots__ = ("_items", "_lost", "_overflow", "_size", "dropped")

    def __init__(self, size: int, overflow: Overflow) -> None:
        self._size = size
        self._overflow = overflow
        self._items: deque[Item] = deque()
        self._lost: dict[str, tuple[int, int | None]] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Item) -> None:
        items = self._items
        if self._overflow == "drop_newest":
            if item.topic in self._lost:
                # Later items of a topic with a pending loss queue behind its Gap.
                if len(items) + 2 > self._size:
                    self._lose(item)
                    return
                items.append(self._pop_lost(item.topic))
            elif len(items) >= self._size:
                self._lose(item)
                return
        elif len(items) >= self._size:
            if self._overflow == "error":
                raise SubscriptionOverflow(
                    f"subscriber queue full ({self._size} items): the consumer fell behind"
                )
            self._lose(items.popleft())
        items.append(item)

    def pop(self) -> Item | None:
        # drop_oldest loses the oldest items: their gaps come before everything
        # queued. drop_newest loses the newest: theirs come after the queue.
        if self._lost and (self._overflow == "drop_oldest" or not self._items):
            return self._pop_lost(next(iter(self._lost)))
        if self._items:
            return self._items.popleft()
        return None

    def clear(self) -> None:
        self._items.clear()
        self._lost.clear()

    def _lose(self, item: Item) -> None:
        if isinstance(item, Event):
            self.dropped += 1
        first, last = _span(item)
        previous = self._lost.get(item.topic)
        if previous is not None:
            first = min(first, previous[0])
            last = None if last is None or previous[1] is None else max(last, previous[1])
        self._lost[item.topic] = (first, last)

    def _pop_lost(self, topic: str) -> Gap:
        first, last = self._lost.pop(topic)
        return Gap(topic, first, last, "overflow")


class _Topic:
    """Cursor of one topic: last sequence number accounted for, newest time seen."""

    __slots__ = ("channel", "seq", "time")

    def __init__(self, channel: str, seq: int, time_ms: int) -> None:
        self.channel = channel
        self.seq = seq
        self.time = time_ms


def _node(client: RedisCluster, channel: str) -> Any:
    # A sharded channel lives on the node owning its slot; an unsharded one works
    # anywhere, and the slot owner is as good a choice as any (and deterministic).
    return client.get_node_from_key(channel)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _read_reply(conn: Any, silence: float) -> Any:
    """The next reply, or ``None`` after ``silence`` seconds without one."""
    return await conn.read_response(timeout=silence, push_request=True)


class _Link:
    """One server connection carrying some of a subscription's channels."""

    __slots__ = ("channels", "conn", "sub", "task", "waiting")

    def __init__(self, sub: Subscription, channels: list[str]) -> None:
        self.sub = sub
        self.channels = channels
        self.conn: Any = None
        self.task: asyncio.Task[None] | None = None
        self.waiting: set[str] = set()

    async def open(self) -> None:
        """Connect, subscribe, and return once every channel is acknowledged."""
        conn = self.sub._new_connection(self.channels[0])
        try:
            await conn.connect()
            if self.sub.sharded:
                # One SSUBSCRIBE per channel: channels of one command must share a slot.
                commands = [("SSUBSCRIBE", channel) for channel in self.channels]
                await send_commands(conn, *commands)
            else:
                await send_commands(conn, ("SUBSCRIBE", *self.channels))
            self.waiting = set(self.channels)
            while self.waiting:
                # Bounded by socket_timeout: an unanswered SUBSCRIBE is an outage.
                reply = await conn.read_response(push_request=True)
                await self.sub._on_reply(self, reply)
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        self.conn = conn

    async def run(self) -> None:
        """Read until closed; on a lost connection reconnect, resubscribe and resync."""
        delay = 0.0
        while True:
            try:
                if self.conn is None:
                    await self.open()
                    await self.sub._resync(self)
                    self.sub.reconnects += 1
                    delay = 0.0
                await self._read()
            except _LINK_ERRORS as exc:
                self.sub._connection_lost(exc)
                await self.drop()
                await asyncio.sleep(delay)
                delay = min(max(delay * 2, _BACKOFF_MIN), _BACKOFF_MAX)

    async def _read(self) -> None:
        conn = self.conn
        interval = self.sub.health_interval
        pinged = False
        while True:
            # (One call per reply: coverage.py loses the lines right after an await
            # whose callee swallowed a timeout's cancellation, so the logic lives in _on.)
            pinged = await self._on(conn, await _read_reply(conn, interval), pinged)

    async def _on(self, conn: Any, reply: Any, pinged: bool) -> bool:
        """Handle one reply, or a silence (``None``); return whether a PING is unanswered."""
        if reply is not None:
            await self.sub._on_reply(self, reply)
            return False
        if pinged:  # silence even after a PING: the server is gone
            raise RedisTimeoutError(f"no answer to PING within {self.sub.health_interval}s")
        await send_commands(conn, ("PING",))  # silence is not an error: is the server there?
        return True

    async def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.disconnect(nowait=True)


class Subscription:
    """A reliable subscription to tradecache envelopes on some channels.

    ``channels`` maps each channel to the one topic it carries, or to ``None``
    when it carries several (an iterable of channels means all ``None``).
    ``sharded`` uses ``SSUBSCRIBE`` (see :func:`use_sharded`). ``backfill`` and
    ``positions`` are the hooks described in the module docstring.
    ``queue_size`` (default ``settings.subscriber_queue``) bounds the queue;
    ``overflow`` is ``"drop_oldest"`` (default), ``"drop_newest"`` or
    ``"error"`` (the iterator raises :class:`SubscriptionOverflow`).

    A subscription is awaitable and an async context manager; both start it::

        sub = await Subscription(ctx, {channel: "orders"}, positions=..., backfill=...)
        async for item in sub: ...
        await sub.close()

        async with Subscription(ctx, [channel]) as sub:
            item = await sub.get(timeout=1.0)

    Counters (read-only): ``malformed``, ``duplicates``, ``gaps``, ``dropped``,
    ``reconnects``, ``disconnects``.
    """

    def __init__(
        self,
        ctx: Context,
        channels: Mapping[str, str | None] | Iterable[str],
        *,
        sharded: bool = False,
        backfill: Backfill | None = None,
        positions: Positions | None = None,
        queue_size: int | None = None,
        overflow: Overflow = "drop_oldest",
        health_interval: float = 5.0,
        name: str = "subscription",
    ) -> None:
        if not isinstance(channels, Mapping):
            channels = dict.fromkeys(channels)
        if not channels:
            raise ValidationError("channels", "subscribe to at least one channel")
        if overflow not in _OVERFLOWS:
            raise ValidationError("overflow", f"must be one of {sorted(_OVERFLOWS)}")
        size = ctx.settings.subscriber_queue if queue_size is None else queue_size
        if not isinstance(size, int) or size < 1:
            raise ValidationError("queue_size", "must be an int >= 1")
        if not health_interval > 0:
            raise ValidationError("health_interval", "must be > 0")
        self._ctx = ctx
        self._channels: dict[str, str | None] = dict(channels)
        self.sharded = sharded
        self.health_interval = health_interval
        self.name = name
        self._backfill = backfill
        self._positions = positions
        self._buffer = _Buffer(size, overflow)
        self._topics: dict[str, _Topic] = {}
        self._links: list[_Link] = []
        self._wakeup = asyncio.Event()
        self._starting: asyncio.Future[None] | None = None
        self._closed = False
        self._failure: BaseException | None = None
        self._last_warning = -_LOG_EVERY
        self.malformed = 0
        self.duplicates = 0
        self.gaps = 0
        self.reconnects = 0
        self.disconnects = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._links else "new")
        return f"<Subscription {self.name} {state} channels={len(self._channels)}>"

    # --- public --------------------------------------------------------------------------------

    @property
    def channels(self) -> list[str]:
        """The channels this subscription listens on."""
        return list(self._channels)

    @property
    def connected(self) -> bool:
        """True while every connection of the subscription is up."""
        return bool(self._links) and all(link.conn is not None for link in self._links)

    @property
    def dropped(self) -> int:
        """Events dropped by the overflow policy (each is also inside a reported Gap)."""
        return self._buffer.dropped

    @property
    def pending(self) -> int:
        """Items waiting in the queue."""
        return len(self._buffer)

    def cursor(self, topic: str) -> int | None:
        """The last sequence number of ``topic`` accounted for (delivered or in a Gap).

        ``None`` for a topic not tracked yet. Example: ``sub.cursor("orders")``.
        """
        state = self._topics.get(topic)
        return None if state is None else state.seq

    async def start(self) -> Subscription:
        """Subscribe; return once the server acknowledged every channel.

        Raises ``ConnectionLost`` when Redis is unreachable and ``CommandError``
        when it refuses (e.g. ``sharded=True`` on Redis 6). Safe to call twice.

        Example: ``sub = await Subscription(ctx, [channel]).start()``
        """
        if self._closed:
            raise TradecacheError(f"{self.name}: subscription is closed")
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await self._starting
        return self

    def __await__(self) -> Generator[Any, None, Subscription]:
        return self.start().__await__()

    async def __aenter__(self) -> Subscription:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        if self._starting is None and not self._closed:
            await self.start()
        while True:
            failure = self._failure
            if failure is not None:
                self._failure = None
                await self.close()
                raise failure
            if self._closed:
                raise StopAsyncIteration
            item = self._buffer.pop()
            if item is not None:
                return item
            self._wakeup.clear()
            await self._wakeup.wait()

    async def get(self, timeout: float | None = None) -> Item | None:  # noqa: ASYNC109
        """The next item, waiting at most ``timeout`` seconds; ``None`` once closed.

        Raises :class:`~tradecache.errors.WaitTimeout` when nothing arrived in time.

        Example: ``item = await sub.get(timeout=1.0)``
        """
        try:
            async with asyncio.timeout(timeout):
                return await self.__anext__()
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise WaitTimeout(f"nothing received within {timeout}s") from None

    async def close(self) -> None:
        """Unsubscribe and close the connections. Safe to call twice.

        Items still queued are discarded; an iterating consumer stops.

        Example: ``await sub.close()`` (or leave ``async with sub:``)
        """
        if self._closed:
            return
        self._closed = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()  # _start drops whatever it opened
        await cancel_and_wait(*(link.task for link in self._links))
        for link in self._links:
            await link.drop()
        self._buffer.clear()
        self._wakeup.set()

    # --- connections ---------------------------------------------------------------------------

    async def _start(self) -> None:
        with translate_redis_errors():
            topics = {t: c for c, t in self._channels.items() if t is not None}
            if self._positions is not None:
                latest = await self._positions(list(topics)) if topics else {}
                for topic, channel in topics.items():
                    seq, time_ms = latest.get(topic, (0, 0))
                    self._topics[topic] = _Topic(channel, seq, time_ms)
            links = [_Link(self, group) for group in self._groups()]
            try:
                await asyncio.gather(*(link.open() for link in links))
            except BaseException:
                for link in links:
                    await link.drop()
                raise
        self._links = links
        for link in links:
            link.task = asyncio.create_task(link.run(), name=f"tradecache {self.name}")
            link.task.add_done_callback(self._on_task_done)

    def _groups(self) -> list[list[str]]:
        client = self._ctx.client
        if not (self.sharded and isinstance(client, RedisCluster)):
            return [list(self._channels)]
        # Sharded channels live on the node that owns their slot: one link per node.
        groups: dict[str, list[str]] = {}
        for channel in self._channels:
            groups.setdefault(_node(client, channel).name, []).append(channel)
        return list(groups.values())

    def _new_connection(self, channel: str) -> Any:
        client = self._ctx.client
        if isinstance(client, RedisCluster):
            node = _node(client, channel)
            return node.connection_class(**node.connection_kwargs)
        pool: Any = client.connection_pool  # also Sentinel's pool: it finds the master
        return pool.make_connection()

    def _connection_lost(self, exc: BaseException) -> None:
        self.disconnects += 1
        logger.warning(
            "%s: connection lost (%s); reconnecting",
            self.name,
            exc,
            extra={"subscription": self.name},
        )

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        # A link task only ends when cancelled (close) or by an unexpected error;
        # the consumer must hear of the latter, never wait forever on a dead reader.
        if task.cancelled():
            return
        exc = task.exception()
        logger.error("%s: reader stopped by %r", self.name, exc, extra={"subscription": self.name})
        self._failure = self._failure or exc
        self._wakeup.set()

    # --- messages ------------------------------------------------------------------------------

    async def _on_reply(self, link: _Link, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return  # PONG
        kind = _text(reply[0])
        channel = _text(reply[1])
        if kind.endswith("message"):
            envelope = self._parse(channel, reply[2], self._channels.get(channel))
            if envelope is not None:
                await self._receive(channel, envelope)
        elif kind.endswith("unsubscribe"):
            # Unasked: the server dropped us (a sharded channel's slot moved).
            raise RedisConnectionError(f"server ended the subscription to {channel}")
        else:  # (s)subscribe acknowledgement
            link.waiting.discard(channel)

    def _parse(self, channel: str, data: Any, topic: str | None) -> Envelope | None:
        if isinstance(data, Envelope):
            envelope = data
        else:
            try:
                envelope = decode_envelope(data)
            except ValidationError as exc:
                self._malformed(channel, exc.reason)
                return None
        if topic is not None and envelope.topic != topic:
            self._malformed(channel, f"topic {envelope.topic!r} where {topic!r} was expected")
            return None
        return envelope

    def _malformed(self, channel: str, reason: str) -> None:
        self.malformed += 1
        now = time.monotonic()
        if now - self._last_warning >= _LOG_EVERY:
            self._last_warning = now
            logger.warning(
                "%s: malformed message on %s (%d so far): %s",
                self.name,
                channel,
                self.malformed,
                reason,
                extra={"subscription": self.name, "channel": channel},
            )

    async def _receive(self, channel: str, envelope: Envelope) -> None:
        state = self._topics.get(envelope.topic)
        if state is None:  # first sight of an untracked topic: it sets the cursor
            state = self._topics[envelope.topic] = _Topic(channel, envelope.seq - 1, 0)
        elif envelope.seq <= state.seq:
            if envelope.time <= state.time:
                self.duplicates += 1
                return
            # An old number with a newer time: the publisher's sequence restarted.
            self._reset(envelope.topic, state)
        if envelope.seq > state.seq + 1:
            await self._fill(envelope.topic, state, envelope.seq - 1)
        self._deliver(envelope.topic, state, envelope)

    def _deliver(self, topic: str, state: _Topic, envelope: Envelope) -> None:
        if envelope.seq <= state.seq:
            self.duplicates += 1
            return
        if envelope.seq > state.seq + 1:
            self._gap(topic, state.seq + 1, envelope.seq - 1, "missed")
        state.seq = envelope.seq
        state.time = max(state.time, envelope.time)
        self._put(Event(envelope))

    async def _fill(self, topic: str, state: _Topic, last: int | None) -> None:
        """Recover ``state.seq + 1 .. last`` through the hook; report the rest as a Gap."""
        if self._backfill is not None:
            try:
                found = await self._backfill(topic, state.seq + 1, last)
            except _LINK_ERRORS:
                raise
            except Exception:
                logger.exception(
                    "%s: backfill of %s failed",
                    self.name,
                    topic,
                    extra={"subscription": self.name, "topic": topic},
                )
                found = ()
            envelopes = [self._parse(state.channel, raw, topic) for raw in found]
            for envelope in sorted(filter(None, envelopes), key=lambda e: e.seq):
                self._deliver(topic, state, envelope)
        if last is not None and state.seq < last:
            self._gap(topic, state.seq + 1, last, "missed")
            state.seq = last

    async def _resync(self, link: _Link) -> None:
        """After a reconnect: recover what each topic of ``link`` missed meanwhile."""
        channels = set(link.channels)
        topics = [topic for topic, state in self._topics.items() if state.channel in channels]
        if not topics or (self._positions is None and self._backfill is None):
            return
        latest = await self._positions(topics) if self._positions is not None else {}
        for topic in topics:
            state = self._topics[topic]
            last = None
            if self._positions is not None:
                seq, _ = latest.get(topic, (0, 0))
                if seq < state.seq:
                    self._reset(topic, state)
                if seq <= state.seq:
                    continue
                last = seq
            await self._fill(topic, state, last)

    def _reset(self, topic: str, state: _Topic) -> None:
        logger.warning(
            "%s: sequence of %s restarted after %d",
            self.name,
            topic,
            state.seq,
            extra={"subscription": self.name, "topic": topic},
        )
        self._gap(topic, state.seq + 1, None, "reset")
        state.seq = 0
        state.time = 0

    def _gap(self, topic: str, first: int, last: int | None, reason: str) -> None:
        self.gaps += 1
        self._put(Gap(topic, first, last, reason))

    def _put(self, item: Item) -> None:
        try:
            self._buffer.put(item)
        except SubscriptionOverflow as exc:
            # Failed now, not once the reader's task has ended: a get() in between
            # must not hand out queued items as if nothing had happened.
            self._failure = self._failure or exc
            raise
        finally:
            self._wakeup.set()
