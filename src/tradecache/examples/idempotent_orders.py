"""Idempotent order submission: an order reaches the exchange once, whatever the retries.

Run it: ``python -m tradecache.examples.idempotent_orders [URL]``.

``cache.idempotency(scope).run(key_or_payload, fn)`` claims the key in Redis
*before* calling ``fn``: concurrent duplicates wait for (or are refused
during) the first call, later ones replay its stored result, and the same key
with another payload raises ``KeyReuse``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tradecache import Cache, KeyReuse
from tradecache.examples import redis_url, run


class FakeExchange:
    """Stands in for a ccxt exchange; counts the orders it really receives."""

    def __init__(self) -> None:
        self.orders_received = 0

    async def create_order(self, symbol: str, side: str, amount: str) -> dict[str, Any]:
        self.orders_received += 1
        await asyncio.sleep(0.05)  # the network round trip
        return {"id": f"ex-{self.orders_received}", "symbol": symbol, "status": "open"}


async def main(url: str | None = None, namespace: str = "example") -> dict[str, Any]:
    """Send one order five times (concurrently and later); return what the exchange saw.

    Example: ``result = await main("redis://localhost:6379/0")``
    """
    async with redis_url(url) as address, Cache.connect(address, namespace=namespace) as cache:
        exchange = FakeExchange()
        idem = cache.idempotency("orders", ttl=3600, in_flight_ttl=30)
        order = {
            "clientOrderId": uuid.uuid4().hex,
            "symbol": "BTC/USDT",
            "side": "buy",
            "amount": "0.01",
        }

        async def place() -> dict[str, Any]:
            return await exchange.create_order(order["symbol"], order["side"], order["amount"])

        # The key is the client order id; the rest of the order must match it.
        by_id = ("clientOrderId",)
        # Three workers get the same order at once (a redelivery, a retry...):
        # one calls the exchange, the others wait up to 5 s for its result.
        results = await asyncio.gather(
            *(idem.run(order, place, fields=by_id, wait=5) for _ in range(3))
        )
        print(f"3 concurrent submissions -> {[r['id'] for r in results]}")
        # Later retries replay the stored result without calling the exchange.
        replay = await idem.run(order, place, fields=by_id)
        print(f"a later retry replays {replay['id']}")
        print(f"the exchange received {exchange.orders_received} order(s)")

        # The same client order id with another amount is a bug, not a retry.
        reuse_rejected = False
        try:
            await idem.run({**order, "amount": "5"}, place, fields=by_id)
        except KeyReuse as exc:
            reuse_rejected = True
            print(f"same client order id, other payload: {type(exc).__name__}")
        record = await idem.lookup(order, fields=by_id)
        assert record is not None
        print(f"record: status={record.status} attempt={record.attempt}")
        return {
            "results": results,
            "replay": replay,
            "orders_received": exchange.orders_received,
            "reuse_rejected": reuse_rejected,
            "status": record.status,
        }


if __name__ == "__main__":
    run(main)
