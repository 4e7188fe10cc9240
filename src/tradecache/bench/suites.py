"""The project's benchmark suites: ours against raw redis-py (and others), per topic.

``tradecache bench``, ``benchmarks/run_all.py`` and each ``benchmarks/bench_<name>.py``
run these through :mod:`tradecache.bench.harness`. Every baseline does the same
Redis work as ours, with payloads encoded beforehand on the raw side.

* ``tickers``: ``set`` (one Lua call: HSET + INCRBY + PUBLISH) vs a pipelined
  HSET + PUBLISH, and vs the reference library's approach (HSET, SET
  ticker_time, PUBLISH: three sequential commands; its PINGs left out in its
  favour); ``set_many(1000)`` vs one raw pipeline, and vs the reference
  approach (no batch call: one ticker at a time); ``get`` vs HGET + msgspec
  decode, and vs the reference (PING + HGET + ``json.loads``).
* ``writer``: ``tickers.writer`` (100 tickers queued, one flush) and
  ``set_many(100)`` vs the reference approach, the writer vs one raw pipeline;
  skipped while the store has no writer.
* ``local_cache``: ``tickers.get`` on a cache connected with
  ``local_cache=True`` vs HGET + decode; skipped while that option does not exist.
* ``orders``: submit + consume + ack of a batch vs XADD + XREADGROUP + XACK;
  ``submit`` vs XADD; ``set_position`` (model, ccxt dict) vs HSET;
  ``update`` of one field vs HSET; ``trades.push_many(100)`` vs 100 pipelined XADD.
* ``processes``: ``heartbeat`` vs HSET + ZADD, vs the same work as a raw
  pipeline, vs the reference approach (GET + SET + HSET); metadata hits
  (``symbols.get``, ``exchanges.get``) vs GET + decode.
* ``events``: ``publish`` vs PUBLISH with one subscriber each reading;
  publish -> receive round trip, ``Subscription`` vs redis-py ``PubSub`` + queue.
* ``lock``: uncontended lock and bot claim vs SET NX PX + Lua release, lock vs
  redis-py's asyncio ``Lock``; handoff among 16 processes vs redis-py ``Lock``,
  and vs the floor: the same processes, hold and think passing a token round a
  ring with bare ``PUBLISH`` -> wake-up on raw sockets (what process scheduling
  alone costs here; no lock built on pub/sub hands off faster).
* ``breaker``: closed ``breaker.call`` / ``async with`` around a GET vs the
  bare GET, the CPU cost over a no-op, the failure path, against pybreaker
  with Redis storage (``dev`` extra); trip -> listener in another cache.
* ``idempotency``: ``idem.run`` first call (key, payload) vs SET NX PX + SET PX;
  a replay vs GET.
* ``cluster``: ticker set/get and a lock cycle with 1, 2, 4 client processes
  on a 3-master Cluster, ours and the raw Cluster client.

Example::

    from tradecache.bench import SUITES
    print(list(SUITES))
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import statistics
import time
from decimal import Decimal
from typing import Any, Final

import msgspec
import redis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.lock import Lock as RedisPyLock

from .._tasks import cancel_and_wait
from ..models import (
    Exchange,
    Market,
    Order,
    Position,
    Ticker,
    Trade,
    dec_hook,
    enc_hook,
    utc_now,
)
from .harness import Bench, Case, Goal, Probe, Row, at_least, at_most, percentile, suite
from .workers import OPS, Pool, handoff_stats

EXCHANGE: Final = "binance"
SYMBOL: Final = "BTC/USDT"
"""How the ``local_cache`` suite connects its reading cache (skipped if Settings lacks a key)."""

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
        bid_volume=1.5,
        ask=price + 0.5,
        ask_volume=2.0,
        last=price,
        open=price * 0.98,
        high=price * 1.01,
        low=price * 0.97,
        close=price,
        change=price * 0.02,
        percentage=2.0,
        base_volume=1234.5,
        quote_volume=price * 1234.5,
    )


def skipped(name: str, reason: str, goal: Goal | None = None) -> Probe:
    """A probe that only reports ``name`` as skipped, and why (its goal: not measured).

    Example: ``return [skipped("breaker vs pybreaker", "pip install pybreaker")]``
    """

    async def run() -> list[Row]:
        row = Row(suite="", case=name, unit="-", ours=None, note=f"skipped: {reason}")
        return [row.judged(goal)]

    return Probe(name, run)


# --- tickers ----------------------------------------------------------------------------------


@suite("tickers", "ticker store: set, set_many, get vs raw redis-py and the reference approach")
async def tickers(bench: Bench) -> list[Case | Probe]:
    """set, set_many and get against raw pipelines and the reference library's approach."""
    cache, client = bench.cache, bench.client
    size = 100 if bench.quick else 1000
    one = _ticker(SYMBOL, 60_000.0)
    payload = _encode(one)
    batch = [_ticker(f"C{i}/USDT", 100.0 + i) for i in range(size)]
    encoded = [(t.symbol, _encode(t)) for t in batch]
    raw_hash, raw_channel = bench.key(EXCHANGE), cache.keys.channel("bench-raw", EXCHANGE)
    ref_hash = bench.key("ref", "tickers", EXCHANGE)  # the reference's three keys
    ref_time = bench.key("ref", "ticker_time", EXCHANGE, SYMBOL)
    ref_channel = bench.key("ref", "ticker_updates", EXCHANGE, SYMBOL)
    ref_json = json.dumps(one.to_dict())
    await client.hset(raw_hash, SYMBOL, payload)
    await client.hset(ref_hash, SYMBOL, ref_json)
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

    async def ref_set() -> int:
        await client.hset(ref_hash, SYMBOL, ref_json)
        await client.set(ref_time, "1700000000.0")
        await client.publish(ref_channel, ref_json)
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

    async def ours_get() -> int:
        await cache.tickers.get(EXCHANGE, SYMBOL)
        return 1

    async def raw_get() -> int:
        _decode_ticker(await client.hget(raw_hash, SYMBOL))
        return 1

    async def ref_get() -> int:
        await client.ping()
        json.loads(await client.hget(ref_hash, SYMBOL))
        return 1

    ref = "reference: 3 commands per ticker"
    return [
        Case(
            "set vs HSET+PUBLISH pipeline",
            ours_set,
            raw_set,
            "tickers",
            goal=at_least(0.85, "raw redis-py"),
        ),
        Case("set vs reference", ours_set, ref_set, "tickers", ref),
        Case(f"set_many({size}) vs pipeline", ours_many, raw_many, "tickers"),
        Case(
            f"set_many({size}) vs reference",
            ours_many,
            ref_set,
            "tickers",
            ref,
            at_least(5, "reference"),
        ),
        Case(
            "get vs HGET + decode", ours_get, raw_get, "reads", goal=at_least(0.85, "raw redis-py")
        ),
        Case("get vs reference", ours_get, ref_get, "reads", "reference: PING + HGET + json"),
    ]


