"""cache.orders: the idempotent order queue and the atomic order status records."""

from __future__ import annotations

import asyncio
import socket
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode

from helpers.order_flow import (
    TWENTY_CHANGES,
    ccxt_order,
    ccxt_trade,
    run_writer_processes,
    snapshot,
    with_settings,
)
from tradecache import Cache, CommandError, ConnectionLost, KeyReuse, NotFound, ValidationError
from tradecache.models import Fee, Order, OrderStatus, from_ms
from tradecache.server import RedisServer
from tradecache.stores.orders import OrdersCache
from tradecache.testing import wait_until

PATIENT = {"connect_timeout": 5.0, "socket_timeout": 5.0, "pool_timeout": 5.0}

# --- submit: idempotency -------------------------------------------------------------------


async def test_submit_enqueues_once_and_returns_the_entry_id(cache: Cache) -> None:
    entry = await cache.orders.submit(ccxt_order("1"), exchange="Binance")
    again = await cache.orders.submit(ccxt_order("1"), exchange="binance")
    as_model = await cache.orders.submit(Order.from_ccxt(ccxt_order("1"), exchange="binance"))
    assert entry == again == as_model
    assert await cache.client.xlen(cache.keys.order_queue()) == 1
    entries = await cache.client.xrange(cache.keys.order_queue())
    assert entries[0][0].decode() == entry
    stored = cache.codec.decode(entries[0][1][b"d"], Order)
    assert stored.exchange == "binance" and stored.client_order_id == "cid-1"
    assert stored.price == Decimal("60000.5") and stored.amount == Decimal("0.25")


async def test_same_client_order_id_with_other_content_raises_key_reuse(cache: Cache) -> None:
    first = await cache.orders.submit(ccxt_order("1"), exchange="binance")
    before = await snapshot(cache)
    with pytest.raises(KeyReuse, match=first):
        await cache.orders.submit(ccxt_order("1", price=61000), exchange="binance")
    with pytest.raises(KeyReuse):
        await cache.orders.submit(ccxt_order("2", clientOrderId="cid-1"), exchange="binance")
    assert await snapshot(cache) == before


async def test_client_order_ids_are_scoped_per_exchange(cache: Cache) -> None:
    a = await cache.orders.submit(ccxt_order("1"), exchange="binance")
    b = await cache.orders.submit(ccxt_order("1"), exchange="kraken")
    assert a != b
    assert await cache.client.xlen(cache.keys.order_queue()) == 2


async def test_without_client_order_id_the_id_is_the_idempotency_key(cache: Cache) -> None:
    order = ccxt_order("7", clientOrderId=None)
    assert await cache.orders.submit(order, exchange="x") == await cache.orders.submit(
        order, exchange="x"
    )
    with pytest.raises(KeyReuse):
        await cache.orders.submit({**order, "amount": 1}, exchange="x")
    assert await cache.client.xlen(cache.keys.order_queue()) == 1


async def test_idempotency_marker_expires_with_order_ttl(cache: Cache) -> None:
    orders = OrdersCache(with_settings(cache, order_ttl=1.5))
    first = await orders.submit(ccxt_order("1"), exchange="binance")
    marker = cache.keys.order_submitted("binance", "cid-1")
    assert 0 < await cache.client.pttl(marker) <= 1500
    await wait_until(lambda: cache.client.exists(marker), timeout=5, message="marker kept")
    await wait_until(lambda: _gone(cache, marker), timeout=5, message="the marker never expired")
    assert await orders.submit(ccxt_order("1"), exchange="binance") != first


async def _gone(cache: Cache, key: str) -> bool:
    return not await cache.client.exists(key)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": None}, "id"),
        ({"id": ""}, "id"),
        ({"id": "has space"}, "id"),
        ({"amount": 0}, "amount"),
        ({"amount": -1}, "amount"),
        ({"amount": "nan"}, "amount"),
        ({"side": "hold"}, "side"),
        ({"type": "teleport"}, "type"),
        ({"status": "lost"}, "status"),
        ({"symbol": None}, "symbol"),
        ({"price": -5}, "price"),
        ({"clientOrderId": "a{b}"}, "client_order_id"),
    ],
)
async def test_submit_and_save_reject_bad_orders_and_write_nothing(
    cache: Cache, change: dict[str, Any], field: str
) -> None:
    before = await snapshot(cache)
    order = ccxt_order("1", **change)
    with pytest.raises(ValidationError) as info:
        await cache.orders.submit(order, exchange="binance")
    assert info.value.field == field
    with pytest.raises(ValidationError) as info:
        await cache.orders.save(order, exchange="binance")
    assert info.value.field == field
    assert await snapshot(cache) == before


