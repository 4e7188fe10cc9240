"""An order executor: consumes the order queue and fills each order exactly once.

Orders arrive through the consumer group ``executors`` (at least once: an
order an executor received but never acknowledged comes back, to it or, via
``cache.orders.reclaim``, to another executor once it has been idle for
``config.in_flight_ttl`` seconds). A fill runs under
``cache.idempotency("demo-fills")`` keyed by the client order id, so a
redelivered order replays the stored result instead of filling again; and
every step of a fill is idempotent on its own, so a fill taken over from an
executor that died half-way completes what the dead one left:

1. "the exchange" (down while the shared state ``demo-outage`` is true), guarded
   by the circuit breaker ``demo-exchange``;
2. the fill price: the ticker's, recorded once in the order's status record;
3. the trade (``cache.trades.push_user_trade``), unless a dead attempt pushed it;
4. under the account's lock: the position (skipped if its ``id`` already names
   this fill) and the balances, derived from the positions;
5. the order record becomes ``closed``; then the delivery is acknowledged.

::

    executor = Executor(cache, config, "exec1")
    await executor.run(stop)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from decimal import Decimal
from typing import Any

from ..errors import CircuitOpen, InProgress, TradecacheError
from ..models import Order, OrderStatus, Trade, utc_now
from ..stores.streams import Delivery
from .common import BREAKER, ORDER_GROUP, OUTAGE, DemoConfig, apply_fill, balances_for, price_of

__all__ = ["ExchangeDown", "Executor"]

_RECENT_TRADES = 500  # a resumed fill looks this far back for the trade a dead attempt pushed
_LATENCY = (0.001, 0.006)  # the simulated exchange's response time, seconds


class ExchangeDown(Exception):
    """The simulated exchange did not answer (a chaos outage)."""


def breaker_options() -> dict[str, Any]:
    """The configuration of the ``demo-exchange`` breaker (the parent watches it too).

    Example: ``cache.breaker(BREAKER, **breaker_options())``
    """
    return {"failure_threshold": 3, "window": 5.0, "reset_timeout": 1.0}


class Executor:
    """One executor process; ``name`` is its consumer name in the group."""

    def __init__(self, cache: Any, config: DemoConfig, name: str) -> None:
        self.cache = cache
        self.config = config
        self.name = name
        self.bases = {m.symbol: m.base for m in config.markets()}
        self.initial = Decimal(config.initial_cash)
        self.idem = cache.idempotency("demo-fills", ttl=86_400, in_flight_ttl=config.in_flight_ttl)
        self.breaker = cache.breaker(BREAKER, **breaker_options())
        self.outage = cache.state(OUTAGE)
        self.rng = random.Random()
        self.counts = dict.fromkeys(
            ("filled", "resumed", "replayed", "busy", "reclaimed", "failed"), 0
        )

    def report(self) -> dict[str, Any]:
        """Heartbeat params: counters and latency percentiles (ms) of fills and acks.

        Example: ``executor.report()['filled']``
        """
        stats = self.cache.stats()
        latency = {
            op: [round(stats[op].p50_ms, 3), round(stats[op].p99_ms, 3)]
            for op in ("demo.fill", "lock.acquire", "orders.reclaim")
            if op in stats
        }
        return {**self.counts, "latency": latency}

    async def run(self, stop: asyncio.Event) -> None:
        """Execute orders until ``stop`` is set; take over stuck orders now and then.

        Example: ``await executor.run(stop)   # until stop.set()``
        """
        reclaim_due = 0.0
        while not stop.is_set():
            if time.monotonic() >= reclaim_due:
                reclaim_due = time.monotonic() + self.config.in_flight_ttl / 2
                taken = await self._safely(
                    self.cache.orders.reclaim(ORDER_GROUP, self.name, self.config.in_flight_ttl)
                )
                self.counts["reclaimed"] += len(taken or [])
                for delivery in taken or []:
                    await self.handle(delivery)
            consume = self.cache.orders.consume(ORDER_GROUP, self.name, count=10, block=1.0)
            async with contextlib.aclosing(consume) as deliveries:
                try:
                    async for delivery in deliveries:
                        if not await self.handle(delivery) or stop.is_set():
                            break
                except TradecacheError:  # a lost round trip: retry in a moment
                    self.counts["failed"] += 1
                    await asyncio.sleep(0.1)

    async def _safely(self, call: Any) -> Any:
        try:
            return await call
        except TradecacheError:
            self.counts["failed"] += 1
            return None

    async def handle(self, delivery: Delivery[Order]) -> bool:
        """Fill one delivered order (at most once) and acknowledge it; False to retry later.

        Example::

            async for delivery in cache.orders.consume("executors", "exec1"):
                await executor.handle(delivery)
        """
        order = delivery.item
        ran = False

        async def fill() -> str:
            nonlocal ran
            ran = True
            return await self.fill(order)

        started = time.perf_counter()
        try:
            await self.idem.run(order.client_order_id or order.id, fill)
        except InProgress:  # another executor is filling it, and acknowledges it
            self.counts["busy"] += 1
            return True
        except CircuitOpen as exc:
            self.counts["failed"] += 1
            await asyncio.sleep(min(exc.retry_after or 0.1, 0.5))
            return False
        except (ExchangeDown, TradecacheError):
            self.counts["failed"] += 1
            await asyncio.sleep(0.05)
            return False
        if ran:
            self.cache.metrics.observe("demo.fill", time.perf_counter() - started)
        else:
            self.counts["replayed"] += 1  # a redelivery: the stored result was replayed
        await delivery.ack()
        return True

    async def fill(self, order: Order) -> str:
        """Fill ``order`` at the ticker price; every step may run again safely. Returns the price.

        Example: ``price = await executor.fill(order)``
        """
        cache = self.cache
        exchange = order.exchange
        assert exchange is not None  # orders in the queue always name their exchange
        async with self.breaker:
            if await self.outage.get():
                raise ExchangeDown("the simulated exchange is down")
            await asyncio.sleep(self.rng.uniform(*_LATENCY))
        record = await cache.orders.get(exchange, order.id)
        resumed = record is not None and record.average is not None
        if record is not None and record.average is not None:  # a dead attempt got this far
            price = record.average
            self.counts["resumed"] += 1
        else:
            ticker = await cache.tickers.get(exchange, order.symbol)
            if ticker is None or ticker.last is None:
                raise ExchangeDown(f"no price for {order.symbol}")
            price = price_of(ticker.last)
            await cache.orders.save(order.replace(average=price))
        account = order.id.split("-")[0]
        if not resumed or not await self._pushed(account, order.id):
            trade = Trade(
                id=order.id,
                order=order.id,
                symbol=order.symbol,
                exchange=exchange,
                side=order.side,
                type=order.type,
                price=price,
                amount=order.amount,
                cost=price * order.amount,
                timestamp=utc_now(),
            )
            await cache.trades.push_user_trade(account, trade)
        async with cache.lock(f"account-{account}", ttl=3.0, wait=10.0):
            position = await cache.accounts.get_position(account, order.symbol)
            if position is None or position.id != order.id:
                position = apply_fill(
                    position,
                    symbol=order.symbol,
                    exchange=exchange,
                    side=order.side,
                    amount=order.amount,
                    price=price,
                    fill_id=order.id,
                )
                await cache.accounts.set_position(account, position)
            positions = await cache.accounts.positions(account)
            balances = balances_for(positions, self.initial, self.bases)
            await cache.accounts.set_balances(account, balances)
        await cache.orders.update(
            exchange,
            order.id,
            status=OrderStatus.CLOSED,
            filled=order.amount,
            remaining=Decimal(0),
            cost=price * order.amount,
        )
        self.counts["filled"] += 1
        return str(price)

    async def _pushed(self, account: str, trade_id: str) -> bool:
        recent = await self.cache.trades.recent_user_trades(account, _RECENT_TRADES)
        return any(trade.id == trade_id for trade in recent)
