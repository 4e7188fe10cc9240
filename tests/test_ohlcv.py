"""cache.ohlcv: upsert by open time, cap, latest/range, validation, watch."""

from __future__ import annotations

import asyncio
import contextlib
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tradecache import Cache, ConnectionLost, ValidationError
from tradecache.codec import get_codec
from tradecache.config import Settings
from tradecache.connection import create_client
from tradecache.context import Context
from tradecache.envelope import decode_envelope, encode_envelope
from tradecache.keys import Keys
from tradecache.metrics import Metrics
from tradecache.models import Candle, from_ms
from tradecache.stores.ohlcv import TIMEFRAMES, OHLCVCache, validate_timeframe
from tradecache.testing import wait_until

MINUTE = 60_000
T0 = 1_700_000_040_000  # a minute boundary


def row(i: int, close: float = 100.0, volume: float = 10.0) -> list[Any]:
    """ccxt's OHLCV row for minute ``i`` (open/high/low around ``close``, all >= 0)."""
    return [T0 + i * MINUTE, close * 0.99, close * 1.02, close * 0.97, close, volume]


def window(first: int, count: int, close: float = 100.0) -> list[list[Any]]:
    return [row(i, close + i) for i in range(first, first + count)]


async def snapshot(cache: Cache) -> dict[bytes, bytes]:
    """Every key of the test's namespace with its DUMP: equal snapshots = Redis unchanged."""
    keys = [key async for key in cache.client.scan_iter(match=cache.keys.all_pattern())]
    return {key: await cache.client.dump(key) for key in keys}


# --- upsert / latest / range -------------------------------------------------------------


async def test_upsert_then_latest_and_range(cache):
    assert await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", window(0, 5)) == 5
    latest = await cache.ohlcv.latest("binance", "BTC/USDT", "1m", 3)
    assert [c.to_list() for c in latest] == window(2, 3)  # ascending, the newest 3
    assert latest[0].timestamp == from_ms(T0 + 2 * MINUTE)
    assert len(await cache.ohlcv.latest("binance", "BTC/USDT", "1m", 100)) == 5
    assert await cache.ohlcv.latest("binance", "BTC/USDT", "5m", 3) == []  # another series
    assert await cache.ohlcv.latest("okx", "BTC/USDT", "1m", 3) == []  # exchange is in the key
    between = await cache.ohlcv.range("binance", "BTC/USDT", "1m", T0 + MINUTE, T0 + 3 * MINUTE)
    assert [c.to_list() for c in between] == window(1, 3)  # both bounds inclusive
    as_datetimes = await cache.ohlcv.range(
        "binance", "BTC/USDT", "1m", from_ms(T0 + MINUTE), from_ms(T0 + 3 * MINUTE)
    )
    assert as_datetimes == between
    assert await cache.ohlcv.range("binance", "BTC/USDT", "1m", 0, T0 - 1) == []
    assert await cache.ohlcv.count("binance", "BTC/USDT", "1m") == 5


async def test_upsert_accepts_candles_dicts_and_any_order(cache):
    candles = [
        Candle.from_ccxt(row(3)),
        {"timestamp": T0 + MINUTE, "open": 1, "high": 2, "low": 0.5, "close": 1.5, "volume": 3},
        tuple(row(2)),
        [T0, 1, 2, 0.5, 1.5],  # no volume
    ]
    assert await cache.ohlcv.upsert("binance", "ETH/USDT", "1h", candles) == 4
    stored = await cache.ohlcv.latest("binance", "ETH/USDT", "1h", 10)
    assert [c.timestamp for c in stored] == [from_ms(T0 + i * MINUTE) for i in range(4)]
    assert stored[0].volume is None
    assert stored[1].close == 1.5
    assert await cache.ohlcv.upsert("binance", "ETH/USDT", "1h", []) == 0
    assert await cache.ohlcv.upsert("binance", "ETH/USDT", "1h", iter([row(9)])) == 1


async def test_re_upserting_an_overlapping_window_twice_never_duplicates(cache):
    first = window(0, 500)
    second = window(250, 500, close=200.0)  # overlaps 250..499 with new values
    assert await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", first) == 500
    assert await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", second) == 500
    assert await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", second) == 0  # unchanged
    stored = await cache.ohlcv.latest("binance", "BTC/USDT", "1m", 10_000)
    times = [c.to_list()[0] for c in stored]
    assert times == [T0 + i * MINUTE for i in range(750)]  # distinct, in order
    assert [c.to_list() for c in stored] == first[:250] + second  # the latest values
    assert await cache.ohlcv.count("binance", "BTC/USDT", "1m") == 750