async def test_exchange_is_required_validated_and_must_agree(cache: Cache) -> None:
    before = await snapshot(cache)
    with pytest.raises(ValidationError, match="required") as info:
        await cache.orders.submit(ccxt_order("1"))
    assert info.value.field == "exchange"
    with pytest.raises(ValidationError) as info:
        await cache.orders.submit(ccxt_order("1", exchange="binance"), exchange="kraken")
    assert info.value.field == "exchange"
    with pytest.raises(ValidationError) as info:
        await cache.orders.save(ccxt_order("1"), exchange="bin ance")
    assert info.value.field == "exchange"
    with pytest.raises(ValidationError) as info:
        await cache.orders.save(["not", "an", "order"])  # type: ignore[arg-type]
    assert info.value.field == "order"
    assert await snapshot(cache) == before
    # the order's own exchange is enough, and is lower-cased
    await cache.orders.save(ccxt_order("1", exchange="Binance"))
    order = await cache.orders.get("binance", "1")
    assert order is not None and order.exchange == "binance"


# --- consume / ack / reclaim / pending -------------------------------------------------------


async def test_consume_delivers_in_order_and_ack_clears_pending(cache: Cache) -> None:
    ids = [await cache.orders.submit(ccxt_order(str(i)), exchange="binance") for i in range(5)]
    deliveries = [d async for d in cache.orders.consume("executors", "e1", count=2, block=0)]
    assert [d.id for d in deliveries] == ids
    assert [d.item.id for d in deliveries] == ["0", "1", "2", "3", "4"]
    assert all(isinstance(d.item, Order) and d.group == "executors" for d in deliveries)
    assert await cache.orders.pending("executors") == 5
    assert await deliveries[0].ack() is True
    assert await deliveries[0].ack() is False
    assert await cache.orders.pending("executors") == 4
    for delivery in deliveries[1:]:
        await delivery.ack()
    assert await cache.orders.pending("executors") == 0
    assert [d async for d in cache.orders.consume("executors", "e1", block=0)] == []
    assert "Delivery(item=Order(" in repr(deliveries[0])


async def test_each_group_gets_every_order_and_consumers_share_a_group(cache: Cache) -> None:
    for i in range(6):
        await cache.orders.submit(ccxt_order(str(i)), exchange="binance")
    first = [d async for d in cache.orders.consume("a", "c1", count=3, block=0)]
    assert len(first) == 6
    other_group = [d async for d in cache.orders.consume("b", "c1", block=0)]
    assert len(other_group) == 6
    # a second consumer of group "a" gets nothing: c1 holds all six (pending)
    assert [d async for d in cache.orders.consume("a", "c2", block=0)] == []


async def test_a_second_store_joins_an_existing_group(cache: Cache) -> None:
    await cache.orders.submit(ccxt_order("1"), exchange="binance")
    await cache.orders.submit(ccxt_order("2"), exchange="binance")
    first = await anext(aiter(cache.orders.consume("g", "c1", count=1, block=0)))
    other = OrdersCache(cache.context)  # another process, in effect: the group exists
    assert [d.item.id async for d in other.consume("g", "c2", block=0)] == ["2"]
    assert first.item.id == "1"


async def test_restarted_consumer_gets_its_unacknowledged_orders_first(cache: Cache) -> None:
    for i in range(3):
        await cache.orders.submit(ccxt_order(str(i)), exchange="binance")
    seen = []
    async for delivery in cache.orders.consume("executors", "e1", count=1, block=0):
        seen.append(delivery)
        if len(seen) == 2:
            break  # "crash" before acking anything
    await seen[0].ack()
    await cache.orders.submit(ccxt_order("3"), exchange="binance")
    again = [d.item.id async for d in cache.orders.consume("executors", "e1", count=1, block=0)]
    # "1" was delivered and never acked: it comes back first, then the rest
    assert again == ["1", "2", "3"]


