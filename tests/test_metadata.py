"""cache.symbols / cache.exchanges: read-through, single-flight, TTLs, negatives, writers."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from helpers import metadata_worker
from tradecache import Cache
from tradecache.errors import ConnectionLost, ValidationError, WaitTimeout
from tradecache.models import Exchange, Market, Ticker
from tradecache.server import RedisServer
from tradecache.stores.exchanges import to_exchange
from tradecache.stores.metadata import NEGATIVE, ttl_seconds
from tradecache.stores.symbols import to_market
from tradecache.testing import wait_until


def ccxt_market(symbol: str, **extra: Any) -> dict[str, Any]:
    base, quote = symbol.split("/")
    return {
        "id": symbol.replace("/", ""),
        "symbol": symbol,
        "base": base,
        "quote": quote,
        "type": "spot",
        "spot": True,
        "active": True,
        "precision": {"amount": 0.0001, "price": 0.01},
        "limits": {"amount": {"min": 0.0001}, "cost": {"min": 5}},
        "taker": 0.001,
        "maker": 0.001,
        "info": {"raw": "ignored"},
        **extra,
    }


class Loader:
    """A loader over a dict that counts its calls and can be held on a gate."""

    def __init__(self, data: dict[tuple[str, str], Any] | None = None) -> None:
        self.data = dict(data or {})
        self.calls: list[Any] = []
        self.gate: asyncio.Event | None = None
        self.error: BaseException | None = None

    async def __call__(self, *key: str) -> Any:
        self.calls.append(key)
        if self.gate is not None:
            await self.gate.wait()
        else:
            await asyncio.sleep(0.02)  # a database round trip, so concurrent callers overlap
        if self.error is not None:
            raise self.error
        return self.data.get(key)


async def snapshot(cache) -> dict[bytes, bytes]:
    """Every key of the test's namespace with its DUMP: to prove nothing was written."""
    return {
        key: await cache.client.dump(key)
        async for key in cache.client.scan_iter(match=cache.keys.all_pattern())
    }


# --- symbols: read-through --------------------------------------------------------------------


async def test_miss_loads_once_then_serves_from_redis(cache):
    loader = Loader({("binance", "BTC/USDT"): ccxt_market("BTC/USDT")})
    cache.symbols.loader = loader
    market = await cache.symbols.get("Binance", "BTC/USDT")
    assert isinstance(market, Market)
    assert market.exchange == "binance"
    assert market.precision.price == 0.01
    assert loader.calls == [("binance", "BTC/USDT")]
    assert await cache.symbols.get("binance", "BTC/USDT") == market
    assert await cache.symbols.exists("binance", "BTC/USDT")
    assert len(loader.calls) == 1
    ttl = await cache.client.pttl(cache.keys.symbol_meta("binance", "BTC/USDT"))
    assert cache.settings.metadata_ttl * 1000 - 10_000 < ttl <= cache.settings.metadata_ttl * 1000
    assert "SymbolCache(namespace=" in repr(cache.symbols)


async def test_100_concurrent_gets_on_a_cold_key_load_once(cache_factory):
    # pool_size >= 100: redis-py's cluster pool fails (MaxConnectionsError) instead of waiting
    # when every connection is busy; reported to the lead (connection.py). A generous
    # connect_timeout: 100 connections opened at once on a loaded CI box is not what's tested.
    cache = await cache_factory(pool_size=128, connect_timeout=5)
    loader = Loader({("binance", "ETH/USDT"): ccxt_market("ETH/USDT")})
    cache.symbols.loader = loader
    results = await asyncio.gather(*(cache.symbols.get("binance", "ETH/USDT") for _ in range(100)))
    assert len(loader.calls) == 1
    assert {r.symbol for r in results if r is not None} == {"ETH/USDT"}
    assert all(r == results[0] for r in results)


