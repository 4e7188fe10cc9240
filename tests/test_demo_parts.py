"""The demo's parts in-process, on a real server: fill arithmetic, roles, checks, supervisor.

``tests/test_demo.py`` runs the whole demo as real processes; these tests
drive each part directly, including the paths a run only meets by bad luck
(an executor dying half-way through a fill, a claim lost between two steps,
a reply lost after a submission).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from rich.console import Console

from tradecache import Cache
from tradecache.coordination.subscription import Event, Gap
from tradecache.demo import bot as bot_module
from tradecache.demo import child
from tradecache.demo import summary as summary_module
from tradecache.demo.bot import Bot
from tradecache.demo.common import (
    TOPIC,
    DemoConfig,
    apply_fill,
    balances_for,
    connect,
    lot,
    order_id,
    parse_order_id,
    price_of,
    signed_size,
)
from tradecache.demo.executor import ExchangeDown, Executor
from tradecache.demo.feed import Feed
from tradecache.demo.monitor import Monitor
from tradecache.demo.observe import ClaimRecord, Observer, queue_state
from tradecache.demo.summary import (
    Check,
    Facts,
    Summary,
    check_accounts,
    check_claims,
    check_orders,
    check_processes,
    check_trades,
    gather,
    render,
)
from tradecache.demo.supervisor import Supervisor
from tradecache.envelope import Envelope
from tradecache.errors import CircuitOpen, ConnectionLost, InProgress, WaitTimeout
from tradecache.models import Order, OrderSide, OrderStatus, Position, PositionSide, Trade
from tradecache.stores.orders import OrdersCache
from tradecache.stores.streams import Delivery
from tradecache.stores.tickers import TickCache
from tradecache.stores.trades import TradesCache
from tradecache.testing import wait_until

D = Decimal


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def config(redis_url: str, redis_namespace: str) -> DemoConfig:
    return DemoConfig(
        url=redis_url,
        namespace=redis_namespace,
        symbols=3,
        bots=1,
        executors=1,
        rate=40,
        claim_ttl=0.6,
        tick=0.05,
        cooldown=0.0,
        hold=(60.0, 60.0),
        threshold=0.0,
        in_flight_ttl=0.3,
        heartbeat=0.1,
        stale_after=0.3,
        seed=1,
    )


@pytest.fixture
async def cache(config: DemoConfig) -> AsyncIterator[Cache]:
    async with connect(config) as connected:
        yield connected


@contextlib.asynccontextmanager
async def running(role: Any) -> AsyncIterator[asyncio.Event]:
    """Run ``role`` as a task until the block ends (then stop it and wait)."""
    stop = asyncio.Event()
    task = asyncio.create_task(role.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def order(oid: str = "bot1-0-5-1", side: str = "buy", amount: str = "0.5", **extra: Any) -> Order:
    return Order(
        id=oid,
        client_order_id=oid,
        symbol="BTC/USDT",
        exchange="binance",
        side=OrderSide(side),
        amount=D(amount),
        **extra,
    )


# --- common ------------------------------------------------------------------------------------


def test_ids_prices_and_lots() -> None:
    assert parse_order_id(order_id("bot2r1", 3, 99, 4)) == ("bot2r1", 3, 99, 4)
    with pytest.raises(ValueError, match="unpack"):
        parse_order_id("nope")
    assert price_of(60123.456) == D("60123.5") and price_of(0.0123456) == D("0.0123456")
    assert lot(D(100), D("0.5")) == D(200) and lot(D(1), D(10**9)) == D("0.000001")
    config = DemoConfig(url="redis://x", namespace="n", symbols=4)
    assert DemoConfig.decode(config.encode()) == config
    markets = config.markets()
    assert [m.exchange for m in markets] == ["binance", "okx", "kraken", "binance"]
    assert len({m.symbol for m in DemoConfig(url="u", namespace="n", symbols=24).markets()}) == 24


def fill(position: Position | None, side: str, amount: str, price: str) -> Position:
    return apply_fill(
        position,
        symbol="BTC/USDT",
        exchange="binance",
        side=OrderSide(side),
        amount=D(amount),
        price=D(price),
        fill_id="f",
    )


def test_apply_fill_opens_adds_reduces_flips_and_closes() -> None:
    p = fill(None, "buy", "1", "100")
    assert (p.side, p.contracts, p.entry_price, p.realized_pnl) == ("long", 1, 100, 0)
    p = fill(p, "buy", "1", "200")
    assert (p.contracts, p.entry_price) == (2, 150)
    p = fill(p, "sell", "1", "250")
    assert (p.contracts, p.entry_price, p.realized_pnl) == (1, 150, 100)
    p = fill(p, "sell", "3", "100")  # flip: close 1 (-50), open 2 short at 100
    assert (p.side, p.contracts, p.entry_price, p.realized_pnl) == ("short", 2, 100, 50)
    assert signed_size(p) == -2
    p = fill(p, "buy", "2", "90")
    assert (p.side, p.contracts, p.entry_price, p.realized_pnl) == (None, 0, None, 70)
    assert signed_size(p) == 0 and signed_size(None) == 0 and p.id == "f"
    cash = balances_for([p], D(1000), {"BTC/USDT": "BTC"})
    # buys 100 + 200 + 180, sells 250 + 300: +70 cash, flat
    assert cash["USDT"].total == D(1070) and cash["BTC"].total == 0


# --- summary checks ----------------------------------------------------------------------------


def facts_with(orders: list[Order], *, closed: bool = True, trades: int = 1) -> Facts:
    facts = Facts(queued=orders)
    for o in orders:
        facts.records[o.id] = (
            o.replace(status=OrderStatus.CLOSED, filled=o.amount, average=D(10)) if closed else o
        )
        account = parse_order_id(o.id).bot
        for _ in range(trades):
            facts.trades.setdefault(account, []).append(
                Trade(id=o.id, order=o.id, symbol=o.symbol, price=D(10), amount=o.amount)
            )
    return facts


def test_check_orders() -> None:
    a, b = order("bot1-0-5-1"), order("bot1-0-5-2")
    assert check_orders(facts_with([a, b])) == Check(
        "orders_executed_exactly_once", True, "2 orders submitted, 2 executed once, 2 trades"
    )
    bad = check_orders(facts_with([a, a], trades=1))
    assert not bad.ok and "queued 2 times" in bad.detail
    assert "is open" in check_orders(facts_with([a], closed=False)).detail
    assert "has 2 trades" in check_orders(facts_with([a], trades=2)).detail
    missing = facts_with([a])
    missing.records[a.id] = None
    missing.trades["bot9"] = [Trade(id="x", order="bot9-0-1-1", symbol="X/USDT", price=1, amount=1)]
    detail = check_orders(missing).detail
    assert "no status record" in detail and "unknown order bot9-0-1-1" in detail
    many = check_orders(facts_with([order(f"bot1-0-5-{i}") for i in range(5)], closed=False))
    assert many.detail.startswith("5 of 5 wrong:") and "(+2 more)" in many.detail


def test_check_accounts() -> None:
    config = DemoConfig(url="u", namespace="n", symbols=1, initial_cash="100")
    buy = order("bot1-0-5-1", amount="2")
    facts = facts_with([buy])  # bought 2 at 10
    position = fill(None, "buy", "2", "10")
    facts.positions["bot1"] = [position]
    facts.balances["bot1"] = balances_for([position], D(100), {"BTC/USDT": "BTC"})
    facts.balances["bot2"] = {}  # an account that never traded
    assert check_accounts(facts, config).ok
    facts.balances["bot1"] = balances_for(
        [fill(position, "buy", "2", "10")], D(100), {"BTC/USDT": "BTC"}
    )  # the fill applied twice
    wrong = check_accounts(facts, config)
    assert not wrong.ok and "bot1 holds 60 USDT, its fills say 80" in wrong.detail
    assert "position 2, BTC balance 4, fills say 2" in wrong.detail
    facts.records[buy.id] = None  # not executed: nothing expected, everything held is wrong
    assert "its fills say 100" in check_accounts(facts, config).detail


def test_check_trades_and_processes() -> None:
    assert check_trades(3, 3, 0).ok
    assert not check_trades(3, 2, 0).ok and not check_trades(3, 3, 1).ok
    assert check_processes([]).ok
    assert check_processes(["bot1 exited with code 1: boom"]).detail.endswith("code 1: boom")


def claims(*records: ClaimRecord) -> dict[tuple[int, int], ClaimRecord]:
    return {(r.market, r.fence): r for r in records}


def test_check_claims() -> None:
    first = ClaimRecord(0, 5, "bot1", 1.0, 2.0, started=True)
    second = ClaimRecord(0, 9, "bot2", 3.0, 4.0, started=True)
    sent = order("bot1-0-5-1").replace(timestamp=2_500)  # sent at 2.5 s: before bot2 started
    ok = check_claims(claims(first, second), Facts(queued=[sent]), gaps=0)
    assert ok.ok and ok.detail == "2 claims on 1 markets, 1 moved between bots, no overlap"
    assert first.end == 2.0  # the caller's records are not changed
    late = order("bot1-0-5-2").replace(timestamp=3_500)  # bot1 still trading at 3.5 s
    overlap = check_claims(claims(first, second), Facts(queued=[late]), gaps=0)
    assert not overlap.ok and "bot1 held it until 3.500, bot2 from 3.000" in overlap.detail
    backwards = ClaimRecord(0, 4, "bot2", 3.0, 4.0, started=True)
    assert "fence 4 after 5" in check_claims(claims(first, backwards), Facts(), 0).detail
    orphan = order("bot3-0-77-1").replace(timestamp=1)
    stolen = order("bot2-0-5-1").replace(timestamp=1)  # fence 5 was bot1's
    unstarted = ClaimRecord(1, 6, "bot1", 1.0, 1.0)  # its claim_start never arrived
    detail = check_claims(
        claims(first, unstarted),
        Facts(queued=[orphan, stolen, order("bot1-1-6-1").replace(timestamp=1)]),
        0,
    ).detail
    assert detail.count("without a recorded claim") == 3
    assert "cannot verify" in check_claims({}, Facts(), gaps=2).detail


def test_summary_json_and_table() -> None:
    summary = Summary(
        [Check("a", True, "fine"), Check("b", False, "broken")],
        {"orders_submitted": 3, "chaos": {"kill-bot": 1}},
        {"lock acquire": (0.51234, 2.0)},
        {"mode": "standalone"},
    )
    assert not summary.ok
    data = json.loads(summary.to_json())
    assert data["ok"] is False and data["mode"] == "standalone"
    assert data["invariants"]["b"] == {"ok": False, "detail": "broken"}
    assert data["latency_ms"]["lock acquire"] == {"p50": 0.512, "p99": 2.0}
    console = Console(record=True, width=140)
    console.print(render(summary))
    text = console.export_text()
    assert "INVARIANT VIOLATED" in text and "FAIL" in text and "orders submitted 3" in text
    summary.checks.pop()
    console.print(render(summary))
    assert "all invariants hold" in console.export_text()


# --- roles -------------------------------------------------------------------------------------


async def test_the_roles_together_hold_the_invariants(
    cache: Cache, config: DemoConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(summary_module, "_PAGE", 4)  # gather() reads the queue page by page
    observer = Observer(cache, config)
    await observer.start()
    feed, bot = Feed(cache, config), Bot(cache, config, "bot1")
    executor, monitor = Executor(cache, config, "exec1"), Monitor(cache, config)
    try:
        async with running(feed), running(monitor), running(executor):
            async with running(bot):
                await wait_until(lambda: bot.counts["orders"] >= 6, timeout=30)
            await wait_until(lambda: monitor.consumed >= bot.counts["orders"], timeout=30)
            snapshot = await observer.snapshot(1.0, ["bot1"], duration=5.0, chaos=True)
            await observer.probe()
        facts = await gather(cache, ["bot1"])
    finally:
        await observer.close()
    assert check_orders(facts).ok, check_orders(facts)
    assert check_accounts(facts, config).ok, check_accounts(facts, config)
    assert check_claims(observer.claims, facts, observer.gaps).ok
    assert executor.counts["filled"] == len(facts.queued) == monitor.consumed
    assert feed.report()["updates"] >= 3 and bot.report()["orders"] >= 6
    assert snapshot.flow["submitted"] >= 6 and len(snapshot.tickers) == 3
    assert snapshot.bots[0].name == "bot1" and snapshot.duration == 5.0
    assert {"pub/sub round trip", "ticker push"} <= set(observer.percentiles())
    released = [r for r in observer.claims.values() if not r.lost]
    assert len(released) == 3 and all(r.end >= r.start for r in released)
    assert await cache.bots.claims() == []  # handed back at stop
    assert (await queue_state(cache))[1:] == (0, 0)


async def test_a_fill_taken_over_half_way_completes_once(cache: Cache, config: DemoConfig) -> None:
    await cache.tickers.set(
        {"symbol": "BTC/USDT", "last": 100.0, "bid": 99.0, "ask": 101.0}, exchange="binance"
    )
    executor = Executor(cache, config, "exec1")
    o = order()
    assert D(await executor.fill(o)) == 100
    # A dead attempt got past every step but the last: the record is not closed yet.
    await cache.orders.update("binance", o.id, status="open")
    assert D(await executor.fill(o)) == 100  # resumed: same price, no second trade or position
    assert executor.counts == {**executor.counts, "filled": 2, "resumed": 1}
    trades = await cache.trades.recent_user_trades("bot1", 10)
    assert [t.id for t in trades] == [o.id]
    position = await cache.accounts.get_position("bot1", "BTC/USDT")
    assert position is not None and position.contracts == D("0.5")
    balances = await cache.accounts.get_balances("bot1")
    assert balances["USDT"].total == D(config.initial_cash) - 50
    # A dead attempt that stopped right after fixing the price: the trade follows.
    await cache.orders.save(order("bot1-0-5-2", side="sell", average=D(120)))
    assert D(await executor.fill(order("bot1-0-5-2", side="sell"))) == 120
    assert len(await cache.trades.recent_user_trades("bot1", 10)) == 2
    with pytest.raises(ExchangeDown, match="no price"):
        await executor.fill(order("bot1-1-5-1").replace(symbol="ETH/USDT"))


async def test_executor_handles_busy_open_breaker_outage_and_replays(
    cache: Cache, config: DemoConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await cache.tickers.set({"symbol": "BTC/USDT", "last": 100.0}, exchange="binance")
    executor = Executor(cache, config, "exec1")
    await cache.orders.submit(order())
    deliveries = cache.orders.consume("executors", "exec1", block=0)
    delivery = await anext(deliveries)
    await deliveries.aclose()

    async def busy(*args: Any, **kwargs: Any) -> Any:
        raise InProgress("someone else")

    monkeypatch.setattr(executor.idem, "run", busy)
    assert await executor.handle(delivery) is True and executor.counts["busy"] == 1
    monkeypatch.undo()

    async def tripped(*args: Any, **kwargs: Any) -> Any:
        raise CircuitOpen("demo-exchange", 0.01)

    monkeypatch.setattr(executor.idem, "run", tripped)
    assert await executor.handle(delivery) is False
    monkeypatch.undo()
    await cache.state("demo-outage", ttl=5).set(True)
    assert await executor.handle(delivery) is False
    assert executor.counts["failed"] == 2
    await cache.state("demo-outage").delete()
    assert await executor.handle(delivery) is True and executor.counts["filled"] == 1
    assert await executor.handle(delivery) is True  # redelivered: replayed, not filled again
    assert executor.counts["replayed"] == 1 and executor.counts["filled"] == 1
    assert "demo.fill" in executor.report()["latency"]


async def test_executor_reclaims_orders_of_a_dead_one(
    cache: Cache, config: DemoConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await cache.tickers.set({"symbol": "BTC/USDT", "last": 100.0}, exchange="binance")
    await cache.orders.submit(order())
    dead = cache.orders.consume("executors", "dead", block=0)
    await anext(dead)  # delivered to "dead", never acknowledged
    await dead.aclose()
    executor = Executor(cache, config, "exec1")
    async with running(executor):
        await wait_until(lambda: executor.counts["filled"] == 1, timeout=20)
    assert executor.counts["reclaimed"] == 1
    assert await cache.orders.pending("executors") == 0


async def test_executor_loop_retries_through_an_outage(cache: Cache, config: DemoConfig) -> None:
    await cache.tickers.set({"symbol": "BTC/USDT", "last": 100.0}, exchange="binance")
    await cache.state("demo-outage", ttl=30).set(True)
    await cache.orders.submit(order())
    executor = Executor(cache, config, "exec1")
    async with running(executor):
        await wait_until(lambda: executor.counts["failed"] >= 2, timeout=20)
        await cache.state("demo-outage").delete()
        await wait_until(lambda: executor.counts["filled"] == 1, timeout=20)
    assert executor.breaker.state.value in ("open", "half_open", "closed")


async def test_executor_survives_lost_round_trips(
    cache: Cache, config: DemoConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = Executor(cache, config, "exec1")

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionLost("down")

    async def broken(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise ConnectionLost("down")
        yield  # pragma: no cover - makes this an async generator

    monkeypatch.setattr(OrdersCache, "reclaim", down)
    monkeypatch.setattr(OrdersCache, "consume", broken)
    async with running(executor):
        await wait_until(lambda: executor.counts["failed"] >= 3, timeout=10)


async def _events(sub: Any) -> list[dict[str, Any]]:
    """Payloads received until 0.5 s pass without one."""
    found = []
    with contextlib.suppress(WaitTimeout):
        while True:
            found.append((await sub.get(timeout=0.5)).payload)
    return found


async def test_bot_claims_trades_and_reports_a_lost_claim(cache: Cache, config: DemoConfig) -> None:
    feed = Feed(cache, config)
    await cache.tickers.set_many([walk.ticker() for walk in feed.walks])
    bot = Bot(cache, config, "bot1")
    async with await cache.events.subscribe(TOPIC) as sub:
        await bot.cycle()  # claims all 3 markets (its target is 3/1 + 1)
        assert len(bot.grants) == 3 and bot.counts["claims"] == 3
        assert (await cache.bots.get_status("bot1")).data["markets"]  # type: ignore[union-attr]
        # A claim vanishes behind the bot's back: the renewal notices, the next cycle reports it.
        grant = next(iter(bot.grants.values()))
        market = grant.market
        await cache.client.delete(cache.keys.bot_claim(market.exchange, market.symbol))
        await wait_until(lambda: not grant.claim.held, timeout=5)
        await bot._order(grant, OrderSide.BUY, D(10))  # refused: no longer held
        assert bot.counts["orders"] == 0
        await bot.cycle()
        assert bot.counts["lost"] == 1 and bot.counts["claims"] == 4  # claimed again
        events = await _events(sub)
    assert [e["kind"] for e in events] == ["claim_start"] * 3 + ["claim_end", "claim_start"]
    assert events[3]["lost"] is True and events[3]["market"] == market.index
    assert "renewal" in events[3]["reason"] or "expired" in events[3]["reason"]
    # Prices rise: every market gets a buy, one open order each.
    for walk in feed.walks:
        walk.price *= 1.01
    await cache.tickers.set_many([walk.ticker() for walk in feed.walks])
    await bot.cycle()
    assert bot.counts["orders"] == 3 and len(bot.pending) == 3
    await bot.cycle()  # still open (no executor): nothing new
    assert bot.counts["orders"] == 3
    queued = [parse_order_id(o.id) for o in (await gather(cache, [])).queued]
    assert {(r.bot, r.market) for r in queued} == {("bot1", i) for i in bot.pending}


async def test_bot_resends_a_submission_whose_reply_was_lost(
    cache: Cache, config: DemoConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = Feed(cache, config)
    await cache.tickers.set_many([walk.ticker() for walk in feed.walks])
    bot = Bot(cache, config, "bot1")
    await bot.cycle()
    submit, calls = OrdersCache.submit, []

    async def reply_lost(self: OrdersCache, o: Order) -> str:
        calls.append(o.id)
        entry = await submit(self, o)
        if len(calls) == 1:
            raise ConnectionLost("the reply was lost")
        return entry

    monkeypatch.setattr(OrdersCache, "submit", reply_lost)
    monkeypatch.setattr(bot_module, "_RETRY_SHARE", 1.0)  # and every submission is retried
    for walk in feed.walks:
        walk.price *= 0.99
    await cache.tickers.set_many([walk.ticker() for walk in feed.walks])
    with pytest.raises(ConnectionLost):
        await bot.cycle()
    assert len(bot.unsent) == 1 and bot.counts["orders"] == 0
    await bot.cycle()  # resent first (idempotent), then the other markets trade
    assert not bot.unsent and bot.counts["orders"] == 3 and bot.counts["deduplicated"] >= 3
    assert calls[0] == calls[1]
    entries = await cache.client.xlen(cache.keys.order_queue())
    assert entries == 3  # 3 orders, each enqueued once


async def test_bot_edge_cases(
    cache: Cache, config: DemoConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = msgspec.structs.replace(config, max_lots=1)
    feed = Feed(cache, config)
    btc, eth, sol = (walk.market for walk in feed.walks)
    bot = Bot(cache, config, "bot1")
    # Another bot holds BTC although the claim list looked empty: Claimed, skipped.
    other = await cache.bots.claim(btc.exchange, btc.symbol, "x")

    async def stale_list(*args: Any) -> list[Any]:
        return []

    with monkeypatch.context() as patched:
        patched.setattr(cache.bots, "claims", stale_list)
        await bot.cycle()  # no ticker anywhere yet: claims only
    assert sorted(bot.grants) == [eth.index, sol.index] and bot.counts["claims"] == 2
    await other.release()
    # A big long ETH position: a rise does not buy more, a fall sells.
    await cache.accounts.set_position(
        "bot1", Position(symbol=eth.symbol, side=PositionSide.LONG, contracts=D(10))
    )
    await cache.tickers.set_many([walk.ticker() for walk in feed.walks])
    await bot._trade()  # first prices
    feed.walks[1].price *= 1.01
    await cache.tickers.set(feed.walks[1].ticker())
    await bot._trade()
    assert not bot.pending
    feed.walks[1].price *= 0.98
    await cache.tickers.set(feed.walks[1].ticker())
    await bot._trade()
    assert [o.side for o in bot.pending.values()] == [OrderSide.SELL]
    # Held long enough: SOL is handed back, ETH waits for its open order; BTC is claimed.
    for grant in bot.grants.values():
        grant.hold_until = 0.0
    await bot.cycle()
    assert sorted(bot.grants) == [btc.index, eth.index] and bot.counts["released"] == 1
    # A claim_start that cannot be recorded: the claim is handed back, the error surfaces.

    async def unrecorded(*args: Any, **kwargs: Any) -> int:
        raise ConnectionLost("down")

    monkeypatch.setattr(cache.events, "publish", unrecorded)
    with pytest.raises(ConnectionLost):
        await bot._claim_more()
    assert await cache.bots.holder(sol.exchange, sol.symbol) is None
    assert sol.index not in bot.grants


async def test_bot_run_counts_errors_and_releases_at_stop(
    cache: Cache, config: DemoConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = Bot(cache, config, "bot1")
    await bot.cycle()
    lost = next(iter(bot.grants.values()))
    await cache.client.delete(cache.keys.bot_claim(lost.market.exchange, lost.market.symbol))
    await wait_until(lambda: not lost.claim.held, timeout=5)

    async def down() -> None:
        raise ConnectionLost("down")

    monkeypatch.setattr(bot, "cycle", down)
    async with running(bot):
        await wait_until(lambda: bot.counts["errors"] >= 2, timeout=5)
    assert bot.counts["released"] == 2 and bot.counts["lost"] == 1  # the lost one, at release
    assert await cache.bots.claims() == []
    assert "bots.claim" in bot.report()["latency"]


async def test_feed_at_a_low_rate_and_with_lost_writes(
    cache: Cache, config: DemoConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = Feed(cache, msgspec.structs.replace(config, rate=8.0))
    async with running(feed):
        await wait_until(lambda: feed.updates >= 5, timeout=10)
    tickers = await cache.tickers.get_all("binance")
    assert tickers["BTC/USDT"].bid < tickers["BTC/USDT"].ask  # type: ignore[operator]
    assert feed.report()["rate"] > 0
    calls = 0
    set_many = TickCache.set_many

    async def flaky(self: TickCache, tickers: Any) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:  # the first snapshot goes through, then Redis is away
            raise ConnectionLost("down")
        return await set_many(self, tickers)

    monkeypatch.setattr(TickCache, "set_many", flaky)
    lossy = Feed(cache, config)
    async with running(lossy):
        await wait_until(lambda: lossy.errors >= 2, timeout=10)


async def test_monitor_ledger_and_health(
    cache: Cache, config: DemoConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor = Monitor(cache, config)
    fill = Trade(id="bot1-0-1-1", order="bot1-0-1-1", symbol="BTC/USDT", price=D(10), amount=D(2),
                 cost=D(20))  # fmt: skip
    await cache.trades.push_user_trade("bot1", fill, exchange="binance")
    await cache.trades.push_user_trade("bot1", fill, exchange="binance")  # pushed twice
    silent = await cache.processes.register("bot", "ghost")
    async with await cache.events.subscribe(TOPIC) as sub, running(monitor):
        await wait_until(lambda: monitor.consumed == 2, timeout=10)
        await wait_until(lambda: "ghost" in monitor.stale, timeout=10)
        events = await _events(sub)
        await wait_until(lambda: cache.processes.get(silent.id), timeout=5)
        await wait_until(lambda: _status(cache, silent.id), timeout=10, message="ghost cleaned up")
    assert monitor.duplicates == 1 and monitor.report()["volume"] == {"bot1": "20"}
    assert {"kind": "stale", "process": "ghost"} in events and not monitor.healthy

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionLost("down")

    async def broken(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise ConnectionLost("down")
        yield  # pragma: no cover - makes this an async generator

    monkeypatch.setattr(cache.processes, "health", down)
    monkeypatch.setattr(TradesCache, "consume_user_trades", broken)
    failing = Monitor(cache, config)
    async with running(failing):
        await wait_until(lambda: failing.errors >= 3, timeout=10)


async def test_monitor_ledger_stops_between_two_trades(
    cache: Cache, config: DemoConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        fill = Trade(id=f"bot1-0-1-{n}", symbol="BTC/USDT", price=D(1), amount=D(1))
        await cache.trades.push_user_trade("bot1", fill, exchange="binance")
    monitor = Monitor(cache, config)
    stop = asyncio.Event()
    ack = Delivery.ack

    async def ack_then_stop(self: Delivery[Any]) -> bool:
        stop.set()  # as if SIGTERM arrived while the ledger was busy
        return await ack(self)

    monkeypatch.setattr(Delivery, "ack", ack_then_stop)
    await asyncio.wait_for(monitor._ledger(stop), 10)
    assert monitor.consumed == 1


async def _status(cache: Cache, process_id: str) -> bool:
    info = await cache.processes.get(process_id)
    return info is not None and info.status == "stopped"


# --- the parent's side -------------------------------------------------------------------------


class _FakeSubscription:
    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __aiter__(self) -> Iterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if not self.items:
            raise StopAsyncIteration
        return self.items.pop(0)

    async def close(self) -> None:
        pass


def _event(topic: str, payload: Any, seq: int = 1) -> Event:
    data = msgspec.json.encode(payload)
    envelope = Envelope(v=1, type="event", topic=topic, seq=seq, time=0, payload=msgspec.Raw(data))
    return Event(envelope)


async def test_observer_reads_claims_gaps_and_notes(cache: Cache, config: DemoConfig) -> None:
    observer = Observer(cache, config)
    observer.note("before anyone listens")
    assert observer.recent[-1].endswith("before anyone listens")
    notes: list[str] = []
    observer.on_note = notes.append
    start = {"kind": "claim_start", "bot": "bot1", "market": 0, "fence": 7, "t": 1.0,
             "symbol": "BTC/USDT", "exchange": "binance"}  # fmt: skip
    observer._sub = _FakeSubscription(
        [
            Gap("demo-probe", 1, 2),
            Gap(TOPIC, 3, 4),
            _event("demo-probe", 99),  # not the probe being waited for
            _event(TOPIC, {**start, "kind": "claim_end", "t": 2.5, "lost": True, "reason": "x"}),
            _event(TOPIC, start),
            _event(TOPIC, {"kind": "stale", "process": "bot2"}),
            _event(TOPIC, {"kind": "error", "process": "bot3", "message": "boom"}),
            _event(TOPIC, {"kind": "something else"}),
        ]
    )
    await observer._read()
    assert observer.gaps == 2 and observer.events == 5
    assert observer.claims[0, 7] == ClaimRecord(0, 7, "bot1", 1.0, 2.5, lost=True, started=True)
    assert any("claim lost" in n for n in notes) and any("bot2" in n for n in notes)
    assert any("boom" in n for n in notes) and any("missed demo events 3..4" in n for n in notes)
    observer._on_breaker(type("T", (), {"name": "b", "previous": "closed", "state": "open"}))
    assert "closed -> open" in observer.recent[-1]
    observer.params = {"bot1": {"latency": {"bots.claim": [1.0, 2.0]}}, "exec1": {}}
    assert observer.percentiles() == {"claim (bots)": (1.0, 2.0)}


async def test_observer_reads_queues_books_and_final_params(
    cache: Cache, config: DemoConfig
) -> None:
    observer = Observer(cache, config)
    assert await queue_state(cache) == (0, 0, 0)
    await cache.orders.submit(order())
    assert await queue_state(cache) == (1, 0, 1)  # no group yet: nothing delivered
    assert await observer.trades_pushed([]) == 0
    assert await observer._book("nobody") == (D(config.initial_cash), {})
    gone = await cache.processes.register("feed", "feed")
    stays = await cache.processes.register("bot", "bot1", {"orders": 3})
    await observer.snapshot(0.0, [])
    await cache.processes.stop(stays.id)
    await cache.client.delete(cache.keys.process(gone.id))
    params = await observer.final_params()
    assert params["bot1"] == {"orders": 3}
    await observer.close()
    await observer.close()


# --- the child harness -------------------------------------------------------------------------


class _QuickRole:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.sleep(0.3)  # a few heartbeats
        if self.fail:
            raise RuntimeError("boom")

    def report(self) -> dict[str, Any]:
        return {"ok": True}


async def test_run_role_registers_heartbeats_and_reports_errors(
    cache: Cache, config: DemoConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(child, "_make", lambda *args: _QuickRole())
    assert await child.run_role("feed", "feed", config) == 0
    monkeypatch.setattr(child, "_make", lambda *args: _QuickRole(fail=True))
    async with await cache.events.subscribe(TOPIC) as sub:
        assert await child.run_role("bot", "bot1", config) == 1
        events = await _events(sub)
    assert events == [{"kind": "error", "process": "bot1", "message": "RuntimeError: boom"}]
    [failed] = await cache.processes.list(kind="bot")
    assert failed.status == "error" and failed.params == {"ok": True}
    stopped = await cache.processes.list(kind="feed")
    assert stopped == []  # stopped at the end


async def test_roles_are_made_by_name(cache: Cache, config: DemoConfig) -> None:
    made = {role: type(child._make(role, "x1", cache, config)) for role in child.ROLES}
    assert made == {"feed": Feed, "bot": Bot, "executor": Executor, "monitor": Monitor}


def test_child_main(config: DemoConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit, match="unknown role"):
        child.main(["trader", "t", config.encode()])
    monkeypatch.setattr(child, "_make", lambda *args: _QuickRole())
    previous = signal.getsignal(signal.SIGINT)
    try:
        assert child.main(["feed", "feed", config.encode()]) == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


# --- the supervisor ----------------------------------------------------------------------------


@pytest.fixture
def broken(tmp_path: Path) -> Iterator[Supervisor]:
    """A supervisor whose children cannot connect (a closed port): they exit with 1."""
    config = DemoConfig(url="redis://127.0.0.1:1/0", namespace="x", socket_timeout=0.2)
    notes: list[str] = []
    supervisor = Supervisor(config, tmp_path, notes.append)
    supervisor.notes = notes  # type: ignore[attr-defined]
    yield supervisor
    supervisor.kill_all()


async def test_supervisor_replaces_crashed_children(broken: Supervisor) -> None:
    first = broken.spawn("bot", 1)
    first.paused_until = 0.0  # its pause is over, but it is dead already: nothing to resume
    await wait_until(lambda: not first.running, timeout=60)
    broken.poll()
    assert first.paused_until is None
    assert broken.crashes[0].startswith("bot1 exited with code 1: ")
    assert "ConnectionLost" in broken.crashes[0] or "Error" in broken.crashes[0]
    assert broken.current["bot", 1].name == "bot1r1" and broken.names("bot") == ["bot1", "bot1r1"]
    assert "restarting" in broken.notes[-1]  # type: ignore[attr-defined]
    second = broken.current["bot", 1]
    await wait_until(lambda: not second.running, timeout=60)
    await broken.stop(("bot",))  # it had exited with an error: reported at stop
    assert broken.crashes[-1].startswith("bot1r1 stopped with code 1")
    assert len(broken.pids()) == 2 and not broken.alive()


async def test_supervisor_kills_a_child_that_does_not_stop(
    cache: Cache, config: DemoConfig, tmp_path: Path
) -> None:
    supervisor = Supervisor(config, tmp_path, lambda text: None)
    try:
        stuck = supervisor.spawn("monitor", 0)
        await wait_until(lambda: cache.processes.list(kind="monitor"), timeout=60)
        os.kill(stuck.pid, signal.SIGSTOP)  # behind the supervisor's back: SIGTERM waits
        await supervisor.stop(("monitor",), grace=0.3)
    finally:
        supervisor.kill_all()
    assert supervisor.crashes == ["monitor did not stop within 0.3s: killed"]
    assert stuck.proc.returncode == -signal.SIGKILL
    stuck.log.unlink()
    assert stuck.tail() == ""


async def test_supervisor_chaos_without_victims(broken: Supervisor) -> None:
    assert await broken.chaos("kill-bot") == "kill-bot"
    assert await broken.chaos() == "pause-bot"
    assert await broken.chaos("outage") == "outage"
    assert dict(broken.chaos_done) == {"outage": 1}
    assert broken.doomed() == []


async def test_supervisor_chaos_on_real_children(
    cache: Cache, config: DemoConfig, tmp_path: Path
) -> None:
    notes: list[str] = []
    supervisor = Supervisor(config, tmp_path, notes.append)
    try:
        supervisor.spawn("bot", 1)
        supervisor.spawn("executor", 1)
        await wait_until(lambda: _registered(cache, 2), timeout=90)
        assert await supervisor.chaos("kill-bot") == "kill-bot"
        assert supervisor.current["bot", 1].name == "bot1r1"
        await supervisor.chaos("kill-executor")  # frozen first, killed when due
        frozen = supervisor.current["executor", 1]
        assert frozen.kill_at is not None and supervisor.doomed() == []
        await wait_until(supervisor.doomed, timeout=5)
        supervisor.poll()
        assert supervisor.current["executor", 1].name == "exec1r1" and not frozen.running
        await supervisor.chaos("pause-bot")
        paused = supervisor.current["bot", 1]
        assert paused.paused_until is not None
        await supervisor.stop(("bot", "executor"))  # a paused child is resumed to stop it
    finally:
        supervisor.kill_all()
    assert supervisor.crashes == [] and paused.proc.returncode in (0, -signal.SIGTERM)
    assert any("chaos: killed bot1; started bot1r1" in n for n in notes)
    assert any("chaos: froze exec1" in n for n in notes)
    assert any(n.startswith("chaos: paused bot1r1") for n in notes)
    assert dict(supervisor.chaos_done) == {"kill-bot": 1, "kill-executor": 1, "pause-bot": 1}


async def _registered(cache: Cache, count: int) -> bool:
    return len(await cache.processes.list()) >= count


async def test_a_frozen_executor_is_killed_once_it_holds_orders(
    cache: Cache, config: DemoConfig, tmp_path: Path
) -> None:
    from tradecache.demo.runner import Demo, DemoOptions, _Run
    from tradecache.demo.supervisor import Child

    supervisor = Supervisor(config, tmp_path, lambda text: None)
    sleeper = subprocess.Popen(  # noqa: ASYNC220 - a stand-in, started at once
        [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    try:
        frozen = Child("executor", 1, "exec1", sleeper, tmp_path / "exec1.log", kill_at=0.0)
        frozen.kill_by = float("inf")
        supervisor.current["executor", 1] = frozen
        quiet = Console(file=io.StringIO())
        run = _Run(
            Demo(DemoOptions(), quiet, quiet), cache, config, Observer(cache, config), supervisor
        )
        await run._postpone_kills()  # no queue yet, so it holds nothing: later
        assert frozen.kill_at > 0
        frozen.kill_at = 0.0
        await cache.client.xgroup_create(cache.keys.order_queue(), "executors", mkstream=True)
        await run._postpone_kills()  # holds nothing yet: later
        assert frozen.kill_at > 0
        frozen.kill_at, frozen.kill_by = 0.0, 0.0
        await run._postpone_kills()  # its deadline passed: now
        assert frozen.kill_at == 0.0
        await cache.orders.submit(order())
        deliveries = cache.orders.consume("executors", "exec1", block=0)
        await anext(deliveries)
        await deliveries.aclose()
        frozen.kill_by = float("inf")
        await run._postpone_kills()  # it holds an order: now
        assert frozen.kill_at == 0.0
    finally:
        sleeper.kill()
        sleeper.wait()


async def test_dump_tasks_shows_where_each_task_waits(capsys: pytest.CaptureFixture[str]) -> None:
    gate = asyncio.Event()

    async def waiting() -> None:
        await gate.wait()

    task = asyncio.create_task(waiting(), name="waiter")
    await asyncio.sleep(0)
    child._dump_tasks()
    gate.set()
    await task
    err = capsys.readouterr().err
    assert "name='waiter'" in err and "test_demo_parts.py" in err and "awaiting" in err
