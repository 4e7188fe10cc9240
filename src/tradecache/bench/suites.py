"""The benchmark suites ``tradecache bench`` runs: ours against raw redis-py, per topic.

Each suite is the compact, in-package version of the headline comparisons of
``benchmarks/bench_<name>.py`` (the repository's detailed scripts): the same
operations and the same raw baselines, measured by
:mod:`tradecache.bench.harness`.

* ``tickers``: ``tickers.set`` (one Lua call: HSET + INCRBY + PUBLISH) vs a
  pipelined HSET + PUBLISH of pre-encoded JSON; ``tickers.get`` vs HGET +
  msgspec decode; ``set_many(100)`` vs one pipeline of 100 x (HSET + PUBLISH).
* ``writer``: ``tickers.writer`` (100 tickers queued, then written by one
  flush: one pipeline of ``ticker_set.lua`` calls) and ``set_many(100)`` vs the
  reference library's approach (three sequential commands per ticker: HSET,
  SET of its time, PUBLISH; pre-encoded, in its favour), and the writer vs one
  raw pipeline of 100 x (HSET + PUBLISH). Goal: writer/set_many >= 5x the
  reference.
* ``events``: ``events.publish`` (sequence, capped backlog, PUBLISH in one Lua
  call) vs a raw PUBLISH of the same JSON.
* ``orders``: submit + consume + ack of 10 orders vs XADD + XREADGROUP + XACK;
  ``orders.submit`` (idempotent) vs XADD; ``orders.update`` of one field (Lua
  merge) vs HSET; ``accounts.set_position`` vs HSET; ``trades.push_many(100)``
  vs 100 pipelined XADD.
* ``lock``: ``cache.lock`` and ``bots.claim`` acquire + release vs
  ``SET NX PX`` + a Lua compare-and-delete.
* ``processes``: ``processes.heartbeat`` (one Lua call, three liveness
  indexes) vs a pipelined HSET + ZADD; ``symbols.get`` on a cached entry vs
  GET + decode.

Example::

    from tradecache.bench.suites import SUITES
    cases = await SUITES["tickers"].build(cache)
"""

from __future__ import annotations

import itertools
import os
import time
from decimal import Decimal
from typing import Any, Final

import msgspec

from ..cache import Cache
from ..models import Market, Order, Position, Ticker, Trade, dec_hook, enc_hook, utc_now
from .harness import Case, Suite

__all__ = ["SUITES"]

EXCHANGE: Final = "binance"
SYMBOL: Final = "BTC/USDT"
_encode = msgspec.json.Encoder(enc_hook=enc_hook).encode
_decode_ticker = msgspec.json.Decoder(Ticker, dec_hook=dec_hook).decode
_RELEASE: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def _ticker(symbol: str, price: float) -> Ticker:
    now = utc_now()
    return Ticker(
        symbol=symbol,
        exchange=EXCHANGE,
        timestamp=now,
        received=now,
        bid=price - 0.5,
        ask=price + 0.5,
        last=price,
        base_volume=1234.5,
    )


def _order(n: int) -> dict[str, Any]:
    return {
        "id": f"o{n}",
        "clientOrderId": f"c{n}",
        "symbol": SYMBOL,
        "side": "buy",
        "type": "limit",
        "amount": "0.01",
        "price": "60000.5",
    }


async def tickers(cache: Cache) -> list[Case]:
    """set, get and set_many(100) against pipelined raw commands."""
    client: Any = cache.client
    one = _ticker(SYMBOL, 60_000.0)
    payload = _encode(one)
    batch = [_ticker(f"C{i}/USDT", 100.0 + i) for i in range(100)]
    encoded = [(t.symbol, _encode(t)) for t in batch]
    raw_hash = cache.keys.key("bench-raw", EXCHANGE)
    raw_channel = cache.keys.channel("bench-raw", EXCHANGE)
    await client.hset(raw_hash, SYMBOL, payload)
    await cache.tickers.set(one)

    async def ours_set() -> int:
        await cache.tickers.set(one)
        return 1

    async def raw_set() -> int:
        pipe = client.pipeline(transaction=False)
        pipe.hset(raw_hash, SYMBOL, payload)
        pipe.publish(raw_channel, payload)
        await pipe.execute()
        return 1

    async def ours_get() -> int:
        await cache.tickers.get(EXCHANGE, SYMBOL)
        return 1

    async def raw_get() -> int:
        _decode_ticker(await client.hget(raw_hash, SYMBOL))
        return 1

    async def ours_many() -> int:
        return await cache.tickers.set_many(batch)

    async def raw_many() -> int:
        pipe = client.pipeline(transaction=False)
        for symbol, data in encoded:
            pipe.hset(raw_hash, symbol, data)
            pipe.publish(raw_channel, data)
        await pipe.execute()
        return len(encoded)

    return [
        Case("tickers.set vs HSET+PUBLISH pipeline", ours_set, raw_set, "tickers"),
        Case("tickers.get vs HGET + decode", ours_get, raw_get, "reads"),
        Case("tickers.set_many(100) vs pipeline", ours_many, raw_many, "tickers"),
    ]