async def test_reclaim_takes_over_orders_of_a_dead_consumer(cache: Cache) -> None:
    for i in range(4):
        await cache.orders.submit(ccxt_order(str(i)), exchange="binance")
    taken = [d async for d in cache.orders.consume("executors", "dead", block=0)]
    assert len(taken) == 4
    await taken[0].ack()
    assert await cache.orders.reclaim("executors", "alive", min_idle=3600) == []
    reclaimed = await cache.orders.reclaim("executors", "alive", min_idle=0, count=2)
    assert [d.item.id for d in reclaimed] == ["1", "2", "3"]
    # the idle clock restarted: a second reclaimer does not get them too
    assert await cache.orders.reclaim("executors", "third", min_idle=60) == []
    for delivery in reclaimed:
        assert await delivery.ack()
    assert await cache.orders.pending("executors") == 0


async def test_unknown_groups_have_nothing_pending_or_to_reclaim(cache: Cache) -> None:
    assert await cache.orders.pending("nobody") == 0
    assert await cache.orders.reclaim("nobody", "c", min_idle=0) == []
    await cache.orders.submit(ccxt_order("1"), exchange="binance")
    assert await cache.orders.pending("nobody") == 0
    assert await cache.orders.reclaim("nobody", "c", min_idle=0) == []


async def test_consume_waits_for_orders_submitted_later(cache: Cache) -> None:
    group_made = asyncio.Event()

    async def producer() -> None:
        await wait_until(lambda: _has_group(cache, "executors"), timeout=10)
        group_made.set()
        await cache.orders.submit(ccxt_order("late"), exchange="binance")

    task = asyncio.create_task(producer())
    got = []
    async for delivery in cache.orders.consume("executors", "e1", block=10):
        got.append(delivery.item.id)
        break
    await task
    assert group_made.is_set() and got == ["late"]


async def _has_group(cache: Cache, group: str) -> bool:
    try:
        groups = await cache.client.xinfo_groups(cache.keys.order_queue())
    except Exception:
        return False
    return any(g["name"].decode() == group for g in groups)


async def test_blocking_longer_than_the_socket_timeout_is_sliced(cache: Cache) -> None:
    assert cache.settings.socket_timeout == 1.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    # one XREADGROUP BLOCK 2500 would trip the 1 s read timeout: ConnectionLost
    assert [d async for d in cache.orders.consume("executors", "e1", block=2.5)] == []
    assert loop.time() - started >= 2.5


@pytest.mark.parametrize("redis_backend", [pytest.param("cluster", marks=pytest.mark.cluster)])
async def test_cluster_reads_follow_moved_slots(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads are routed by slot directly; a stale route (MOVED) falls back to redis-py's."""
    assert cache.is_cluster
    await cache.orders.submit(ccxt_order("1"), exchange="binance")
    owner = cache.client.get_node_from_key(cache.keys.order_queue())
    wrong = next(node for node in cache.client.get_primaries() if node != owner)
    monkeypatch.setattr(cache.client, "get_node_from_key", lambda key, replica=False: wrong)
    assert [d.item.id async for d in cache.orders.consume("g", "c", block=0)] == ["1"]
    # a node that is gone (failover): the read goes through redis-py's own routing
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = ClusterNode("127.0.0.1", probe.getsockname()[1], socket_connect_timeout=0.2)
    monkeypatch.setattr(cache.client, "get_node_from_key", lambda key, replica=False: dead)
    await cache.orders.submit(ccxt_order("2"), exchange="binance")
    assert [d.item.id async for d in cache.orders.consume("g", "c", block=0)] == ["1", "2"]
    await dead.disconnect()


async def test_consume_and_reclaim_validate_their_arguments(cache: Cache) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"group": "a b"}, "group"),
        ({"consumer": ""}, "consumer"),
        ({"count": 0}, "count"),
        ({"count": True}, "count"),
        ({"block": -1}, "block"),
        ({"block": float("inf")}, "block"),
        ({"block": "1"}, "block"),
    ]
    for kwargs, field in bad:
        args = {"group": "g", "consumer": "c", **kwargs}
        with pytest.raises(ValidationError) as info:
            async for _ in cache.orders.consume(**args):
                pass
        assert info.value.field == field
    with pytest.raises(ValidationError) as info:
        await cache.orders.reclaim("g", "c", min_idle=-1)
    assert info.value.field == "min_idle"
    with pytest.raises(ValidationError) as info:
        await cache.orders.pending("a*")
    assert info.value.field == "group"


