"""Migration from fullon_cache: the call-by-call mapping (:data:`MAPPING`) and the guide.

``tests/test_docs.py`` parses every "tradecache" cell of :data:`MAPPING` as
Python and checks it against the real API (attributes and call signatures).
"""

from __future__ import annotations

__all__ = ["MAPPING", "migration_guide"]

#: ``{fullon_cache class: [(its call, the tradecache equivalent, what changes), ...]}``.
#: The equivalent is Python (``...`` stands for your values), or "" when there is none.
MAPPING: dict[str, list[tuple[str, str, str]]] = {
    "BaseCache": [
        (
            "async with TickCache() as c: ... (a client + PING per call)",
            'cache = await Cache.connect(url, namespace="prod")',
            "one Cache per process, shared by all tasks; no PING before each command",
        ),
        ("close()", "await cache.close()", "or `async with Cache.connect(...) as cache`"),
        (
            "ping()",
            "await cache.ping()",
            "returns the round-trip time in seconds; raises ConnectionLost",
        ),
        (
            "get/set/hget/hset/lpush/xadd/... (raw commands)",
            "await cache.client.get(key)",
            "prefer a store; build keys with cache.keys.key(kind, tag, ...)",
        ),
        (
            "publish(channel, message)",
            "await cache.events.publish(topic, payload)",
            "returns the sequence number, not the receiver count; kept in a backlog",
        ),
        (
            "subscribe(*channels) (async gen)",
            "await cache.events.subscribe(*topics)",
            "returns once subscribed; yields Event and Gap; resubscribes and backfills",
        ),
        (
            "pipeline()",
            "cache.client.pipeline(transaction=False)",
            "every store write is already one round trip",
        ),
        (
            "scan_keys / delete_pattern / flushdb",
            "",
            "none by design: stores keep indexes; tests get isolated namespaces",
        ),
    ],
    "ProcessCache": [
        (
            "register_process(process_type, component, params, message, status) -> str",
            "info = await cache.processes.register(kind, component, params, message=...)",
            "returns a ProcessInfo (use info.id); record, params and indexes in one script",
        ),
        (
            "update_process(process_id, status, message, params) -> bool",
            "await cache.processes.heartbeat(process_id, status=..., message=..., params=...)",
            "atomic, params merged per field; NotFound for an unknown id (was False)",
        ),
        (
            "get_process(process_id) -> dict | None",
            "await cache.processes.get(process_id)",
            "a typed ProcessInfo",
        ),
        (
            "get_active_processes(process_type, component, since_minutes=5)",
            "await cache.processes.active(kind=..., component=..., within=timedelta(minutes=5))",
            "one range query on a time index (was N+1 reads); newest first",
        ),
        (
            "stop_process(process_id, message)",
            "await cache.processes.stop(process_id, message=...)",
            "NotFound for an unknown id; the record stays readable for process_retention",
        ),
        (
            "cleanup_stale_processes(stale_minutes=30) -> int",
            "await cache.processes.cleanup_stale(timedelta(minutes=30))",
            "server clock, atomic",
        ),
        (
            "get_component_status(component)",
            "await cache.processes.latest(component)",
            "the newest heartbeat of the component",
        ),
        (
            "get_system_health() -> dict",
            "await cache.processes.health()",
            "a SystemHealth: healthy, total, by_kind, by_status, stale, errored",
        ),
        (
            "broadcast_message(process_type, message, data) -> int",
            "await cache.processes.broadcast(kind, message, data)",
            "returns a sequence number; receive with cache.processes.subscribe(kind)",
        ),
        ("get_metrics()", "cache.stats()", "per-operation counts and latency percentiles"),
        (
            "delete_from_top(component)",
            "[await cache.processes.stop(p.id) for p in await cache.processes.list(component=c)]",
            "every registered process of the component, not only the recent ones",
        ),
        (
            "get_top(deltatime, comp)",
            "await cache.processes.active(kind=..., within=...)",
            "typed records",
        ),
        ("get_process_history(component, limit)", "", "was a stub returning []"),
    ],
    "TickCache": [
        (
            "set_ticker(tick) -> bool",
            'await cache.tickers.set(ticker, exchange="binance")',
            "store + publish in one round trip (was 3 commands + 3 PINGs); returns the Ticker",
        ),
        (
            "set_tickers_batch (missing)",
            'await cache.tickers.set_many(tickers, exchange="binance")',
            "one pipelined round trip; all validated before any is written",
        ),
        (
            "get_ticker(symbol, exchange)",
            "await cache.tickers.get(exchange, symbol)",
            "exchange first; max_age= turns stale tickers into misses",
        ),
        (
            "get_next_ticker(symbol, exchange)",
            "await cache.tickers.next(exchange, symbol, timeout=5)",
            "always the next update, never the stored value; WaitTimeout (was: wait forever)",
        ),
        (
            "get_any_ticker(symbol)",
            'await cache.tickers.price(symbol, exchanges=["binance", "kraken"])',
            "your preference order, or every exchange with tickers (no hard-coded list)",
        ),
        (
            "get_all_tickers(exchange_name) -> list",
            "await cache.tickers.get_all(exchange)",
            "a dict by symbol",
        ),
        (
            "get_all_tickers() (5 hard-coded exchanges)",
            "await cache.tickers.exchanges()",
            "every exchange that has tickers, from an index",
        ),
        ("delete_ticker(symbol)", "await cache.tickers.delete(exchange, symbol)", ""),
        (
            "delete_exchange_tickers(exchange_name) / del_exchange_ticker",
            "await cache.tickers.delete_exchange(exchange)",
            "one round trip",
        ),
        (
            "update_ticker(symbol, exchange, data) (always False)",
            "await cache.tickers.set({**data, 'symbol': symbol}, exchange=exchange)",
            "",
        ),
        (
            "get_price(symbol, exchange) (<= 0.4.3)",
            "await cache.tickers.price(symbol, exchanges=[exchange])",
            "a float or None",
        ),
        (
            "stream_ticker_updates (probed, missing)",
            "cache.tickers.watch(exchange, symbols)",
            "push, no polling",
        ),
    ],
    "AccountCache": [
        (
            "upsert_positions(ex_id, positions)",
            "await cache.accounts.set_positions(account, positions, replace=True)",
            "atomic replacement; one field per symbol",
        ),
        (
            "upsert_position(position)",
            "await cache.accounts.set_position(account, position)",
            "writes that symbol's field only: no read-modify-write, no lost update",
        ),
        (
            "upsert_user_account(ex_id, account)",
            "await cache.accounts.set_balances(account, balances)",
            "ccxt balance structure or Balance objects; Decimal money",
        ),
        (
            "get_position(symbol, ex_id)",
            "await cache.accounts.get_position(account, symbol)",
            "None on a miss (was an empty Position)",
        ),
        (
            "get_positions(ex_id) (ignored ex_id)",
            "await cache.accounts.positions(account)",
            "only that account's positions",
        ),
        (
            "get_all_positions() -> list",
            "await cache.accounts.all_positions()",
            "{account: [Position]}, from an index",
        ),
        (
            "get_full_account(ex_id, currency) -> dict",
            "await cache.accounts.get_balance(account, currency)",
            "a Balance or None",
        ),
        (
            "get_all_accounts()",
            "await cache.accounts.get_balances(account)",
            "{currency: Balance} per account",
        ),
        (
            "clean_positions()",
            "await cache.accounts.set_positions(account, [], replace=True)",
            "per account",
        ),
    ],
    "OrdersCache": [
        (
            "push_open_order(oid, local_oid) (a list)",
            'await cache.orders.submit(order, exchange="binance")',
            "a Stream entry; idempotent by client_order_id; KeyReuse on a conflicting repeat",
        ),
        (
            "pop_open_order(oid) (BLPOP, 1 s)",
            'cache.orders.consume("executors", "executor-1", block=1)',
            "async iterator of Delivery; ack() when done; reclaim() a dead executor's",
        ),
        (
            "save_order_data(ex_id, order) / save_order(exchange, order)",
            "await cache.orders.save(order, exchange=exchange)",
            "merges fields; the creation timestamp is never overwritten",
        ),
        (
            "update_order(exchange, order)",
            'await cache.orders.update(exchange, order_id, status="closed")',
            "atomic merge in Lua; NotFound for an unknown order",
        ),
        (
            "get_order_status(ex_id, oid) / get_order(exchange, order_id)",
            "await cache.orders.get(exchange, order_id)",
            "an Order or None",
        ),
        (
            "get_orders(ex_id)",
            "await cache.orders.list(exchange, status=None)",
            "from an index; expired orders are gone",
        ),
        ("get_full_accounts(ex_id)", "await cache.accounts.get_balances(account)", ""),
    ],
    "BotCache": [
        (
            "block_exchange(ex_id, symbol, bot_id) -> bool",
            "cache.bots.claim(exchange, symbol, bot_id, ttl=30)",
            "`async with` it: exclusive, renewed, expires if the bot dies; Claimed if taken",
        ),
        (
            "unblock_exchange(ex_id, symbol)",
            "await claim.release()",
            "or leave `async with`; only the owner can release",
        ),
        (
            "is_blocked(ex_id, symbol) -> str",
            "await cache.bots.holder(exchange, symbol)",
            "bot id or None; ConnectionLost when Redis is down (was '' = fail open)",
        ),
        (
            "get_blocks() -> list[dict]",
            "await cache.bots.claims()",
            "ClaimInfo(exchange, symbol, bot_id, fence, ttl)",
        ),
        (
            "mark_opening_position(ex_id, symbol, bot_id)",
            "await cache.bots.mark_opening(exchange, symbol, bot_id, ttl=60)",
            "owned and expiring; another bot's mark raises Claimed",
        ),
        (
            "is_opening_position(ex_id, symbol)",
            "await cache.bots.is_opening(exchange, symbol)",
            "opening_by() tells who",
        ),
        (
            "unmark_opening_position(ex_id, symbol)",
            "await cache.bots.unmark_opening(exchange, symbol, bot_id)",
            "owner only",
        ),
        (
            "update_bot(bot_id, bot)",
            "await cache.bots.set_status(bot_id, mapping)",
            "stamped with the time; the caller's mapping is not mutated",
        ),
        ("get_bots() -> dict", "await cache.bots.all_status()", "{bot_id: BotStatus}"),
        ("del_bot(bot_id)", "await cache.bots.delete_status(bot_id)", ""),
    ],
    "TradesCache": [
        (
            "push_trade_list(symbol, exchange, trade) / push_trade(exchange, trade)",
            "await cache.trades.push(trade, exchange=exchange)",
            "a Stream entry (its id is the server time of the push)",
        ),
        (
            "(many trades)",
            "await cache.trades.push_many(trades, exchange=exchange)",
            "one round trip, all validated first",
        ),
        (
            "get_trades(symbol, exchange) (LRANGE + DEL: destructive)",
            'cache.trades.consume("candles", "w1", exchange, symbol)',
            "consumers: at least once, with ack and reclaim; nothing lost in between",
        ),
        (
            "get_trades for display",
            "await cache.trades.recent(exchange, symbol, 100)",
            "never consumes",
        ),
        (
            "update_trade_status(key) / get_trade_status(key)",
            "await cache.trades.last_update(exchange, symbol)",
            "read from the stream itself: no status key to keep",
        ),
        (
            "push_user_trade(uid, exchange, trade) / push_my_trades_list",
            "await cache.trades.push_user_trade(account, trade, exchange=exchange)",
            "",
        ),
        (
            "pop_user_trade(uid, exchange, timeout) / pop_my_trade",
            'cache.trades.consume_user_trades("positions", "w1", account, block=5)',
            "at least once; a timeout never silently ends after 5 s",
        ),
    ],
    "OHLCVCache": [
        (
            "update_ohlcv_bars(symbol, timeframe, bars)",
            "await cache.ohlcv.upsert(exchange, symbol, timeframe, bars)",
            "keyed by exchange too; upsert by open time (no duplicates); capped",
        ),
        (
            "get_latest_ohlcv_bars(symbol, timeframe, count)",
            "await cache.ohlcv.latest(exchange, symbol, timeframe, count)",
            "Candle objects (candle.to_list() for rows); count <= 0 is a ValidationError",
        ),
        (
            "stream_ohlcv_updates (probed, missing)",
            "cache.ohlcv.watch(exchange, symbol, timeframe)",
            "push",
        ),
    ],
    "ExchangeCache (<= 0.4.3)": [
        (
            "get_exchange(ex_id) / get_exchange_by_name(name)",
            "await cache.exchanges.get(exchange)",
            "read-through from your loader",
        ),
        (
            "get_cat_exchanges() / get_exchanges(user_id)",
            "await cache.exchanges.list()",
            "exchanges are ccxt ids; per-user accounts are your application's",
        ),
        (
            "add_exchange / update_exchange",
            "await cache.exchanges.put(exchange)",
            "write your database first",
        ),
        ("delete_exchange(ex_id)", "await cache.exchanges.delete(exchange)", ""),
        ("invalidate_cache()", "await cache.exchanges.invalidate()", ""),
        (
            "push_ws_error(error, ex_id) / pop_ws_error",
            'await cache.events.publish("ws-errors", {"exchange": exchange, "error": error})',
            "subscribe to the topic; nothing lost silently",
        ),
    ],
    "SymbolCache (<= 0.4.3)": [
        (
            "get_symbol(symbol, exchange_name=...)",
            "await cache.symbols.get(exchange, symbol)",
            "Market | None, loaded once across processes",
        ),
        (
            "get_symbols(exchange) / get_symbols_by_ex_id",
            "await cache.symbols.list(exchange)",
            "sorted Market objects",
        ),
        ("get_symbols_for_exchange(exchange)", "await cache.symbols.symbols(exchange)", ""),
        ("add_symbol / update_symbol", "await cache.symbols.put(market, exchange)", ""),
        (
            "delete_symbol(symbol)",
            "await cache.symbols.delete(exchange, symbol)",
            "also deletes its ticker, atomically",
        ),
        ("symbol_exists(...)", "await cache.symbols.exists(exchange, symbol)", ""),
    ],
}