async def writer(cache: Cache) -> list[Case]:
    """The batched writer and set_many against the reference's per-ticker commands."""
    client: Any = cache.client
    batch = [_ticker(f"W{i}/USDT", 100.0 + i) for i in range(100)]
    encoded = [(t.symbol, _encode(t)) for t in batch]
    raw_hash = cache.keys.key("bench-raw", EXCHANGE)
    raw_channel = cache.keys.channel("bench-raw", EXCHANGE)
    # The reference library's keys: a hash per exchange, a time key and a channel per symbol.
    ref_hash = cache.keys.key("bench-ref", "tickers", EXCHANGE)
    ref_time = cache.keys.key("bench-ref", "ticker_time", EXCHANGE, SYMBOL)
    ref_channel = cache.keys.channel("bench-ref", "ticker_updates", EXCHANGE, SYMBOL)
    ref_payload = encoded[0][1]

    async def ours_writer() -> int:
        # A writer's whole life per call (task started, flushed, closed): in the
        # baselines' favour, a feed keeps one writer open.
        async with cache.tickers.writer(flush_interval_ms=60_000, max_batch=1000) as w:
            for ticker in batch:
                await w.set(ticker)
        return len(batch)

    async def ours_many() -> int:
        return await cache.tickers.set_many(batch)

    async def reference() -> int:
        await client.hset(ref_hash, SYMBOL, ref_payload)
        await client.set(ref_time, "1700000000.0")
        await client.publish(ref_channel, ref_payload)
        return 1

    async def raw_pipeline() -> int:
        pipe = client.pipeline(transaction=False)
        for symbol, data in encoded:
            pipe.hset(raw_hash, symbol, data)
            pipe.publish(raw_channel, data)
        await pipe.execute()
        return len(encoded)

    return [
        Case(
            "tickers.writer(100) vs reference 3 commands/ticker", ours_writer, reference, "tickers"
        ),
        Case(
            "tickers.set_many(100) vs reference 3 commands/ticker", ours_many, reference, "tickers"
        ),
        Case("tickers.writer(100) vs HSET+PUBLISH pipeline", ours_writer, raw_pipeline, "tickers"),
    ]


async def events(cache: Cache) -> list[Case]:
    """publish against a raw PUBLISH of the same JSON."""
    client: Any = cache.client
    payload = {"order": "o-123", "symbol": SYMBOL, "qty": "0.01", "price": "60000.5"}
    data = msgspec.json.encode(payload)
    channel = cache.keys.channel("bench-raw", "events")

    async def ours() -> int:
        await cache.events.publish("bench", payload)
        return 1

    async def raw() -> int:
        await client.publish(channel, data)
        return 1

    return [Case("events.publish vs PUBLISH", ours, raw, "messages")]


async def orders(cache: Cache) -> list[Case]:
    """The order queue cycle, submit, update, set_position and push_many."""
    client: Any = cache.client
    codec = cache.codec
    counter = itertools.count()
    queue = cache.keys.key("bench-raw", "queue")
    await client.xgroup_create(queue, "bench", id="0", mkstream=True)
    only = cache.keys.key("bench-raw", "submit")
    order_hash = cache.keys.key("bench-raw", "order")
    positions = cache.keys.key("bench-raw", "positions")
    trades_stream = cache.keys.key("bench-raw", "trades")
    await cache.orders.save(_order(0), exchange=EXCHANGE)
    position = Position.from_ccxt(
        {"symbol": "BTC/USDT:USDT", "side": "long", "contracts": "0.5", "entryPrice": "60000"}
    )
    position_bytes = codec.encode(position)
    trades = [
        Trade(symbol=SYMBOL, price=Decimal("60000.1"), amount=Decimal("0.002"), id=str(i))
        for i in range(100)
    ]
    trade_bytes = [codec.encode(t) for t in trades]

    async def ours_cycle() -> int:
        for _ in range(10):
            await cache.orders.submit(_order(next(counter)), exchange=EXCHANGE)
        async for delivery in cache.orders.consume("bench", "w", count=10, block=0):
            await delivery.ack()
        return 10

    async def raw_cycle() -> int:
        for _ in range(10):
            model = Order.from_ccxt(_order(next(counter)), exchange=EXCHANGE)
            await client.xadd(queue, {"d": codec.encode(model)})
        for _, entries in await client.xreadgroup("bench", "w", {queue: ">"}, count=10):
            for entry_id, fields in entries:
                codec.decode(fields[b"d"], Order)
                await client.xack(queue, "bench", entry_id)
        return 10

    async def ours_submit() -> int:
        await cache.orders.submit(_order(next(counter)), exchange="other")
        return 1

    async def raw_submit() -> int:
        model = Order.from_ccxt(_order(next(counter)), exchange="other")
        await client.xadd(only, {"d": codec.encode(model)})
        return 1

    async def ours_update() -> int:
        await cache.orders.update(EXCHANGE, "o0", filled=str(next(counter) % 100 + 1))
        return 1

    async def raw_update() -> int:
        await client.hset(order_hash, "filled", f'"{next(counter) % 100 + 1}"')
        return 1

    async def ours_position() -> int:
        await cache.accounts.set_position("bench", position)
        return 1

    async def raw_position() -> int:
        await client.hset(positions, "BTC/USDT:USDT", position_bytes)
        return 1

    async def ours_push() -> int:
        return await cache.trades.push_many(trades, exchange=EXCHANGE)

    async def raw_push() -> int:
        pipe = client.pipeline(transaction=False)
        for data in trade_bytes:
            pipe.xadd(trades_stream, {"d": data}, maxlen=10_000, approximate=True)
        await pipe.execute()
        return len(trade_bytes)

    # The cycle runs first: its group must not start behind the submit-only entries
    # (those go to the queue too, later, and nobody consumes them).
    return [
        Case("submit+consume+ack (10) vs XADD+XREADGROUP+XACK", ours_cycle, raw_cycle, "orders"),
        Case("orders.submit vs XADD", ours_submit, raw_submit, "orders"),
        Case("orders.update (1 field) vs HSET", ours_update, raw_update, "updates"),
        Case("accounts.set_position vs HSET", ours_position, raw_position, "writes"),
        Case("trades.push_many(100) vs pipelined XADD", ours_push, raw_push, "trades"),
    ]