async def test_a_deleted_queue_is_recreated_with_its_group(cache: Cache) -> None:
    await cache.orders.submit(ccxt_order("1"), exchange="binance")
    assert len([d async for d in cache.orders.consume("executors", "e1", block=0)]) == 1
    await cache.client.delete(cache.keys.order_queue())
    # the store remembers the group; the read finds it gone and recreates it
    assert [d async for d in cache.orders.consume("executors", "e1", block=0)] == []
    await cache.orders.submit(ccxt_order("2"), exchange="binance")
    assert [d.item.id async for d in cache.orders.consume("executors", "e1", block=0)] == ["2"]


async def test_a_queue_key_of_another_type_raises_command_error(cache: Cache) -> None:
    queue = cache.keys.order_queue()
    await cache.client.set(queue, "not a stream")
    with pytest.raises(CommandError, match="WRONGTYPE"):
        async for _ in cache.orders.consume("executors", "e1", block=0):
            pass
    await cache.client.delete(queue)
    assert [d async for d in cache.orders.consume("executors", "e1", block=0)] == []
    await cache.client.delete(queue)
    await cache.client.set(queue, "not a stream")
    with pytest.raises(CommandError, match="WRONGTYPE"):  # the group is known: the read fails
        async for _ in cache.orders.consume("executors", "e1", block=0):
            pass
    with pytest.raises(CommandError, match="WRONGTYPE"):
        await cache.orders.reclaim("executors", "e1", 0)
    with pytest.raises(CommandError, match="WRONGTYPE"):
        await cache.orders.pending("executors")


async def test_malformed_entry_is_reported_acknowledged_and_skipped(cache: Cache) -> None:
    queue = cache.keys.order_queue()
    bad = (await cache.client.xadd(queue, {"d": b"{not json"})).decode()
    await cache.client.xadd(queue, {"other": b"x"})
    await cache.orders.submit(ccxt_order("1"), exchange="binance")
    with pytest.raises(ValidationError, match=bad) as info:
        async for _ in cache.orders.consume("executors", "e1", block=0):
            pass
    assert info.value.field == "entry"
    with pytest.raises(ValidationError, match="no 'd' field"):
        async for _ in cache.orders.consume("executors", "e1", block=0):
            pass
    good = [d.item.id async for d in cache.orders.consume("executors", "e1", block=0)]
    assert good == ["1"]
    assert cache.stats()["orders.malformed"].errors == 2
    assert await cache.client.xlen(queue) == 3  # still there for inspection