async def test_two_processes_share_one_load(cache_factory):
    # Two caches = two independent in-process flights: only the Redis fill lock keeps the
    # second from loading too. Its callers poll until the first one's value appears.
    one, two = await cache_factory(), await cache_factory()
    loader_one = Loader({("kraken", "BTC/USD"): ccxt_market("BTC/USD")})
    loader_two = Loader({("kraken", "BTC/USD"): ccxt_market("BTC/USD")})
    loader_one.gate = asyncio.Event()
    one.symbols.loader, two.symbols.loader = loader_one, loader_two
    first = asyncio.gather(*(one.symbols.get("kraken", "BTC/USD") for _ in range(20)))
    await wait_until(lambda: loader_one.calls)
    second = asyncio.gather(*(two.symbols.get("kraken", "BTC/USD") for _ in range(20)))
    await asyncio.sleep(0)
    loader_one.gate.set()
    a, b = await first, await second
    assert loader_two.calls == []
    assert len(loader_one.calls) == 1
    assert a[0] is not None
    assert a[0] == b[0]


@pytest.mark.slow
def test_loader_runs_once_across_os_processes(redis_endpoint, redis_namespace):
    ctx = multiprocessing.get_context("spawn")
    count = ctx.Value("i", 0)
    barrier = ctx.Barrier(3)
    procs = [
        ctx.Process(
            target=metadata_worker.run,
            args=(redis_endpoint.url, redis_namespace, count, barrier, 30),
        )
        for _ in range(3)
    ]
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=60)
        assert [proc.exitcode for proc in procs] == [0, 0, 0]
        assert count.value == 1
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()


async def test_loader_miss_is_cached_briefly(cache_factory):
    cache = await cache_factory(negative_ttl=0.3)
    loader = Loader()
    cache.symbols.loader = loader
    assert await cache.symbols.get("binance", "NOPE/USDT") is None
    assert await cache.symbols.get("binance", "NOPE/USDT") is None
    assert not await cache.symbols.exists("binance", "NOPE/USDT")
    assert len(loader.calls) == 1
    key = cache.keys.symbol_meta("binance", "NOPE/USDT")
    assert await cache.client.get(key) == NEGATIVE
    assert 0 < await cache.client.pttl(key) <= 300
    await wait_until(_gone(cache, key), timeout=5)
    loader.data[("binance", "NOPE/USDT")] = ccxt_market("NOPE/USDT")  # listed meanwhile
    market = await cache.symbols.get("binance", "NOPE/USDT")
    assert market is not None
    assert len(loader.calls) == 2


def _gone(cache, key: str) -> Callable[[], Any]:
    async def check() -> bool:
        return not await cache.client.exists(key)

    return check


async def test_entries_expire_after_metadata_ttl(cache_factory):
    cache = await cache_factory(metadata_ttl=0.3)
    loader = Loader({("okx", "SOL/USDT"): ccxt_market("SOL/USDT")})
    cache.symbols.loader = loader
    assert await cache.symbols.get("okx", "SOL/USDT") is not None
    await wait_until(_gone(cache, cache.keys.symbol_meta("okx", "SOL/USDT")), timeout=5)
    assert await cache.symbols.get("okx", "SOL/USDT") is not None
    assert len(loader.calls) == 2


async def test_without_a_loader_the_store_is_a_plain_cache(cache):
    assert cache.symbols.loader is None
    assert await cache.symbols.get("binance", "BTC/USDT") is None
    await cache.symbols.put(ccxt_market("BTC/USDT"), exchange="binance")
    market = await cache.symbols.get("binance", "BTC/USDT")
    assert market is not None
    assert market.exchange == "binance"
    assert [m.symbol for m in await cache.symbols.list("binance")] == ["BTC/USDT"]