async def test_the_forming_bar_is_replaced_as_it_changes(cache):
    for close in (100.0, 101.0, 99.0):
        assert await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", [row(0, close)]) == 1
    assert await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", [row(0, 99.0)]) == 0
    stored = await cache.ohlcv.latest("binance", "BTC/USDT", "1m", 5)
    assert [c.close for c in stored] == [99.0]


async def test_within_one_call_the_last_candle_of_a_time_wins(cache):
    changed = await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", [row(0, 10.0), row(0, 20.0)])
    assert changed == 1
    assert [c.close for c in await cache.ohlcv.latest("binance", "BTC/USDT", "1m", 5)] == [20.0]


async def test_series_is_capped_keeping_the_newest(cache_factory):
    cache = await cache_factory(max_candles=100)
    assert await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", window(0, 150)) == 100
    assert await cache.ohlcv.count("binance", "BTC/USDT", "1m") == 100
    stored = await cache.ohlcv.latest("binance", "BTC/USDT", "1m", 1000)
    assert stored[0].timestamp == from_ms(T0 + 50 * MINUTE)
    assert await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", window(150, 10)) == 10
    stored = await cache.ohlcv.latest("binance", "BTC/USDT", "1m", 1000)
    assert len(stored) == 100
    assert stored[0].timestamp == from_ms(T0 + 60 * MINUTE)
    # bars older than the capped series are dropped again at once, and count 0
    assert await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", window(0, 5)) == 0
    assert await cache.ohlcv.latest("binance", "BTC/USDT", "1m", 1000) == stored
    # a mix: only the newer bar counts
    mixed = [row(1, 5.0), row(200, 5.0)]
    assert await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", mixed) == 1


async def test_delete_keeps_the_sequence(cache):
    await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", window(0, 3))
    assert await cache.ohlcv.delete("binance", "BTC/USDT", "1m") is True
    assert await cache.ohlcv.delete("binance", "BTC/USDT", "1m") is False
    assert await cache.ohlcv.count("binance", "BTC/USDT", "1m") == 0
    assert await cache.client.get(cache.keys.ohlcv_seq("binance", "BTC/USDT", "1m")) == b"1"


def test_timeframes():
    assert validate_timeframe("1M") == "1M"
    assert len(TIMEFRAMES) == 15
    for bad in ("2m", "1H", "1mo", "", 60):
        with pytest.raises(ValidationError) as info:
            validate_timeframe(bad)
        assert info.value.field == "timeframe"


# --- validation: nothing written ---------------------------------------------------------