@suite("writer", "batched ticker writes (tickers.writer) vs the reference approach")
async def writer(bench: Bench) -> list[Case | Probe]:
    """The batched writer and set_many against the reference's per-ticker commands."""
    cache, client = bench.cache, bench.client
    goal = at_least(5, "reference")
    batch = [_ticker(f"W{i}/USDT", 100.0 + i) for i in range(100)]
    encoded = [(t.symbol, _encode(t)) for t in batch]
    raw_hash, raw_channel = bench.key(EXCHANGE), cache.keys.channel("bench-raw", EXCHANGE)
    # The reference library's keys: a hash per exchange, a time key and a channel per symbol.
    ref_hash = bench.key("ref", "tickers", EXCHANGE)
    ref_time = bench.key("ref", "ticker_time", EXCHANGE, SYMBOL)
    ref_channel = bench.key("ref", "ticker_updates", EXCHANGE, SYMBOL)
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

    ref = "reference: 3 commands per ticker"
    return [
        Case(
            "tickers.writer(100) vs reference 3 commands/ticker",
            ours_writer,
            reference,
            "tickers",
            ref,
            goal,
        ),
        Case(
            "tickers.set_many(100) vs reference 3 commands/ticker",
            ours_many,
            reference,
            "tickers",
            ref,
            goal,
        ),
        Case("tickers.writer(100) vs HSET+PUBLISH pipeline", ours_writer, raw_pipeline, "tickers"),
    ]