async def test_loader_failure_reaches_every_caller_and_is_not_cached(cache):
    loader = Loader({("binance", "BTC/USDT"): ccxt_market("BTC/USDT")})
    loader.error = RuntimeError("database down")
    cache.symbols.loader = loader
    results = await asyncio.gather(
        *(cache.symbols.get("binance", "BTC/USDT") for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert len(loader.calls) == 1
    lock = cache.keys.symbol_meta_lock("binance", "BTC/USDT")
    assert not await cache.client.exists(lock)  # released at once, not left to expire
    loader.error = None
    assert await cache.symbols.get("binance", "BTC/USDT") is not None
    assert len(loader.calls) == 2


async def test_a_cancelled_caller_does_not_cancel_the_shared_load(cache):
    loader = Loader({("binance", "BTC/USDT"): ccxt_market("BTC/USDT")})
    loader.gate = asyncio.Event()
    cache.symbols.loader = loader
    impatient = asyncio.create_task(cache.symbols.get("binance", "BTC/USDT"))
    patient = asyncio.create_task(cache.symbols.get("binance", "BTC/USDT"))
    await wait_until(lambda: loader.calls)
    impatient.cancel()
    loader.gate.set()
    assert (await patient) is not None
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert len(loader.calls) == 1


@pytest.mark.parametrize(
    ("returned", "field"),
    [
        (ccxt_market("ETH/USDT"), "symbol"),
        ({**ccxt_market("BTC/USDT"), "exchange": "kraken"}, "exchange"),
        ("BTC/USDT", "loader"),
        ({"symbol": "BTC/USDT"}, "id"),
    ],
)
async def test_a_bad_loader_result_is_rejected_not_cached(cache, returned, field):
    cache.symbols.loader = Loader({("binance", "BTC/USDT"): returned})
    with pytest.raises(ValidationError) as err:
        await cache.symbols.get("binance", "BTC/USDT")
    assert err.value.field == field
    assert not await cache.client.exists(cache.keys.symbol_meta("binance", "BTC/USDT"))
    assert not await cache.client.exists(cache.keys.symbol_meta_lock("binance", "BTC/USDT"))


async def test_a_held_fill_lock_is_waited_for_then_taken_over(cache_factory):
    cache = await cache_factory(metadata_load_timeout=0.3)
    loader = Loader({("binance", "BTC/USDT"): ccxt_market("BTC/USDT")})
    cache.symbols.loader = loader
    lock = cache.keys.symbol_meta_lock("binance", "BTC/USDT")
    await cache.client.set(lock, "a-crashed-process", px=200)  # its loader died mid-load
    assert await cache.symbols.get("binance", "BTC/USDT") is not None
    assert len(loader.calls) == 1


async def test_waiting_for_another_loader_is_bounded(cache_factory):
    cache = await cache_factory(metadata_load_timeout=0.1)
    cache.symbols.loader = Loader({("binance", "BTC/USDT"): ccxt_market("BTC/USDT")})
    lock = cache.keys.symbol_meta_lock("binance", "BTC/USDT")
    await cache.client.set(lock, "stuck", px=60_000)
    with pytest.raises(WaitTimeout, match="being loaded by another process"):
        await cache.symbols.get("binance", "BTC/USDT")


async def test_a_put_during_a_load_wins(cache):
    loader = Loader({("binance", "BTC/USDT"): ccxt_market("BTC/USDT", taker=0.002)})
    loader.gate = asyncio.Event()
    cache.symbols.loader = loader
    reader = asyncio.create_task(cache.symbols.get("binance", "BTC/USDT"))
    await wait_until(lambda: loader.calls)
    await cache.symbols.put(ccxt_market("BTC/USDT", taker=0.001), exchange="binance")
    loader.gate.set()
    old = await reader
    assert old is not None
    assert old.taker == 0.002  # the reader gets what its load read...
    current = await cache.symbols.get("binance", "BTC/USDT")
    assert current is not None
    assert current.taker == 0.001  # ...but the cache keeps the writer's value
    assert len(loader.calls) == 1


async def test_an_invalidation_during_a_load_drops_its_result(cache):
    loader = Loader({("binance", "BTC/USDT"): ccxt_market("BTC/USDT")})
    loader.gate = asyncio.Event()
    cache.symbols.loader = loader
    reader = asyncio.create_task(cache.symbols.get("binance", "BTC/USDT"))
    await wait_until(lambda: loader.calls)
    assert await cache.symbols.invalidate("binance") == 0
    loader.gate.set()
    assert await reader is not None
    assert not await cache.client.exists(cache.keys.symbol_meta("binance", "BTC/USDT"))


# --- symbols: writers and invalidation --------------------------------------------------------


async def test_put_and_put_many(cache):
    stored = await cache.symbols.put(Market.from_ccxt(ccxt_market("BTC/USDT"), exchange="okx"))
    assert stored.exchange == "okx"
    assert await cache.symbols.get("OKX", "BTC/USDT") == stored
    markets = {s: ccxt_market(s) for s in ("ETH/USDT", "SOL/USDT")}
    put = await cache.symbols.put_many(markets, "okx", ttl=timedelta(minutes=5))
    assert [m.symbol for m in put] == ["ETH/USDT", "SOL/USDT"]
    ttl = await cache.client.pttl(cache.keys.symbol_meta("okx", "SOL/USDT"))
    assert 290_000 < ttl <= 300_000
    assert await cache.symbols.symbols("okx") == ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
    assert await cache.symbols.put_many([], "okx") == []
    both = [{**ccxt_market("ADA/USDT"), "exchange": "okx"}, ccxt_market("XRP/USDT")]
    assert len(await cache.symbols.put_many(both)) == 2  # exchange taken from the markets
    assert await cache.symbols.get("okx", "XRP/USDT") is not None


async def test_msgpack_codec_round_trip(cache_factory):
    cache = await cache_factory(codec="msgpack")
    cache.symbols.loader = Loader({("binance", "BTC/USDT"): ccxt_market("BTC/USDT")})
    first = await cache.symbols.get("binance", "BTC/USDT")
    assert first is not None
    assert await cache.symbols.get("binance", "BTC/USDT") == first
    assert await cache.symbols.get("binance", "NONE/USDT") is None
    assert await cache.symbols.get("binance", "NONE/USDT") is None


async def test_delete_removes_the_symbol_and_its_ticker(cache):
    loader = Loader({("binance", "LUNA/USDT"): ccxt_market("LUNA/USDT")})
    cache.symbols.loader = loader
    await cache.symbols.get("binance", "LUNA/USDT")
    await cache.tickers.set(Ticker(symbol="LUNA/USDT", bid=1.0, ask=1.1), exchange="binance")
    await cache.tickers.set(Ticker(symbol="BTC/USDT", bid=1.0, ask=1.1), exchange="binance")
    assert await cache.tickers.get("binance", "LUNA/USDT") is not None
    assert await cache.symbols.delete("binance", "LUNA/USDT") is True
    assert await cache.tickers.get("binance", "LUNA/USDT") is None
    assert await cache.tickers.get("binance", "BTC/USDT") is not None  # others untouched
    assert await cache.symbols.delete("binance", "LUNA/USDT") is False
    del loader.data[("binance", "LUNA/USDT")]  # writers delete from their database first
    assert await cache.symbols.get("binance", "LUNA/USDT") is None
    assert len(loader.calls) == 2


async def test_invalidate_one_symbol_or_a_whole_exchange(cache):
    data = {("binance", s): ccxt_market(s) for s in ("BTC/USDT", "ETH/USDT")}
    data[("kraken", "BTC/USD")] = ccxt_market("BTC/USD")
    loader = Loader(data)
    cache.symbols.loader = loader
    for exchange, symbol in data:
        await cache.symbols.get(exchange, symbol)
    await cache.symbols.get("binance", "NONE/USDT")  # a negative entry
    assert len(loader.calls) == 4
    assert await cache.symbols.invalidate("binance", "BTC/USDT") == 1
    assert await cache.symbols.invalidate("binance", "BTC/USDT") == 0
    await cache.symbols.get("binance", "BTC/USDT")
    assert len(loader.calls) == 5
    assert await cache.symbols.invalidate("binance") == 3  # BTC, ETH and the negative one
    for exchange, symbol in data:
        await cache.symbols.get(exchange, symbol)
    assert len(loader.calls) == 7  # kraken's entry survived


async def test_list_loads_once_and_is_cached(cache):
    markets = {s: ccxt_market(s) for s in ("SOL/USDT", "BTC/USDT", "ETH/USDT")}
    calls: list[str] = []

    async def list_loader(exchange: str) -> dict[str, Any]:
        calls.append(exchange)
        await asyncio.sleep(0.02)
        return markets  # the shape of ccxt's load_markets()

    cache.symbols.list_loader = list_loader
    lists = await asyncio.gather(*(cache.symbols.list("binance") for _ in range(20)))
    assert calls == ["binance"]
    assert [m.symbol for m in lists[0]] == ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
    assert all(result == lists[0] for result in lists)
    assert await cache.symbols.symbols("binance") == ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
    assert calls == ["binance"]
    # the list also fills the per-symbol entries
    cache.symbols.loader = Loader()
    assert await cache.symbols.get("binance", "SOL/USDT") == lists[0][2]
    # a put joins the cached list, a delete leaves it
    await cache.symbols.put(ccxt_market("ADA/USDT"), exchange="binance")
    await cache.symbols.delete("binance", "SOL/USDT")
    assert await cache.symbols.symbols("binance") == ["ADA/USDT", "BTC/USDT", "ETH/USDT"]
    assert calls == ["binance"]
    # invalidating one symbol drops the list too: it is reloaded once
    await cache.symbols.invalidate("binance", "BTC/USDT")
    assert len(await cache.symbols.list("binance")) == 3
    assert calls == ["binance", "binance"]


async def test_an_empty_list_is_a_cached_list(cache):
    calls: list[str] = []

    async def list_loader(exchange: str) -> list[Market]:
        calls.append(exchange)
        return []

    cache.symbols.list_loader = list_loader
    assert await cache.symbols.list("newex") == []
    assert await cache.symbols.list("newex") == []
    assert calls == ["newex"]


async def test_a_list_fill_interrupted_by_invalidation_is_not_stored(cache):
    gate = asyncio.Event()
    started = asyncio.Event()

    async def list_loader(exchange: str) -> list[dict[str, Any]]:
        started.set()
        await gate.wait()
        return [ccxt_market("BTC/USDT")]

    cache.symbols.list_loader = list_loader
    reader = asyncio.create_task(cache.symbols.list("binance"))
    await started.wait()
    await cache.symbols.invalidate("binance")
    gate.set()
    assert [m.symbol for m in await reader] == ["BTC/USDT"]
    assert not await cache.client.exists(cache.keys.symbol_meta_all("binance"))


async def test_list_loader_failure_releases_its_lock(cache):
    async def list_loader(exchange: str) -> list[Any]:
        raise RuntimeError("down")

    cache.symbols.list_loader = list_loader
    with pytest.raises(RuntimeError):
        await cache.symbols.list("binance")
    assert not await cache.client.exists(cache.keys.symbol_meta_all_lock("binance"))


async def test_list_waits_for_another_process_list_load(cache_factory):
    one, two = await cache_factory(), await cache_factory()
    gate = asyncio.Event()
    calls: list[str] = []

    async def slow(exchange: str) -> list[dict[str, Any]]:
        calls.append("one")
        await gate.wait()
        return [ccxt_market("BTC/USDT")]

    async def other(exchange: str) -> list[dict[str, Any]]:
        calls.append("two")
        return []

    one.symbols.list_loader, two.symbols.list_loader = slow, other
    first = asyncio.create_task(one.symbols.list("binance"))
    await wait_until(lambda: calls)
    second = asyncio.create_task(two.symbols.list("binance"))
    await asyncio.sleep(0.01)
    gate.set()
    assert [m.symbol for m in await second] == ["BTC/USDT"]
    assert [m.symbol for m in await first] == ["BTC/USDT"]
    assert calls == ["one"]


async def test_put_many_complete_replaces_the_cached_list(cache):
    await cache.symbols.put_many([ccxt_market("A/USDT"), ccxt_market("B/USDT")], "bybit")
    await cache.symbols.put_many(
        [ccxt_market("B/USDT"), ccxt_market("C/USDT")], "bybit", complete=True
    )

    async def never(exchange: str) -> list[Any]:
        raise AssertionError("the list is cached")

    cache.symbols.list_loader = never
    assert await cache.symbols.symbols("bybit") == ["B/USDT", "C/USDT"]
    cache.symbols.list_loader = None
    assert await cache.symbols.symbols("bybit") == ["A/USDT", "B/USDT", "C/USDT"]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: s.get("bin ance", "BTC/USDT"), "exchange"),
        (lambda s: s.get(None, "BTC/USDT"), "exchange"),
        (lambda s: s.get(["binance"], "BTC/USDT"), "exchange"),
        (lambda s: s.get("binance", ["BTC/USDT"]), "symbol"),
        (lambda s: s.get("binance", 7), "symbol"),
        (lambda s: s.get("binance", "BTC {USDT}"), "symbol"),
        (lambda s: s.get("binance", ""), "symbol"),
        (lambda s: s.put(ccxt_market("BTC/USDT"), exchange="binance", ttl=0), "ttl"),
        (lambda s: s.put(ccxt_market("BTC/USDT"), exchange="binance", ttl="1"), "ttl"),
        (lambda s: s.put(ccxt_market("BTC/USDT"), exchange="binance", ttl=True), "ttl"),
        (lambda s: s.put(ccxt_market("BTC/USDT")), "exchange"),
        (lambda s: s.put({**ccxt_market("BTC/USDT"), "exchange": "kraken"}, "binance"), "exchange"),
        (
            lambda s: s.put_many([{**ccxt_market("BTC/USDT"), "exchange": "kraken"}], "binance"),
            "markets[0].exchange",
        ),
        (
            lambda s: s.put({**ccxt_market("BTC/USDT"), "symbol": ""}, "binance"),
            "symbol",
        ),
        (
            lambda s: s.put({**ccxt_market("BTC/USDT"), "precision": {"price": -1}}, "binance"),
            "precision.price",
        ),
        (lambda s: s.put("BTC/USDT", "binance"), "$"),
        (lambda s: s.put_many(["BTC/USDT"], "binance"), "markets[0]"),
        (lambda s: s.put_many([ccxt_market("A/B"), {"id": "x"}], "binance"), "markets[1].symbol"),
        (lambda s: s.put_many(42, "binance"), "markets"),
        (lambda s: s.put_many("BTC/USDT", "binance"), "markets"),
        (lambda s: s.put_many([42]), "exchange"),
        (lambda s: s.delete("binance", "a b"), "symbol"),
        (lambda s: s.invalidate("{binance}"), "exchange"),
        (lambda s: s.list(7), "exchange"),
    ],
)
async def test_bad_symbol_input_raises_and_writes_nothing(cache, call, field):
    await cache.symbols.put(ccxt_market("ETH/USDT"), exchange="binance")
    before = await snapshot(cache)
    with pytest.raises(ValidationError) as err:
        await call(cache.symbols)
    assert err.value.field == field
    assert await snapshot(cache) == before


