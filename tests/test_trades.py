"""cache.trades: public and user trade streams, at-least-once, never destructive reads."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from helpers.order_flow import ccxt_trade, snapshot, with_settings
from tradecache import Cache, ValidationError
from tradecache.models import Fee, Trade, from_ms, utc_now
from tradecache.stores.trades import TradesCache
from tradecache.testing import wait_until

WORKER = Path(__file__).parent / "helpers" / "trade_worker.py"


def trades(*ids: int, symbol: str = "BTC/USDT") -> list[dict[str, Any]]:
    return [ccxt_trade(str(i), symbol) for i in ids]


# --- push / recent / last_update -------------------------------------------------------------


async def test_push_and_recent_roundtrip_ccxt_trades(cache: Cache) -> None:
    entry = await cache.trades.push(ccxt_trade("1"), exchange="Binance")
    assert entry.count("-") == 1
    assert await cache.trades.push_many(trades(2, 3, 4), exchange="binance") == 3
    recent = await cache.trades.recent("binance", "BTC/USDT", 3)
    assert [t.id for t in recent] == ["2", "3", "4"]  # oldest first
    first = recent[0]
    assert first == Trade.from_ccxt(ccxt_trade("2"), exchange="binance")
    assert first.fee == Fee(cost=Decimal("0.01"), currency="USDT")
    assert first.price == Decimal("60000.1") and first.exchange == "binance"
    assert [t.id for t in await cache.trades.recent("binance", "BTC/USDT")] == ["1", "2", "3", "4"]
    assert await cache.trades.recent("binance", "ETH/USDT", 5) == []


async def test_recent_never_removes_anything(cache: Cache) -> None:
    await cache.trades.push_many(trades(*range(10)), exchange="binance")
    for _ in range(3):
        assert len(await cache.trades.recent("binance", "BTC/USDT", 10)) == 10
    assert await cache.client.xlen(cache.keys.trades("binance", "BTC/USDT")) == 10


async def test_last_update_is_the_time_of_the_last_push(cache: Cache) -> None:
    assert await cache.trades.last_update("binance", "BTC/USDT") is None
    await cache.trades.push(ccxt_trade("1"), exchange="binance")
    stamp = await cache.trades.last_update("binance", "BTC/USDT")
    assert stamp is not None and stamp.tzinfo is not None
    assert abs(stamp - utc_now()) < timedelta(seconds=30)  # server clock, same host


async def test_push_many_groups_by_stream_in_one_batch(cache: Cache) -> None:
    batch = [*trades(1, 2), *trades(3, symbol="ETH/USDT")]
    assert await cache.trades.push_many(batch, exchange="binance") == 3
    mixed = [
        Trade.from_ccxt(ccxt_trade("4"), exchange="kraken"),
        Trade.from_ccxt(ccxt_trade("5"), exchange="bybit"),
    ]
    assert await cache.trades.push_many(mixed) == 2
    assert [t.id for t in await cache.trades.recent("binance", "BTC/USDT", 9)] == ["1", "2"]
    assert [t.id for t in await cache.trades.recent("binance", "ETH/USDT", 9)] == ["3"]
    assert [t.id for t in await cache.trades.recent("kraken", "BTC/USDT", 9)] == ["4"]
    assert await cache.trades.push_many([], exchange="binance") == 0
    exchanges = await cache.client.smembers(cache.keys.trade_exchanges())
    assert exchanges == {b"binance", b"kraken", b"bybit"}
    symbols = await cache.client.smembers(cache.keys.trade_symbols("binance"))
    assert symbols == {b"BTC/USDT", b"ETH/USDT"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"symbol": None}, "symbol"),
        ({"price": -1}, "price"),
        ({"amount": "x"}, "amount"),
        ({"side": "up"}, "side"),
        ({"symbol": "BTC USDT"}, "symbol"),
    ],
)
async def test_bad_trades_raise_and_write_nothing(
    cache: Cache, change: dict[str, Any], field: str
) -> None:
    before = await snapshot(cache)
    bad = ccxt_trade("9", **change)
    with pytest.raises(ValidationError) as info:
        await cache.trades.push(bad, exchange="binance")
    assert info.value.field == field
    with pytest.raises(ValidationError) as info:
        await cache.trades.push_many([ccxt_trade("1"), bad], exchange="binance")
    assert info.value.field == f"[1].{field}"
    with pytest.raises(ValidationError) as info:
        await cache.trades.push_user_trades("main", [bad])
    assert info.value.field == f"[0].{field}"
    assert await snapshot(cache) == before


async def test_exchange_is_required_and_validated(cache: Cache) -> None:
    before = await snapshot(cache)
    with pytest.raises(ValidationError) as info:
        await cache.trades.push(ccxt_trade("1"))
    assert info.value.field == "exchange"
    with pytest.raises(ValidationError) as info:
        await cache.trades.push(ccxt_trade("1", exchange="kraken"), exchange="binance")
    assert info.value.field == "exchange"
    with pytest.raises(ValidationError) as info:
        await cache.trades.push(42)  # type: ignore[arg-type]
    assert info.value.field == "trade"
    for call in (
        cache.trades.recent("binance", "BTC/USDT", 0),
        cache.trades.recent("binance", "BTC/USDT", True),  # type: ignore[arg-type]
        cache.trades.recent_user_trades("main", -1),
    ):
        with pytest.raises(ValidationError) as info:
            await call
        assert info.value.field == "n"
    with pytest.raises(ValidationError) as info:
        await cache.trades.recent("bin ance", "BTC/USDT")
    assert info.value.field == "exchange"
    assert await snapshot(cache) == before


async def test_models_are_given_their_exchange_lower_cased(cache: Cache) -> None:
    bare = Trade.from_ccxt(ccxt_trade("1"))
    await cache.trades.push(bare, exchange="Binance")
    await cache.trades.push(Trade.from_ccxt(ccxt_trade("2"), exchange="BINANCE"))
    assert [t.exchange for t in await cache.trades.recent("binance", "BTC/USDT")] == [
        "binance",
        "binance",
    ]
    before = await snapshot(cache)
    with pytest.raises(ValidationError) as info:
        await cache.trades.push(Trade.from_ccxt(ccxt_trade("3"), exchange="kraken"), "binance")
    assert info.value.field == "exchange"
    with pytest.raises(ValidationError) as info:
        await cache.trades.push(bare)
    assert info.value.field == "exchange"
    assert await snapshot(cache) == before


async def test_streams_are_capped_but_keep_what_a_group_needs(cache: Cache) -> None:
    store = TradesCache(with_settings(cache, stream_maxlen=50))
    key = cache.keys.trades("binance", "BTC/USDT")
    await store.push_many(trades(*range(400)), exchange="binance")
    assert 50 <= await cache.client.xlen(key) < 400  # no group: the plain cap
    await cache.client.delete(key)
    assert [d async for d in store.consume("g", "c", "binance", "BTC/USDT", block=0)] == []
    await store.push_many(trades(*range(400)), exchange="binance")
    await store.push(ccxt_trade("400"), exchange="binance")
    assert await cache.client.xlen(key) == 401  # nothing delivered yet: nothing trimmed
    async for delivery in store.consume("g", "c", "binance", "BTC/USDT", count=100, block=0):
        await delivery.ack()
    await store.push(ccxt_trade("401"), exchange="binance")
    assert 50 <= await cache.client.xlen(key) < 402
    recent = await store.recent("binance", "BTC/USDT", 50)
    assert [t.id for t in recent] == [str(i) for i in range(352, 402)]


# --- consume / reclaim / pending ---------------------------------------------------------------


async def test_consume_one_symbol_at_least_once(cache: Cache) -> None:
    await cache.trades.push_many(trades(*range(5)), exchange="binance")
    await cache.trades.push_many(trades(9, symbol="ETH/USDT"), exchange="binance")
    got = [d async for d in cache.trades.consume("g", "c1", "binance", "BTC/USDT", block=0)]
    assert [d.item.id for d in got] == ["0", "1", "2", "3", "4"]
    assert await cache.trades.pending("g", "binance", "BTC/USDT") == 5
    assert await cache.trades.pending("g", "binance", "ETH/USDT") == 0  # no group there
    reclaimed = await cache.trades.reclaim("g", "c2", 0, "binance", "BTC/USDT", count=2)
    assert [d.item.id for d in reclaimed] == ["0", "1", "2", "3", "4"]
    for delivery in reclaimed:
        assert await delivery.ack()
    assert await cache.trades.pending("g", "binance", "BTC/USDT") == 0


async def test_consume_every_symbol_of_an_exchange_or_every_stream(cache: Cache) -> None:
    await cache.trades.push_many(trades(1, 2), exchange="binance")
    await cache.trades.push_many(trades(3, symbol="ETH/USDT"), exchange="binance")
    await cache.trades.push_many(trades(4, symbol="SOL/USDT"), exchange="kraken")
    by_exchange = [d async for d in cache.trades.consume("g", "c", "binance", block=0)]
    assert sorted(d.item.id for d in by_exchange) == ["1", "2", "3"]
    assert {d.stream for d in by_exchange} == {
        cache.keys.trades("binance", "BTC/USDT"),
        cache.keys.trades("binance", "ETH/USDT"),
    }
    everything = [d async for d in cache.trades.consume("all", "c", block=0)]
    assert sorted(d.item.id for d in everything) == ["1", "2", "3", "4"]
    assert await cache.trades.pending("all") == 4
    assert await cache.trades.pending("all", "kraken") == 1
    reclaimed = await cache.trades.reclaim("all", "c2", 0)
    assert sorted(d.item.id for d in reclaimed) == ["1", "2", "3", "4"]
    assert [d async for d in cache.trades.consume("g", "c", "bybit", block=0)] == []
    assert await cache.trades.pending("g", "bybit") == 0


async def test_consume_everything_with_no_stream_yet_waits_then_ends(cache: Cache) -> None:
    assert [d async for d in cache.trades.consume("g", "c", block=0.05)] == []
    assert [d async for d in cache.trades.consume("g", "c", block=0)] == []
    assert await cache.trades.pending("g") == 0
    assert await cache.trades.reclaim("g", "c", 0) == []


async def test_consume_picks_up_streams_created_while_it_runs(cache: Cache) -> None:
    await cache.trades.push(ccxt_trade("1"), exchange="binance")
    seen: list[str] = []
    async for delivery in cache.trades.consume("g", "c", block=10):
        seen.append(delivery.item.id or "")
        await delivery.ack()
        if seen == ["1"]:
            await cache.trades.push(ccxt_trade("2", "ETH/USDT"), exchange="kraken")
        else:
            break
    assert seen == ["1", "2"]


async def test_symbol_without_exchange_is_rejected(cache: Cache) -> None:
    with pytest.raises(ValidationError) as info:
        async for _ in cache.trades.consume("g", "c", symbol="BTC/USDT"):
            pass
    assert info.value.field == "exchange"
    with pytest.raises(ValidationError):
        await cache.trades.pending("g", symbol="BTC/USDT")


# --- user trades -----------------------------------------------------------------------------


async def test_user_trades_per_account(cache: Cache) -> None:
    fill = ccxt_trade("1", order="o-1")
    entry = await cache.trades.push_user_trade("main", fill, exchange="binance")
    assert entry
    assert await cache.trades.push_user_trades("main", [ccxt_trade("2", order="o-1")]) == 1
    assert await cache.trades.push_user_trades("other", [ccxt_trade("3")]) == 1
    assert await cache.trades.push_user_trades("main", []) == 0
    with pytest.raises(ValidationError):
        await cache.trades.push_user_trades("ma in", [])
    recent = await cache.trades.recent_user_trades("main", 10)
    assert [(t.id, t.order, t.exchange) for t in recent] == [
        ("1", "o-1", "binance"),
        ("2", "o-1", None),
    ]
    mine = [d async for d in cache.trades.consume_user_trades("pnl", "w", "main", block=0)]
    assert [d.item.id for d in mine] == ["1", "2"]
    every = [d async for d in cache.trades.consume_user_trades("all", "w", block=0)]
    assert sorted(d.item.id for d in every) == ["1", "2", "3"]
    assert await cache.trades.pending_user_trades("pnl", "main") == 2
    assert await cache.trades.pending_user_trades("all") == 3
    reclaimed = await cache.trades.reclaim_user_trades("all", "w2", 0)
    assert sorted(d.item.id for d in reclaimed) == ["1", "2", "3"]
    assert len(await cache.trades.reclaim_user_trades("pnl", "w2", 0, "main")) == 2
    for delivery in reclaimed:
        await delivery.ack()
    assert await cache.trades.pending_user_trades("all") == 0
    assert await cache.trades.recent("binance", "BTC/USDT") == []  # public streams untouched
    assert repr(cache.trades).startswith("<TradesCache namespace=")


# --- acceptance: 1 producer, 3 consumer processes, one SIGKILLed ---------------------------


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.slow
async def test_no_trade_lost_when_a_consumer_is_killed_mid_stream(cache: Cache) -> None:
    total, ex, sym, group = 5000, "binance", "BTC/USDT", "ohlcv"
    url, ns = cache.settings.url, cache.keys.namespace
    key = cache.keys.trades(ex, sym)

    def test_key(name: str) -> str:
        return cache.keys.key("test", "trades", name)

    # the group exists before anything is pushed, from the stream's start
    assert [d async for d in cache.trades.consume(group, "setup", ex, sym, block=0)] == []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # the victim blocks in XREADGROUP first, so the first pushes reach it
        victim = _spawn("consume", url, ns, ex, sym, group, "victim", "10")
        procs.append(victim)
        await wait_until(
            lambda: _consumers(cache, key, group, 2), timeout=60, message="victim start"
        )
        for name in ("c1", "c2"):
            procs.append(_spawn("consume", url, ns, ex, sym, group, name))
        await wait_until(
            lambda: _consumers(cache, key, group, 4), timeout=60, message="consumers start"
        )
        producer = _spawn("produce", url, ns, ex, sym, str(total))
        procs.append(producer)

        # watch the stream while everything runs: recent() never takes anything away
        longest = 0

        async def watch() -> None:
            nonlocal longest
            while producer.poll() is None or longest < total:
                recent = await cache.trades.recent(ex, sym, 50)
                ids = [int(t.id or -1) for t in recent]
                assert ids == sorted(ids)
                length = await cache.client.xlen(key)
                assert length >= longest
                longest = length
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        await wait_until(
            lambda: cache.client.exists(test_key("stalled")),
            timeout=60,
            message="the victim never stalled",
        )
        held = await cache.client.xpending_range(key, group, "-", "+", 1000, "victim")
        assert held, "the victim must die holding unacknowledged trades"
        victim.send_signal(signal.SIGKILL)
        await wait_until(lambda: victim.poll() is not None, timeout=10)
        await wait_until(lambda: producer.poll() is not None, timeout=120)
        assert producer.returncode == 0, producer.stderr.read() if producer.stderr else ""
        await asyncio.wait_for(watcher, timeout=60)
        await cache.client.set(test_key("stop"), 1)
        for proc in procs[1:3]:
            await wait_until(lambda p=proc: p.poll() is not None, timeout=120)
            assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            if proc.stderr:
                proc.stderr.close()

    processed = await cache.client.hgetall(test_key("processed"))
    assert sorted(int(i) for i in processed) == list(range(total))  # none missing
    assert all(int(n) >= 1 for n in processed.values())
    assert await cache.trades.pending(group, ex, sym) == 0  # every one acked
    assert await cache.client.xlen(key) == total  # nothing removed by anyone
    held_ids = {entry["message_id"] for entry in held}
    entries = await cache.client.xrange(key)
    held_trades = [fields for entry_id, fields in entries if entry_id in held_ids]
    assert held_trades, "the victim's trades are in the stream and were processed"


async def _consumers(cache: Cache, key: str, group: str, n: int) -> bool:
    """True once ``n`` consumers (the test's "setup" one included) have read the group."""
    return len(await cache.client.xinfo_consumers(key, group)) >= n


# --- helpers of this module ------------------------------------------------------------------


def test_trade_timestamps_in_the_factory_are_epoch_ms() -> None:
    assert Trade.from_ccxt(ccxt_trade("5"), exchange="x").timestamp == from_ms(1_700_000_000_005)
