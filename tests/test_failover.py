"""Replication and failover: ``wait_replicas=`` (WAIT) and a Cluster that loses a master.

Every test here runs on private servers it may pause and kill: a standalone
master + replica, or a 3 masters + 3 replicas Cluster from
``RedisClusterServer(masters=3, replicas=1)`` (node timeout 2000 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis
from redis.cluster import key_slot

from tradecache import Cache, ConnectionLost, NotReplicated, ValidationError
from tradecache.errors import Claimed, TradecacheError
from tradecache.replication import (
    Call,
    check_replicas,
    refresh_routing,
    run_replicated,
    run_replicated_many,
)
from tradecache.scripts import Script
from tradecache.server import RedisClusterServer, RedisServer
from tradecache.testing import wait_until

TICKER = {"symbol": "BTC/USDT", "bid": 1.0, "ask": 2.0, "last": 1.5, "timestamp": 1700000000000}


def order(n: int, exchange: str = "ex0") -> dict[str, Any]:
    return {
        "id": f"o{n}", "clientOrderId": f"c{n}", "symbol": "BTC/USDT", "side": "buy",
        "type": "limit", "amount": "0.1", "price": "100", "exchange": exchange,
    }  # fmt: skip


def trade(n: int) -> dict[str, Any]:
    return {
        "id": str(n), "symbol": "BTC/USDT", "price": 100, "amount": 0.1, "side": "buy",
        "timestamp": 1700000000000 + n,
    }  # fmt: skip


# --- a standalone master with one replica -----------------------------------------------------


@pytest.fixture
async def primary() -> AsyncIterator[tuple[RedisServer, RedisServer]]:
    """A master on TCP and one replica of it, in sync."""
    master = RedisServer(port=0).start()
    replica = RedisServer(port=0)
    try:
        replica.args = ["--replicaof", "127.0.0.1", str(master.port)]
        replica.start()
        admin = replica.client()
        await wait_until(
            lambda: admin.info("replication").get("master_link_status") == "up",
            timeout=20,
            message="replica in sync",
        )
        admin.close()
        yield master, replica
    finally:
        for server in (replica, master):
            if server.running:
                server.resume()
            server.stop()


# Replicas that work get a generous WAIT timeout (the machine may be loaded); the
# tests that pause a replica use `impatient`, which gives up after 0.2 s.
PATIENT = 5.0


@pytest.fixture
async def standalone(primary: tuple[RedisServer, RedisServer]) -> AsyncIterator[Cache]:
    master, _ = primary
    async with Cache.connect(master.url, namespace="fo", wait_replicas_timeout=PATIENT) as cache:
        yield cache


@pytest.fixture
async def impatient(primary: tuple[RedisServer, RedisServer]) -> AsyncIterator[Cache]:
    master, _ = primary
    async with Cache.connect(master.url, namespace="fo", wait_replicas_timeout=0.2) as cache:
        yield cache


async def test_wait_replicas_confirms_a_lock_claim_and_order(standalone: Cache) -> None:
    cache = standalone
    async with cache.lock("a", ttl=5, wait_replicas=1) as lease:
        assert lease.fence > 0
    async with cache.bots.claim("ex", "BTC/USDT", "bot-1", wait_replicas=1) as claim:
        assert claim.held
    entry = await cache.orders.submit(order(1), wait_replicas=1)
    assert await cache.orders.submit(order(1), wait_replicas=1) == entry  # idempotent repeat
    pushed = await cache.trades.push(trade(1), exchange="ex", wait_replicas=1)
    assert [t.id for t in await cache.trades.recent("ex", "BTC/USDT")] == ["1"]
    assert pushed


async def test_wait_replicas_confirms_many_trades_of_many_exchanges(standalone: Cache) -> None:
    cache = standalone
    with pytest.raises(ValidationError, match="wait_replicas"):
        await cache.trades.push_many([trade(1)], "ex", wait_replicas=-1)
    assert await cache.trades.push_many([], "ex", wait_replicas=1) == 0
    await cache.client.script_flush()  # the scripts are reloaded in the same round trip
    batch = [
        {**trade(1), "exchange": "ex"},
        {**trade(2), "exchange": "ex", "symbol": "ETH/USDT"},
        {**trade(3), "exchange": "ex"},
        {**trade(4), "exchange": "other"},
    ]
    assert await cache.trades.push_many(batch, wait_replicas=1) == 4
    assert [t.id for t in await cache.trades.recent("ex", "BTC/USDT")] == ["1", "3"]
    assert [t.id for t in await cache.trades.recent("ex", "ETH/USDT")] == ["2"]
    assert [t.id for t in await cache.trades.recent("other", "BTC/USDT")] == ["4"]
    assert await cache.client.smembers(cache.keys.trade_exchanges()) == {b"ex", b"other"}


async def test_too_few_replicas_release_the_lock_and_raise(
    standalone: Cache, impatient: Cache, primary: tuple[RedisServer, RedisServer]
) -> None:
    cache = impatient
    with pytest.raises(NotReplicated) as info:
        await cache.lock("b", ttl=5, wait_replicas=2).acquire()
    assert (info.value.acked, info.value.wanted) == (1, 2)
    lock = cache.lock("b", ttl=5)
    await wait_until(lambda: _free(lock), timeout=5, message="the unconfirmed lease released")
    _, replica = primary
    replica.pause()  # the replica acknowledges nothing
    try:
        with pytest.raises(NotReplicated):
            async with cache.bots.claim("ex", "ETH/USDT", "bot-1", wait_replicas=1):
                pass  # pragma: no cover - never granted
        await _released_claim(cache)
        with pytest.raises(NotReplicated) as submitted:
            await cache.orders.submit(order(2), wait_replicas=1)
        assert submitted.value.reply[0] == 1  # enqueued on the master
        with pytest.raises(NotReplicated) as pushed:
            await cache.trades.push(trade(2), exchange="ex", wait_replicas=1)
        (entry_id,) = pushed.value.reply  # appended on the master: its entry id
        assert entry_id
        with pytest.raises(NotReplicated) as many:
            await cache.trades.push_many([trade(3), trade(4)], "ex2", wait_replicas=1)
        assert len(many.value.reply) == 1  # one stream: its last entry id
        assert [t.id for t in await cache.trades.recent("ex2", "BTC/USDT")] == ["3", "4"]
    finally:
        replica.resume()
    # A retry is idempotent and waits again: now confirmed, same entry.
    entry = await standalone.orders.submit(order(2), wait_replicas=1)
    assert submitted.value.reply[1].decode() == entry


async def _free(lock: Any) -> bool:
    return not await lock.locked()


async def _released_claim(cache: Cache) -> bool:
    await wait_until(lambda: _no_holder(cache), timeout=5, message="the unconfirmed claim released")
    return True


async def _no_holder(cache: Cache) -> bool:
    return await cache.bots.holder("ex", "ETH/USDT") is None


async def test_key_reuse_is_reported_even_without_replicas(
    impatient: Cache, primary: tuple[RedisServer, RedisServer]
) -> None:
    cache = impatient
    await cache.orders.submit(order(3), wait_replicas=1)
    _, replica = primary
    replica.pause()
    try:
        other = order(3) | {"price": "101"}
        with pytest.raises(TradecacheError) as info:
            await cache.orders.submit(other, wait_replicas=1)
        assert type(info.value).__name__ == "KeyReuse"  # not NotReplicated: nothing written
    finally:
        replica.resume()


async def test_a_handed_over_lock_is_confirmed_too(standalone: Cache) -> None:
    cache = standalone
    first = await cache.lock("h", ttl=5).acquire()
    lock = cache.lock("h", ttl=5, wait=10, wait_replicas=1)
    waiting = asyncio.create_task(lock.acquire())
    await wait_until(lambda: _queued(cache, lock), timeout=10, message="a queued waiter")
    await first.release()  # hands the lock over to the waiter
    second = await waiting
    assert second.fence > first.fence
    await second.release()


async def _queued(cache: Cache, lock: Any) -> bool:
    return bool(await cache.client.zcard(lock.spec.queue))


async def test_settings_default_and_validation(primary: tuple[RedisServer, RedisServer]) -> None:
    master, _ = primary
    async with Cache.connect(master.url, namespace="fo2", wait_replicas=2) as cache:
        assert cache.lock("x").wait_replicas == 2
        assert cache.lock("x", wait_replicas=0).wait_replicas == 0
        with pytest.raises(NotReplicated):
            await cache.orders.submit(order(4))
        with pytest.raises(ValidationError):
            cache.lock("x", wait_replicas=-1)
        with pytest.raises(ValidationError):
            check_replicas(True)


async def test_run_replicated_reloads_lost_scripts_and_raises_errors(standalone: Cache) -> None:
    cache = standalone
    script = Script("t_echo", source="redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1]")
    await cache.client.script_flush()
    client = cache.client
    reply = await run_replicated(client, "k", script, ["k"], ["v"], replicas=1, timeout=PATIENT)
    assert reply == b"v"
    failing = Script("t_fail", source="return redis.error_reply('boom')")
    with pytest.raises(TradecacheError, match="boom"):
        await run_replicated(cache.client, "k", failing, ["k"], [], replicas=1, timeout=1)
    calls: list[Call] = [(failing, ["k"], []), (script, ["k"], ["after"])]
    with pytest.raises(TradecacheError, match="boom"):
        await run_replicated_many(client, "k", calls, replicas=1, timeout=PATIENT)
    assert await client.get("k") == b"after"  # raised once every call ran
    await refresh_routing(cache.client, "k")  # a no-op off a Cluster


async def test_run_replicated_on_a_dead_server_raises_connection_lost(
    primary: tuple[RedisServer, RedisServer],
) -> None:
    master, _ = primary
    async with Cache.connect(master.url, namespace="fo3") as cache:
        await cache.ping()
        master.kill()
        script = Script("t_set", source="return redis.call('SET', KEYS[1], ARGV[1])")
        with pytest.raises(ConnectionLost):
            await run_replicated(cache.client, "k", script, ["k"], ["v"], replicas=1, timeout=1)


# --- a 3 masters + 3 replicas Cluster -------------------------------------------------------


@pytest.fixture
async def cluster() -> AsyncIterator[RedisClusterServer]:
    async with RedisClusterServer(masters=3, replicas=1) as server:
        yield server


def _master_of(cluster: RedisClusterServer, tag: str) -> int:
    """Index in ``cluster.masters`` of the master that serves ``{tag}`` (at start)."""
    slot = key_slot(tag.encode())
    return slot * len(cluster.masters) // 16384


def _replica_of(cluster: RedisClusterServer, index: int) -> RedisServer:
    return cluster.replicas[index]  # replica i replicates master i % masters


def _promoted(replica: RedisServer) -> bool:
    client = replica.client()
    try:
        return bool(client.info("replication").get("role") == "master") and bool(
            client.cluster("info").get("cluster_state") == "ok"
        )
    except redis.RedisError:
        return False
    finally:
        client.close()


async def _eventually(call: Callable[[], Awaitable[Any]], limit: float = 30) -> Any:
    """Retry ``call`` through ConnectionLost until it succeeds; each failure is fast."""
    deadline = time.monotonic() + limit
    while True:
        started = time.monotonic()
        try:
            return await call()
        except ConnectionLost:
            assert time.monotonic() - started < 5, "a failing call must not hang"
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


# Exchanges whose hash tags {exN} land on master 0, 1 and 2 of a 3-master cluster.
SHARD_EXCHANGES = ("ex0", "ex1", "ex3")


@pytest.mark.slow
@pytest.mark.parametrize("victim_tag", ["ex1", "queue"], ids=["other-shard", "queue-shard"])
async def test_cluster_failover_under_load(cluster: RedisClusterServer, victim_tag: str) -> None:
    """Kill one master mid-load: calls fail fast, then succeed again on the same Cache.

    ``other-shard`` kills the master of ``{ex1}`` (tickers and trades of ex1):
    no acknowledged order (queue on another shard) or trade of ex0/ex3 is lost.
    ``queue-shard`` kills the master of the order queue and of ex3's trades:
    orders and trades were written with ``wait_replicas=1``, so none of the
    acknowledged ones is lost, on the failed shard either.
    """
    assert [_master_of(cluster, ex) for ex in SHARD_EXCHANGES] == [0, 1, 2]
    victim = _master_of(cluster, victim_tag)
    replicas = 1 if victim_tag == "queue" else 0
    async with Cache.connect(cluster.url, namespace="load") as cache:
        stop = asyncio.Event()
        acked_orders: set[str] = set()
        acked_trades: dict[str, set[str]] = {ex: set() for ex in SHARD_EXCHANGES}
        consumed: set[str] = set()
        errors: dict[str, int] = {}
        progress = {"ok": 0}
        unconfirmed: set[str] = set()

        async def guarded(name: str, call: Callable[[], Awaitable[Any]]) -> Any:
            started = time.monotonic()
            try:
                result = await call()
            except NotReplicated:
                # The promoted replica has no replica of its own: nothing can confirm.
                unconfirmed.add(name)
                await asyncio.sleep(0.02)
                return None
            except ConnectionLost:
                assert time.monotonic() - started < 5, f"{name} hung"
                errors[name] = errors.get(name, 0) + 1
                await asyncio.sleep(0.02)
                return None
            progress["ok"] += 1
            return result

        async def feed() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                for ex in SHARD_EXCHANGES:
                    await guarded("ticker", lambda ex=ex: cache.tickers.set(TICKER, exchange=ex))
                    entry = await guarded(
                        "trade",
                        lambda ex=ex, n=n: cache.trades.push(
                            trade(n), exchange=ex, wait_replicas=replicas
                        ),
                    )
                    if entry is not None:
                        acked_trades[ex].add(entry)
                await asyncio.sleep(0.005)

        async def submit() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                entry = await guarded(
                    "submit", lambda n=n: cache.orders.submit(order(n), wait_replicas=replicas)
                )
                if entry is not None:
                    acked_orders.add(entry)
                await asyncio.sleep(0.005)

        async def consume() -> None:
            while not stop.is_set():
                with contextlib.suppress(ConnectionLost):
                    async for delivery in cache.orders.consume("exec", "c1", block=0.1):
                        await delivery.ack()
                        consumed.add(delivery.id)
                        if stop.is_set():
                            return
                await asyncio.sleep(0.02)

        claim = await cache.bots.claim("ex0", "BTC/USDT", "bot-1", ttl=6)
        tasks = [asyncio.create_task(job()) for job in (feed, submit, consume)]
        try:
            await wait_until(lambda: progress["ok"] > 50, timeout=30, message="load running")
            cluster.masters[victim].kill()
            killed = progress["ok"]
            await wait_until(
                lambda: errors, timeout=30, message="calls to the dead master fail (ConnectionLost)"
            )
            await wait_until(
                lambda: _promoted(_replica_of(cluster, victim)),
                timeout=30,
                interval=0.1,
                message="the replica promoted",
            )
            # The same Cache recovers on every shard, the failed one included.
            for ex in SHARD_EXCHANGES:
                await _eventually(lambda ex=ex: cache.tickers.set(TICKER, exchange=ex))
            await _eventually(lambda: cache.orders.submit(order(10**6)))
            await wait_until(
                lambda: progress["ok"] > killed + 50, timeout=30, message="load after the failover"
            )
            # A claim on a surviving shard (or renewed on the promoted replica) is still held.
            assert claim.held, claim.lost_reason
            other = cache.bots.claim("ex0", "BTC/USDT", "bot-2")
            with pytest.raises(Claimed):
                await _eventually(lambda: other)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        await claim.release()
        # No acknowledged order is lost: each one is in the queue stream.
        queue = cache.keys.order_queue()
        stored = {
            entry.decode()
            for entry, _ in await _eventually(lambda: cache.client.xrange(queue, "-", "+"))
        }
        assert acked_orders <= stored, acked_orders - stored
        assert consumed <= stored
        # No acknowledged trade is lost from a surviving shard's streams, nor, with
        # wait_replicas=1, from the failed shard's.
        for ex in SHARD_EXCHANGES:
            if _master_of(cluster, ex) == victim and not replicas:
                continue
            key = cache.keys.trades(ex, "BTC/USDT")
            entries = await _eventually(lambda key=key: cache.client.xrange(key, "-", "+"))
            assert acked_trades[ex] <= {entry.decode() for entry, _ in entries}
        assert errors, "the kill did not hit the load"
        assert unconfirmed <= {"submit", "trade"}
        if replicas:
            # The promoted master has no replica left: nothing can be confirmed now.
            with pytest.raises(NotReplicated):
                await _eventually(lambda: cache.orders.submit(order(10**6 + 1), wait_replicas=1))


@pytest.mark.slow
async def test_fences_increase_across_a_failover_that_lost_the_last_grant(
    cluster: RedisClusterServer,
) -> None:
    """The master dies before it replicated a grant: the promoted replica never saw it.

    The replica is stopped (SIGSTOP) and the master drops its replication link
    (``CLIENT KILL TYPE replica``), so the next grant exists on the master only;
    then the master is SIGKILLed and the replica resumes and is promoted.
    ``wait_replicas=1`` refuses that grant (NotReplicated); without it the lease
    is lost with the master, yet the next fence is still higher.
    """
    name = "fence-x"
    index = _master_of(cluster, name)
    async with Cache.connect(cluster.url, namespace="fx", wait_replicas_timeout=2) as cache:
        lease = await cache.lock(name, ttl=10, renew=False, wait_replicas=1).acquire()
        confirmed = lease.fence
        await lease.release()
        replica = _replica_of(cluster, index)
        master = cluster.masters[index]
        replica.pause()
        admin = master.client()
        try:
            admin.client_kill_filter(_type="replica")
            with pytest.raises(NotReplicated):
                await cache.lock(name, ttl=10, wait_replicas=1).acquire()
            lost = await cache.lock(name, ttl=10, renew=False).acquire()
            assert lost.fence > confirmed
        finally:
            admin.close()
            master.kill()
            replica.resume()
        await wait_until(
            lambda: _promoted(replica), timeout=30, interval=0.1, message="replica promoted"
        )
        survivor = replica.client()
        try:
            # The promoted replica never saw the last grant: the counter is behind.
            assert int(survivor.get(cache.keys.lock_fence(name))) < lost.fence
            assert survivor.exists(cache.keys.lock(name)) == 0
        finally:
            survivor.close()
        # The lease is gone (two holders until the old one notices), but fences still rise.
        again = await _eventually(lambda: cache.lock(name, ttl=10, renew=False).acquire(wait=0))
        assert again.fence > lost.fence > confirmed
        await again.release()
        lost._stop()  # its master is dead: nothing to release


@pytest.mark.slow
async def test_a_claim_survives_the_failover_of_its_own_shard(cluster: RedisClusterServer) -> None:
    """Renewals (on a dedicated connection) find the promoted replica without other traffic."""
    index = _master_of(cluster, "bots")
    async with Cache.connect(cluster.url, namespace="cl", wait_replicas_timeout=PATIENT) as cache:
        claim = await cache.bots.claim("ex0", "BTC/USDT", "bot-1", ttl=8, wait_replicas=1)
        cluster.masters[index].kill()
        await wait_until(
            lambda: _promoted(_replica_of(cluster, index)),
            timeout=30,
            interval=0.1,
            message="replica promoted",
        )
        promoted = time.monotonic()
        lifetime = claim.lease._lock.lifetime
        # A renewal after the promotion pushed the local deadline past this bound.
        await wait_until(
            lambda: (
                claim.remaining() > promoted + lifetime - time.monotonic() or claim.lost.is_set()
            ),
            timeout=10,
            message="a renewal on the promoted replica",
        )
        assert claim.held, claim.lost_reason
        with pytest.raises(Claimed):
            await _eventually(lambda: cache.bots.claim("ex0", "BTC/USDT", "bot-2"))
        assert await claim.release()


# --- error translation, fence floor, WAIT corner cases ----------------------------------------


def test_not_replicated_pickles() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(NotReplicated(0, 1, [1, b"e"])))
    assert (error.acked, error.wanted, error.reply) == (0, 1, [1, b"e"])
    assert "0 of 1 replicas" in str(error)


async def test_a_connection_closed_under_us_is_connection_lost() -> None:
    """redis-py closing a connection another task uses: ConnectionLost, not AttributeError."""
    from redis.asyncio.connection import Connection

    from tradecache.errors import redis_errors, translate_redis_errors

    @redis_errors
    async def send() -> None:
        await Connection()._send_packed_command([b"PING"])  # _writer is None: not connected

    with pytest.raises(ConnectionLost, match="closed while in use"):
        await send()
    with pytest.raises(ConnectionLost), translate_redis_errors():
        await Connection()._send_packed_command([b"PING"])

    @redis_errors
    async def ours() -> None:
        raise AttributeError("a bug of ours")

    with pytest.raises(AttributeError, match="a bug of ours"):
        await ours()
    with pytest.raises(TypeError, match="ours too"), translate_redis_errors():
        raise TypeError("ours too")


async def test_fences_stay_above_what_this_process_saw(standalone: Cache) -> None:
    """A lost counter and a server clock behind the last fence: the floor still wins."""
    cache = standalone
    future = (time.time() + 10**6) * 10**6  # a fence from a clock far ahead
    await cache.client.set(cache.keys.lock_fence("f"), f"{future:.0f}")
    async with cache.lock("f", ttl=5) as first:
        assert first.fence > future
    await cache.client.delete(cache.keys.lock_fence("f"))  # what a lagging replica has
    async with cache.lock("f", ttl=5) as second:
        assert second.fence == first.fence + 1
    other = Cache.connect(cache.settings)  # another process: only the server clock
    async with other as fresh:
        await fresh.client.delete(cache.keys.lock_fence("f"))
        async with fresh.lock("f", ttl=5) as third:
            assert third.fence < first.fence  # documented: the epoch is the server clock


async def test_manager_remembers_a_bounded_number_of_fences(
    standalone: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tradecache.coordination import lock as lock_module

    monkeypatch.setattr(lock_module, "_MAX_FENCES", 2)
    manager = standalone.locks
    manager._fences.clear()
    for key, fence in (("a", 5), ("b", 6), ("a", 3), ("c", 7)):
        manager._saw(key, fence)
    assert manager._fences == {"a": 5, "c": 7}  # "b" was the oldest


async def test_a_waiter_not_granted_ignores_unconfirmed_queueing(
    impatient: Cache, primary: tuple[RedisServer, RedisServer]
) -> None:
    cache = impatient
    holder = await cache.lock("w", ttl=5).acquire()
    _, replica = primary
    replica.pause()
    try:
        # Queueing is a write WAIT cannot confirm: still only "not granted".
        lease, owner = await cache.lock("w", ttl=5, wait_replicas=1).try_acquire(wait=0.3)
        assert lease is None
        assert owner == holder.owner
    finally:
        replica.resume()
    await holder.release()


async def test_wait_on_a_replica_is_an_error(primary: tuple[RedisServer, RedisServer]) -> None:
    _, replica = primary
    async with Cache.connect(replica.url, namespace="ro") as cache:
        script = Script("t_one", source="return 1")
        with pytest.raises(TradecacheError, match="replica"):
            await run_replicated(cache.client, "k", script, ["k"], [], replicas=1, timeout=0.1)


@pytest.mark.slow
async def test_run_replicated_on_a_cluster(cluster: RedisClusterServer) -> None:
    from tradecache.connection import create_client

    script = Script("t_set", source="return redis.call('SET', KEYS[1], ARGV[1])")
    client = create_client(cluster.url)  # not initialized: no slot table yet
    try:
        reply = await run_replicated(client, "k", script, ["k"], ["v"], replicas=1, timeout=PATIENT)
        assert reply == b"OK"
        right = client.get_node_from_key("k")
        wrong = next(node for node in client.get_primaries() if node is not right)
        client.get_node_from_key = lambda key, replica=False: wrong  # type: ignore[method-assign]
        with pytest.raises(ConnectionLost, match="moved"):
            await run_replicated(client, "k", script, ["k"], ["v"], replicas=1, timeout=1)
        del client.get_node_from_key
        await refresh_routing(client, "k")
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_lock_handoff_by_push_after_the_default_node_died(
    cluster: RedisClusterServer,
) -> None:
    """The wake-up subscriber reconnects to a live node, not to the dead one forever."""
    async with Cache.connect(cluster.url, namespace="hub") as cache:
        first = await cache.lock("warm", ttl=30).acquire()
        warm = cache.lock("warm", ttl=30, wait=20)
        second = asyncio.create_task(warm.acquire())
        await wait_until(lambda: _queued(cache, warm), timeout=10, message="a queued waiter")
        await first.release()
        await (await second).release()  # the wake-up link is up, on the default node
        default = cache.client.get_default_node()
        index = next(i for i, node in enumerate(cluster.masters) if node.port == default.port)
        cluster.masters[index].kill()
        await wait_until(
            lambda: _promoted(_replica_of(cluster, index)),
            timeout=30,
            interval=0.1,
            message="replica promoted",
        )
        holder = await _eventually(lambda: cache.lock("h", ttl=30).acquire(wait=0))
        lock = cache.lock("h", ttl=30, wait=20)
        waiting = asyncio.create_task(lock.acquire())
        await wait_until(lambda: _queued(cache, lock), timeout=10, message="a queued waiter")
        await wait_until(
            lambda: cache.locks.hub.live(cache.keys.lock_channel("h")),
            timeout=20,
            interval=0.05,
            message="the wake-up channel subscribed on a live node",
        )
        released = time.monotonic()
        await holder.release()
        lease = await waiting
        assert time.monotonic() - released < 5  # pushed, not a 15 s TTL slice
        await lease.release()


@contextlib.asynccontextmanager
async def _blocked_in_wait(
    cache: Cache, replica: RedisServer, wait_timeout: float
) -> AsyncIterator[asyncio.Task[Any]]:
    """``run_replicated`` of ``SET k v`` as a task, blocked in its WAIT (the replica paused)."""
    script = Script("t_set_wait", source="return redis.call('SET', KEYS[1], ARGV[1])")
    # Loaded first: a NOSCRIPT round's WAIT may block too (when the connection wrote before
    # and the replica had not acknowledged that yet), and stopping it there sets nothing.
    await cache.client.script_load(script.source)
    replica.pause()
    try:
        call = run_replicated(
            cache.client, "k", script, ["k"], ["v"], replicas=1, timeout=wait_timeout
        )
        task = asyncio.create_task(call)
        await wait_until(lambda: _waiting_clients(cache), timeout=10, message="WAIT blocked")
        yield task
    finally:
        replica.resume()


async def test_run_replicated_cancelled_mid_wait_drops_its_connection(
    impatient: Cache, primary: tuple[RedisServer, RedisServer]
) -> None:
    cache = impatient
    async with _blocked_in_wait(cache, primary[1], wait_timeout=30) as task:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await cache.client.get("k") == b"v"  # the pool is in step: no late WAIT reply


async def test_a_master_stalled_during_wait_raises_connection_lost(
    impatient: Cache, primary: tuple[RedisServer, RedisServer]
) -> None:
    """The WAIT reply never comes (the master is stopped mid-WAIT): ConnectionLost, in time."""
    cache = impatient
    master, replica = primary
    async with _blocked_in_wait(cache, replica, wait_timeout=0.5) as task:
        master.pause()  # and its timeout's reply is never sent
        started = time.monotonic()
        try:
            with pytest.raises(ConnectionLost, match="WAIT"):
                await task
            assert time.monotonic() - started < 5  # WAIT's timeout plus the socket timeout
        finally:
            master.resume()
    assert await cache.client.get("k") == b"v"  # the late reply did not reach the pool


async def _waiting_clients(cache: Cache) -> bool:
    clients = await cache.client.client_list()
    # Blocked ("b"), not just last seen running WAIT (one that already returned).
    return any(client.get("cmd") == "wait" and "b" in client.get("flags", "") for client in clients)


def test_wait_replicas_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from tradecache import ConfigError, Settings

    monkeypatch.setenv("TRADECACHE_WAIT_REPLICAS", "1")
    monkeypatch.setenv("TRADECACHE_WAIT_REPLICAS_TIMEOUT", "0.25")
    settings = Settings()
    assert (settings.wait_replicas, settings.wait_replicas_timeout) == (1, 0.25)
    with pytest.raises(ConfigError, match="TRADECACHE_WAIT_REPLICAS_TIMEOUT"):
        Settings(wait_replicas_timeout=0)
    with pytest.raises(ConfigError, match="TRADECACHE_WAIT_REPLICAS"):
        Settings(wait_replicas=17)
