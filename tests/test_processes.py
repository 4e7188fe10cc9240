"""cache.processes: registration, atomic heartbeats, liveness index, health, broadcast."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import timedelta
from decimal import Decimal

import pytest

from tradecache.codec import CodecError
from tradecache.coordination.events import Event
from tradecache.errors import NotFound, ValidationError
from tradecache.models import ProcessInfo, ProcessStatus
from tradecache.stores.processes import ProcessCache, SystemHealth, parse_process_id


async def snapshot(cache) -> dict[bytes, bytes]:
    """Every key of the test's namespace with its DUMP: to prove nothing was written."""
    out = {}
    async for key in cache.client.scan_iter(match=cache.keys.all_pattern()):
        out[key] = await cache.client.dump(key)
    return out


async def age(cache, info: ProcessInfo, seconds: float) -> None:
    """Make ``info``'s last heartbeat ``seconds`` old on the server's clock."""
    sec, micros = await cache.client.time()
    then = sec * 1000 + micros // 1000 - int(seconds * 1000)
    kind, component = parse_process_id(info.id)
    keys = cache.keys
    for index in (
        keys.process_index(),
        keys.process_kind_index(kind),
        keys.process_component_index(component),
    ):
        await cache.client.zadd(index, {info.id: then})
    await cache.client.hset(keys.process(info.id), "updated", then)


async def test_register_returns_a_typed_record(cache):
    info = await cache.processes.register(
        "tick", "binance:BTC/USDT", {"interval": 1, "fee": Decimal("0.1"), "none": None}
    )
    assert isinstance(info, ProcessInfo)
    assert info.kind == "tick"
    assert info.component == "binance:BTC/USDT"
    assert info.id.startswith("tick:binance:BTC/USDT:")
    assert parse_process_id(info.id) == ("tick", "binance:BTC/USDT")
    assert info.status is ProcessStatus.STARTING
    assert info.params == {"interval": 1, "fee": "0.1"}  # as stored: JSON values
    assert info.message is None
    assert info.host == socket.gethostname()
    assert info.pid == os.getpid()
    assert info.started == info.updated
    assert await cache.processes.get(info.id) == info
    other = await cache.processes.register("tick", "binance:BTC/USDT")
    assert other.id != info.id  # two processes of one component are two records
    assert repr(cache.processes).startswith("ProcessCache(namespace=")


async def test_register_with_status_and_message(cache):
    info = await cache.processes.register("bot", "grid-1", status="running", message="up")
    stored = await cache.processes.get(info.id)
    assert stored is not None
    assert stored.status is ProcessStatus.RUNNING
    assert stored.message == "up"


async def test_heartbeat_updates_status_message_and_merges_params(cache):
    p = cache.processes
    info = await p.register("ohlcv", "kraken:ETH/USD", {"a": 1, "b": [1, 2], "gone": True})
    when = await p.heartbeat(
        info.id,
        status=ProcessStatus.PROCESSING,
        message="backfilling",
        params={"b": {"x": "y"}, "c": Decimal("0.1"), "gone": None},
    )
    stored = await p.get(info.id)
    assert stored is not None
    assert stored.status is ProcessStatus.PROCESSING
    assert stored.message == "backfilling"
    assert stored.params == {"a": 1, "b": {"x": "y"}, "c": "0.1"}  # JSON values; None removes
    assert stored.updated == when
    assert stored.updated >= info.started
    await p.heartbeat(info.id)  # a bare heartbeat keeps everything
    again = await p.get(info.id)
    assert again is not None
    assert (again.status, again.message, again.params) == (
        stored.status,
        stored.message,
        stored.params,
    )
    await p.heartbeat(info.id, message="")
    cleared = await p.get(info.id)
    assert cleared is not None
    assert cleared.message == ""


async def test_concurrent_heartbeats_lose_no_params(cache_factory):
    # pool_size >= 50: redis-py's cluster pool fails (MaxConnectionsError) instead of waiting
    # when every connection is busy; reported to the lead (connection.py). A generous
    # connect_timeout: 50 connections opened at once on a loaded CI box is not what's tested.
    cache = await cache_factory(pool_size=64, connect_timeout=5)
    info = await cache.processes.register("tick", "binance:ALL")
    await asyncio.gather(
        *(cache.processes.heartbeat(info.id, params={f"p{i}": i}) for i in range(50))
    )
    stored = await cache.processes.get(info.id)
    assert stored is not None
    assert stored.params == {f"p{i}": i for i in range(50)}


async def test_concurrent_heartbeats_from_two_clients(cache_factory):
    one, two = await cache_factory(), await cache_factory()
    info = await one.processes.register("tick", "binance:ALL")
    await asyncio.gather(
        *(
            c.processes.heartbeat(info.id, params={f"{n}{i}": i})
            for i in range(25)
            for n, c in (("a", one), ("b", two))
        )
    )
    stored = await two.processes.get(info.id)
    assert stored is not None
    assert len(stored.params) == 50


