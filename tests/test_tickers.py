"""cache.tickers: store + publish, reads, staleness, validation, watch and next."""

from __future__ import annotations

import asyncio
import contextlib
import math
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from tradecache import Cache, ConnectionLost, TradecacheError, ValidationError, WaitTimeout
from tradecache.codec import get_codec
from tradecache.config import Settings
from tradecache.connection import create_client
from tradecache.context import Context
from tradecache.envelope import decode_envelope, encode_envelope
from tradecache.keys import Keys
from tradecache.metrics import Metrics
from tradecache.models import Ticker, from_ms, utc_now
from tradecache.stores import tickers as tickers_module
from tradecache.stores.tickers import BATCH_SIZE, TickCache
from tradecache.testing import wait_until


def ccxt_ticker(symbol: str = "BTC/USDT", **fields: Any) -> dict[str, Any]:
    """A ticker shaped like ccxt.pro's watch_ticker result."""
    data: dict[str, Any] = {
        "symbol": symbol,
        "timestamp": 1_700_000_000_123,
        "datetime": "2023-11-14T22:13:20.123Z",
        "high": 101.0,
        "low": 90.0,
        "bid": 99.5,
        "bidVolume": 1.5,
        "ask": 100.5,
        "askVolume": 2.0,
        "vwap": 98.0,
        "open": 95.0,
        "close": 100.0,
        "last": 100.0,
        "previousClose": None,
        "change": 5.0,
        "percentage": 5.26,
        "average": 97.5,
        "baseVolume": 1234.5,
        "quoteVolume": 120000.0,
        "info": {"raw": "exchange payload"},
    }
    data.update(fields)
    return data


async def snapshot(cache: Cache) -> dict[bytes, bytes]:
    """Every key of the test's namespace with its DUMP: equal snapshots = Redis unchanged."""
    keys = [key async for key in cache.client.scan_iter(match=cache.keys.all_pattern())]
    return {key: await cache.client.dump(key) for key in keys}


# --- set / get ---------------------------------------------------------------------------


async def test_set_then_get_round_trips_a_ccxt_ticker(cache):
    stored = await cache.tickers.set(ccxt_ticker(), exchange="Binance")
    assert stored.exchange == "binance"  # exchange ids are lower-cased
    assert stored.received is not None  # stamped on the way in
    got = await cache.tickers.get("binance", "BTC/USDT")
    assert got == stored
    assert got.timestamp == from_ms(1_700_000_000_123)
    assert (got.bid, got.ask, got.last, got.base_volume) == (99.5, 100.5, 100.0, 1234.5)
    assert got.mid == 100.0
    assert got.spread == 1.0
    assert await cache.tickers.get("binance", "ETH/USDT") is None  # a miss is None
    assert await cache.tickers.get("kraken", "BTC/USDT") is None


async def test_set_accepts_a_ticker_model_with_its_own_exchange(cache):
    ticker = Ticker(symbol="ETH/USDT", exchange="kraken", bid=10.0, ask=11.0)
    stored = await cache.tickers.set(ticker)
    assert stored.received is not None
    assert stored.replace(received=None) == ticker
    assert await cache.tickers.get("KRAKEN", "ETH/USDT") == stored
    # A model whose exchange differs only in case is normalised, not rejected.
    upper = Ticker(symbol="ETH/USDT", exchange="Kraken", last=12.0, received=utc_now())
    assert (await cache.tickers.set(upper, exchange="kraken")).exchange == "kraken"
    assert (await cache.tickers.set(upper)).exchange == "kraken"
    assert (await cache.tickers.get("kraken", "ETH/USDT")).last == 12.0
    # A dict with its own exchange key works alike.
    data = ccxt_ticker("XRP/USDT", exchange="Kraken")
    assert (await cache.tickers.set(data)).exchange == "kraken"
    assert (await cache.tickers.set(data, exchange="kraken")).exchange == "kraken"


async def test_stored_value_is_the_published_envelope_with_a_sequence(cache):
    await cache.tickers.set(ccxt_ticker(), exchange="binance")
    await cache.tickers.set(ccxt_ticker(last=101.0), exchange="binance")
    await cache.tickers.set(ccxt_ticker("ETH/USDT"), exchange="binance")
    raw = await cache.client.hget(cache.keys.ticker_hash("binance"), "BTC/USDT")
    envelope = decode_envelope(raw)
    assert (envelope.type, envelope.topic, envelope.seq) == ("ticker", "binance", 2)
    assert envelope.decode(dict)["last"] == 101.0
    assert envelope.source  # host:pid by default
    assert int(await cache.client.get(cache.keys.ticker_seq("binance"))) == 3