def test_helpers_normalise_and_validate():
    market = to_market(ccxt_market("BTC/USDT"), "binance")
    assert to_market(market, "binance") is market
    assert to_market(market.replace(exchange="Binance"), "binance").exchange == "binance"
    assert ttl_seconds(timedelta(seconds=2)) == 2.0
    assert ttl_seconds(3) == 3.0
    assert to_exchange({"id": "Kraken"}).id == "kraken"
    record = Exchange(id="okx")
    assert to_exchange(record) is record


# --- exchanges --------------------------------------------------------------------------------


async def test_exchanges_read_through(cache_factory):
    cache = await cache_factory(pool_size=64, connect_timeout=5)  # see test_100_concurrent_...
    calls: list[str] = []

    async def loader(exchange_id: str) -> dict[str, Any] | None:
        calls.append(exchange_id)
        await asyncio.sleep(0.01)
        if exchange_id == "binance":
            return {"id": "Binance", "name": "Binance", "has": {"watchTicker": True}}
        return None

    cache.exchanges.loader = loader
    records = await asyncio.gather(*(cache.exchanges.get("BINANCE") for _ in range(50)))
    assert calls == ["binance"]
    assert records[0] == Exchange(id="binance", name="Binance", has={"watchTicker": True})
    assert await cache.exchanges.get("ftx") is None
    assert not await cache.exchanges.exists("ftx")
    assert await cache.exchanges.exists("binance")
    assert calls == ["binance", "ftx"]
    assert "ExchangeCache(namespace=" in repr(cache.exchanges)