@suite("local_cache", "ticker reads served by the client-side cache (local_cache=True)")
async def local_cache(bench: Bench) -> list[Case | Probe]:
    """tickers.get served by the local cache (``local_cache=True``) vs HGET + decode."""
    name = "get (local cache) vs HGET + decode"
    goal = at_least(20, "raw HGET + decode")
    reader = await bench.connect(local_cache=True)
    client = bench.client
    one = _ticker(SYMBOL, 60_000.0)
    raw_hash = bench.key(EXCHANGE)
    await client.hset(raw_hash, SYMBOL, _encode(one))
    await bench.cache.tickers.set(one)

    async def ours() -> int:
        await reader.tickers.get(EXCHANGE, SYMBOL)
        return 1

    async def raw() -> int:
        _decode_ticker(await client.hget(raw_hash, SYMBOL))
        return 1

    return [Case(name, ours, raw, "reads", goal=goal)]


# --- the client ---------------------------------------------------------------------------------


@suite("client", "one command through the client tradecache builds vs a stock redis-py client")
async def client(bench: Bench) -> list[Case | Probe]:
    """GET and SET on our client vs ``redis.asyncio.Redis.from_url`` with the same socket timeout.

    The same commands on the same server; what differs is how the client is
    built: ours has a blocking pool, a small bounded retry, and bounds each
    write with ``asyncio.timeout`` where redis-py uses ``asyncio.wait_for``
    (which on Python 3.11 also drops cancellations; see ``connection.py``).
    """
    if not bench.url.startswith(("redis://", "rediss://", "unix://")):
        return [skipped("GET vs stock client", "a stock client needs a redis(s):// or unix:// URL")]
    timeout = bench.cache.settings.socket_timeout
    stock = Redis.from_url(bench.url, socket_timeout=timeout)
    # The same pool as ours, so that the write path is the one difference left.
    pool = BlockingConnectionPool.from_url(bench.url, socket_timeout=timeout)
    stock_blocking = Redis.from_pool(pool)
    bench.stack.push_async_callback(stock.aclose)
    bench.stack.push_async_callback(stock_blocking.aclose)
    ours_client = bench.client
    key = bench.key("client")
    value = b"x" * 64
    await ours_client.set(key, value)
    baseline = "stock redis-py client"

    async def ours_get() -> int:
        await ours_client.get(key)
        return 1

    async def stock_get() -> int:
        await stock.get(key)
        return 1

    async def stock_blocking_get() -> int:
        await stock_blocking.get(key)
        return 1

    async def ours_set() -> int:
        await ours_client.set(key, value)
        return 1

    async def stock_set() -> int:
        await stock.set(key, value)
        return 1

    return [
        Case("GET vs stock client", ours_get, stock_get, "commands", baseline),
        Case("SET vs stock client", ours_set, stock_set, "commands", baseline),
        Case(
            "GET vs stock client with a blocking pool",
            ours_get,
            stock_blocking_get,
            "commands",
            "stock redis-py client, BlockingConnectionPool",
        ),
    ]


# --- orders -----------------------------------------------------------------------------------


def _order(n: int) -> dict[str, Any]:
    return {
        "id": f"o{n}",
        "clientOrderId": f"c{n}",
        "symbol": SYMBOL,
        "side": "buy",
        "type": "limit",
        "amount": "0.01",
        "price": "60000.5",
        "timestamp": 1_700_000_000_000,
    }


def _position(n: int) -> dict[str, Any]:
    return {
        "symbol": f"S{n % 50}/USDT:USDT",
        "side": "long",
        "contracts": "0.5",
        "entryPrice": "60000",
        "markPrice": "60100",
        "unrealizedPnl": "50",
        "leverage": "10",
        "timestamp": 1_700_000_000_000,
    }