async def test_pending_orders_deleted_behind_our_back_are_reported(
    cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [await cache.orders.submit(ccxt_order(str(i)), exchange="binance") for i in range(3)]
    assert len([d async for d in cache.orders.consume("executors", "dead", block=0)]) == 3
    await cache.client.xdel(cache.keys.order_queue(), ids[0])
    reclaimed = await cache.orders.reclaim("executors", "alive", min_idle=0)
    assert [d.id for d in reclaimed] == ids[1:]
    assert cache.stats()["orders.missing"].errors == 1
    assert ids[0] in caplog.text
    # the restarted consumer's history holds a deleted entry too
    await cache.client.xdel(cache.keys.order_queue(), ids[1])
    history = [d.id async for d in cache.orders.consume("executors", "alive", block=0)]
    assert history == ids[2:]
    assert cache.stats()["orders.missing"].errors == 2
    assert await cache.orders.pending("executors") == 1


async def test_trimming_never_drops_orders_a_group_still_needs(cache: Cache) -> None:
    orders = OrdersCache(with_settings(cache, stream_maxlen=50))
    queue = cache.keys.order_queue()
    ids = [await orders.submit(ccxt_order(str(i)), exchange="x") for i in range(120)]
    # no group yet: the plain (approximate, whole-node) cap applies
    assert 50 <= await cache.client.xlen(queue) < 120
    await cache.client.delete(queue)
    taken = [d async for d in orders.consume("executors", "e1", count=50, block=0)]
    assert taken == []
    ids = [await orders.submit(ccxt_order(f"b{i}"), exchange="x") for i in range(300)]
    held = []
    async for delivery in orders.consume("executors", "e1", count=50, block=0):
        held.append(delivery)
        if len(held) == 150:
            break
    ids += [await orders.submit(ccxt_order(f"b{i}"), exchange="x") for i in range(300, 400)]
    # 150 pending entries at the head: nothing may go, however far over the cap
    assert await cache.client.xlen(queue) == 400
    for delivery in held:
        await delivery.ack()
    await orders.submit(ccxt_order("c"), exchange="x")
    # acked entries may go now, but never one the group has not received yet
    remaining = [e[0].decode() for e in await cache.client.xrange(queue)]
    assert set(ids[150:]) <= set(remaining)
    assert 251 <= len(remaining) < 401


# --- status records: save / get / update / list ----------------------------------------------


async def test_save_and_get_roundtrip_a_ccxt_order(cache: Cache) -> None:
    fee = {"cost": 0.5, "currency": "USDT"}
    data = ccxt_order("42", fee=fee, trades=[{"symbol": "BTC/USDT", "price": 1, "amount": 2}])
    await cache.orders.save(data, exchange="binance")
    order = await cache.orders.get("binance", "42")
    assert order is not None
    expected = Order.from_ccxt(data, exchange="binance")
    assert order.fee == Fee(cost=Decimal("0.5"), currency="USDT")
    assert order.timestamp == from_ms(1_700_000_000_000)
    assert order.last_update_timestamp is not None
    assert order.replace(last_update_timestamp=None) == expected
    assert await cache.orders.get("binance", "nope") is None
    assert await cache.orders.get("kraken", "42") is None
    raw = await cache.client.hgetall(cache.keys.order("binance", "42"))
    assert raw[b"status"] == b'"open"' and raw[b"price"] == b'"60000.5"'


async def test_save_merges_and_never_overwrites_the_creation_time(cache: Cache) -> None:
    await cache.orders.save(ccxt_order("1", price=100), exchange="binance")
    later = ccxt_order("1", timestamp=1_800_000_000_000, price=None, filled=0.1, status="open")
    await cache.orders.save(later, exchange="binance")
    order = await cache.orders.get("binance", "1")
    assert order is not None
    assert order.timestamp == from_ms(1_700_000_000_000)
    assert order.price == Decimal(100)  # not carried by the second save: kept
    assert order.filled == Decimal("0.1")


async def test_save_without_timestamp_stamps_the_creation_time_once(cache: Cache) -> None:
    await cache.orders.save(ccxt_order("1", timestamp=None, datetime=None), exchange="x")
    first = await cache.orders.get("x", "1")
    assert first is not None and first.timestamp is not None
    updated = await cache.orders.update("x", "1", filled="0.1")
    assert updated.timestamp == first.timestamp
    assert updated.last_update_timestamp is not None
    assert first.last_update_timestamp is not None
    assert updated.last_update_timestamp >= first.last_update_timestamp


async def test_update_merges_fields_and_returns_the_order(cache: Cache) -> None:
    await cache.orders.save(ccxt_order("1", lastUpdateTimestamp=1_700_000_000_500), exchange="x")
    order = await cache.orders.update(
        "x", "1", filled=0.1, average="60001", fee={"cost": "0.2", "currency": "BNB"}
    )
    assert order.filled == Decimal("0.1") and order.average == Decimal(60001)
    assert order.fee == Fee(cost=Decimal("0.2"), currency="BNB")
    assert order.price == Decimal("60000.5")  # untouched
    assert order == await cache.orders.get("x", "1")
    # camelCase names and explicit timestamps work; None clears an optional field
    order = await cache.orders.update(
        "x", "1", timeInForce="IOC", lastUpdateTimestamp=1_700_000_009_000, average=None
    )
    assert order.time_in_force == "IOC" and order.average is None
    assert order.last_update_timestamp == from_ms(1_700_000_009_000)
    order = await cache.orders.update("x", "1", fees=[], trades=())
    assert order.fees == () and order.trades == ()


async def test_update_of_an_unknown_order_raises_not_found(cache: Cache) -> None:
    before = await snapshot(cache)
    with pytest.raises(NotFound, match="nope"):
        await cache.orders.update("binance", "nope", status="canceled")
    assert await snapshot(cache) == before


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({}, "changes"),
        ({"colour": "red"}, "colour"),
        ({"id": "2"}, "id"),
        ({"exchange": "kraken"}, "exchange"),
        ({"timestamp": 1}, "timestamp"),
        ({"amount": 0}, "amount"),
        ({"amount": None}, "amount"),
        ({"side": "hold"}, "side"),
        ({"status": None}, "status"),
        ({"status": "lost"}, "status"),
        ({"price": "abc"}, "price"),
        ({"filled": -1}, "filled"),
        ({"fee": {"cost": "x"}}, "fee.cost"),
    ],
)
async def test_update_validates_changes_and_writes_nothing(
    cache: Cache, changes: dict[str, Any], field: str
) -> None:
    await cache.orders.save(ccxt_order("1"), exchange="binance")
    before = await snapshot(cache)
    with pytest.raises(ValidationError) as info:
        await cache.orders.update("binance", "1", **changes)
    assert info.value.field == field
    assert await snapshot(cache) == before


