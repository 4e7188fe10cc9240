"""The ticker feed: random-walk prices for every market, ``rate`` updates per second in total.

Every 0.1 s (or every ``1/rate`` s below 10 updates/s) it moves a random
sample of markets and writes them with one ``cache.tickers.set_many`` (one
pipelined round trip; each ticker is stored and published atomically). It
first writes every market once, so every market has a price before a bot
looks::

    feed = Feed(cache, config)
    await feed.run(stop)          # until stop is set
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from typing import Any

from ..errors import TradecacheError
from ..models import Ticker, utc_now
from .common import DemoConfig, Market

__all__ = ["Feed"]

_SPREAD = 0.0004  # bid/ask spread, as a fraction of the price
_VOLATILITY = 0.0015  # standard deviation of one step of the log price


class _Walk:
    """One market's random walk and its day statistics."""

    def __init__(self, market: Market, rng: random.Random) -> None:
        self.market = market
        self.rng = rng
        self.open = self.price = self.high = self.low = market.start_price
        self.volume = 0.0

    def step(self) -> Ticker:
        """Move the price one random step; the new ticker. Example: ``walk.step().last``"""
        self.price *= math.exp(self.rng.gauss(0.0, _VOLATILITY))
        self.high, self.low = max(self.high, self.price), min(self.low, self.price)
        self.volume += self.rng.uniform(0.1, 2.0)
        return self.ticker()

    def ticker(self) -> Ticker:
        """The current ticker (no step). Example: ``await cache.tickers.set(walk.ticker())``"""
        p = self.price
        return Ticker(
            symbol=self.market.symbol,
            exchange=self.market.exchange,
            timestamp=utc_now(),
            bid=p * (1 - _SPREAD / 2),
            ask=p * (1 + _SPREAD / 2),
            last=p,
            open=self.open,
            high=self.high,
            low=self.low,
            change=p - self.open,
            percentage=(p / self.open - 1) * 100,
            base_volume=self.volume,
        )


class Feed:
    """Writes random-walk tickers for ``config.markets()`` at ``config.rate`` updates/s."""

    def __init__(self, cache: Any, config: DemoConfig) -> None:
        self.cache = cache
        self.config = config
        self.rng = random.Random(config.seed)
        self.walks = [_Walk(market, self.rng) for market in config.markets()]
        self.updates = 0
        self.errors = 0
        self.started = time.monotonic()

    def report(self) -> dict[str, Any]:
        """Heartbeat params: updates written, the rate achieved, failed writes.

        Example: ``feed.report()['rate']``
        """
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "updates": self.updates,
            "rate": round(self.updates / elapsed, 1),
            "errors": self.errors,
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Write tickers until ``stop`` is set.

        Example: ``await feed.run(stop)   # until stop.set()``
        """
        await self.cache.tickers.set_many([walk.ticker() for walk in self.walks])
        self.updates += len(self.walks)
        self.started = time.monotonic()
        # At least one update per period: 10 periods a second, or one update per period.
        period, per_period = (
            (0.1, self.config.rate / 10) if self.config.rate >= 10 else (1 / self.config.rate, 1.0)
        )
        credit = 0.0
        deadline = time.monotonic()
        while True:
            now = time.monotonic()
            deadline = max(deadline + period, now - period)  # an overloaded host drops ticks
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, deadline - now))
            if stop.is_set():
                return
            credit += per_period
            count = min(int(credit), len(self.walks))
            credit -= int(credit)
            sample = self.rng.sample(self.walks, count)
            try:
                await self.cache.tickers.set_many([walk.step() for walk in sample])
            except TradecacheError:  # a lost round trip: the next ticks follow anyway
                self.errors += 1
                continue
            self.updates += count