@suite("orders", "order queue, order records, positions, trades")
async def orders(bench: Bench) -> list[Case | Probe]:
    """The order queue cycle, submit, update, set_position and push_many."""
    cache, client = bench.cache, bench.client
    codec = cache.codec
    size = 10 if bench.quick else 100
    counter = itertools.count()
    queue, only = bench.key("queue"), bench.key("submit")
    order_hash, positions, trades_stream = bench.key("order"), bench.key("pos"), bench.key("tr")
    await client.xgroup_create(queue, "bench", id="0", mkstream=True)
    await cache.orders.save(_order(0), exchange=EXCHANGE)
    position = Position.from_ccxt(_position(0))
    position_bytes = codec.encode(position)
    trades = [
        Trade(symbol=SYMBOL, price=Decimal("60000.1"), amount=Decimal("0.002"), id=str(i))
        for i in range(100)
    ]
    trade_bytes = [codec.encode(t) for t in trades]

    async def ours_cycle() -> int:
        for _ in range(size):
            await cache.orders.submit(_order(next(counter)), exchange=EXCHANGE)
        async for delivery in cache.orders.consume("bench", "w", count=size, block=0):
            await delivery.ack()
        return size

    async def raw_cycle() -> int:
        for _ in range(size):
            model = Order.from_ccxt(_order(next(counter)), exchange=EXCHANGE)
            await client.xadd(queue, {"d": codec.encode(model)})
        for _, entries in await client.xreadgroup("bench", "w", {queue: ">"}, count=size):
            for entry_id, fields in entries:
                codec.decode(fields[b"d"], Order)
                await client.xack(queue, "bench", entry_id)
        return size

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

    async def ours_position_ccxt() -> int:
        await cache.accounts.set_position("bench", _position(next(counter)))
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
        Case(
            f"submit+consume+ack ({size}) vs XADD+XREADGROUP+XACK", ours_cycle, raw_cycle, "orders"
        ),
        Case("submit vs XADD", ours_submit, raw_submit, "orders"),
        Case("update (1 field) vs HSET", ours_update, raw_update, "updates"),
        Case("set_position(Position) vs HSET", ours_position, raw_position, "writes"),
        Case("set_position(ccxt dict) vs HSET", ours_position_ccxt, raw_position, "writes"),
        Case("trades.push_many(100) vs pipelined XADD", ours_push, raw_push, "trades"),
    ]


# --- processes and metadata -------------------------------------------------------------------

MARKET: Final = {
    "id": "BTCUSDT",
    "symbol": SYMBOL,
    "base": "BTC",
    "quote": "USDT",
    "type": "spot",
    "spot": True,
    "active": True,
    "precision": {"amount": 0.00001, "price": 0.01},
    "limits": {"amount": {"min": 0.00001, "max": 9000.0}, "cost": {"min": 5.0}},
    "taker": 0.001,
    "maker": 0.001,
}


@suite("processes", "heartbeats and the metadata hit path")
async def processes(bench: Bench) -> list[Case | Probe]:
    """heartbeat vs raw pipelines and the reference approach; metadata hits vs GET + decode."""
    cache, client, keys = bench.cache, bench.client, bench.cache.keys
    info = await cache.processes.register("tick", "binance:BTC/USDT", {"ticks": 0})
    rid, counter = info.id, itertools.count()
    record, params = bench.key("process"), bench.key("params")
    live, by_kind, by_component = bench.key("live"), bench.key("kind"), bench.key("component")
    legacy_data, legacy_active = bench.key("legacy", "data"), bench.key("legacy", "active")
    await client.set(legacy_data, json.dumps(info.to_dict()))
    await cache.symbols.put(MARKET, exchange=EXCHANGE)
    await cache.exchanges.put(Exchange(id=EXCHANGE, name="Binance", has={"watchTicker": True}))
    symbol_key, exchange_key = keys.symbol_meta(EXCHANGE, SYMBOL), keys.exchange_meta(EXCHANGE)

    async def ours() -> int:
        await cache.processes.heartbeat(rid, status="running", params={"ticks": next(counter)})
        return 1

    async def raw_minimal() -> int:
        now = time.time_ns() // 1_000_000
        pipe = client.pipeline(transaction=False)
        pipe.hset(record, mapping={"updated": now, "status": "running"})
        pipe.zadd(live, {rid: now})
        await pipe.execute()
        return 1

    async def raw_same_work() -> int:
        now = time.time_ns() // 1_000_000
        pipe = client.pipeline(transaction=False)
        pipe.hset(record, mapping={"updated": now, "status": "running"})
        pipe.hset(params, "ticks", json.dumps(next(counter)))
        for index in (live, by_kind, by_component):
            pipe.zadd(index, {rid: now})
        await pipe.execute()
        return 1

    async def reference() -> int:
        data = json.loads(await client.get(legacy_data))
        data["status"] = "running"
        data.setdefault("params", {})["ticks"] = next(counter)
        data["updated"] = time.time()
        await client.set(legacy_data, json.dumps(data), ex=86400)
        await client.hset(legacy_active, rid, str(data["updated"]))
        return 1

    async def ours_symbol() -> int:
        await cache.symbols.get(EXCHANGE, SYMBOL)
        return 1

    async def raw_symbol() -> int:
        cache.codec.decode(await client.get(symbol_key), Market)
        return 1

    async def ours_exchange() -> int:
        await cache.exchanges.get(EXCHANGE)
        return 1

    async def raw_exchange() -> int:
        cache.codec.decode(await client.get(exchange_key), Exchange)
        return 1

    same, ref = "raw same-work pipeline (HSET x2, ZADD x3)", "reference: GET + SET + HSET"
    return [
        Case("heartbeat vs HSET+ZADD pipeline", ours, raw_minimal, "beats"),
        Case("heartbeat vs the same work, raw", ours, raw_same_work, "beats", same),
        Case("heartbeat vs reference", ours, reference, "beats", ref),
        Case("symbols.get (hit) vs GET + decode", ours_symbol, raw_symbol, "reads"),
        Case("exchanges.get (hit) vs GET + decode", ours_exchange, raw_exchange, "reads"),
    ]