async def test_an_exchange_no_code_mentions_is_visible_everywhere(cache):
    await cache.tickers.set(ccxt_ticker("SOL/USDT", last=150.0), exchange="okx")
    assert list(await cache.tickers.get_all("okx")) == ["SOL/USDT"]
    assert await cache.tickers.exchanges() == ["okx"]
    assert await cache.tickers.price("SOL/USDT") == 150.0
    assert await cache.tickers.price("SOL/USDT", exchanges=["okx"]) == 150.0


async def test_get_all_and_exchanges_from_the_index(cache):
    assert await cache.tickers.exchanges() == []
    assert await cache.tickers.get_all("binance") == {}
    for exchange in ("okx", "binance", "bitget"):
        for symbol in ("BTC/USDT", "ETH/USDT"):
            await cache.tickers.set(ccxt_ticker(symbol), exchange=exchange)
    assert await cache.tickers.exchanges() == ["binance", "bitget", "okx"]
    everything = await cache.tickers.get_all("bitget")
    assert sorted(everything) == ["BTC/USDT", "ETH/USDT"]
    assert all(t.exchange == "bitget" for t in everything.values())


async def test_price_prefers_last_then_mid_in_preference_order(cache):
    await cache.tickers.set(ccxt_ticker(last=None, close=None, bid=10.0, ask=12.0), exchange="a")
    await cache.tickers.set(ccxt_ticker(last=20.0), exchange="b")
    await cache.tickers.set(ccxt_ticker(last=None, close=None, bid=None, ask=5.0), exchange="c")
    assert await cache.tickers.price("BTC/USDT") == 11.0  # alphabetical: "a", its mid
    assert await cache.tickers.price("BTC/USDT", exchanges=["b", "a"]) == 20.0
    assert await cache.tickers.price("BTC/USDT", exchanges=["zz", "c", "a"]) == 11.0
    assert await cache.tickers.price("BTC/USDT", exchanges=["c"]) is None  # no usable price
    assert await cache.tickers.price("BTC/USDT", exchanges=[]) is None
    assert await cache.tickers.price("DOGE/USDT") is None
    with pytest.raises(ValidationError) as info:
        await cache.tickers.price("BTC/USDT", exchanges="binance")
    assert info.value.field == "exchanges"


async def test_price_with_no_exchange_at_all(cache):
    assert await cache.tickers.price("BTC/USDT") is None


async def test_price_skips_stale_tickers(cache):
    old = utc_now() - timedelta(minutes=5)
    await cache.tickers.set(ccxt_ticker(last=1.0, received=old), exchange="a")
    await cache.tickers.set(ccxt_ticker(last=2.0), exchange="b")
    assert await cache.tickers.price("BTC/USDT") == 1.0
    assert await cache.tickers.price("BTC/USDT", max_age=60) == 2.0
    assert await cache.tickers.price("BTC/USDT", ["a"], max_age=60) is None


# --- staleness ---------------------------------------------------------------------------


async def test_max_age_turns_a_stale_ticker_into_a_miss(cache):
    old = utc_now() - timedelta(seconds=120)
    await cache.tickers.set(ccxt_ticker(received=old), exchange="binance")
    await cache.tickers.set(ccxt_ticker("ETH/USDT"), exchange="binance")
    stale = await cache.tickers.get("binance", "BTC/USDT")
    assert stale is not None
    assert abs((stale.received - old).total_seconds()) < 0.001
    assert cache.tickers.is_stale(stale)  # stale_after defaults to 30 s
    assert not cache.tickers.is_stale(stale, max_age=timedelta(minutes=5))
    assert await cache.tickers.get("binance", "BTC/USDT", max_age=60) is None
    assert await cache.tickers.get("binance", "BTC/USDT", max_age=timedelta(hours=1)) == stale
    fresh = await cache.tickers.get("binance", "ETH/USDT", max_age=60)
    assert fresh is not None and not cache.tickers.is_stale(fresh)
    assert list(await cache.tickers.get_all("binance", max_age=60)) == ["ETH/USDT"]
    assert len(await cache.tickers.get_all("binance")) == 2


@pytest.mark.parametrize("bad", [-1, math.nan, "5", True])
async def test_bad_max_age_is_rejected(cache, bad):
    with pytest.raises(ValidationError) as info:
        await cache.tickers.get("binance", "BTC/USDT", max_age=bad)
    assert info.value.field == "max_age"