async def lock(cache: Cache) -> list[Case]:
    """Uncontended acquire + release of a lock and a bot claim vs SET NX PX + Lua."""
    client: Any = cache.client
    release = client.register_script(_RELEASE)
    key = cache.keys.key("bench-raw", "lock")
    the_lock = cache.lock("bench", ttl=10)

    async def ours_lock() -> int:
        async with the_lock:
            pass
        return 1

    async def ours_claim() -> int:
        async with cache.bots.claim(EXCHANGE, SYMBOL, "bench-bot", ttl=30):
            pass
        return 1

    async def raw() -> int:
        token = os.urandom(16).hex()
        await client.set(key, token, nx=True, px=30_000)
        await release(keys=[key], args=[token])
        return 1

    return [
        Case("lock acquire+release vs SET NX PX + Lua", ours_lock, raw, "cycles"),
        Case("bots.claim acquire+release vs SET NX PX + Lua", ours_claim, raw, "cycles"),
    ]


MARKET: Final = {
    "id": "BTCUSDT",
    "symbol": SYMBOL,
    "base": "BTC",
    "quote": "USDT",
    "type": "spot",
    "spot": True,
    "active": True,
    "precision": {"amount": 0.00001, "price": 0.01},
    "taker": 0.001,
    "maker": 0.001,
}


async def processes(cache: Cache) -> list[Case]:
    """heartbeat vs a minimal raw pipeline; a metadata hit vs GET + decode."""
    client: Any = cache.client
    keys = cache.keys
    info = await cache.processes.register("bench", "bench:worker", {"ticks": 0})
    counter = itertools.count()
    record = keys.key("bench-raw", "process")
    index = keys.key("bench-raw", "live")
    await cache.symbols.put(MARKET, exchange=EXCHANGE)
    market_key = keys.symbol_meta(EXCHANGE, SYMBOL)

    async def ours_heartbeat() -> int:
        await cache.processes.heartbeat(info.id, status="running", params={"n": next(counter)})
        return 1

    async def raw_heartbeat() -> int:
        now = time.time_ns() // 1_000_000
        pipe = client.pipeline(transaction=False)
        pipe.hset(record, mapping={"updated": now, "status": "running"})
        pipe.zadd(index, {info.id: now})
        await pipe.execute()
        return 1

    async def ours_symbol() -> int:
        await cache.symbols.get(EXCHANGE, SYMBOL)
        return 1

    async def raw_symbol() -> int:
        cache.codec.decode(await client.get(market_key), Market)
        return 1

    return [
        Case("processes.heartbeat vs HSET+ZADD pipeline", ours_heartbeat, raw_heartbeat, "beats"),
        Case("symbols.get (hit) vs GET + decode", ours_symbol, raw_symbol, "reads"),
    ]


SUITES: Final[dict[str, Suite]] = {
    suite.name: suite
    for suite in (
        Suite("tickers", "ticker store: set, get, set_many", tickers),
        Suite("events", "event bus: publish", events),
        Suite("writer", "batched ticker writes vs the reference approach", writer),
        Suite("orders", "order queue, order records, positions, trades", orders),
        Suite("lock", "locks and bot claims, uncontended", lock),
        Suite("processes", "heartbeats and the metadata hit path", processes),
    )
}