async def test_unknown_and_malformed_ids(cache):
    missing = "tick:binance:BTC/USDT:0123456789abcdef"
    assert await cache.processes.get(missing) is None
    with pytest.raises(NotFound):
        await cache.processes.heartbeat(missing)
    with pytest.raises(NotFound):
        await cache.processes.stop(missing)
    for bad in ("tick", "tick:x", ":x:y", "tick::y", "tick:x:", "a b:c:d", "", 42, None):
        with pytest.raises(ValidationError) as err:
            await cache.processes.heartbeat(bad)  # type: ignore[arg-type]
        assert err.value.field == "process_id"
    with pytest.raises(ValidationError, match="process_id"):
        await cache.processes.get(["x"])  # type: ignore[arg-type]


async def test_active_filters_by_kind_component_and_window(cache):
    p = cache.processes
    feed = await p.register("tick", "binance:BTC/USDT")
    feed2 = await p.register("tick", "kraken:BTC/USD")
    bot = await p.register("bot", "binance:BTC/USDT")
    old = await p.register("bot", "grid")
    await age(cache, old, 120)

    def ids(items):
        return sorted(i.id for i in items)

    assert ids(await p.active()) == ids([feed, feed2, bot])  # default window: stale_after
    assert ids(await p.active(within=timedelta(minutes=5))) == ids([feed, feed2, bot, old])
    assert ids(await p.active(within=300)) == ids([feed, feed2, bot, old])
    assert ids(await p.active(kind="tick")) == ids([feed, feed2])
    assert ids(await p.active(kind="bot", within=300)) == ids([bot, old])
    assert ids(await p.active(component="binance:BTC/USDT")) == ids([feed, bot])
    assert ids(await p.active(kind="bot", component="binance:BTC/USDT")) == [bot.id]
    assert await p.active(kind="bot", component="kraken:BTC/USD") == []
    assert await p.active(kind="order") == []
    assert ids(await p.list(kind="bot")) == ids([bot, old])
    assert ids(await p.list()) == ids([feed, feed2, bot, old])
    # newest heartbeat first
    await p.heartbeat(feed.id)
    assert (await p.active())[0].id == feed.id
    assert (await p.latest("binance:BTC/USDT")).id == feed.id
    assert (await p.latest("binance:BTC/USDT", kind="bot")).id == bot.id
    assert await p.latest("nothing-here") is None


async def test_stop_drops_from_index_and_keeps_record_for_retention(cache):
    p = cache.processes
    info = await p.register("order", "executor", {"n": 1})
    await p.stop(info.id, message="shutdown")
    stored = await p.get(info.id)
    assert stored is not None
    assert stored.status is ProcessStatus.STOPPED
    assert stored.message == "shutdown"
    assert await p.list() == []
    assert await p.active(kind="order") == []
    retention = cache.settings.process_retention * 1000
    assert 0 < await cache.client.pttl(cache.keys.process(info.id)) <= retention
    assert 0 < await cache.client.pttl(cache.keys.process_params(info.id)) <= retention
    # a bare heartbeat does not revive a stopped process; an explicit status does
    await p.heartbeat(info.id, params={"late": True})
    assert await p.list() == []
    await p.heartbeat(info.id, status="running")
    assert [i.id for i in await p.active()] == [info.id]
    assert await cache.client.pttl(cache.keys.process(info.id)) == -1
    assert await cache.client.pttl(cache.keys.process_params(info.id)) == -1
    revived = await p.get(info.id)
    assert revived is not None
    assert revived.params == {"n": 1, "late": True}


async def test_cleanup_stale_stops_only_silent_processes(cache):
    p = cache.processes
    fresh = await p.register("tick", "binance:BTC/USDT")
    silent = await p.register("tick", "binance:ETH/USDT")
    await age(cache, silent, 600)
    assert await p.cleanup_stale(timedelta(minutes=5)) == 1
    assert await p.cleanup_stale(300) == 0
    stored = await p.get(silent.id)
    assert stored is not None
    assert stored.status is ProcessStatus.STOPPED
    assert "no heartbeat for 300s" in (stored.message or "")
    assert [i.id for i in await p.list()] == [fresh.id]
    assert await p.active(component="binance:ETH/USDT", within=3600) == []
    assert await cache.client.pttl(cache.keys.process(silent.id)) > 0
    await age(cache, fresh, 120)
    assert await p.cleanup_stale() == 1  # default: settings.process_stale_after (60 s)
    assert await p.list() == []