# --- events -----------------------------------------------------------------------------------


@suite("events", "event bus: publish throughput and publish -> receive latency")
async def events(bench: Bench) -> list[Case | Probe]:
    """publish vs PUBLISH (a subscriber reading each), and the publish -> receive round trip."""
    cache, client = bench.cache, bench.client
    payload = {"order": "o-123", "symbol": SYMBOL, "qty": "0.01", "price": "60000.5"}
    data = msgspec.json.encode(payload)
    channel = cache.keys.channel("bench-raw", "events")
    sub = await cache.events.subscribe("bench")
    bench.stack.push_async_callback(sub.close)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    bench.stack.push_async_callback(pubsub.aclose)
    received: asyncio.Queue[Any] = asyncio.Queue()

    async def reader() -> None:
        async for message in pubsub.listen():
            received.put_nowait(message)

    task = asyncio.create_task(reader())
    bench.stack.push_async_callback(cancel_and_wait, task)

    async def ours() -> int:
        await cache.events.publish("bench", payload)
        return 1

    async def raw() -> int:
        await client.publish(channel, data)
        return 1

    async def ours_round_trip() -> int:
        await cache.events.publish("bench", payload)
        async with asyncio.timeout(10):
            await anext(sub)
        return 1

    async def raw_round_trip() -> int:
        await client.publish(channel, data)
        async with asyncio.timeout(10):
            await received.get()
        return 1

    async def drain() -> None:  # the throughput slices leave messages queued
        await asyncio.sleep(0.05)
        while sub.pending:
            await anext(sub)
        while not received.empty():
            received.get_nowait()

    return [
        Case("publish vs PUBLISH (1 subscriber)", ours, raw, "messages", settle=drain),
        Case(
            "publish -> receive vs redis-py PubSub",
            ours_round_trip,
            raw_round_trip,
            "messages",
            settle=drain,
        ),
    ]


# --- lock -------------------------------------------------------------------------------------


