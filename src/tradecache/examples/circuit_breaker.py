"""A circuit breaker shared by every worker: stop hammering an exchange that is down.

Run it: ``python -m tradecache.examples.circuit_breaker [URL]``.

The breaker's state lives in Redis and every transition is pushed to every
process: when one worker trips it, all of them fail fast with
``CircuitOpen``; after ``reset_timeout`` at most ``half_open_probes`` trial
calls go out across all processes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tradecache import Cache, CircuitOpen
from tradecache.coordination.breaker import BreakerState, Transition
from tradecache.examples import redis_url, run


class ExchangeDown(Exception):
    """What the exchange client raises while the exchange is unreachable."""


class FlakyExchange:
    """Stands in for a ccxt exchange that fails its first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def fetch_balance(self) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ExchangeDown(f"503 Service Unavailable (call {self.calls})")
        return {"USDT": {"free": 1000}}


async def main(url: str | None = None, namespace: str = "example") -> dict[str, Any]:
    """Fail three calls, get refused while open, recover with one probe; return the story.

    Example: ``result = await main("redis://localhost:6379/0")``
    """
    async with redis_url(url) as address, Cache.connect(address, namespace=namespace) as cache:
        exchange = FlakyExchange(failures=3)
        breaker = cache.breaker("exchange-api", failure_threshold=3, window=60, reset_timeout=0.5)
        transitions: list[str] = []
        closed_again = asyncio.Event()

        def report(t: Transition) -> None:  # called in every process, once per transition
            transitions.append(f"{t.previous.value}->{t.state.value}")
            print(f"breaker {t.name}: {t.previous.value} -> {t.state.value} ({t.reason})")
            if t.state is BreakerState.CLOSED:
                closed_again.set()

        breaker.on_change(report)
        await breaker.sync()  # listen to transitions made by any process from now on

        outcomes: list[str] = []
        for _ in range(6):
            try:
                balance = await breaker.call(exchange.fetch_balance)
                outcomes.append("ok")
                print(f"balance: {balance}")
            except ExchangeDown as exc:
                outcomes.append("failed")
                print(f"exchange error: {exc}")
            except CircuitOpen as exc:
                outcomes.append("refused")
                print(f"not called, the breaker is open; retry after {exc.retry_after:.2f} s")
                await asyncio.sleep(exc.retry_after or 0.5)
        await asyncio.wait_for(closed_again.wait(), timeout=5)  # the push reaches everyone
        print(f"the exchange was called {exchange.calls} times for 6 attempts")
        return {
            "outcomes": outcomes,
            "exchange_calls": exchange.calls,
            "transitions": transitions,
            "state": breaker.state.value,
        }


if __name__ == "__main__":
    run(main)
