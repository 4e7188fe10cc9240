"""The monitor: watches process heartbeats and runs the trade ledger.

* **Health.** Every second it reads ``cache.processes.health()``; a process
  silent for ``config.stale_after`` seconds is reported once on the demo topic
  (``{"kind": "stale"}``), and one silent for three times that long is stopped
  with ``cache.processes.cleanup_stale`` (a paused process that wakes up
  heartbeats ``running`` again and reappears).
* **Ledger.** It consumes every account's trades (``cache.trades.consume_user_trades``,
  group ``ledger``), counts them and acknowledges them: the demo checks at the
  end that every trade pushed was consumed. Trade ids seen twice are counted
  as duplicates (there should be none).

::

    monitor = Monitor(cache, config)
    await monitor.run(stop)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from decimal import Decimal
from typing import Any

from ..errors import TradecacheError
from .common import LEDGER_GROUP, TOPIC, DemoConfig

__all__ = ["Monitor"]


class Monitor:
    """The monitor process (one per demo)."""

    def __init__(self, cache: Any, config: DemoConfig) -> None:
        self.cache = cache
        self.config = config
        self.consumed = 0
        self.duplicates = 0
        self.volume: dict[str, Decimal] = defaultdict(Decimal)  # traded notional per account
        self.seen: set[str] = set()
        self.stale: set[str] = set()
        self.healthy = True
        self.errors = 0

    def report(self) -> dict[str, Any]:
        """Heartbeat params: trades consumed, duplicates, health, volume per account.

        Example: ``monitor.report()['consumed']``
        """
        return {
            "consumed": self.consumed,
            "duplicates": self.duplicates,
            "healthy": self.healthy,
            "stale": sorted(self.stale),
            "errors": self.errors,
            "volume": {account: str(v) for account, v in sorted(self.volume.items())},
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Run health checks and the ledger until ``stop`` is set.

        Example: ``await monitor.run(stop)   # until stop.set()``
        """
        tasks = [asyncio.create_task(self._health(stop)), asyncio.create_task(self._ledger(stop))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _health(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check_health()
            except TradecacheError:
                self.errors += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def check_health(self) -> None:
        """One health round: report newly stale processes, stop long-silent ones.

        Example: ``await monitor.check_health()``
        """
        report = await self.cache.processes.health(stale_after=self.config.stale_after)
        self.healthy = report.healthy
        stale = {p.component for p in report.stale}
        for component in sorted(stale - self.stale):
            await self.cache.events.publish(TOPIC, {"kind": "stale", "process": component})
        self.stale = stale
        await self.cache.processes.cleanup_stale(self.config.stale_after * 3)

    async def _ledger(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            trades = self.cache.trades.consume_user_trades(LEDGER_GROUP, "ledger", block=0.25)
            async with contextlib.aclosing(trades) as deliveries:
                try:
                    async for delivery in deliveries:
                        trade = delivery.item
                        if trade.id in self.seen:
                            self.duplicates += 1
                        else:
                            self.seen.add(str(trade.id))
                            account = str(trade.id).split("-")[0]
                            self.volume[account] += trade.cost or Decimal(0)
                        await delivery.ack()
                        self.consumed += 1
                        if stop.is_set():
                            break
                except TradecacheError:  # a lost round trip: retry in a moment
                    self.errors += 1
                    await asyncio.sleep(0.1)