@suite("lock", "locks and bot claims: uncontended, and handed off among 16 processes")
async def lock(bench: Bench) -> list[Case | Probe]:
    """Uncontended cycles vs raw and redis-py's Lock; the 16-process handoff vs redis-py's
    Lock and vs the floor (a bare PUBLISH ring of the same processes)."""
    cache, client = bench.cache, bench.client
    release = client.register_script(_RELEASE)
    key = bench.key("lock")
    ours_lock = cache.lock("bench", ttl=10)
    redispy = RedisPyLock(client, bench.key("redis-py-lock"), timeout=10, thread_local=False)

    async def ours() -> int:
        async with ours_lock:
            pass
        return 1

    async def claim() -> int:
        async with cache.bots.claim(EXCHANGE, SYMBOL, "bench-bot", ttl=30):
            pass
        return 1

    async def raw() -> int:
        token = os.urandom(16).hex()
        await client.set(key, token, nx=True, px=30_000)
        await release(keys=[key], args=[token])
        return 1

    async def redis_py() -> int:
        async with redispy:
            pass
        return 1

    procs = 4 if bench.quick else 16
    grants, rounds = (3, 1) if bench.quick else (30, 3)
    hold, think = 0.002, 0.005

    async def handoff() -> list[Row]:
        heads: dict[str, tuple[str, Any]] = {
            "ours": ("lock", "ours"),
            "redis-py": ("lock", "redis-py"),
            "floor": ("ring", procs),
        }
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in heads}

        def measure() -> None:  # the three interleaved, round after round, in the same processes
            with Pool(procs, bench.url, bench.namespace) as pool:
                for i in range(rounds):
                    for kind, results in runs.items():
                        start_at = time.monotonic() + 0.2 + 0.01 * procs
                        command = (*heads[kind], f"handoff-{i}", grants, hold, think, start_at)
                        results.append(handoff_stats(pool.run(procs, command)))

        await asyncio.to_thread(measure)
        med = {
            kind: {k: statistics.median(r[k] for r in values) for k in values[0]}
            for kind, values in runs.items()
        }
        ours_m, theirs, floor = med["ours"], med["redis-py"], med["floor"]
        shape = f"{procs} processes x {grants} grants (hold 2 ms, think 5 ms)"

        def compared(
            case: str, baseline: str, other: dict[str, float], extra: dict[str, float], note: str
        ) -> Row:
            return Row(
                suite="",
                case=f"{case}, {shape}",
                unit="grants",
                ours=ours_m["throughput"],
                raw=other["throughput"],
                ratio=ours_m["throughput"] / other["throughput"],
                rounds=rounds,
                baseline=baseline,
                ours_p50_us=ours_m["gap_p50"] * 1000,
                ours_p99_us=ours_m["gap_p99"] * 1000,
                raw_p50_us=other["gap_p50"] * 1000,
                raw_p99_us=other["gap_p99"] * 1000,
                extra=extra,
                note=note,
            )

        row = compared(
            "handoff",
            "redis-py Lock",
            theirs,
            {
                "wait p99 ms ours": ours_m["wait_p99"],
                "wait p99 ms redis-py": theirs["wait_p99"],
                "wait max ms ours": ours_m["wait_max"],
                "wait max ms redis-py": theirs["wait_max"],
                "cpu ms/grant ours": ours_m["cpu_per_grant"],
                "cpu ms/grant redis-py": theirs["cpu_per_grant"],
                "overlapping grants": ours_m["overlaps"] + theirs["overlaps"],
            },
            "p50/p99: handoff gap, one process's release to another's grant",
        )
        goal = at_most("ours_p99_us", 5000, f"handoff p99 <= 5 ms ({procs} processes)")
        over_floor = compared(
            "handoff vs the floor",
            "floor: bare PUBLISH ring, raw sockets",
            floor,
            {
                "gap p99 ms over the floor": ours_m["gap_p99"] - floor["gap_p99"],
                "cpu ms/grant ours": ours_m["cpu_per_grant"],
                "cpu ms/grant floor": floor["cpu_per_grant"],
                "wait p99 ms floor": floor["wait_p99"],
                "overlapping grants": floor["overlaps"],
            },
            "the floor: the same processes pass a token round a ring, PUBLISH -> "
            "wake-up, one PING per grant, no library: what process scheduling alone costs",
        )
        return [row.judged(goal), over_floor]

    raw_name = "raw SET NX PX + Lua release"
    return [
        Case("lock acquire+release vs raw", ours, raw, "cycles", raw_name),
        Case("lock acquire+release vs redis-py Lock", ours, redis_py, "cycles", "redis-py Lock"),
        Case("bots.claim acquire+release vs raw", claim, raw, "cycles", raw_name),
        Probe("handoff", handoff),
    ]


# --- breaker and idempotency ------------------------------------------------------------------


class _Boom(Exception):
    """The failing downstream."""