async def test_stale_after_setting_drives_is_stale(cache_factory):
    cache = await cache_factory(stale_after=0.5)
    ticker = Ticker(symbol="X", received=utc_now() - timedelta(seconds=1))
    assert cache.tickers.is_stale(ticker)
    assert not cache.tickers.is_stale(ticker.replace(received=utc_now()))
    assert cache.tickers.is_stale(Ticker(symbol="X"))  # no time at all: stale


# --- set_many ----------------------------------------------------------------------------


async def test_set_many_stores_thousands_in_one_call(cache):
    count = 2 * BATCH_SIZE + 17  # several script calls per exchange
    tickers = [ccxt_ticker(f"C{i}/USDT", last=float(i)) for i in range(count)]
    assert await cache.tickers.set_many(tickers, exchange="binance") == count
    stored = await cache.tickers.get_all("binance")
    assert len(stored) == count
    assert stored["C42/USDT"].last == 42.0
    # sequence numbers are consecutive across the batches
    assert int(await cache.client.get(cache.keys.ticker_seq("binance"))) == count


async def test_set_many_takes_watch_tickers_dicts_and_mixed_exchanges(cache):
    watch_tickers = {s: ccxt_ticker(s) for s in ("BTC/USDT", "ETH/USDT")}
    assert await cache.tickers.set_many(watch_tickers, exchange="okx") == 2
    mixed = [
        Ticker(symbol="BTC/USD", exchange="kraken", last=1.0),
        Ticker(symbol="BTC/USD", exchange="coinbase", last=2.0),
    ]
    assert await cache.tickers.set_many(mixed) == 2
    assert await cache.tickers.exchanges() == ["coinbase", "kraken", "okx"]
    assert await cache.tickers.price("BTC/USD", ["coinbase", "kraken"]) == 2.0
    assert await cache.tickers.set_many([]) == 0
    assert await cache.tickers.set_many(iter([ccxt_ticker("A/B")]), exchange="okx") == 1


# --- delete ------------------------------------------------------------------------------


async def test_delete_and_delete_exchange(cache):
    await cache.tickers.set_many([ccxt_ticker(f"S{i}/USDT") for i in range(5)], exchange="okx")
    await cache.tickers.set(ccxt_ticker(), exchange="binance")
    assert await cache.tickers.delete("okx", "S0/USDT") is True
    assert await cache.tickers.delete("okx", "S0/USDT") is False
    assert await cache.tickers.get("okx", "S0/USDT") is None
    assert await cache.tickers.delete_exchange("okx") == 4
    assert await cache.tickers.delete_exchange("okx") == 0
    assert await cache.tickers.get_all("okx") == {}
    assert await cache.tickers.exchanges() == ["binance"]  # hidden once empty
    # Writing again after a delete (from this store or any other) shows it again.
    await cache.tickers.set(ccxt_ticker(), exchange="okx")
    assert await cache.tickers.exchanges() == ["binance", "okx"]
    # the sequence never goes back, so watchers never mistake new updates for old ones
    assert int(await cache.client.get(cache.keys.ticker_seq("okx"))) == 6


async def test_delete_exchange_seen_by_another_process(cache_factory):
    writer, other = await cache_factory(), await cache_factory()
    await writer.tickers.set(ccxt_ticker(), exchange="okx")
    assert await other.tickers.delete_exchange("okx") == 1
    assert await writer.tickers.exchanges() == []
    await writer.tickers.set(ccxt_ticker(), exchange="okx")  # this store indexed okx before
    assert await other.tickers.exchanges() == ["okx"]


async def test_queue_delete_joins_another_stores_pipeline(cache):
    await cache.tickers.set(ccxt_ticker("LUNA/USDT"), exchange="binance")
    other_key = cache.keys.key("symbol", "binance", "LUNA/USDT")
    await cache.client.set(other_key, "metadata")
    pipe = cache.client.pipeline(transaction=False)
    pipe.delete(other_key)
    cache.tickers.queue_delete(pipe, "binance", "LUNA/USDT")
    assert await pipe.execute() == [1, 1]
    assert await cache.tickers.get("binance", "LUNA/USDT") is None
    with pytest.raises(ValidationError):
        cache.tickers.queue_delete(pipe, "binance", "BAD{SYMBOL")


# --- validation: nothing written ---------------------------------------------------------