def _table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| fullon_cache | tradecache | what changes |", "|---|---|---|"]
    for theirs, ours, notes in rows:
        cells = [f"`{theirs}`", f"`{ours}`" if ours else "(none)", notes]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


_INTRO = """\
# Migrating from fullon_cache

tradecache covers what fullon_cache does (tickers, candles, orders, trades,
accounts, bots, processes, exchange and symbol metadata) with one `Cache`
per process instead of one cache object per call. The keys are new
(namespaced, hash-tagged): nothing is read from fullon_cache's keys, so a
migration re-populates the cache from its sources (exchanges, your database),
which is what a cache restart does anyway.

## Behaviour that changes (read this first)

* **Errors are raised, never swallowed.** fullon_cache returns `False`,
  `None`, `""`, `[]` or an empty model when Redis fails. tradecache returns
  `None` only for a miss, raises `ConnectionLost` for an outage (within
  `socket_timeout`), `ValidationError(field, reason)` for bad input (nothing
  written) and `NotFound` where a record must exist (`orders.update`,
  `processes.heartbeat`). `is_blocked` failing open (`""`) becomes
  `bots.holder` raising: a bot must not trade on an outage.
* **Every write is atomic and one round trip.** Positions, order status and
  process records were read-modify-written from Python (concurrent updates
  lost); here they are hash fields written by one Lua script or pipeline.
  No PING precedes each command.
* **Queues are Streams, not lists.** `get_trades` (LRANGE then DEL) lost the
  trades pushed in between and drained the queue for everyone, readers
  included. Consumers now `consume(group, consumer)` and `ack()`; a crashed
  consumer's entries are `reclaim`ed; display code reads `recent()`, which
  never consumes. Delivery is at least once: make handlers idempotent
  (`cache.idempotency`).
* **Blocks become claims.** `block_exchange` was a plain HSET (no owner, no
  TTL, no exclusion). `cache.bots.claim(...)` is a lease: exclusive (the
  second bot gets `Claimed`), renewed while held, expiring when the bot dies,
  with a fencing token.
* **Exchanges are ccxt ids, first.** Calls take `exchange` (a string such as
  `"binance"`) before `symbol`: `get_ticker(symbol, exchange)` becomes
  `tickers.get(exchange, symbol)`. Integer `ex_id`s and hard-coded exchange
  lists are gone; accounts are free-form names.
* **Typed models.** Reads return msgspec Structs (`Ticker`, `Order`,
  `Position`, `ProcessInfo`...); money is `Decimal`; times are aware UTC
  datetimes. `Model.from_ccxt(dict)` / `model.to_ccxt()` convert.
* **Orders expire one by one.** A canceled order no longer expires the whole
  exchange's order hash; each terminal order expires `order_ttl` after it
  became terminal.
* **Candles carry the exchange and are upserted** by open time: re-sending a
  bar replaces it instead of appending a duplicate.
* **Waiting is bounded.** `get_next_ticker` waited forever; `tickers.next`
  takes a `timeout`. Blocking pops that silently returned `None` after 5 s
  are consumers with an explicit `block`.
* **No import-time side effects.** Nothing loads `.env` or configures
  logging; `Settings()` reads the environment when you build it.
* **Tests** use the pytest plugin (isolated namespaces, real servers,
  standalone and Cluster) instead of flushing shared DBs.

## Before and after

```python
# fullon_cache
async with TickCache() as tick_cache:
    await tick_cache.set_ticker(tick)
    tick = await tick_cache.get_ticker("BTC/USDT", "binance")
async with TradesCache() as trades_cache:
    trades = await trades_cache.get_trades("BTC/USDT", "binance")   # destructive
```

```python
# tradecache
cache = await Cache.connect(namespace="prod")       # once per process
await cache.tickers.set(ticker, exchange="binance")
ticker = await cache.tickers.get("binance", "BTC/USDT")
async for delivery in cache.trades.consume("candles", "w1", "binance", "BTC/USDT"):
    bars.add(delivery.item)
    await delivery.ack()
```

## Call by call
"""

migration_guide = (
    _INTRO + "\n".join(f"\n### {name}\n\n{_table(rows)}" for name, rows in MAPPING.items()) + "\n"
)