@suite("breaker", "circuit breaker: closed-path overhead, failures, pybreaker, propagation")
async def breaker(bench: Bench) -> list[Case | Probe]:
    """Guarded vs unguarded calls, vs pybreaker with Redis storage, and trip propagation."""
    cache, client = bench.cache, bench.client
    key = bench.key("breaker-get")
    await client.set(key, "v")
    count = cache.breaker("bench-count", failure_threshold=10**9)
    rate = cache.breaker("bench-rate", failure_rate=0.99, minimum_calls=10**9)
    await count.sync()
    await rate.sync()

    async def get() -> int:
        await client.get(key)
        return 1

    async def noop() -> int:
        return 1

    async def fail() -> int:
        raise _Boom

    async def unguarded_fail() -> int:
        with contextlib.suppress(_Boom):
            await fail()
        return 1

    async def guarded_fail() -> int:
        with contextlib.suppress(_Boom):
            await count.call(fail)
        return 1

    async def guarded_with() -> int:
        async with count:
            await client.get(key)
        return 1

    async def call_get() -> int:
        return await count.call(get)

    async def rate_get() -> int:
        return await rate.call(get)

    async def call_noop() -> int:
        return await count.call(noop)

    bare = "unguarded GET"
    cases: list[Case | Probe] = [
        Case("breaker.call(GET) vs GET", call_get, get, "calls", bare),
        Case("async with breaker: GET vs GET", guarded_with, get, "calls", bare),
        Case("failure-rate breaker.call(GET) vs GET", rate_get, get, "calls", bare),
        Case("breaker.call(no-op) vs no-op", call_noop, noop, "calls", "unguarded no-op"),
        Case(
            "breaker.call(failing) vs failing", guarded_fail, unguarded_fail, "calls", "unguarded"
        ),
    ]
    cases += await _pybreaker(bench, call_get, guarded_fail, key)
    cases.append(Probe("propagation", lambda: _propagation(bench)))
    return cases


async def _pybreaker(
    bench: Bench, call_get: Any, guarded_fail: Any, key: str
) -> list[Case | Probe]:
    name = "breaker.call(GET) vs pybreaker.call(sync GET)"
    try:
        import pybreaker
    except ImportError:  # pragma: no cover - pybreaker is in the dev extra
        return [skipped(name, "pip install pybreaker (the dev extra)")]
    sync = redis.Redis.from_url(bench.url)
    bench.stack.callback(sync.close)
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, sync, namespace=bench.key("pybreaker")
    )
    theirs = pybreaker.CircuitBreaker(fail_max=10**9, reset_timeout=30, state_storage=storage)

    def sync_get() -> None:
        sync.get(key)

    def sync_fail() -> None:
        raise _Boom

    async def pyb_get() -> int:
        theirs.call(sync_get)
        return 1

    async def pyb_fail() -> int:
        with contextlib.suppress(_Boom):
            theirs.call(sync_fail)
        return 1

    base = "pybreaker + CircuitRedisStorage"
    return [
        Case(name, call_get, pyb_get, "calls", base),
        Case(
            "breaker.call(failing) vs pybreaker.call(failing)",
            guarded_fail,
            pyb_fail,
            "calls",
            base,
        ),
    ]


async def _propagation(bench: Bench) -> list[Row]:
    """trip/reset in one cache -> the listener of another cache fires: latency."""
    other = await bench.connect()
    mine = bench.cache.breaker("bench-push", reset_timeout=3600)
    theirs = other.breaker("bench-push", reset_timeout=3600)
    arrived = asyncio.Event()
    at: list[float] = []

    def listener(_: Any) -> None:
        at.append(time.perf_counter())
        arrived.set()

    theirs.on_change(listener)
    await mine.sync()
    await theirs.sync()
    n = 10 if bench.quick else 200
    delays = []
    started_all = time.perf_counter()
    for i in range(n):
        arrived.clear()
        started = time.perf_counter()
        await (mine.trip() if i % 2 == 0 else mine.reset())
        async with asyncio.timeout(10):
            await arrived.wait()
        delays.append((at[-1] - started) * 1e6)
    elapsed = time.perf_counter() - started_all
    return [
        Row(
            suite="",
            case="trip/reset -> listener in another cache",
            unit="transitions",
            ours=n / elapsed,
            rounds=1,
            baseline="-",
            ours_p50_us=percentile(delays, 50),
            ours_p99_us=percentile(delays, 99),
            note="no baseline: pybreaker does not propagate",
        )
    ]


