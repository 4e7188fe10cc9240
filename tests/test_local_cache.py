"""Client-side caching (local_cache.py): hits, invalidation, races, reconnects, FLUSHALL."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster

from helpers import local_cache_writer
from tradecache import Cache, ConnectionLost, ValidationError
from tradecache.config import Settings
from tradecache.local_cache import MISS, LocalCache
from tradecache.testing import wait_until

EX = "binance"


def ticker(symbol: str, last: float) -> dict[str, Any]:
    return {"symbol": symbol, "last": last}


async def pair(cache_factory: Any, **options: Any) -> tuple[Cache, Cache, LocalCache]:
    """A reader with a local cache and a writer without one, on the same namespace."""
    reader = await cache_factory(local_cache=True, **options)
    writer = await cache_factory()
    local = reader.local_cache
    assert local is not None and local.serving
    return reader, writer, local


async def kill_link(cache: Cache, index: int = 0) -> None:
    """CLIENT KILL one tracking connection of ``cache`` (on its own node)."""
    local = cache.local_cache
    assert local is not None
    node, client_id = local.links[index]
    client: Any = cache.client
    if isinstance(client, RedisCluster):
        target = client.get_node(node_name=node)
        await client.execute_command("CLIENT", "KILL", "ID", client_id, target_nodes=target)
    else:
        await client.execute_command("CLIENT", "KILL", "ID", client_id)


# --- the read path ---------------------------------------------------------------------------


async def remembered(local: LocalCache, key: str, field: Any, read: Any) -> Any:
    """Call ``read()`` until its value is cached (the first reads may race invalidations)."""

    async def once() -> bool:
        await read()
        return local.get(key, field) is not MISS

    await wait_until(once)
    return local.get(key, field)


async def test_ticker_get_is_served_locally_until_a_write_invalidates_it(cache_factory):
    reader, writer, local = await pair(cache_factory)
    key = reader.keys.ticker_hash(EX)
    await writer.tickers.set(ticker("BTC/USDT", 1.0), EX)
    first = await remembered(local, key, "BTC/USDT", lambda: reader.tickers.get(EX, "BTC/USDT"))
    assert first is not None and first.last == 1.0
    hits = local.stats().hits
    assert await reader.tickers.get(EX, "BTC/USDT") is first  # the same object: no I/O
    assert local.stats().hits == hits + 1

    await writer.tickers.set(ticker("BTC/USDT", 2.0), EX)
    await wait_until(lambda: local.get(key, "BTC/USDT") is MISS)
    again = await reader.tickers.get(EX, "BTC/USDT")
    assert again is not None and again.last == 2.0
    assert local.stats().invalidations >= 2
    # max_age applies to the cached ticker too
    await wait_until(lambda: _gone(reader.tickers.get(EX, "BTC/USDT", max_age=0.001)))


async def test_a_missing_ticker_is_cached_as_none_until_it_is_set(cache_factory):
    reader, writer, local = await pair(cache_factory)
    key = reader.keys.ticker_hash(EX)
    assert (
        await remembered(local, key, "ETH/USDT", lambda: reader.tickers.get(EX, "ETH/USDT")) is None
    )
    await writer.tickers.set(ticker("ETH/USDT", 3.0), EX)
    found = await wait_until(lambda: reader.tickers.get(EX, "ETH/USDT"))
    assert found.last == 3.0


async def test_get_all_is_cached_and_never_hands_out_the_cached_dict(cache_factory):
    reader, writer, local = await pair(cache_factory)
    key = reader.keys.ticker_hash(EX)
    await writer.tickers.set_many([ticker("BTC/USDT", 1.0), ticker("ETH/USDT", 2.0)], EX)
    await remembered(local, key, None, lambda: reader.tickers.get_all(EX))
    everything = await reader.tickers.get_all(EX)
    assert sorted(everything) == ["BTC/USDT", "ETH/USDT"]
    everything.clear()  # the caller's copy
    hits = local.stats().hits
    again = await reader.tickers.get_all(EX)
    assert sorted(again) == ["BTC/USDT", "ETH/USDT"] and local.stats().hits == hits + 1
    await wait_until(lambda: _empty(reader.tickers.get_all(EX, max_age=0.001)))
    assert local.stats().hits >= hits + 2
    await writer.tickers.delete(EX, "ETH/USDT")
    await wait_until(lambda: local.get(key) is MISS)
    assert sorted(await reader.tickers.get_all(EX)) == ["BTC/USDT"]


async def _empty(pending: Any) -> bool:
    return not await pending


async def test_a_corrupt_ticker_raises_and_hands_its_ticket_back(cache_factory):
    reader, _, local = await pair(cache_factory)
    key = reader.keys.ticker_hash(EX)
    await reader.client.hset(key, "BAD/USDT", b"not json")
    await wait_until(lambda: local.stats().invalidations >= 1)
    with pytest.raises(ValidationError):
        await reader.tickers.get(EX, "BAD/USDT")
    assert local._inflight == {} and local.get(key, "BAD/USDT") is MISS


async def test_metadata_reads_are_cached_with_their_ttl(cache_factory):
    reader, writer, local = await pair(cache_factory)
    await writer.exchanges.put({"id": "okx", "name": "OKX"})
    await writer.symbols.put(
        {"id": "BTCUSDT", "symbol": "BTC/USDT", "base": "BTC", "quote": "USDT"}, "okx"
    )
    entry = reader.keys.exchange_meta("okx")
    await wait_until(lambda: _cached(local, entry, reader.exchanges.get("okx")))
    hits = local.stats().hits
    okx = await reader.exchanges.get("okx")
    assert okx is not None and okx.name == "OKX" and local.stats().hits == hits + 1
    market = await wait_until(lambda: reader.symbols.get("okx", "BTC/USDT"))
    assert market.base == "BTC"

    await writer.exchanges.put({"id": "okx", "name": "OKX v2"})
    renamed = await wait_until(
        lambda: _named(reader.exchanges.get("okx"), "OKX v2"), message="put not seen"
    )
    assert renamed.name == "OKX v2"

    # A short TTL ends the local entry too, even before the server reports the expiry.
    kraken = reader.keys.exchange_meta("kraken")
    await writer.exchanges.put({"id": "kraken", "name": "Kraken"}, ttl=0.5)
    await wait_until(lambda: _cached(local, kraken, reader.exchanges.get("kraken")))
    assert local._entries[(kraken, None)][1] is not None  # a local deadline
    await wait_until(lambda: _gone(reader.exchanges.get("kraken")), timeout=10)

    # No entry, no loader: None, and nothing remembered.
    assert await reader.exchanges.get("nowhere") is None
    assert local.get(reader.keys.exchange_meta("nowhere")) is MISS


async def _named(pending: Any, name: str) -> Any:
    value = await pending
    return value if value is not None and value.name == name else None


async def _gone(pending: Any) -> bool:
    return await pending is None


async def test_metadata_negative_entries_and_entries_without_ttl(cache_factory):
    reader, _, local = await pair(cache_factory)
    calls: list[str] = []

    async def loader(exchange: str) -> None:
        calls.append(exchange)

    reader.exchanges.loader = loader
    assert await reader.exchanges.get("ghost") is None
    key = reader.keys.exchange_meta("ghost")
    await wait_until(lambda: _cached(local, key, reader.exchanges.get("ghost")))
    assert calls == ["ghost"]  # the negative entry answered, then memory did

    plain = reader.keys.exchange_meta("plain")
    await reader.client.set(plain, b"garbage")  # no TTL, and no valid record
    await wait_until(lambda: local.stats().invalidations >= 3)
    with pytest.raises(Exception):  # noqa: B017 - whatever the codec raises
        await reader.exchanges.get("plain")
    assert local._inflight == {}
    await reader.client.set(plain, reader.codec.encode(_exchange("plain")))
    await wait_until(lambda: _cached(local, plain, reader.exchanges.get("plain")))
    assert local._entries[(plain, None)][1] is None  # no TTL: no local deadline


def _exchange(name: str) -> Any:
    from tradecache.models import Exchange

    return Exchange(id=name, name=name)


async def _cached(local: LocalCache, key: str, pending: Any) -> bool:
    await pending
    return local.get(key) is not MISS


# --- bounds, stats, settings -----------------------------------------------------------------


async def test_the_cache_is_bounded_least_recently_used_first_out(cache_factory):
    reader, writer, local = await pair(cache_factory, local_cache_size=3)
    symbols = [f"S{i}/USDT" for i in range(5)]
    await writer.tickers.set_many([ticker(s, 1.0) for s in symbols], EX)
    key = reader.keys.ticker_hash(EX)
    await wait_until(lambda: local.stats().invalidations >= 1)

    async def settled() -> bool:
        for symbol in symbols:
            await reader.tickers.get(EX, symbol)
        return len(local) == 3

    await wait_until(settled)
    assert local.stats().evictions >= 2
    assert [local.get(key, s) is MISS for s in symbols] == [True, True, False, False, False]
    stats = local.stats()
    assert stats.size == 3 and stats.max_size == 3 and stats.serving
    assert "serving size=3/3" in repr(local)


async def test_settings_and_connect_argument(monkeypatch):
    monkeypatch.setenv("TRADECACHE_LOCAL_CACHE", "1")
    monkeypatch.setenv("TRADECACHE_LOCAL_CACHE_SIZE", "123")
    settings = Settings()
    assert settings.local_cache and settings.local_cache_size == 123
    assert settings.local_cache_health_interval == 1.0
    assert not Settings(local_cache=False).local_cache


async def test_without_the_setting_there_is_no_local_cache(cache_factory):
    cache = await cache_factory()
    assert cache.local_cache is None and cache.context.local_cache is None
    off = await cache_factory(local_cache=False)
    assert off.local_cache is None


# --- the race: a reply in flight while an invalidation arrives --------------------------------


async def test_a_read_raced_by_an_invalidation_is_not_stored(cache_factory):
    reader = await cache_factory(local_cache=True)
    local = reader.local_cache
    assert local is not None
    key, other = reader.keys.ticker_hash("aaa"), reader.keys.ticker_hash("bbb")

    ticket = local.begin(key)
    local.invalidate([key.encode()])  # arrives while the reply is in flight
    assert not local.store(key, "X", "old", ticket)
    assert local.get(key, "X") is MISS and local.stats().discarded == 1

    ticket = local.begin(key)
    local.invalidate([other])  # another key: no effect
    assert local.store(key, "X", "fresh", ticket)
    assert local.get(key, "X") == "fresh"

    first, second = local.begin(key), local.begin(key)  # two reads in flight
    local.abandon(key, first)
    local.invalidate([key])
    assert not local.store(key, "Y", "old", second)
    assert local._inflight == {} and local._touched == {}

    local.max_size = 1  # least recently used out: the key's last field goes too
    assert local.store(other, "A", 1, local.begin(other))
    assert local.store(key, "B", 2, local.begin(key))
    assert local.get(other, "A") is MISS and local._fields == {key: {"B"}}

    ticket = local.begin(key)
    local.invalidate(None)  # FLUSHALL: every ticket is void
    assert not local.store(key, "Z", "old", ticket)
    assert len(local) == 0
    local.abandon(key, None)  # a ticket from while not serving: nothing to hand back


_KINDS = ("begin", "write", "deliver", "store", "fail", "flushall", "get")


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(1, 4))
def test_model_no_entry_is_older_than_a_delivered_invalidation(seed, size):
    """Hypothesis model: reads in flight, writes, delayed invalidations, flushes, LRU.

    The server's version of key ``k`` grows with each write; its invalidation is queued
    and delivered later, in order. A read's reply is any version between the one at
    its ``begin`` and the current one (it was answered some time in between). Invariant:
    a cached value is never older than the newest write whose invalidation was delivered.
    """
    local = LocalCache(redis_asyncio.Redis(), ["m:"], max_size=size)
    local._serving = True  # as after a (re)connect; no connection is needed for the model
    keys = ["m:a", "m:b"]
    server = dict.fromkeys(keys, 0)  # current version per key
    delivered = dict.fromkeys(keys, 0)  # version whose invalidation arrived last
    queue: list[tuple[str, int]] = []  # invalidations sent, not yet delivered
    flight: list[tuple[str, Any, int]] = []  # (key, ticket, version at begin)
    rng = random.Random(seed)  # the operations: a seeded random walk (hypothesis picks seeds)
    ops = [(rng.choice(_KINDS), rng.randrange(2), rng.randrange(100)) for _ in range(60)]
    for op, k, n in ops:
        key = keys[k]
        if op == "begin":
            flight.append((key, local.begin(key), server[key]))
        elif op == "write":
            server[key] += 1
            queue.append((key, server[key]))
        elif op == "deliver" and queue:
            done, version = queue.pop(0)
            delivered[done] = version
            local.invalidate([done.encode()])
        elif op in ("store", "fail") and flight:
            key, ticket, low = flight.pop(n % len(flight))
            if op == "fail":
                local.abandon(key, ticket)
            else:
                answered = low + n % (server[key] - low + 1)
                local.store(key, None, answered, ticket)
        elif op == "flushall":
            for done, version in queue:  # FLUSHALL's null invalidation follows them
                delivered[done] = version
            queue.clear()
            local.invalidate(None)
        elif op == "get":
            value = local.get(key)
            assert value is MISS or value >= delivered[key], (key, value, delivered)
        for name in keys:
            cached = local._entries.get((name, None))
            assert cached is None or cached[0] >= delivered[name]
        assert len(local) <= size
    for key, ticket, _ in flight:
        local.abandon(key, ticket)
    assert local._inflight == {} and local._touched == {}


class Fence:
    """Waits until every invalidation the server emitted so far reached ``local``.

    It writes its own key (in the slot of ``key``, under a tracked prefix) and waits
    for that key's invalidation: invalidations arrive in the server's order on one
    connection, so every earlier one (of the same node) has arrived by then.
    """

    def __init__(self, local: LocalCache, writer: Cache, key: str) -> None:
        self.writer = writer
        self.key = key + ":fence"
        self.arrived = 0
        original = local.invalidate
        names = (self.key, self.key.encode())

        def spy(keys: Any) -> None:
            if keys is not None and any(k in names for k in keys):
                self.arrived += 1
            original(keys)

        local.invalidate = spy  # type: ignore[method-assign]

    async def sync(self) -> None:
        before = self.arrived
        await self.writer.client.incr(self.key)
        await wait_until(lambda: self.arrived > before, timeout=10)


@pytest.mark.slow
async def test_concurrent_writers_never_leave_a_stale_read_after_the_invalidation(
    cache_factory, redis_endpoint, redis_namespace
):
    """Randomized property test: writers in other connections and another OS process.

    * ``binance``: writers in other connections write versions 1, 2, 3 ... of some
      symbols, in lockstep with a checker, while readers hammer the local cache (so
      reads are in flight when each invalidation arrives). After each write the
      checker waits until the write's invalidation arrived (a :class:`Fence`); then
      every read must return exactly the version written.
    * ``okx``: another OS process writes versions without pause; the checker reads a
      version ``d`` straight from Redis, waits for the fence, and a read must return
      a version >= ``d``.
    """
    reader = await cache_factory(local_cache=True, pool_size=64)
    local = reader.local_cache
    assert local is not None
    writers = [await cache_factory() for _ in range(2)]
    rng = random.Random(7)
    own = [f"W{i}/USDT" for i in range(3)]
    remote = ["P0/USDT", "P1/USDT"]
    fences = {ex: Fence(local, writers[0], reader.keys.ticker_hash(ex)) for ex in (EX, "okx")}
    stop = asyncio.Event()

    async def hammer() -> None:
        while not stop.is_set():
            await reader.tickers.get(EX, rng.choice(own))
            if rng.random() < 0.2:
                await reader.tickers.get_all(EX)
            if rng.random() < 0.2:
                await reader.tickers.get("okx", rng.choice(remote))
            await asyncio.sleep(0)  # a hit does no I/O: it never yields by itself

    async def lockstep(rounds: int) -> None:
        versions = dict.fromkeys(own, 0)
        for _ in range(rounds):
            symbol = rng.choice(own)
            versions[symbol] += 1
            await rng.choice(writers).tickers.set(ticker(symbol, versions[symbol]), EX)
            await fences[EX].sync()
            got = await reader.tickers.get(EX, symbol)
            assert got is not None and got.last == versions[symbol], (symbol, got)
            everything = await reader.tickers.get_all(EX)
            assert {s: t.last for s, t in everything.items()} == {
                s: v for s, v in versions.items() if v
            }

    async def behind_process(rounds: int) -> None:
        for _ in range(rounds):
            symbol = rng.choice(remote)
            direct = await writers[1].tickers.get("okx", symbol)
            assert direct is not None
            await fences["okx"].sync()
            got = await reader.tickers.get("okx", symbol)
            assert got is not None and got.last >= direct.last, (symbol, got, direct)

    ctx = multiprocessing.get_context("spawn")
    stop_process, written = ctx.Event(), ctx.Value("i", 0)
    process = ctx.Process(
        target=local_cache_writer.run,
        args=(redis_endpoint.url, redis_namespace, "okx", remote, stop_process, written),
    )
    process.start()
    hammers = [asyncio.create_task(hammer()) for _ in range(8)]
    try:
        await wait_until(lambda: written.value > 0, timeout=30)
        await asyncio.gather(lockstep(300), behind_process(100))
        assert process.is_alive()  # the other process kept writing throughout
        stats = local.stats()
        assert stats.hits > 0 and stats.invalidations > 300
    finally:
        stop.set()
        stop_process.set()
        await asyncio.gather(*hammers)
        process.join(timeout=30)
        if process.is_alive():  # pragma: no cover - only when the test already failed
            process.kill()
            process.join()
    assert process.exitcode == 0


# --- losing the invalidations ----------------------------------------------------------------


async def test_a_killed_tracking_connection_flushes_and_reconnects(cache_factory):
    reader, writer, local = await pair(cache_factory)
    await writer.tickers.set(ticker("BTC/USDT", 1.0), EX)
    key = reader.keys.ticker_hash(EX)
    await _filled(reader, local, key)
    flushes = local.stats().flushes
    await kill_link(reader)
    await wait_until(lambda: local.stats().reconnects == 1, timeout=10)
    assert local.stats().flushes > flushes
    assert local.get(key, "BTC/USDT") is MISS  # flushed
    assert local.serving
    # tracking works again after the reconnect
    await _filled(reader, local, key)
    await writer.tickers.set(ticker("BTC/USDT", 2.0), EX)
    await wait_until(lambda: local.get(key, "BTC/USDT") is MISS)
    assert (await reader.tickers.get(EX, "BTC/USDT")).last == 2.0  # type: ignore[union-attr]


async def _filled(reader: Cache, local: LocalCache, key: str) -> bool:
    async def present() -> bool:
        await reader.tickers.get(EX, "BTC/USDT")
        return local.get(key, "BTC/USDT") is not MISS

    return bool(await wait_until(present))


async def test_flushall_flushes_everything(redis_server_factory):
    server = redis_server_factory()
    async with Cache.connect(server.url, local_cache=True) as reader:
        local = reader.local_cache
        assert local is not None
        await reader.tickers.set(ticker("BTC/USDT", 1.0), EX)
        key = reader.keys.ticker_hash(EX)
        await _filled(reader, local, key)
        flushes = local.stats().flushes
        await reader.client.flushall()
        await wait_until(lambda: local.stats().flushes > flushes)
        assert len(local) == 0 and local.serving
        assert await reader.tickers.get(EX, "BTC/USDT") is None


@pytest.mark.slow
async def test_a_silent_server_stops_the_serving_until_it_answers(redis_server_factory):
    server = redis_server_factory()
    async with Cache.connect(
        server.url, local_cache=True, local_cache_health_interval=0.2, socket_timeout=0.5
    ) as reader:
        local = reader.local_cache
        assert local is not None
        await reader.tickers.set(ticker("BTC/USDT", 1.0), EX)
        key = reader.keys.ticker_hash(EX)
        await _filled(reader, local, key)
        server.pause()
        try:
            await wait_until(lambda: not local.serving, timeout=10)
            assert len(local) == 0 and local.get(key, "BTC/USDT") is MISS
            assert local.begin(key) is None
        finally:
            server.resume()
        await wait_until(lambda: local.serving, timeout=15)
        await _filled(reader, local, key)


async def test_a_server_refusing_tracking_leaves_reads_on_redis(redis_url):
    client = redis_asyncio.Redis.from_url(redis_url, protocol=2)
    # Overlapping prefixes: the server refuses CLIENT TRACKING, again and again.
    local = LocalCache(client, ["lc-a:", "lc-a:b"], connect_timeout=0.2)
    try:
        await local.start()
        await local.start()  # once is enough: the background task keeps trying
        assert not local.serving and local.begin("lc-a:x") is None
        assert local.get("lc-a:x") is MISS
        assert await local.fill("lc-a:x", None, client.get("lc-a:x"), lambda v: v) is None
        assert len(local) == 0
        assert "not serving" in repr(local)
    finally:
        await local.close()
        await local.close()
        await client.aclose()


# --- Cluster topology ------------------------------------------------------------------------


async def test_cluster_tracks_every_master_and_follows_topology(cache_factory, redis_backend):
    if redis_backend != "cluster":
        pytest.skip("cluster only")
    reader, writer, local = await pair(cache_factory)
    masters = {node.name for node in reader.client.get_primaries()}  # type: ignore[union-attr]
    assert {name for name, _ in local.links} == masters
    key = reader.keys.ticker_hash(EX)
    await writer.tickers.set(ticker("BTC/USDT", 1.0), EX)
    await _filled(reader, local, key)

    # A reply from a node without a tracking connection is not cached, and rebuilds.
    owner = reader.client.get_node_from_key(key).name  # type: ignore[union-attr]
    local._nodes = frozenset(masters - {owner})
    ticket = local.begin(key)
    assert not local.store(key, "BTC/USDT", "unsafe", ticket)
    await wait_until(lambda: local.stats().reconnects == 1, timeout=10)
    assert local._nodes == masters

    # A changed set of masters (as redis-py learns it) rebuilds the connections too.
    local._nodes = frozenset(masters | {"127.0.0.1:1"})
    await wait_until(lambda: local.stats().reconnects == 2, timeout=10)
    await _filled(reader, local, key)

    # Killing one master's tracking connection flushes and reconnects every link.
    await kill_link(reader, 1)
    await wait_until(lambda: local.stats().reconnects == 3, timeout=10)
    await _filled(reader, local, key)


@pytest.mark.slow
async def test_cluster_failover_moves_tracking_to_the_promoted_replica():
    from tradecache.server import RedisClusterServer

    async with (
        RedisClusterServer(replicas=1, node_timeout=1000) as cluster,
        Cache.connect(cluster.url, namespace="lcfail", local_cache=True) as reader,
        Cache.connect(cluster.url, namespace="lcfail") as writer,
    ):
        local = reader.local_cache
        assert local is not None and len(local.links) == 3
        key = reader.keys.ticker_hash(EX)
        await writer.tickers.set(ticker("BTC/USDT", 1.0), EX)
        await _filled(reader, local, key)
        port = reader.client.get_node_from_key(key).port  # type: ignore[union-attr]
        [master] = [node for node in cluster.masters if node.port == int(port)]
        master.kill()
        await wait_until(lambda: not local.serving, timeout=10)
        assert local.get(key, "BTC/USDT") is MISS

        async def written() -> bool:
            try:
                await writer.tickers.set(ticker("BTC/USDT", 2.0), EX)
            except ConnectionLost:
                return False
            return True

        await wait_until(written, timeout=60, interval=0.1)  # the replica took over
        await wait_until(lambda: local.serving, timeout=30, interval=0.05)
        assert {name for name, _ in local.links} == {
            node.name
            for node in reader.client.get_primaries()  # type: ignore[union-attr]
        }
        found = await wait_until(lambda: reader.tickers.get(EX, "BTC/USDT"), timeout=30)
        assert found.last == 2.0
        # the promoted master's invalidations reach the local cache
        await _filled(reader, local, key)
        await writer.tickers.set(ticker("BTC/USDT", 3.0), EX)
        await wait_until(lambda: local.get(key, "BTC/USDT") is MISS, timeout=10)
        assert (await reader.tickers.get(EX, "BTC/USDT")).last == 3.0  # type: ignore[union-attr]
