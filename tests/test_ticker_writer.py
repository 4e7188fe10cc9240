"""cache.tickers.writer: coalescing, batched flushes, backpressure, failures, metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tradecache import Cache, ConnectionLost, TradecacheError, ValidationError
from tradecache.models import Ticker
from tradecache.stores.ticker_writer import FLUSH_METRIC, TickerWriter, WriterStats
from tradecache.stores.tickers import BATCH_SIZE
from tradecache.testing import wait_until


def tick(symbol: str = "BTC/USDT", last: float = 100.0, **fields: Any) -> dict[str, Any]:
    """A ccxt-shaped ticker."""
    return {"symbol": symbol, "bid": last - 0.5, "ask": last + 0.5, "last": last, **fields}


async def test_coalesces_per_symbol_and_flushes_on_close(cache):
    async with cache.tickers.writer(flush_interval_ms=60_000, max_batch=100) as w:
        assert isinstance(w, TickerWriter)
        stored = await w.set(tick("BTC/USDT", 1.0), exchange="Binance")
        assert (stored.exchange, stored.last) == ("binance", 1.0)
        await w.set(tick("ETH/USDT", 2.0), exchange="binance")
        await w.set(tick("BTC/USDT", 3.0), exchange="binance")  # latest wins
        await w.set(Ticker(symbol="BTC/USDT", exchange="okx", last=4.0))
        assert await cache.tickers.get("binance", "BTC/USDT") is None  # queued, not written
        assert w.stats().pending == 3
    assert (await cache.tickers.get("binance", "BTC/USDT")).last == 3.0
    assert (await cache.tickers.get("binance", "ETH/USDT")).last == 2.0
    assert (await cache.tickers.get("okx", "BTC/USDT")).last == 4.0
    assert await cache.tickers.exchanges() == ["binance", "okx"]
    assert w.stats() == WriterStats(
        queued=4,
        coalesced=1,
        flushes=1,
        written=3,
        failures=0,
        dropped=0,
        largest_flush=3,
        pending=0,
        waiting=0,
    )
    stats = cache.stats()[FLUSH_METRIC]
    assert (stats.count, stats.errors) == (1, 0)
    await w.close()  # idempotent
    with pytest.raises(TradecacheError, match="closed"):
        await w.set(tick(), exchange="binance")
    with pytest.raises(TradecacheError, match="closed"):
        await w.flush()


async def test_flushes_after_the_interval(cache):
    async with cache.tickers.writer(flush_interval_ms=10, max_batch=1000) as w:
        await w.set(tick("BTC/USDT", 1.0), exchange="binance")

        await wait_until(lambda: w.stats().flushes == 1, timeout=10)
        assert (await cache.tickers.get("binance", "BTC/USDT")).last == 1.0
        # The background task sleeps until something is pending, then flushes again.
        await w.set(tick("BTC/USDT", 2.0), exchange="binance")
        await wait_until(lambda: w.stats().flushes == 2, timeout=10)
        assert (await cache.tickers.get("binance", "BTC/USDT")).last == 2.0


async def test_flushes_as_soon_as_max_batch_symbols_are_pending(cache):
    async with cache.tickers.writer(flush_interval_ms=60_000, max_batch=3) as w:
        await w.set(tick("A/USDT"), exchange="binance")
        await w.set(tick("B/USDT"), exchange="binance")
        await w.set(tick("A/USDT", 7.0), exchange="binance")  # coalesced: still 2 symbols
        assert w.stats().pending == 2
        await w.set(tick("C/USDT"), exchange="binance")
        await wait_until(lambda: w.stats().flushes == 1, timeout=10)
        assert w.stats().written == 3
        assert sorted(await cache.tickers.get_all("binance")) == ["A/USDT", "B/USDT", "C/USDT"]
        assert (await cache.tickers.get("binance", "A/USDT")).last == 7.0


async def test_flush_writes_many_exchanges_and_script_sized_chunks(cache):
    symbols = [f"C{i}/USDT" for i in range(BATCH_SIZE * 2 + 5)]
    w = cache.tickers.writer(flush_interval_ms=60_000, max_batch=len(symbols) + 1)
    for i, symbol in enumerate(symbols):
        await w.set(tick(symbol, float(i + 1)), exchange="binance")
    await w.set(tick("BTC/USDT"), exchange="kraken")
    assert await w.flush() == len(symbols) + 1
    assert await w.flush() == 0  # nothing pending
    stored = await cache.tickers.get_all("binance")
    assert len(stored) == len(symbols)
    assert stored["C7/USDT"].last == 8.0
    assert await cache.tickers.get("kraken", "BTC/USDT") is not None
    await w.close()


async def test_watchers_get_every_written_ticker_with_sequence_numbers(cache):
    seen: list[Ticker] = []

    async def watch() -> None:
        async for ticker in cache.tickers.watch("binance"):
            seen.append(ticker)

    watcher = asyncio.create_task(watch())
    try:
        await wait_until(lambda: cache.tickers.subscribers("binance") == 1, timeout=10)
        waiter = asyncio.create_task(cache.tickers.next("binance", "ETH/USDT", timeout=10))
        await wait_until(lambda: cache.tickers.subscribers("binance") == 2, timeout=10)
        async with cache.tickers.writer(flush_interval_ms=60_000, max_batch=10) as w:
            await w.set(tick("BTC/USDT", 1.0), exchange="binance")
            await w.set(tick("BTC/USDT", 2.0), exchange="binance")  # coalesced: never sent
            await w.set(tick("ETH/USDT", 3.0), exchange="binance")
        assert (await waiter).last == 3.0
        await wait_until(lambda: len(seen) == 2, timeout=10)
        assert sorted((t.symbol, t.last) for t in seen) == [("BTC/USDT", 2.0), ("ETH/USDT", 3.0)]
        raw = await cache.client.hget(cache.keys.ticker_hash("binance"), "ETH/USDT")
        assert b'"seq":2' in raw  # one sequence number per written ticker
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_set_validates_before_queuing(cache):
    async with cache.tickers.writer() as w:
        with pytest.raises(ValidationError) as info:
            await w.set(tick(bid=101.0, ask=100.0), exchange="binance")
        assert info.value.field == "bid"
        with pytest.raises(ValidationError) as info:
            await w.set(tick(percentage=float("nan")), exchange="binance")
        assert info.value.field == "percentage"
        with pytest.raises(ValidationError) as info:
            await w.set(tick("BAD SYMBOL"), exchange="binance")
        assert info.value.field == "symbol"
        with pytest.raises(ValidationError) as info:
            await w.set(tick())
        assert info.value.field == "exchange"
        with pytest.raises(ValidationError) as info:
            await w.set("BTC/USDT", exchange="binance")  # type: ignore[arg-type]
        assert info.value.field == "ticker"
        assert w.stats().pending == w.stats().queued == 0
    assert await cache.tickers.exchanges() == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"flush_interval_ms": 0}, "flush_interval_ms"),
        ({"flush_interval_ms": -5}, "flush_interval_ms"),
        ({"flush_interval_ms": True}, "flush_interval_ms"),
        ({"flush_interval_ms": "50"}, "flush_interval_ms"),
        ({"max_batch": 0}, "max_batch"),
        ({"max_batch": 2.5}, "max_batch"),
    ],
)
async def test_writer_arguments_are_validated(cache, kwargs, field):
    with pytest.raises(ValidationError) as info:
        cache.tickers.writer(**kwargs)
    assert info.value.field == field


async def test_repr_and_defaults(cache):
    w = cache.tickers.writer(flush_interval_ms=2.5)
    assert repr(w) == "<TickerWriter flush_interval_ms=2.5 max_batch=1000 pending=0>"
    await w.close()  # never started: nothing to stop or write
    assert w.stats().flushes == 0


# --- backpressure and outages (private servers) ------------------------------------------


async def test_set_waits_while_a_flush_is_in_flight_and_the_queue_is_full(
    redis_server_factory,
):
    server = redis_server_factory(port=0)
    async with Cache.connect(server.url, namespace="w", socket_timeout=30) as cache:
        w = cache.tickers.writer(flush_interval_ms=60_000, max_batch=2)
        await w.set(tick("A/USDT"), exchange="binance")
        assert await w.flush() == 1  # scripts loaded, exchange indexed
        server.pause()  # the next flush stays in flight
        try:
            await w.set(tick("A/USDT", 1.0), exchange="binance")
            await w.set(tick("B/USDT", 1.0), exchange="binance")  # full: flushing
            await wait_until(lambda: w.stats().pending == 0, timeout=10)
            await w.set(tick("C/USDT", 1.0), exchange="binance")
            await w.set(tick("D/USDT", 1.0), exchange="binance")  # full again
            held = asyncio.create_task(w.set(tick("E/USDT", 1.0), exchange="binance"))
            await wait_until(lambda: w.stats().waiting == 1, timeout=10)
            # A pending symbol is replaced without waiting: memory stays bounded.
            await w.set(tick("C/USDT", 2.0), exchange="binance")
            assert not held.done()
            assert w.stats().pending == 2
        finally:
            server.resume()
        await held
        await w.close()
        stored = await cache.tickers.get_all("binance")
        assert {s: t.last for s, t in stored.items()} == {
            "A/USDT": 1.0,
            "B/USDT": 1.0,
            "C/USDT": 2.0,
            "D/USDT": 1.0,
            "E/USDT": 1.0,
        }
        assert w.stats().waiting == 0
        assert w.stats().coalesced == 1


async def test_an_outage_during_a_flush_is_reported_by_the_next_call(redis_server_factory):
    server = redis_server_factory(port=0)
    async with Cache.connect(server.url, namespace="w", socket_timeout=30) as cache:
        w = cache.tickers.writer(flush_interval_ms=60_000, max_batch=2)
        await w.set(tick("A/USDT"), exchange="binance")
        await w.flush()
        server.pause()
        await w.set(tick("A/USDT"), exchange="binance")
        await w.set(tick("B/USDT"), exchange="binance")  # full: a flush goes out and hangs
        await wait_until(lambda: w.stats().pending == 0, timeout=10)
        server.kill()  # Redis dies with the flush in flight
        await wait_until(lambda: w.stats().failures == 1, timeout=10)
        assert w.stats().dropped == 2
        with pytest.raises(ConnectionLost) as info:
            await w.set(tick("C/USDT"), exchange="binance")
        assert "2 tickers" in "".join(info.value.__notes__)
        assert w.stats().pending == 0  # the failing call queued nothing
        # Reported once: the writer keeps working (and failing, loudly).
        await w.set(tick("C/USDT"), exchange="binance")
        with pytest.raises(ConnectionLost):
            await w.flush()
        await w.set(tick("D/USDT"), exchange="binance")
        with pytest.raises(ConnectionLost):
            await w.close()
        assert (w.stats().failures, w.stats().dropped, w.stats().written) == (3, 4, 1)
        assert cache.stats()[FLUSH_METRIC].errors == 3

        server.restart()
        w = cache.tickers.writer(flush_interval_ms=60_000, max_batch=1)
        await w.set(tick("A/USDT"), exchange="binance")  # full: the flush succeeds
        await wait_until(lambda: w.stats().flushes == 1, timeout=10)
        server.kill()
        await w.set(tick("B/USDT"), exchange="binance")
        await wait_until(lambda: w.stats().failures == 1, timeout=10)
        with pytest.raises(ConnectionLost):
            await w.close()  # the unreported failure comes first
        server.restart()
        async with cache.tickers.writer(max_batch=5) as again:
            await again.set(tick("Z/USDT", 9.0), exchange="binance")
        assert (await cache.tickers.get("binance", "Z/USDT")).last == 9.0


def _store_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "tradecache.stores.tickers" and r.levelno >= logging.WARNING
    ]


async def test_closing_the_cache_flushes_the_writers_still_open(cache_factory, caplog):
    writer_cache, reader = await cache_factory(), await cache_factory()
    open_one = writer_cache.tickers.writer(flush_interval_ms=60_000)
    closed = writer_cache.tickers.writer(flush_interval_ms=60_000)
    await closed.close()
    await open_one.set(tick("BTC/USDT", 5.0), exchange="binance")
    await writer_cache.close()
    assert (await reader.tickers.get("binance", "BTC/USDT")).last == 5.0
    assert open_one.stats().written == 1
    with pytest.raises(TradecacheError, match="closed"):
        await open_one.set(tick("BTC/USDT", 6.0), exchange="binance")
    assert not _store_warnings(caplog)


async def test_a_failed_final_flush_at_cache_close_is_logged_and_close_goes_on(
    redis_server_factory, caplog
):
    server = redis_server_factory(port=0)
    cache = await Cache.connect(server.url, namespace="w")
    w = cache.tickers.writer(flush_interval_ms=60_000)
    await w.set(tick("A/USDT"), exchange="binance")
    await w.set(tick("B/USDT"), exchange="binance")
    lease = await cache.lock("held", ttl=30).acquire()
    server.kill()
    with caplog.at_level("WARNING", logger="tradecache.stores.tickers"):
        await cache.close()
    (record,) = _store_warnings(caplog)
    assert "final flush failed" in record.getMessage()
    assert "2 tickers" in record.getMessage()
    assert record.error == "ConnectionLost"
    assert w.stats().dropped == 2
    assert not lease.held  # the rest of the shutdown ran
