"""The event bus and its reliable subscription core, on standalone and Cluster.

Faults are real: subscriber connections are killed with ``CLIENT KILL`` (on the
shared Cluster only this test's connections, found by client name), messages
are lost in transit by publishing them to the backlog but to no subscriber,
and backlogs are trimmed by a small ``event_backlog``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import pytest

from helpers.pubsub import kill_subscribers, publish_silently, subscribers
from tradecache import Cache
from tradecache.connection import create_client
from tradecache.coordination.events import (
    Event,
    EventBus,
    Gap,
    Subscription,
    SubscriptionOverflow,
    default_source,
    encode_payload,
)
from tradecache.coordination.subscription import _Buffer, use_sharded
from tradecache.envelope import decode_envelope, encode_envelope
from tradecache.errors import (
    CommandError,
    ConnectionLost,
    TradecacheError,
    ValidationError,
    WaitTimeout,
)
from tradecache.testing import wait_until


@pytest.fixture
async def cache(cache_factory, redis_namespace):
    # Named connections, so a test can kill exactly its own subscribers on the shared Cluster.
    return await cache_factory(client_name=redis_namespace)


async def next_millisecond(cache) -> None:
    """Wait until the server clock moved past the current millisecond."""

    async def now_ms() -> int:
        seconds, micros = await cache.client.time()
        return seconds * 1000 + micros // 1000

    start = await now_ms()

    async def later() -> bool:
        return await now_ms() > start

    await wait_until(later, timeout=5)


async def raw_publish(cache, channel: str, data: bytes) -> None:
    if use_sharded(cache.context):
        await cache.client.spublish(channel, data)
    else:
        await cache.client.publish(channel, data)


async def drain(sub, count: int) -> list[Event | Gap]:
    return [await sub.get(timeout=10) for _ in range(count)]


def spans(items) -> list[tuple]:
    return [
        (i.topic, i.seq) if isinstance(i, Event) else (i.topic, i.first_seq, i.last_seq, i.reason)
        for i in items
    ]


# --- publish / subscribe --------------------------------------------------------------------


async def test_round_trip(cache):
    bus = cache.events
    assert bus.sharded == (cache.is_cluster and cache.supports(7))
    assert "EventBus" in repr(bus)
    async with bus.subscribe("fills", "alerts") as sub:
        assert sub.connected
        assert sorted(sub.channels) == sorted(
            [cache.keys.events_channel("fills"), cache.keys.events_channel("alerts")]
        )
        before = datetime.now(UTC)
        assert await bus.publish("fills", {"qty": Decimal("0.5"), "id": 7}) == 1
        assert await bus.publish("alerts", [1, "two"], type="alert", source="bot-1") == 1
        assert await bus.publish("fills", "third") == 2
        items = await drain(sub, 3)
    assert spans(items) == [("fills", 1), ("alerts", 1), ("fills", 2)]
    first, second, third = items
    assert first.payload == {"qty": "0.5", "id": 7}
    assert first.decode(dict[str, str | int]) == {"qty": "0.5", "id": 7}
    assert first.type == "event" and first.source == default_source()
    assert second.type == "alert" and second.source == "bot-1" and second.payload == [1, "two"]
    assert abs((first.time - before).total_seconds()) < 60
    assert first.time_ms == first.envelope.time
    assert third.payload == "third"
    assert repr(first) == "Event(topic='fills', seq=1, type='event')"
    assert first == Event(first.envelope) and first not in (third, "x")
    assert len({first, Event(first.envelope), third}) == 2
    assert sub.malformed == sub.duplicates == sub.gaps == sub.dropped == 0
    assert not sub.connected


async def test_subscribe_returns_after_ack(cache):
    # No backfill: a message published before the server acknowledged would be lost.
    for n in range(15):
        sub = await cache.events.subscribe(f"t{n}", backfill=False)
        await cache.events.publish(f"t{n}", n)
        item = await sub.get(timeout=5)
        assert isinstance(item, Event) and item.payload == n
        await sub.close()


async def test_sequence_strictly_increasing(cache):
    bus = cache.events
    async with bus.subscribe("seq") as sub:
        # Concurrent publishers (fewer than the cluster client's per-node pool_size).
        seqs = await asyncio.gather(*(bus.publish("seq", n) for n in range(25)))
        assert sorted(seqs) == list(range(1, 26))
        items = await drain(sub, 25)
    assert [item.seq for item in items] == list(range(1, 26))
    assert [item.payload for item in items] == [seqs.index(s) for s in range(1, 26)]
    assert await bus.last_seq("seq") == 25
    assert await bus.last_seq("never") == 0


async def test_recent_reads_the_backlog(cache_factory):
    cache = await cache_factory(event_backlog=5)
    bus = cache.events
    for n in range(8):
        await bus.publish("hist", n)
    recent = await bus.recent("hist", 3)
    assert [(e.seq, e.payload) for e in recent] == [(6, 5), (7, 6), (8, 7)]
    assert [e.seq for e in await bus.recent("hist")] == [4, 5, 6, 7, 8]  # capped at 5
    await cache.client.xadd(cache.keys.events("hist"), {"e": b"junk"}, id="9-0")
    assert [e.seq for e in await bus.recent("hist", 2)] == [8]  # junk is skipped
    assert await bus.last_seq("hist") == 9
    assert await bus.recent("empty") == []
    with pytest.raises(ValidationError):
        await bus.recent("hist", 0)


async def test_invalid_input_publishes_nothing(cache):
    bus = cache.events
    with pytest.raises(ValidationError) as info:
        await bus.publish("bad{topic}", 1)
    assert info.value.field == "topic"
    with pytest.raises(ValidationError) as info:
        await bus.publish("t", object())
    assert info.value.field == "payload"
    with pytest.raises(ValidationError) as info:
        await bus.publish("t", 1, type="")
    assert info.value.field == "type"
    with pytest.raises(ValidationError) as info:
        await bus.publish("t", 1, source="x" * 201)
    assert info.value.field == "source"
    assert await bus.last_seq("t") == 0
    with pytest.raises(ValidationError):
        bus.subscribe()
    with pytest.raises(ValidationError):
        bus.subscribe("a b")
    with pytest.raises(ValidationError):
        bus.subscribe("t", overflow="block")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        bus.subscribe("t", queue_size=0)
    with pytest.raises(ValidationError):
        Subscription(cache.context, [])
    with pytest.raises(ValidationError):
        Subscription(cache.context, ["c"], health_interval=0)
    assert encode_payload({"a": [1]}) == b'{"a":[1]}'


async def test_publish_after_the_stream_was_emptied_continues_the_sequence(cache):
    bus = cache.events
    await bus.publish("e", 1)
    await bus.publish("e", 2)
    await cache.client.xtrim(cache.keys.events("e"), maxlen=0)
    assert await bus.publish("e", 3) == 3


# --- reconnects -----------------------------------------------------------------------------


async def test_killed_connection_resubscribes_and_backfills(cache):
    bus = cache.events
    async with bus.subscribe("k") as sub:
        await bus.publish("k", "live")
        assert (await sub.get(timeout=5)).seq == 1
        await publish_silently(cache, "k", 3)  # lost in transit: no one notices yet
        await kill_subscribers(cache)
        # The resync after the reconnect recovers 2..4 without any new message.
        assert spans(await drain(sub, 3)) == [("k", 2), ("k", 3), ("k", 4)]
        await bus.publish("k", "after")
        assert (await sub.get(timeout=5)).payload == "after"
    assert sub.reconnects >= 1 and sub.disconnects >= 1
    assert sub.gaps == 0


@pytest.mark.parametrize("backlog", [10_000, 8])
async def test_client_kill_while_publishing_loses_nothing_silently(
    cache_factory, redis_namespace, backlog
):
    """Acceptance: CLIENT KILL TYPE pubsub repeatedly while publishing.

    Every published message is delivered exactly once, in order, or covered by a
    Gap; with a backlog larger than the run nothing at all is lost.
    """
    cache = await cache_factory(client_name=redis_namespace, event_backlog=backlog)
    bus = cache.events
    topics = ("fills", "alerts")
    published: dict[tuple[str, int], int] = {}
    async with bus.subscribe(*topics) as sub:

        async def publisher() -> None:
            for n in range(300):
                topic = topics[n % 3 == 0]
                published[topic, await bus.publish(topic, n)] = n
                if n % 20 == 10:
                    await kill_subscribers(cache)

        task = asyncio.create_task(publisher())
        delivered: dict[str, list[int]] = {t: [] for t in topics}
        gapped: dict[str, set[int]] = {t: set() for t in topics}
        payloads = {}

        def accounted() -> int:
            return sum(len(v) for v in delivered.values()) + sum(len(v) for v in gapped.values())

        while not task.done() or accounted() < len(published):
            item = await sub.get(timeout=10)
            if isinstance(item, Event):
                delivered[item.topic].append(item.seq)
                payloads[item.topic, item.seq] = item.payload
            else:
                assert item.reason == "missed" and item.last_seq is not None
                gapped[item.topic].update(range(item.first_seq, item.last_seq + 1))
        await task
    for topic in topics:
        last = max(seq for t, seq in published if t == topic)
        assert delivered[topic] == sorted(set(delivered[topic]))  # in order, no duplicate
        assert not set(delivered[topic]) & gapped[topic]
        assert set(delivered[topic]) | gapped[topic] == set(range(1, last + 1))
    assert all(published[key] == value for key, value in payloads.items())
    assert sub.disconnects >= 1
    if backlog > 300:
        assert sub.gaps == 0 and not any(gapped.values())


async def test_backlog_trimmed_past_the_cursor_yields_a_gap(cache_factory):
    cache = await cache_factory(event_backlog=3)
    bus = cache.events
    async with bus.subscribe("trim") as sub:
        await bus.publish("trim", 0)
        await publish_silently(cache, "trim", 6)  # 2..7 lost in transit
        await bus.publish("trim", 8)
        items = await drain(sub, 5)
    # Publishing 8 trimmed 5: the backlog holds 6..8 when 8 arrives.
    assert spans(items) == [
        ("trim", 1),
        ("trim", 2, 5, "missed"),
        ("trim", 6),
        ("trim", 7),
        ("trim", 8),
    ]
    assert items[1].count == 4
    assert sub.gaps == 1


async def test_without_backfill_missed_messages_are_gaps(cache):
    bus = cache.events
    async with bus.subscribe("nb", backfill=False) as sub:
        await publish_silently(cache, "nb", 2)
        await bus.publish("nb", "x")
        assert spans(await drain(sub, 2)) == [("nb", 1, 2, "missed"), ("nb", 3)]
        await publish_silently(cache, "nb", 2)
        await kill_subscribers(cache)  # the resync learns of 4..5 from the positions
        assert spans(await drain(sub, 1)) == [("nb", 4, 5, "missed")]


async def test_sequence_reset_is_reported(cache):
    bus = cache.events
    key = cache.keys.events("r")
    async with bus.subscribe("r") as sub:
        await bus.publish("r", 1)
        await bus.publish("r", 2)
        await drain(sub, 2)
        await next_millisecond(cache)  # a restarted sequence is told apart by a newer time
        await cache.client.delete(key)  # data lost on the server: the sequence restarts
        await publish_silently(cache, "r")
        await bus.publish("r", "new")
        items = await drain(sub, 3)
        assert spans(items) == [("r", 3, None, "reset"), ("r", 1), ("r", 2)]
        assert items[0].count is None
        # Lost while disconnected: found by the resync.
        await cache.client.delete(key)
        await publish_silently(cache, "r")
        await kill_subscribers(cache)
        assert spans(await drain(sub, 2)) == [("r", 3, None, "reset"), ("r", 1)]
        # The topic vanished altogether while disconnected.
        await cache.client.delete(key)
        await kill_subscribers(cache)
        assert spans(await drain(sub, 1)) == [("r", 2, None, "reset")]
        assert sub.cursor("r") == 0
        await bus.publish("r", "again")
        assert spans(await drain(sub, 1)) == [("r", 1)]


async def test_server_ending_the_subscription_is_a_reconnect(cache):
    bus = cache.events
    async with bus.subscribe("u") as sub:
        link = sub._links[0]
        command = "SUNSUBSCRIBE" if sub.sharded else "UNSUBSCRIBE"
        await link.conn.send_command(command, link.channels[0])
        await wait_until(lambda: sub.reconnects == 1, timeout=10)
        await bus.publish("u", 1)
        assert (await sub.get(timeout=5)).seq == 1


async def test_idle_connection_is_checked_with_ping(cache):
    async with Subscription(
        cache.context,
        [cache.keys.events_channel("idle")],
        sharded=use_sharded(cache.context),
        health_interval=0.02,
    ) as sub:

        async def pinged() -> bool:
            return [c["cmd"] for _, c in await subscribers(cache)] == ["ping"]

        await wait_until(pinged, timeout=10)
        assert sub.disconnects == 0  # silence is not an error
        assert sub.connected


async def test_unanswered_ping_reconnects(cache, caplog):
    if cache.is_cluster:
        pytest.skip("stalls a server: only on this worker's own standalone server")
    caplog.set_level(logging.WARNING, "tradecache.coordination.subscription")
    async with Subscription(
        cache.context, [cache.keys.events_channel("stall")], health_interval=0.05
    ) as sub:
        await cache.client.execute_command("DEBUG", "SLEEP", "0.4")
        await wait_until(lambda: sub.reconnects >= 1, timeout=10)
        assert sub.disconnects >= 1
    assert "no answer to PING" in caplog.text


# --- queue overflow -------------------------------------------------------------------------


async def fill_queue(cache, sub, topic: str, count: int) -> None:
    """Publish ``count`` events and wait until the reader has queued (or dropped) them."""
    for n in range(count):
        last = await cache.events.publish(topic, n)
    await wait_until(lambda: sub.cursor(topic) == last, timeout=10)


async def test_overflow_drop_oldest_reports_a_gap(cache):
    async with cache.events.subscribe("o", queue_size=3) as sub:
        await fill_queue(cache, sub, "o", 10)
        assert sub.pending == 3 and sub.dropped == 7
        items = await drain(sub, 4)
    assert spans(items) == [("o", 1, 7, "overflow"), ("o", 8), ("o", 9), ("o", 10)]


async def test_overflow_drop_newest_reports_a_gap(cache):
    async with cache.events.subscribe("o", "p", queue_size=2, overflow="drop_newest") as sub:
        await fill_queue(cache, sub, "o", 3)  # o1 o2 queued, o3 dropped
        assert spans([await sub.get(timeout=5)]) == [("o", 1)]
        await cache.events.publish("o", 4)  # o4 waits behind the gap: no room for both
        await wait_until(lambda: sub.cursor("o") == 4, timeout=10)
        assert spans([await sub.get(timeout=5)]) == [("o", 2)]
        await fill_queue(cache, sub, "o", 1)  # o5: now there is room for the gap and o5
        await fill_queue(cache, sub, "p", 1)  # p1: full again, dropped
        items = await drain(sub, 3)
        assert spans(items) == [("o", 3, 4, "overflow"), ("o", 5), ("p", 1, 1, "overflow")]
        await fill_queue(cache, sub, "p", 4)  # p2 p3 queued, p4 p5 dropped
        items = await drain(sub, 3)
        assert spans(items) == [("p", 2), ("p", 3), ("p", 4, 5, "overflow")]
        assert sub.dropped == 5


async def test_overflow_error_stops_the_subscription(cache):
    sub = await cache.events.subscribe("o", queue_size=2, overflow="error")
    await fill_queue(cache, sub, "o", 3)
    with pytest.raises(SubscriptionOverflow):
        await sub.get(timeout=10)
    assert await sub.get(timeout=1) is None  # closed
    await sub.close()


def test_buffer_merges_dropped_gaps():
    buffer = _Buffer(1, "drop_oldest")
    buffer.put(Gap("t", 1, 2))
    buffer.put(Gap("t", 3, None, "reset"))  # drops 1..2
    buffer.put(Gap("t", 4, 6))  # drops the reset gap: the extent becomes unknown
    assert buffer.pop() == Gap("t", 1, None, "overflow")
    assert buffer.pop() == Gap("t", 4, 6)
    assert buffer.pop() is None
    newest = _Buffer(1, "drop_newest")
    newest.put(Gap("t", 1, 1))
    newest.put(Gap("t", 2, 5))
    newest.put(Gap("t", 6, 7))
    assert newest.pop() == Gap("t", 1, 1)
    assert newest.pop() == Gap("t", 2, 7, "overflow")


# --- malformed messages ---------------------------------------------------------------------


async def test_malformed_messages_are_counted_not_raised(cache, caplog):
    bus = cache.events
    channel = cache.keys.events_channel("m")
    caplog.set_level(logging.WARNING, "tradecache.coordination.subscription")
    async with bus.subscribe("m") as sub:
        await raw_publish(cache, channel, b"not json")
        await raw_publish(cache, channel, b'{"v": 99, "type": "x"}')
        await raw_publish(cache, channel, encode_envelope("event", "other", 1, 1, b"1"))
        await bus.publish("m", "fine")
        item = await sub.get(timeout=5)
    assert isinstance(item, Event) and item.payload == "fine"
    assert sub.malformed == 3
    warnings = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 1  # throttled: one warning per second


# --- the reusable core with custom hooks (the ticker store's pattern) ----------------------


async def test_core_with_current_value_backfill(cache):
    ctx = cache.context
    channel = ctx.keys.channel("tick", "ex")
    current: dict[str, bytes] = {}
    calls = []

    async def backfill(topic, first, last):
        calls.append((topic, first, last))
        if topic == "boom":
            raise RuntimeError("store unavailable")
        value = current.get(topic)
        if value is None:
            return []
        # The current value, an old one (a duplicate) and one of another topic (malformed).
        return [decode_envelope(value), env(topic, 2, 101), encode_envelope("t", "z", 9, 9, b"0")]

    def env(topic, seq, time_ms):
        return encode_envelope("ticker", topic, seq, time_ms, b'{"p":1}')

    async with Subscription(
        ctx, {channel: None}, sharded=use_sharded(ctx), backfill=backfill, name="ticks"
    ) as sub:
        assert repr(sub) == "<Subscription ticks open channels=1>"
        await raw_publish(cache, channel, env("x", 1, 100))  # first sight sets the cursor
        await raw_publish(cache, channel, env("x", 2, 101))
        current["x"] = env("x", 5, 104)
        await raw_publish(cache, channel, env("x", 6, 105))  # 3..5 missed: re-read current
        await raw_publish(cache, channel, env("x", 6, 105))  # duplicate
        await raw_publish(cache, channel, env("y", 10, 50))
        await raw_publish(cache, channel, env("boom", 1, 1))
        await raw_publish(cache, channel, env("boom", 3, 2))  # the hook fails: a gap
        items = await drain(sub, 9)
    assert spans(items) == [
        ("x", 1),
        ("x", 2),
        ("x", 3, 4, "missed"),
        ("x", 5),
        ("x", 6),
        ("y", 10),
        ("boom", 1),
        ("boom", 2, 2, "missed"),
        ("boom", 3),
    ]
    assert calls == [("x", 3, 5), ("boom", 2, 2)]
    assert sub.duplicates == 2
    assert sub.malformed == 1  # the hook's envelope of topic "z"
    assert repr(sub) == "<Subscription ticks closed channels=1>"


async def test_core_backfill_losing_the_connection_reconnects(cache):
    ctx = cache.context
    channel = ctx.keys.channel("tick", "cx")
    current: dict[str, bytes] = {}
    calls = []

    async def backfill(topic, first, last):
        calls.append((first, last))
        if len(calls) == 1:
            raise ConnectionLost("store unreachable")
        return [current[topic]]

    def env(topic, seq):
        return encode_envelope("ticker", topic, seq, seq, b"0")

    async with Subscription(
        ctx, {channel: None}, sharded=use_sharded(ctx), backfill=backfill
    ) as sub:
        await raw_publish(cache, channel, env("x", 1))
        current["x"] = env("x", 4)
        await raw_publish(cache, channel, env("x", 3))  # the backfill fails: reconnect
        items = await drain(sub, 3)
    # The resync (no positions hook) asks for everything after the cursor.
    assert spans(items) == [("x", 1), ("x", 2, 3, "missed"), ("x", 4)]
    assert calls == [(2, 2), (2, None)]
    assert sub.disconnects == sub.reconnects == 1


async def test_core_reader_failure_reaches_the_consumer(cache):
    ctx = cache.context
    channel = ctx.keys.channel("f", "x")
    calls = 0

    async def positions(topics):
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("bug in a hook")
        return {}

    sub = await Subscription(
        ctx, {channel: "x"}, sharded=use_sharded(ctx), positions=positions, name="f"
    )
    await kill_subscribers(cache)
    with pytest.raises(RuntimeError, match="bug in a hook"):
        await sub.get(timeout=10)
    assert await sub.get() is None
    async for _ in sub:
        pytest.fail("a closed subscription yields nothing")


# --- lifecycle ------------------------------------------------------------------------------


async def test_close_is_idempotent_and_ends_iteration(cache):
    sub = cache.events.subscribe("c")
    assert repr(sub) == "<Subscription events new channels=1>"
    assert not sub.connected
    assert await sub is sub
    assert await sub.start() is sub  # starting twice is harmless

    async def consume():
        return [item async for item in sub]

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)
    await sub.close()
    await sub.close()
    assert await consumer == []
    assert await sub.get(timeout=1) is None
    with pytest.raises(TradecacheError, match="closed"):
        await sub.start()


async def test_iterating_starts_a_subscription(cache):
    sub = cache.events.subscribe("lazy")

    async def first():
        async for item in sub:
            return item
        return None

    task = asyncio.create_task(first())
    await wait_until(lambda: sub.connected, timeout=10)
    await cache.events.publish("lazy", 1)
    assert (await task).seq == 1
    await sub.close()


async def test_get_times_out(cache):
    async with cache.events.subscribe("quiet") as sub:
        with pytest.raises(WaitTimeout):
            await sub.get(timeout=0.01)


async def test_close_while_starting(cache):
    sub = cache.events.subscribe("s")
    starting = asyncio.create_task(sub.start())
    await asyncio.sleep(0)
    await sub.close()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert not sub.connected


async def test_subscribe_to_an_unreachable_server_raises_connection_lost(cache):
    client = create_client("redis://127.0.0.1:1", settings=cache.settings)
    ctx = replace(cache.context, client=client)
    try:
        with pytest.raises(ConnectionLost):
            await EventBus(ctx).subscribe("x")  # reading the positions fails
        with pytest.raises(ConnectionLost):
            await Subscription(ctx, ["x"])  # connecting fails
    finally:
        await client.aclose()


# --- sharded pub/sub ------------------------------------------------------------------------


async def test_sharded_subscription_needs_redis_7(cache):
    ctx = cache.context
    channels = {ctx.keys.events_channel(f"s{n}"): f"s{n}" for n in range(6)}
    sub = Subscription(ctx, channels, sharded=True, positions=cache.events._positions)
    if not cache.supports(7):
        with pytest.raises(CommandError):
            await sub.start()
        return
    async with sub:
        if cache.is_cluster:
            assert len(sub._links) > 1  # one connection per node owning some channels
        for n in range(6):
            data = encode_envelope("e", f"s{n}", 1, 1, b"0")
            await cache.client.spublish(ctx.keys.events_channel(f"s{n}"), data)
        items = await drain(sub, 6)
    assert sorted(item.topic for item in items) == [f"s{n}" for n in range(6)]


@pytest.mark.cluster
@pytest.mark.requires_redis("7.0")
async def test_cluster_7_bus_uses_sharded_pubsub(cache):
    if not cache.is_cluster:
        pytest.skip("cluster only")
    bus = cache.events
    assert bus.sharded
    async with bus.subscribe("a", "b", "c") as sub:
        channel = cache.keys.events_channel("a")
        node = cache.client.get_node_from_key(channel)
        shard_channels = await cache.client.pubsub_shardchannels(target_nodes=node)
        assert channel.encode() in shard_channels
        for topic in ("a", "b", "c"):
            await bus.publish(topic, topic)
        items = await drain(sub, 3)
    assert sorted(item.payload for item in items) == ["a", "b", "c"]
    await kill_subscribers(cache)


def test_payload_of_an_event_decodes_once():
    event = Event(decode_envelope(encode_envelope("e", "t", 1, 1, b'{"a": 1}')))
    assert event.payload is event.payload
    with pytest.raises(ValidationError):
        event.decode(list[int])
    assert msgspec.json.encode(event.payload) == b'{"a":1}'


def test_gap_count():
    assert Gap("t", 3, 5).count == 3
    assert Gap("t", 3, None, "reset").count is None


# --- server restart (a private server) ------------------------------------------------------


@pytest.mark.parametrize("appendonly", [True, False])
async def test_server_restart(redis_server_factory, redis_namespace, appendonly):
    server = redis_server_factory(port=0, appendonly=appendonly)
    async with Cache.connect(server.url, namespace=redis_namespace) as cache:
        bus = cache.events
        async with bus.subscribe("rs") as sub:
            for n in range(3):
                await bus.publish("rs", n)
            assert spans(await drain(sub, 3)) == [("rs", 1), ("rs", 2), ("rs", 3)]
            await asyncio.to_thread(server.restart)
            await wait_until(lambda: sub.reconnects >= 1, timeout=20)
            seq = await bus.publish("rs", "after")
            if appendonly:  # the backlog survived: the sequence goes on
                assert seq == 4
                assert spans(await drain(sub, 1)) == [("rs", 4)]
            else:  # data lost: the subscriber reports the restarted sequence
                assert seq == 1
                assert spans(await drain(sub, 2)) == [("rs", 4, None, "reset"), ("rs", 1)]