async def test_update_validates_the_key_parts(cache: Cache) -> None:
    with pytest.raises(ValidationError) as info:
        await cache.orders.update("bin ance", "1", status="closed")
    assert info.value.field == "exchange"
    with pytest.raises(ValidationError) as info:
        await cache.orders.update("binance", "a*b", status="closed")
    assert info.value.field == "order_id"


async def test_twenty_concurrent_updates_of_different_fields_all_land(
    cache_factory: Any,
) -> None:
    """The reference library's read-modify-write lost all but one of these."""
    # generous timeouts: this test is about atomicity, on a loaded CI machine
    writers = [await cache_factory(**PATIENT) for _ in range(4)]
    await writers[0].orders.save(ccxt_order("1"), exchange="binance")
    await asyncio.gather(
        *(
            writers[i % len(writers)].orders.update("binance", "1", **change)
            for i, change in enumerate(TWENTY_CHANGES)
        )
    )
    await _assert_all_twenty(writers[0])


async def _assert_all_twenty(cache: Cache) -> None:
    order = await cache.orders.get("binance", "1")
    assert order is not None
    expected = Order.from_ccxt(ccxt_order("1"), exchange="binance")
    for change in TWENTY_CHANGES:
        expected = expected.replace(**change)
    assert order.replace(last_update_timestamp=None) == expected


@pytest.mark.slow
async def test_twenty_updates_from_four_processes_all_land(cache: Cache) -> None:
    await cache.orders.save(ccxt_order("1"), exchange="binance")
    jobs = [
        ["updates", "binance", "1", ",".join(str(i) for i in range(k, 20, 4))] for k in range(4)
    ]
    await run_writer_processes(cache, jobs)
    await _assert_all_twenty(cache)


async def test_a_terminal_order_expires_on_its_own_never_its_neighbours(cache: Cache) -> None:
    orders = OrdersCache(with_settings(cache, order_ttl=1.0))
    for i in range(5):
        await orders.save(ccxt_order(str(i)), exchange="binance")
    canceled = await orders.update("binance", "2", status="cancelled")
    assert canceled.status is OrderStatus.CANCELED
    ttls = {i: await cache.client.pttl(cache.keys.order("binance", str(i))) for i in range(5)}
    assert 0 < ttls[2] <= 1000
    assert all(ttls[i] == -1 for i in (0, 1, 3, 4))
    await wait_until(lambda: _order_gone(orders, "2"), timeout=5, message="never expired")
    assert [o.id for o in await orders.list("binance")] == ["0", "1", "3", "4"]
    for i in (0, 1, 3, 4):
        assert await cache.client.pttl(cache.keys.order("binance", str(i))) == -1
    # the next write prunes the expired id from the exchange's index
    await orders.update("binance", "0", filled="0.01")
    index = await cache.client.zrange(cache.keys.order_index("binance"), 0, -1)
    assert sorted(index) == [b"0", b"1", b"3", b"4"]


async def _order_gone(orders: OrdersCache, order_id: str) -> bool:
    return await orders.get("binance", order_id) is None