BAD_TICKERS = [
    (ccxt_ticker(bid=math.nan), "bid"),
    (ccxt_ticker(last=math.inf), "last"),
    (ccxt_ticker(ask=-1.0), "ask"),
    (ccxt_ticker(bid="abc"), "bid"),
    (ccxt_ticker(bid=101.0, ask=100.0), "bid"),  # crossed by 1 %
    (ccxt_ticker("BTC{x}/USDT"), "symbol"),
    (ccxt_ticker("BTC*"), "symbol"),
    (ccxt_ticker("BTC/USDT\n"), "symbol"),
    (ccxt_ticker(""), "symbol"),
    (ccxt_ticker(symbol=None), "symbol"),
    (ccxt_ticker(timestamp="yesterday"), "timestamp"),
    (["BTC/USDT", 1.0], "ticker"),
    (42, "ticker"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_TICKERS)
async def test_bad_tickers_raise_and_write_nothing(cache, bad, field):
    await cache.tickers.set(ccxt_ticker("ETH/USDT"), exchange="binance")
    before = await snapshot(cache)
    with pytest.raises(ValidationError) as info:
        await cache.tickers.set(bad, exchange="binance")
    assert info.value.field == field
    with pytest.raises(ValidationError) as info:
        await cache.tickers.set_many([ccxt_ticker("SOL/USDT"), bad], exchange="binance")
    assert info.value.field.startswith("tickers[1]")
    assert await snapshot(cache) == before


@pytest.mark.parametrize(
    ("exchange", "field"),
    [(None, "exchange"), ("bin ance", "exchange"), ("x{y}", "exchange"), (7, "exchange")],
)
async def test_bad_or_missing_exchange_writes_nothing(cache, exchange, field):
    before = await snapshot(cache)
    with pytest.raises(ValidationError) as info:
        await cache.tickers.set(ccxt_ticker(), exchange=exchange)
    assert info.value.field == field
    assert await snapshot(cache) == before


async def test_conflicting_exchanges_are_rejected(cache):
    with pytest.raises(ValidationError, match="conflicting"):
        await cache.tickers.set(ccxt_ticker(exchange="okx"), exchange="binance")
    with pytest.raises(ValidationError, match="conflicting"):
        await cache.tickers.set(Ticker(symbol="X", exchange="okx"), exchange="binance")
    assert await snapshot(cache) == {}


async def test_crossed_book_within_the_tolerance_is_accepted(cache_factory):
    cache = await cache_factory()
    await cache.tickers.set(ccxt_ticker(bid=100.05, ask=100.0), exchange="binance")  # 0.05 %
    strict = await cache_factory(ticker_cross_tolerance=0.0)
    with pytest.raises(ValidationError, match="above ask"):
        await strict.tickers.set(ccxt_ticker(bid=100.05, ask=100.0), exchange="binance")
    await strict.tickers.set(ccxt_ticker(bid=100.0, ask=100.0), exchange="binance")  # touching


async def test_set_many_rejects_a_non_iterable(cache):
    for bad in (5, "BTC/USDT", b"x"):
        with pytest.raises(ValidationError) as info:
            await cache.tickers.set_many(bad, exchange="binance")
        assert info.value.field == "tickers"


async def test_bad_read_arguments(cache):
    with pytest.raises(ValidationError) as info:
        await cache.tickers.get("binance", "BTC*")
    assert info.value.field == "symbol"
    with pytest.raises(ValidationError) as info:
        await cache.tickers.get_all("bad exchange")
    assert info.value.field == "exchange"
    with pytest.raises(ValidationError) as info:
        await cache.tickers.delete(["binance"], "BTC/USDT")
    assert info.value.field == "exchange"


async def test_corrupt_stored_ticker_raises_instead_of_returning_garbage(cache):
    key = cache.keys.ticker_hash("binance")
    await cache.client.hset(key, "BTC/USDT", b"not json")
    await cache.client.hset(key, "ETH/USDT", b'{"seq":1,"payload":{"symbol":"ETH/USDT","bid":-1}}')
    with pytest.raises(ValidationError) as info:
        await cache.tickers.get("binance", "BTC/USDT")
    assert info.value.field == "ticker"
    with pytest.raises(ValidationError) as info:
        await cache.tickers.get("binance", "ETH/USDT")
    assert info.value.field == "ticker.payload.bid"


# --- outages -----------------------------------------------------------------------------


async def test_an_outage_raises_connection_lost():
    settings = Settings(url="redis://127.0.0.1:1/0", connect_timeout=0.1, retry_attempts=0)
    client = create_client(settings=settings)
    ctx = Context(
        client=client,
        keys=Keys("t"),
        codec=get_codec("json"),
        settings=settings,
        metrics=Metrics(),
        server_version=(7, 0, 0),
    )
    tickers = TickCache(ctx)
    try:
        with pytest.raises(ConnectionLost):
            await tickers.set(ccxt_ticker(), exchange="binance")
        with pytest.raises(ConnectionLost):
            await tickers.get("binance", "BTC/USDT")
        with pytest.raises(ConnectionLost):
            await tickers.delete_exchange("binance")
        assert ctx.metrics.snapshot()["tickers.set"].errors == 1
    finally:
        await client.aclose()


async def test_repr_names_the_namespace(cache):
    assert repr(cache.tickers) == f"<TickCache namespace={cache.keys.namespace!r}>"


# --- push: next ----------------------------------------------------------------------------


async def subscribed(cache: Cache, exchange: str, count: int) -> None:
    try:
        await wait_until(lambda: cache.tickers.subscribers(exchange) == count, timeout=30)
    except WaitTimeout:
        hub = cache.tickers._hubs.get(exchange)
        state = None if hub is None else (hub.started, hub.listeners, hub.users, hub.sub)
        raise AssertionError(f"not {count} subscribers on {exchange}: {state}") from None


async def test_next_returns_the_next_update_never_the_stored_value(cache_factory):
    reader, writer = await cache_factory(), await cache_factory()
    await writer.tickers.set(ccxt_ticker(last=1.0), exchange="binance")
    task = asyncio.create_task(reader.tickers.next("binance", "BTC/USDT", timeout=30))
    await subscribed(reader, "binance", 1)
    await writer.tickers.set(ccxt_ticker("ETH/USDT", last=5.0), exchange="binance")
    await writer.tickers.set(ccxt_ticker(last=2.0), exchange="binance")
    assert (await task).last == 2.0
    assert reader.tickers.subscribers("binance") == 0  # the shared subscription is closed
    assert reader.stats()["tickers.next"].count == 1


async def test_1000_concurrent_next_waiters_each_get_the_update_after_their_call(cache):
    await cache.tickers.set(ccxt_ticker(last=1.0), exchange="binance")
    waiters = [
        asyncio.create_task(cache.tickers.next("binance", "BTC/USDT", timeout=60))
        for _ in range(1000)
    ]
    await subscribed(cache, "binance", 1000)
    await cache.tickers.set(ccxt_ticker(last=2.0), exchange="binance")
    await cache.tickers.set(ccxt_ticker(last=3.0), exchange="binance")
    results = await asyncio.gather(*waiters)
    assert {ticker.last for ticker in results} == {2.0}  # not the stored 1.0, not 3.0
    assert cache.tickers.subscribers("binance") == 0


async def test_waiters_called_later_get_later_updates(cache):
    rounds = []
    for price in (1.0, 2.0, 3.0):
        group = [
            asyncio.create_task(cache.tickers.next("okx", "BTC/USDT", timeout=30))
            for _ in range(50)
        ]
        # the previous group's hub may still be closing: count only this group
        await subscribed(cache, "okx", 50)
        await cache.tickers.set(ccxt_ticker(last=price), exchange="okx")
        rounds.append({t.last for t in await asyncio.gather(*group)})
    assert rounds == [{1.0}, {2.0}, {3.0}]


async def test_next_raises_wait_timeout_at_its_timeout(cache):
    loop = asyncio.get_running_loop()
    await cache.tickers.set(ccxt_ticker(), exchange="binance")  # stored: never returned
    started = loop.time()
    with pytest.raises(WaitTimeout) as info:
        await cache.tickers.next("binance", "BTC/USDT", timeout=0.3)
    elapsed = loop.time() - started
    assert isinstance(info.value, TimeoutError)
    assert 0.3 <= elapsed < 5  # not before the timeout; the upper bound only catches a hang
    assert cache.tickers.subscribers("binance") == 0
    with pytest.raises(WaitTimeout):
        await cache.tickers.next("binance", "BTC/USDT", timedelta(milliseconds=50))


async def test_next_rejects_bad_arguments(cache):
    with pytest.raises(ValidationError) as info:
        await cache.tickers.next("binance", "BTC/USDT", timeout=-1)
    assert info.value.field == "timeout"
    with pytest.raises(ValidationError) as info:
        await cache.tickers.next("binance", "BTC\nUSDT", timeout=1)
    assert info.value.field == "symbol"
    assert cache.tickers.subscribers("binance") == 0


async def test_next_without_timeout_waits_until_an_update(cache):
    task = asyncio.create_task(cache.tickers.next("binance", "BTC/USDT", None))
    await subscribed(cache, "binance", 1)
    await cache.tickers.set(ccxt_ticker(last=7.0), exchange="binance")
    assert (await task).last == 7.0


async def test_cancelled_next_leaves_the_others_waiting(cache):
    first = asyncio.create_task(cache.tickers.next("binance", "BTC/USDT", timeout=30))
    second = asyncio.create_task(cache.tickers.next("binance", "BTC/USDT", timeout=30))
    await subscribed(cache, "binance", 2)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await cache.tickers.set(ccxt_ticker(last=4.0), exchange="binance")
    assert (await second).last == 4.0


# --- push: watch -------------------------------------------------------------------------


class Watcher:
    """Collects what a watch() yields, in a background task."""

    def __init__(self, cache: Cache, exchange: str, *args: Any, **kwargs: Any) -> None:
        self.seen: list[Ticker] = []
        self.error: BaseException | None = None
        self._iter = cache.tickers.watch(exchange, *args, **kwargs)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for ticker in self._iter:
                self.seen.append(ticker)
        except TradecacheError as exc:
            self.error = exc

    def prices(self) -> list[tuple[str, float | None]]:
        return [(t.symbol, t.last) for t in self.seen]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_watch_yields_updates_of_the_chosen_symbols(cache_factory):
    reader, writer = await cache_factory(), await cache_factory()
    one = Watcher(reader, "binance", ["BTC/USDT"])
    every = Watcher(reader, "binance")
    await subscribed(reader, "binance", 2)
    for symbol, price in [("BTC/USDT", 1.0), ("ETH/USDT", 2.0), ("BTC/USDT", 3.0)]:
        await writer.tickers.set(ccxt_ticker(symbol, last=price), exchange="binance")
        await wait_until(lambda p=price: len(every.seen) > 0 and every.seen[-1].last == p)
    await wait_until(lambda: len(one.seen) == 2)
    assert one.prices() == [("BTC/USDT", 1.0), ("BTC/USDT", 3.0)]
    assert every.prices() == [("BTC/USDT", 1.0), ("ETH/USDT", 2.0), ("BTC/USDT", 3.0)]
    await one.stop()
    await subscribed(reader, "binance", 1)
    await every.stop()
    assert reader.tickers.subscribers("binance") == 0


async def test_watch_initial_yields_the_stored_tickers_first(cache):
    await cache.tickers.set_many(
        [ccxt_ticker("BTC/USDT", last=1.0), ccxt_ticker("ETH/USDT", last=2.0)], exchange="okx"
    )
    watcher = Watcher(cache, "okx", ["ETH/USDT", "XRP/USDT"], initial=True)
    await wait_until(lambda: len(watcher.seen) == 1)
    await cache.tickers.set(ccxt_ticker("XRP/USDT", last=3.0), exchange="okx")
    await wait_until(lambda: len(watcher.seen) == 2)
    assert watcher.prices() == [("ETH/USDT", 2.0), ("XRP/USDT", 3.0)]
    everything = Watcher(cache, "okx", initial=True)
    await wait_until(lambda: len(everything.seen) == 3)
    assert sorted(everything.prices()) == [("BTC/USDT", 1.0), ("ETH/USDT", 2.0), ("XRP/USDT", 3.0)]
    await watcher.stop()
    await everything.stop()


async def test_a_slow_watcher_gets_the_newest_tick_of_each_symbol(cache):
    iterator = cache.tickers.watch("binance")
    first = asyncio.create_task(anext(iterator))
    await subscribed(cache, "binance", 1)
    await cache.tickers.set(ccxt_ticker("ETH/USDT", last=1.0), exchange="binance")
    assert (await first).last == 1.0
    # nobody reads while these arrive: the watcher conflates them per symbol
    for price in (2.0, 3.0, 4.0):
        await cache.tickers.set(ccxt_ticker("BTC/USDT", last=price), exchange="binance")
    await cache.tickers.set(ccxt_ticker("ETH/USDT", last=5.0), exchange="binance")
    marker = asyncio.create_task(cache.tickers.next("binance", "ETH/USDT", timeout=30))
    await subscribed(cache, "binance", 2)
    await cache.tickers.set(ccxt_ticker("ETH/USDT", last=6.0), exchange="binance")
    await marker  # the hub dispatched everything up to here
    assert [(await anext(iterator)).last for _ in range(2)] == [4.0, 6.0]
    await iterator.aclose()


async def kill_subscriber_connections(cache: Cache, name: str) -> int:
    """CLIENT KILL every pub/sub connection named ``name`` on every node."""
    nodes = cache.client.get_primaries() if cache.is_cluster else [None]
    killed = 0
    for node in nodes:
        options = {} if node is None else {"target_nodes": node}
        clients = await cache.client.execute_command("CLIENT LIST", **options)
        if isinstance(clients, bytes | str):
            from redis._parsers.helpers import parse_client_list

            clients = parse_client_list(clients)
        for client in clients:
            if client["name"] == name and "P" in client["flags"]:
                await cache.client.execute_command("CLIENT KILL", "ID", client["id"], **options)
                killed += 1
    return killed


async def test_watch_keeps_delivering_across_a_client_kill(cache_factory, redis_namespace):
    name = f"{redis_namespace}-watcher"
    reader, writer = await cache_factory(client_name=name), await cache_factory()
    watcher = Watcher(reader, "binance", ["BTC/USDT"])
    await subscribed(reader, "binance", 1)
    await writer.tickers.set(ccxt_ticker(last=1.0), exchange="binance")
    await wait_until(lambda: len(watcher.seen) == 1)
    assert await kill_subscriber_connections(writer, name) == 1
    # published while the watcher may be reconnecting: delivered live or backfilled
    await writer.tickers.set(ccxt_ticker(last=2.0), exchange="binance")
    await wait_until(lambda: len(watcher.seen) == 2, timeout=10)
    await wait_until(lambda: reader.tickers._hubs["binance"].sub.reconnects >= 1, timeout=10)
    await writer.tickers.set(ccxt_ticker(last=3.0), exchange="binance")
    await wait_until(lambda: len(watcher.seen) == 3, timeout=10)
    assert [t.last for t in watcher.seen] == [1.0, 2.0, 3.0]
    assert watcher.error is None
    await watcher.stop()


async def lose_one_update(cache: Cache, exchange: str, ticker: dict[str, Any]) -> None:
    """Store an update and advance the sequence as if its PUBLISH had been lost."""
    seq = await cache.client.incr(cache.keys.ticker_seq(exchange))
    payload = msgspec.json.encode(Ticker.from_ccxt(ticker, exchange=exchange).to_dict())
    envelope = encode_envelope("ticker", exchange, seq, 1, payload)
    await cache.client.hset(cache.keys.ticker_hash(exchange), ticker["symbol"], envelope)


async def test_a_lost_message_is_backfilled_from_the_stored_ticker(cache):
    watcher = Watcher(cache, "binance")
    await subscribed(cache, "binance", 1)
    await cache.tickers.set(ccxt_ticker("BTC/USDT", last=1.0), exchange="binance")
    await lose_one_update(cache, "binance", ccxt_ticker("ETH/USDT", last=2.0))
    await lose_one_update(cache, "binance", ccxt_ticker("XRP/USDT", last=3.0))
    await lose_one_update(cache, "binance", ccxt_ticker("XRP/USDT", last=4.0))  # supersedes 3.0
    await cache.tickers.set(ccxt_ticker("BTC/USDT", last=5.0), exchange="binance")
    await wait_until(lambda: len(watcher.seen) == 4)
    assert watcher.prices() == [
        ("BTC/USDT", 1.0),
        ("ETH/USDT", 2.0),  # backfilled in sequence order
        ("XRP/USDT", 4.0),  # the newest tick of the symbol; 3.0 was superseded
        ("BTC/USDT", 5.0),
    ]
    assert cache.tickers._hubs["binance"].gaps == 1  # the superseded tick
    await watcher.stop()


async def test_a_malformed_ticker_on_the_channel_is_skipped(cache):
    watcher = Watcher(cache, "binance")
    await subscribed(cache, "binance", 1)
    seq = await cache.client.incr(cache.keys.ticker_seq("binance"))
    bad = encode_envelope("ticker", "binance", seq, 1, b'{"symbol":"BTC/USDT","bid":-1}')
    await cache.client.publish(cache.keys.ticker_channel("binance"), bad)
    await cache.tickers.set(ccxt_ticker(last=1.0), exchange="binance")
    await wait_until(lambda: len(watcher.seen) == 1)
    assert watcher.prices() == [("BTC/USDT", 1.0)]
    await watcher.stop()


async def test_closing_the_store_ends_watchers_and_waiters_with_an_error(cache):
    watcher = Watcher(cache, "binance")
    waiter = asyncio.create_task(cache.tickers.next("binance", "BTC/USDT", timeout=30))
    await subscribed(cache, "binance", 2)
    await cache.tickers.close()
    with pytest.raises(TradecacheError, match="closed"):
        await waiter
    await watcher.task
    assert isinstance(watcher.error, TradecacheError)


async def test_a_broken_subscription_ends_the_watch_with_an_error(cache_factory, redis_namespace):
    name = f"{redis_namespace}-broken"
    reader = await cache_factory(client_name=name)
    watcher = Watcher(reader, "binance")
    await subscribed(reader, "binance", 1)
    # a corrupt sequence counter: the resync after the reconnect cannot read it
    await reader.client.set(reader.keys.ticker_seq("binance"), "garbage")
    assert await kill_subscriber_connections(reader, name) == 1
    await wait_until(watcher.task.done, timeout=10)
    assert watcher.error is not None
    assert reader.tickers.subscribers("binance") == 0


async def test_watch_rejects_bad_symbols(cache):
    for bad in ("BTC/USDT", [], ["a*"], 5):
        with pytest.raises(ValidationError) as info:
            await anext(cache.tickers.watch("binance", bad))
        assert info.value.field == "symbols"
    with pytest.raises(ValidationError):
        await anext(cache.tickers.watch("bad exchange"))


async def test_subscribing_while_redis_is_down_raises_connection_lost():
    settings = Settings(url="redis://127.0.0.1:1/0", connect_timeout=0.1, retry_attempts=0)
    client = create_client(settings=settings)
    ctx = Context(
        client=client,
        keys=Keys("t"),
        codec=get_codec("json"),
        settings=settings,
        metrics=Metrics(),
        server_version=(7, 0, 0),
    )
    tickers = TickCache(ctx)
    try:
        with pytest.raises(ConnectionLost):
            await tickers.next("binance", "BTC/USDT", timeout=5)
        with pytest.raises(ConnectionLost):
            await anext(tickers.watch("binance"))
        assert tickers.subscribers("binance") == 0
    finally:
        await client.aclose()


async def test_closing_the_store_while_it_subscribes(cache):
    waiter = asyncio.create_task(cache.tickers.next("binance", "BTC/USDT", timeout=30))
    await asyncio.sleep(0)  # let the call start subscribing (no time passes)
    assert cache.tickers.subscribers("binance") == 0  # not acknowledged yet
    await cache.tickers.close()
    with pytest.raises(TradecacheError, match="closed"):
        await waiter
    assert cache.tickers._hubs == {}


async def test_a_stale_copy_never_replaces_a_newer_pending_tick():
    mailbox = tickers_module._Mailbox(None)
    mailbox.put(5, Ticker(symbol="X", last=5.0))
    mailbox.put(3, Ticker(symbol="X", last=3.0))  # e.g. the initial read, after a live tick
    assert (await mailbox.get()).last == 5.0
    assert mailbox.items == {}


async def test_many_exchange_spellings_do_not_grow_memory(cache, monkeypatch):
    monkeypatch.setattr(tickers_module, "_MAX_REMEMBERED", 4)
    for spelling in ("okx", "OKX", "Okx", "oKx", "okX", "OKx"):
        await cache.tickers.set(ccxt_ticker(), exchange=spelling)
    assert len(cache.tickers._exchanges) <= 5
    assert await cache.tickers.exchanges() == ["okx"]
    assert await cache.tickers.delete_exchange("OKX") == 1


async def test_a_caller_cancelled_while_subscribing_does_not_stop_the_others(cache):
    first = asyncio.create_task(cache.tickers.next("binance", "BTC/USDT", timeout=30))
    second = asyncio.create_task(cache.tickers.next("binance", "BTC/USDT", timeout=30))
    await asyncio.sleep(0)  # both are now waiting for the shared subscription
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await subscribed(cache, "binance", 1)
    await cache.tickers.set(ccxt_ticker(last=8.0), exchange="binance")
    assert (await second).last == 8.0


async def test_closing_the_cache_ends_its_watchers(cache_factory):
    cache = await cache_factory()
    watcher = Watcher(cache, "binance")
    await subscribed(cache, "binance", 1)
    await cache.close()
    await watcher.task
    assert isinstance(watcher.error, TradecacheError)
    assert cache.tickers.subscribers("binance") == 0


async def test_a_next_waiter_decides_once_it_knows_the_sequence_at_the_call():
    from tradecache.stores.tickers import _Waiter

    old, new, newer = (Ticker(symbol="ETH/USDT", last=float(p)) for p in (1, 2, 3))
    waiter = _Waiter("ETH/USDT", after=1)
    assert not waiter.offer(5, old)  # collected: the sequence at the call is not known yet
    assert not waiter.offer(6, new)
    waiter.settle(5)  # 5 was stored before the call, 6 came after it
    assert waiter.future.result() is new
    assert waiter.offer(7, newer)  # done already: later offers only release the waiter

    late = _Waiter("ETH/USDT", after=1)
    late.settle(5)
    assert not late.future.done()
    assert not late.offer(4, old)  # stored before the call, arrived late: skipped
    assert late.offer(6, new) and late.future.result() is new