BAD_CANDLES = [
    ([[T0, math.nan, 2, 0.5, 1.5, 1]], "candles[0].open"),
    ([row(0), [T0 + MINUTE, 1, 2, 0.5, 1.5, -1]], "candles[1].volume"),
    ([[T0, -1, 2, -2, 1, 1]], "candles[0].open"),
    ([[T0, 1, 0.5, 0.2, 1, 1]], "candles[0].high"),  # high below open
    ([[T0, 1, 2, 1.5, 1.8, 1]], "candles[0].low"),  # low above open
    ([[None, 1, 2, 0.5, 1.5, 1]], "candles[0].timestamp"),
    ([[T0, "x", 2, 0.5, 1.5, 1]], "candles[0].open"),
    ([[T0, 1, 2]], "candles[0]"),
    ([T0, 1, 2, 0.5, 1.5, 1], "candles[0]"),  # one row instead of a list of rows
    (["abc"], "candles[0]"),
    ([5], "candles[0]"),
    ("abc", "candles"),
    (5, "candles"),
    ({"timestamp": T0}, "candles"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_CANDLES)
async def test_bad_candles_raise_and_write_nothing(cache, bad, field):
    await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", window(0, 3))
    before = await snapshot(cache)
    with pytest.raises(ValidationError) as info:
        await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", bad)
    assert info.value.field == field
    assert await snapshot(cache) == before


@pytest.mark.parametrize(
    ("exchange", "symbol", "timeframe", "field"),
    [
        ("binance", "BTC/USDT", "2m", "timeframe"),
        ("binance", "BTC/USDT", "1H", "timeframe"),
        ("binance", "BTC/USDT", None, "timeframe"),
        ("binance", "BTC{x}", "1m", "symbol"),
        ("binance", "BTC*", "1m", "symbol"),
        ("binance", "BTC\nUSDT", "1m", "symbol"),
        ("binance", 5, "1m", "symbol"),
        ("bin ance", "BTC/USDT", "1m", "exchange"),
        (None, "BTC/USDT", "1m", "exchange"),
    ],
)
async def test_bad_series_names_raise_and_write_nothing(cache, exchange, symbol, timeframe, field):
    before = await snapshot(cache)
    with pytest.raises(ValidationError) as info:
        await cache.ohlcv.upsert(exchange, symbol, timeframe, window(0, 2))
    assert info.value.field == field
    with pytest.raises(ValidationError) as info:
        await cache.ohlcv.latest(exchange, symbol, timeframe, 5)
    assert info.value.field == field
    assert await snapshot(cache) == before


@pytest.mark.parametrize(("n", "reason"), [(0, "> 0"), (-5, "> 0"), (1.5, "int"), (True, "int")])
async def test_latest_rejects_n_that_is_not_positive(cache, n, reason):
    await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", window(0, 3))
    with pytest.raises(ValidationError, match=reason) as info:
        await cache.ohlcv.latest("binance", "BTC/USDT", "1m", n)
    assert info.value.field == "n"


async def test_range_rejects_bad_bounds(cache):
    naive = datetime(2024, 1, 1)
    aware = datetime(2024, 1, 1, tzinfo=UTC)
    cases = [
        (naive, aware, "start"),
        (aware, naive, "end"),
        ("2024-01-01", aware, "start"),
        (-1, 5, "start"),
        (True, 5, "start"),
        (aware, aware - timedelta(seconds=1), "end"),
        (10, 5, "end"),
    ]
    for start, end, field in cases:
        with pytest.raises(ValidationError) as info:
            await cache.ohlcv.range("binance", "BTC/USDT", "1m", start, end)
        assert info.value.field == field


async def test_corrupt_stored_candles_raise(cache):
    key = cache.keys.ohlcv("binance", "BTC/USDT", "1m")
    await cache.client.zadd(key, {b"not json": 1})
    with pytest.raises(ValidationError) as info:
        await cache.ohlcv.latest("binance", "BTC/USDT", "1m", 1)
    assert info.value.field == "candle"
    await cache.client.zadd(key, {b"[5,1,2,0.5,1.5,-3]": 2})
    with pytest.raises(ValidationError) as info:
        await cache.ohlcv.latest("binance", "BTC/USDT", "1m", 1)
    assert info.value.field == "candle.volume"


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
    ohlcv = OHLCVCache(ctx)
    try:
        with pytest.raises(ConnectionLost):
            await ohlcv.upsert("binance", "BTC/USDT", "1m", window(0, 2))
        with pytest.raises(ConnectionLost):
            await ohlcv.latest("binance", "BTC/USDT", "1m", 2)
        with pytest.raises(ConnectionLost):
            await anext(ohlcv.watch("binance", "BTC/USDT", "1m"))
    finally:
        await client.aclose()


async def test_repr_names_the_namespace(cache):
    assert repr(cache.ohlcv) == f"<OHLCVCache namespace={cache.keys.namespace!r}>"
    assert cache.ohlcv.max_candles == 10_000


# --- watch -------------------------------------------------------------------------------


class Watcher:
    """Collects what ohlcv.watch() yields, in a background task."""

    def __init__(self, cache: Cache, *series: str) -> None:
        self.seen: list[list[Any]] = []
        self._iter = cache.ohlcv.watch(*series)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for candle in self._iter:
            self.seen.append(candle.to_list())

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def channel_subscribed(cache: Cache, channel: str) -> None:
    """Wait until some connection is subscribed to ``channel``."""

    async def count() -> int:
        if cache.is_cluster:
            node = cache.client.get_node_from_key(channel)
            command = "PUBSUB SHARDNUMSUB" if cache.ohlcv.sharded else "PUBSUB NUMSUB"
            reply = await cache.client.execute_command(command, channel, target_nodes=node)
        else:
            reply = await cache.client.execute_command("PUBSUB NUMSUB", channel)
        return int(dict(reply).get(channel.encode(), 0) if isinstance(reply, list) else 0)

    await wait_until(count, timeout=30, message=f"a subscriber on {channel}")


async def test_watch_yields_added_and_changed_candles(cache_factory):
    reader, writer = await cache_factory(), await cache_factory()
    await writer.ohlcv.upsert("binance", "BTC/USDT", "1m", window(0, 3))  # before: not seen
    watcher = Watcher(reader, "binance", "BTC/USDT", "1m")
    await channel_subscribed(writer, writer.keys.ohlcv_channel("binance", "BTC/USDT", "1m"))
    await writer.ohlcv.upsert("binance", "BTC/USDT", "1m", window(1, 3, close=50.0))
    await writer.ohlcv.upsert("binance", "BTC/USDT", "1m", window(1, 3, close=50.0))  # no-op
    await writer.ohlcv.upsert("binance", "ETH/USDT", "1m", window(0, 1))  # other series
    await writer.ohlcv.upsert("binance", "BTC/USDT", "1m", [row(3, 60.0)])
    await wait_until(lambda: len(watcher.seen) == 4)
    assert watcher.seen == [*window(1, 3, close=50.0), row(3, 60.0)]
    raw = await reader.client.get(reader.keys.ohlcv_seq("binance", "BTC/USDT", "1m"))
    assert int(raw) == 3  # the no-op upsert published nothing
    await watcher.stop()


async def kill_subscriber_connections(cache: Cache, name: str) -> int:
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
    name = f"{redis_namespace}-candles"
    reader, writer = await cache_factory(client_name=name), await cache_factory()
    channel = writer.keys.ohlcv_channel("binance", "BTC/USDT", "1m")
    watcher = Watcher(reader, "binance", "BTC/USDT", "1m")
    await channel_subscribed(writer, channel)
    await writer.ohlcv.upsert("binance", "BTC/USDT", "1m", [row(0, 1.0)])
    await wait_until(lambda: len(watcher.seen) == 1)
    assert await kill_subscriber_connections(writer, name) == 1
    await writer.ohlcv.upsert("binance", "BTC/USDT", "1m", [row(1, 2.0)])
    await wait_until(lambda: watcher.seen[-1:] == [row(1, 2.0)], timeout=10)
    await channel_subscribed(writer, channel)
    await writer.ohlcv.upsert("binance", "BTC/USDT", "1m", [row(2, 3.0)])
    await wait_until(lambda: watcher.seen[-1:] == [row(2, 3.0)], timeout=10)
    # each candle at least once, in order of time; a backfill may repeat row 0 or 1
    assert watcher.seen[0] == row(0, 1.0)
    assert {tuple(c) for c in watcher.seen} == {tuple(row(i, i + 1.0)) for i in range(3)}
    await watcher.stop()


async def test_a_lost_message_is_backfilled_from_the_series(cache):
    watcher = Watcher(cache, "binance", "BTC/USDT", "1m")
    await channel_subscribed(cache, cache.keys.ohlcv_channel("binance", "BTC/USDT", "1m"))
    await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", [row(0, 1.0)])
    await wait_until(lambda: len(watcher.seen) == 1)
    # an upsert whose publish was lost: stored, sequence advanced, nothing sent
    key = cache.keys.ohlcv("binance", "BTC/USDT", "1m")
    await cache.client.zadd(key, {b"[%d,1.0,3.0,0.5,2.0,10.0]" % (T0 + MINUTE): T0 + MINUTE})
    await cache.client.incr(cache.keys.ohlcv_seq("binance", "BTC/USDT", "1m"))
    await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", [row(2, 3.0)])
    await wait_until(lambda: len(watcher.seen) >= 3)
    assert watcher.seen[0] == row(0, 1.0)
    assert [T0 + MINUTE, 1.0, 3.0, 0.5, 2.0, 10.0] in watcher.seen  # backfilled
    assert watcher.seen[-1] == row(2, 3.0)
    await watcher.stop()


async def test_a_malformed_message_is_skipped(cache):
    watcher = Watcher(cache, "binance", "BTC/USDT", "1m")
    channel = cache.keys.ohlcv_channel("binance", "BTC/USDT", "1m")
    await channel_subscribed(cache, channel)
    seq = await cache.client.incr(cache.keys.ohlcv_seq("binance", "BTC/USDT", "1m"))
    bad = encode_envelope("candles", "binance:BTC/USDT:1m", seq, 1, b'[[1,"x"]]')
    assert decode_envelope(bad).seq == seq
    publish = cache.client.spublish if cache.ohlcv.sharded else cache.client.publish
    await publish(channel, bad)
    await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", [row(0, 1.0)])
    await wait_until(lambda: len(watcher.seen) == 1)
    assert watcher.seen == [row(0, 1.0)]
    await watcher.stop()


async def test_watch_rejects_bad_series_names(cache):
    with pytest.raises(ValidationError) as info:
        await anext(cache.ohlcv.watch("binance", "BTC/USDT", "7m"))
    assert info.value.field == "timeframe"


async def test_a_gap_with_nothing_stored_still_delivers_what_follows(cache):
    watcher = Watcher(cache, "binance", "BTC/USDT", "1m")
    channel = cache.keys.ohlcv_channel("binance", "BTC/USDT", "1m")
    await channel_subscribed(cache, channel)
    # a lost message, then one published without storing: the backfill finds nothing
    seq = await cache.client.incr(cache.keys.ohlcv_seq("binance", "BTC/USDT", "1m"), 2)
    candle = b"[%d,1.0,2.0,0.5,1.5,3.0]" % T0
    envelope = encode_envelope("candles", "binance:BTC/USDT:1m", seq, 1, b"[" + candle + b"]")
    publish = cache.client.spublish if cache.ohlcv.sharded else cache.client.publish
    await publish(channel, envelope)
    await wait_until(lambda: len(watcher.seen) == 1)
    assert watcher.seen == [[T0, 1.0, 2.0, 0.5, 1.5, 3.0]]
    await watcher.stop()
