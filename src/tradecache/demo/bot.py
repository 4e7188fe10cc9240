"""A trading bot: claims markets, follows momentum, submits orders idempotently.

Each cycle (``config.tick``) a bot:

1. notices claims it lost (``claim.held`` turns false when a lease ran out,
   e.g. after the bot was paused longer than its TTL) and reports them;
2. resubmits orders whose submission had no answer (``cache.orders.submit`` is
   idempotent by client order id, so a resubmission never doubles an order) and
   forgets orders the executors closed;
3. claims free markets (``cache.bots.claim``, exclusive, renewed while held)
   up to its share;
4. trades: on a price move above ``config.threshold`` since its last look it
   sends a market order in that direction, at most one open order per market;
5. hands a market back after holding it ``config.hold`` seconds, so claims move.

Claims are recorded on the demo topic with their fence and *verified* times:
a time is taken, then ``claim.ensure_held()`` must pass, so the bot provably
held the claim at that instant. Every order carries such a time
(``timestamp``) and its claim's fence (in its id). The parent checks from
these records that no two bots ever held a market at the same time::

    bot = Bot(cache, config, "bot1")
    await bot.run(stop)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from decimal import Decimal
from typing import Any

from ..errors import Claimed, LockLost, TradecacheError
from ..models import Order, OrderSide, OrderStatus, OrderType, from_ms
from ..stores.bots import Claim
from .common import TOPIC, DemoConfig, Market, lot, order_id, price_of, signed_size

__all__ = ["Bot"]

# How often a bot "retries" a submission (as after a lost reply) to show it is deduplicated.
_RETRY_SHARE = 0.1


class _Grant:
    """A claim this bot holds, and its trading state on that market."""

    __slots__ = ("claim", "hold_until", "last_price", "last_verified", "market", "n", "next_order")

    def __init__(self, claim: Claim, market: Market, verified: float, hold: float) -> None:
        self.claim = claim
        self.market = market
        self.last_verified = verified
        self.hold_until = time.monotonic() + hold
        self.next_order = 0.0
        self.last_price: float | None = None
        self.n = 0


class Bot:
    """One bot process: its account (positions, balances) is named after it."""

    def __init__(self, cache: Any, config: DemoConfig, name: str) -> None:
        self.cache = cache
        self.config = config
        self.name = name
        self.markets = config.markets()
        self.target = math.ceil(len(self.markets) / config.bots) + 1
        self.notional = Decimal(config.notional)
        self.limit = self.notional * config.max_lots
        self.rng = random.Random()
        self.grants: dict[int, _Grant] = {}
        self.pending: dict[int, Order] = {}  # market -> order not closed yet
        self.unsent: dict[int, Order] = {}  # market -> order whose submission had no answer
        self.counts = dict.fromkeys(
            ("orders", "deduplicated", "duplicated", "claims", "lost", "released", "errors"), 0
        )
        self._status_due = 0.0

    def report(self) -> dict[str, Any]:
        """Heartbeat params: counters, markets held, open orders, latency percentiles (ms).

        Example: ``bot.report()['orders']``
        """
        stats = self.cache.stats()
        latency = {
            op: [round(stats[op].p50_ms, 3), round(stats[op].p99_ms, 3)]
            for op in ("bots.claim", "orders.submit")
            if op in stats
        }
        return {
            **self.counts,
            "markets": len(self.grants),
            "pending": len(self.pending),
            "latency": latency,
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Trade until ``stop`` is set, then hand every claim back.

        Example: ``await bot.run(stop)   # until stop.set()``
        """
        while not stop.is_set():
            try:
                await self.cycle()
            except TradecacheError:  # a lost round trip: the next cycle retries
                self.counts["errors"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.tick)
        for grant in list(self.grants.values()):
            await self._release(grant)

    async def cycle(self) -> None:
        """One decision round (see the module documentation).

        Example: ``await bot.cycle()``
        """
        for grant in list(self.grants.values()):
            if not grant.claim.held:
                await self._end(grant, grant.last_verified, lost=True)
        await self._settle_orders()
        await self._claim_more()
        await self._trade()
        now = time.monotonic()
        for grant in list(self.grants.values()):
            if now >= grant.hold_until and grant.market.index not in self.pending:
                await self._release(grant)
        if now >= self._status_due:
            self._status_due = now + 1.0
            held = [g.market.symbol for g in self.grants.values()]
            await self.cache.bots.set_status(
                self.name, {"status": "trading", "markets": held, "orders": self.counts["orders"]}
            )

    # --- claims ----------------------------------------------------------------------------

    async def _claim_more(self) -> None:
        missing = self.target - len(self.grants)
        if missing <= 0:
            return
        taken = {(c.exchange, c.symbol) for c in await self.cache.bots.claims()}
        free = [m for m in self.markets if (m.exchange, m.symbol) not in taken]
        self.rng.shuffle(free)
        for market in free[:missing]:
            try:
                claim = await self.cache.bots.claim(
                    market.exchange, market.symbol, self.name, ttl=self.config.claim_ttl, wait=0
                )
            except Claimed:  # another bot was faster
                continue
            await self._start(claim, market)

    async def _start(self, claim: Claim, market: Market) -> None:
        verified = time.time()
        try:
            claim.ensure_held()
            await self._publish("claim_start", market, claim.fence, verified)
        except BaseException:
            # No record, no trading under this claim: hand it back.
            with contextlib.suppress(TradecacheError):
                await claim.release()
            raise
        low, high = self.config.hold
        self.grants[market.index] = _Grant(claim, market, verified, self.rng.uniform(low, high))
        self.counts["claims"] += 1

    async def _release(self, grant: _Grant) -> None:
        verified = time.time()
        held = await grant.claim.release()  # True: held right up to the release
        await self._end(grant, verified if held else grant.last_verified, lost=not held)

    async def _end(self, grant: _Grant, verified: float, *, lost: bool) -> None:
        del self.grants[grant.market.index]
        self.counts["lost" if lost else "released"] += 1
        if lost:
            with contextlib.suppress(TradecacheError):
                await grant.claim.release()  # stops its renewal; the lease is gone anyway
        await self._publish(
            "claim_end",
            grant.market,
            grant.claim.fence,
            verified,
            lost=lost,
            reason=grant.claim.lost_reason if lost else None,
        )

    async def _publish(
        self, kind: str, market: Market, fence: int, verified: float, **extra: Any
    ) -> None:
        payload = {
            "kind": kind,
            "bot": self.name,
            "market": market.index,
            "symbol": market.symbol,
            "exchange": market.exchange,
            "fence": fence,
            "t": verified,
            **extra,
        }
        await self.cache.events.publish(TOPIC, payload)

    # --- orders ----------------------------------------------------------------------------

    async def _settle_orders(self) -> None:
        for order in list(self.unsent.values()):
            await self._send(order)
        if not self.pending:
            return
        orders = list(self.pending.values())
        records = await asyncio.gather(*(self.cache.orders.get(o.exchange, o.id) for o in orders))
        for order, record in zip(orders, records, strict=True):
            if record is not None and record.status is OrderStatus.CLOSED:
                market = int(order.id.split("-")[1])
                del self.pending[market]

    async def _trade(self) -> None:
        if not self.grants:
            return
        exchanges = sorted({g.market.exchange for g in self.grants.values()})
        books = await asyncio.gather(*(self.cache.tickers.get_all(ex) for ex in exchanges))
        tickers = dict(zip(exchanges, books, strict=True))
        positions = {p.symbol: p for p in await self.cache.accounts.positions(self.name)}
        now = time.monotonic()
        for grant in list(self.grants.values()):
            market = grant.market
            ticker = tickers[market.exchange].get(market.symbol)
            if ticker is None or ticker.last is None:
                continue
            previous, grant.last_price = grant.last_price, ticker.last
            if previous is None or market.index in self.pending or now < grant.next_order:
                continue
            move = ticker.last / previous - 1
            price = price_of(ticker.last)
            exposure = signed_size(positions.get(market.symbol)) * price
            if move > self.config.threshold and exposure < self.limit:
                await self._order(grant, OrderSide.BUY, price)
            elif move < -self.config.threshold and exposure > -self.limit:
                await self._order(grant, OrderSide.SELL, price)

    async def _order(self, grant: _Grant, side: OrderSide, price: Decimal) -> None:
        verified = time.time()
        try:
            grant.claim.ensure_held()
        except LockLost:  # reported by the next cycle
            return
        grant.last_verified = verified
        grant.n += 1
        grant.next_order = time.monotonic() + self.config.cooldown
        market = grant.market
        oid = order_id(self.name, market.index, grant.claim.fence, grant.n)
        order = Order(
            id=oid,
            client_order_id=oid,
            symbol=market.symbol,
            exchange=market.exchange,
            side=side,
            type=OrderType.MARKET,
            amount=lot(self.notional, price),
            timestamp=from_ms(int(verified * 1000)),
        )
        self.pending[market.index] = self.unsent[market.index] = order
        await self._send(order)

    async def _send(self, order: Order) -> None:
        entry = await self.cache.orders.submit(order)
        del self.unsent[int(order.id.split("-")[1])]  # sent: counted once, however many tries
        self.counts["orders"] += 1
        if self.rng.random() < _RETRY_SHARE:  # as if the reply had been lost: send it again
            again = await self.cache.orders.submit(order)
            self.counts["deduplicated" if again == entry else "duplicated"] += 1