@pytest.mark.parametrize("status", ["closed", "canceled", "cancelled", "rejected", "expired"])
async def test_every_terminal_status_starts_the_countdown(cache: Cache, status: str) -> None:
    await cache.orders.save(ccxt_order("1", status=status), exchange="binance")
    ttl = await cache.client.pttl(cache.keys.order("binance", "1"))
    assert 0 < ttl <= cache.settings.order_ttl * 1000
    score = await cache.client.zscore(cache.keys.order_index("binance"), "1")
    assert score is not None and score != float("inf")


async def test_terminal_countdown_is_not_restarted_and_reopening_cancels_it(
    cache: Cache,
) -> None:
    key = cache.keys.order("binance", "1")
    await cache.orders.save(ccxt_order("1", status="closed"), exchange="binance")
    first = await cache.client.pttl(key)
    score = await cache.client.zscore(cache.keys.order_index("binance"), "1")
    await cache.orders.save(ccxt_order("1", status="closed"), exchange="binance")
    await cache.orders.update("binance", "1", status="closed", filled="0.25")
    assert 0 < await cache.client.pttl(key) <= first
    assert await cache.client.zscore(cache.keys.order_index("binance"), "1") == score
    await cache.orders.update("binance", "1", status="open")
    assert await cache.client.pttl(key) == -1
    assert await cache.client.zscore(cache.keys.order_index("binance"), "1") == float("inf")


async def test_list_filters_by_status_and_is_scoped_by_exchange(cache: Cache) -> None:
    await cache.orders.save(ccxt_order("b", timestamp=1_700_000_000_002), exchange="binance")
    await cache.orders.save(ccxt_order("a", timestamp=1_700_000_000_001), exchange="binance")
    await cache.orders.save(ccxt_order("c", status="canceled"), exchange="binance")
    await cache.orders.save(ccxt_order("k"), exchange="kraken")
    assert [o.id for o in await cache.orders.list("binance")] == ["c", "a", "b"]
    assert [o.id for o in await cache.orders.list("Binance", status="open")] == ["a", "b"]
    assert [o.id for o in await cache.orders.list("binance", "cancelled")] == ["c"]
    assert [o.id for o in await cache.orders.list("binance", OrderStatus.CLOSED)] == []
    assert [o.id for o in await cache.orders.list("kraken")] == ["k"]
    assert await cache.orders.list("bybit") == []
    for bad in ("lost", 3):
        with pytest.raises(ValidationError) as info:
            await cache.orders.list("binance", bad)  # type: ignore[arg-type]
        assert info.value.field == "status"


async def test_status_records_and_the_queue_are_separate(cache: Cache) -> None:
    await cache.orders.save(ccxt_order("1"), exchange="binance")
    assert await cache.client.exists(cache.keys.order_queue()) == 0
    await cache.orders.submit(ccxt_order("2"), exchange="binance")
    assert await cache.orders.get("binance", "2") is None
    assert repr(cache.orders).startswith("<OrdersCache namespace=")


# --- outages -------------------------------------------------------------------------------


async def test_an_outage_raises_connection_lost_never_a_miss() -> None:
    with RedisServer() as server:
        async with Cache.connect(server.url, namespace="outage") as cache:
            await cache.orders.submit(ccxt_order("1"), exchange="binance")
            delivery = await anext(aiter(cache.orders.consume("g", "c", block=0)))
            server.kill()
            calls = [
                cache.orders.submit(ccxt_order("2"), exchange="binance"),
                cache.orders.save(ccxt_order("2"), exchange="binance"),
                cache.orders.update("binance", "1", status="closed"),
                cache.orders.get("binance", "1"),
                cache.orders.list("binance"),
                cache.orders.pending("g"),
                cache.orders.reclaim("g", "c", 0),
                delivery.ack(),
                cache.trades.push(ccxt_trade("1"), exchange="binance"),
                cache.trades.recent("binance", "BTC/USDT"),
                cache.accounts.set_position("a", {"symbol": "BTC/USDT"}),
                cache.accounts.all_positions(),
            ]
            for call in calls:
                with pytest.raises(ConnectionLost):
                    await call
            with pytest.raises(ConnectionLost):
                async for _ in cache.orders.consume("g", "c", block=0):
                    pass