@suite("idempotency", "idempotent runs: first call and replay")
async def idempotency(bench: Bench) -> list[Case | Probe]:
    """idem.run (key, payload) vs SET NX PX + SET PX; a replay vs GET."""
    cache, client = bench.cache, bench.client
    idem = cache.idempotency("bench", ttl=120, in_flight_ttl=30)
    ids = itertools.count()
    encoded = cache.codec.encode({"id": "ex-1", "status": "open"})
    done_key = bench.key("idem", "done")
    await client.set(done_key, encoded)

    async def result() -> dict[str, str]:
        return {"id": "ex-1", "status": "open"}

    await idem.run("done", result)

    async def raw_first() -> int:
        key = bench.key("idem", str(next(ids)))
        await client.set(key, b"in-flight", nx=True, px=30_000)
        await client.set(key, encoded, px=120_000)
        return 1

    async def ours_key() -> int:
        await idem.run(f"k{next(ids)}", result)
        return 1

    async def ours_payload() -> int:
        await idem.run({"symbol": SYMBOL, "side": "buy", "amount": "1", "n": next(ids)}, result)
        return 1

    async def raw_replay() -> int:
        await client.get(done_key)
        return 1

    async def ours_replay() -> int:
        await idem.run("done", result)
        return 1

    first = "raw SET NX PX + SET PX"
    return [
        Case("run(key) first call vs raw", ours_key, raw_first, "runs", first),
        Case("run(payload dict) first call vs raw", ours_payload, raw_first, "runs", first),
        Case("run(key) replay vs GET", ours_replay, raw_replay, "runs", "raw GET"),
    ]


REPORTED: Final = Goal("Cluster scaling curve reported (1, 2, 4 processes)", "ours", minimum=0)

# --- cluster ----------------------------------------------------------------------------------


@suite("cluster", "3-master Cluster: throughput with 1, 2, 4 client processes")
async def cluster(bench: Bench) -> list[Case | Probe]:
    """Ticker set/get and a lock cycle from 1, 2, 4 processes, ours and the raw Cluster client."""
    counts = (1, 2, 4)
    rounds = 1 if bench.quick else max(1, bench.rounds // 3)
    duration = 0.1 if bench.quick else max(1.0, bench.slice_s * 5)
    units = {"tickers.set": "tickers", "tickers.get": "reads", "lock": "cycles"}

    async def scaling() -> list[Row]:
        url = await bench.cluster_url()
        namespace = f"{bench.namespace}-cluster"
        rates: dict[tuple[int, str, str], list[float]] = {}
        calls: dict[tuple[int, str, str], list[float]] = {}

        def measure() -> None:
            with Pool(max(counts), url, namespace) as pool:
                for index, n, op in itertools.product(range(rounds), counts, OPS):
                    for side in ("ours", "raw") if index % 2 == 0 else ("raw", "ours"):
                        start_at = time.monotonic() + 0.1
                        replies = pool.run(n, ("ops", op, side, start_at, duration))
                        done = sum(count for count, _ in replies)
                        rates.setdefault((n, op, side), []).append(done / duration)
                        samples = calls.setdefault((n, op, side), [])
                        samples += [us for _, latencies in replies for us in latencies]

        try:
            await asyncio.to_thread(measure)
        finally:
            await _clean_cluster(url, namespace)
        rows = []
        for op, n in itertools.product(OPS, counts):
            ours, raw = rates[n, op, "ours"], rates[n, op, "raw"]
            ratios = [a / b for a, b in zip(ours, raw, strict=True)]
            one_ours = statistics.median(rates[1, op, "ours"])
            one_raw = statistics.median(rates[1, op, "raw"])
            row = Row(
                suite="",
                case=f"{op}, {n} process{'es' if n > 1 else ''}",
                unit=units[op],
                ours=statistics.median(ours),
                raw=statistics.median(raw),
                ratio=statistics.median(ratios),
                low=percentile(ratios, 10),
                high=percentile(ratios, 90),
                rounds=rounds,
                baseline="raw redis-py RedisCluster",
                extra={
                    "processes": n,
                    "ours scaling vs 1 process": statistics.median(ours) / one_ours,
                    "raw scaling vs 1 process": statistics.median(raw) / one_raw,
                },
            )
            last = op == OPS[0] and n == counts[-1]
            rows.append(row.judged(REPORTED) if last else row)
        return rows

    return [Probe("scaling", scaling)]


async def _clean_cluster(url: str, namespace: str) -> None:
    from ..cache import Cache
    from ..testing.selfcheck import unlink_prefix

    async with Cache.connect(url, namespace=namespace) as cache:
        await unlink_prefix(cache.client, cache.keys.prefix)