async def test_health_totals_stale_and_errored(cache):
    p = cache.processes
    empty = await p.health()
    assert isinstance(empty, SystemHealth)
    assert empty.healthy
    assert empty.total == 0
    assert (empty.by_kind, empty.by_status, empty.stale, empty.errored) == ({}, {}, (), ())
    t1 = await p.register("tick", "binance:BTC/USDT", status="running")
    await p.register("tick", "binance:ETH/USDT", status="running")
    broken = await p.register("bot", "grid", status="running")
    await p.heartbeat(broken.id, status="error", message="exchange down")
    silent = await p.register("order", "executor")
    await age(cache, silent, 90)
    report = await p.health()
    assert not report.healthy
    assert report.total == 4
    assert report.by_kind == {"bot": 1, "order": 1, "tick": 2}
    assert report.by_status == {"error": 1, "running": 2, "starting": 1}
    assert report.by_kind_status == {
        "bot": {"error": 1},
        "order": {"starting": 1},
        "tick": {"running": 2},
    }
    assert [i.id for i in report.stale] == [silent.id]
    assert [i.id for i in report.errored] == [broken.id]
    assert report.errored[0].message == "exchange down"
    assert report.stale_after == cache.settings.process_stale_after
    assert report.checked >= t1.started
    relaxed = await p.health(stale_after=timedelta(minutes=2))
    assert relaxed.stale == ()
    await p.heartbeat(broken.id, status="running")
    assert (await p.health(stale_after=120)).healthy


async def test_broadcast_reaches_subscribers(cache):
    p = cache.processes
    assert ProcessCache.topic("bot") == "processes:bot"
    async with p.subscribe("bot", "tick") as sub:
        seq = await p.broadcast("bot", "reload", {"config": "v2"})
        await p.broadcast("tick", "pause")
        first = await sub.get(timeout=5)
        second = await sub.get(timeout=5)
    assert isinstance(first, Event)
    assert isinstance(second, Event)
    assert first.seq == seq
    assert first.topic == "processes:bot"
    assert first.payload == {"kind": "bot", "message": "reload", "data": {"config": "v2"}}
    assert second.payload == {"kind": "tick", "message": "pause", "data": None}


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda p: p.register("", "c"), "kind"),
        (lambda p: p.register("a:b", "c"), "kind"),
        (lambda p: p.register("{x}", "c"), "kind"),
        (lambda p: p.register("k" * 65, "c"), "kind"),
        (lambda p: p.register(7, "c"), "kind"),
        (lambda p: p.register("bot", ""), "component"),
        (lambda p: p.register("bot", "a b"), "component"),
        (lambda p: p.register("bot", "c" * 121), "component"),
        (lambda p: p.register("bot", "c", status="sleeping"), "status"),
        (lambda p: p.register("bot", "c", status=3), "status"),
        (lambda p: p.register("bot", "c", status="stopped"), "status"),
        (lambda p: p.register("bot", "c", message=5), "message"),
        (lambda p: p.register("bot", "c", message="m" * 10_001), "message"),
        (lambda p: p.register("bot", "c", params=[1]), "params"),
        (lambda p: p.register("bot", "c", params={"": 1}), "params"),
        (lambda p: p.register("bot", "c", params={1: 1}), "params"),
        (lambda p: p.register("bot", "c", params={"x": object()}), "params.x"),
        (lambda p: p.active(within=0), "within"),
        (lambda p: p.active(within=-1), "within"),
        (lambda p: p.active(within=float("inf")), "within"),
        (lambda p: p.active(within=True), "within"),
        (lambda p: p.active(within="5"), "within"),
        (lambda p: p.active(kind="a:b"), "kind"),
        (lambda p: p.active(component="a b"), "component"),
        (lambda p: p.cleanup_stale(timedelta(0)), "older_than"),
        (lambda p: p.health(stale_after=-5), "stale_after"),
        (lambda p: p.broadcast("bot", 1), "message"),
        (lambda p: p.broadcast("bot", "m", {"x": object()}), "data"),
        (lambda p: p.broadcast("a b", "m"), "kind"),
        (lambda p: p.subscribe(), "kinds"),
    ],
)
async def test_bad_input_raises_and_writes_nothing(cache, call, field):
    before = await snapshot(cache)
    with pytest.raises(ValidationError) as err:
        await call(cache.processes)
    assert err.value.field == field
    assert await snapshot(cache) == before


async def test_bad_heartbeat_input_leaves_the_record_unchanged(cache):
    info = await cache.processes.register("bot", "grid", {"a": 1})
    before = await snapshot(cache)
    for kwargs, field in (
        ({"status": "paused"}, "status"),
        ({"message": b"x"}, "message"),
        ({"params": {"a": 2, "b": object()}}, "params.b"),
        ({"params": "a=1"}, "params"),
    ):
        with pytest.raises(ValidationError) as err:
            await cache.processes.heartbeat(info.id, **kwargs)
        assert err.value.field == field
    assert await snapshot(cache) == before


async def test_corrupt_params_are_reported_not_returned(cache):
    info = await cache.processes.register("bot", "grid")
    await cache.client.hset(cache.keys.process_params(info.id), "bad", b"{not json")
    with pytest.raises(CodecError) as err:
        await cache.processes.get(info.id)
    assert err.value.field == "params"


async def test_heartbeat_is_one_round_trip_script(cache):
    info = await cache.processes.register("tick", "binance:BTC/USDT")
    await cache.processes.heartbeat(info.id, status="running", params={"x": 1})
    stats = cache.stats()
    assert stats["processes.heartbeat"].count == 1
    assert stats["processes.register"].count == 1