async def test_exchange_fill_lock_and_entry_follow_the_key_schema(cache):
    gate = asyncio.Event()

    async def loader(exchange_id: str) -> Exchange:
        await gate.wait()
        return Exchange(id=exchange_id)

    cache.exchanges.loader = loader
    reader = asyncio.create_task(cache.exchanges.get("okx"))
    lock, entry = cache.keys.exchange_meta_lock("okx"), cache.keys.exchange_meta("okx")
    await wait_until(lambda: cache.client.exists(lock))
    assert 0 < await cache.client.pttl(lock) <= cache.settings.metadata_load_timeout * 1000
    gate.set()
    assert await reader == Exchange(id="okx")
    assert not await cache.client.exists(lock)
    assert await cache.client.pttl(entry) > (cache.settings.metadata_ttl - 60) * 1000


async def test_exchange_loader_must_return_the_asked_exchange(cache):
    async def loader(exchange_id: str) -> Exchange:
        return Exchange(id="kraken")

    cache.exchanges.loader = loader
    with pytest.raises(ValidationError) as err:
        await cache.exchanges.get("binance")
    assert err.value.field == "id"


async def test_exchanges_writers_list_and_invalidate(cache):
    assert await cache.exchanges.get("okx") is None  # no loader: a plain cache
    stored = await cache.exchanges.put({"id": "OKX", "name": "OKX"}, ttl=60)
    assert stored.id == "okx"
    assert await cache.exchanges.get("okx") == stored
    await cache.exchanges.put_many([Exchange(id="binance"), Exchange(id="kraken")])
    assert [e.id for e in await cache.exchanges.list()] == ["binance", "kraken", "okx"]
    assert await cache.exchanges.put_many([]) == []
    assert await cache.exchanges.delete("kraken") is True
    assert await cache.exchanges.delete("kraken") is False
    assert [e.id for e in await cache.exchanges.list()] == ["binance", "okx"]
    assert await cache.exchanges.invalidate("okx") == 1
    assert await cache.exchanges.invalidate() == 1
    assert await cache.exchanges.list() == []

    calls: list[int] = []

    async def list_loader() -> dict[str, dict[str, Any]]:
        calls.append(1)
        return {"kraken": {"id": "kraken", "enabled": False}, "binance": {"id": "binance"}}

    cache.exchanges.list_loader = list_loader
    listed = await cache.exchanges.list()
    assert [(e.id, e.enabled) for e in listed] == [("binance", True), ("kraken", False)]
    assert await cache.exchanges.list() == listed
    assert calls == [1]
    await cache.exchanges.put_many([Exchange(id="bybit")], complete=True)
    assert [e.id for e in await cache.exchanges.list()] == ["bybit"]
    assert calls == [1]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda e: e.get("a b"), "exchange"),
        (lambda e: e.get(["binance"]), "exchange"),
        (lambda e: e.put({"id": "{x}"}), "id"),
        (lambda e: e.put({"name": "x"}), "id"),
        (lambda e: e.put(42), "$"),
        (lambda e: e.put_many([{"id": "ok"}, 42]), "exchanges[1]"),
        (lambda e: e.put_many([{"id": "a b"}]), "exchanges[0].id"),
        (lambda e: e.put_many("binance"), "exchanges"),
        (lambda e: e.put({"id": "x"}, ttl=-1), "ttl"),
        (lambda e: e.delete(""), "exchange"),
        (lambda e: e.invalidate("a*"), "exchange"),
    ],
)
async def test_bad_exchange_input_raises_and_writes_nothing(cache, call, field):
    await cache.exchanges.put({"id": "binance"})
    before = await snapshot(cache)
    with pytest.raises(ValidationError) as err:
        await call(cache.exchanges)
    assert err.value.field == field
    assert await snapshot(cache) == before


async def test_an_outage_is_raised_never_a_miss():
    with RedisServer() as server:
        cache = await Cache.connect(server.url, namespace="outage")
        try:
            cache.symbols.loader = Loader({("binance", "BTC/USDT"): ccxt_market("BTC/USDT")})
            assert await cache.symbols.get("binance", "BTC/USDT") is not None
            info = await cache.processes.register("tick", "binance:BTC/USDT")
            server.kill()
            with pytest.raises(ConnectionLost):
                await cache.symbols.get("binance", "BTC/USDT")
            with pytest.raises(ConnectionLost):
                await cache.exchanges.get("binance")
            with pytest.raises(ConnectionLost):
                await cache.processes.heartbeat(info.id)
            with pytest.raises(ConnectionLost):
                await cache.symbols.put(ccxt_market("ETH/USDT"), exchange="binance")
        finally:
            await cache.close()
