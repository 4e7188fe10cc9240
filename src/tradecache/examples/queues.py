"""Queues that never lose an entry: the order queue and the trade streams.

Run it: ``python -m tradecache.examples.queues [URL]``.

Orders and trades are Redis Streams read through consumer groups: an entry
handed to a consumer stays *pending* until ``ack()``; the entries of a
consumer that died are taken over with ``reclaim``. Reading for display
(``recent``) never consumes.
"""

from __future__ import annotations

import uuid
from typing import Any

from tradecache import Cache
from tradecache.examples import redis_url, run
from tradecache.models import Order


async def execute(cache: Cache, order: Order, executor: str) -> None:
    """What an executor does with an order: place it, record the fill, keep the status."""
    print(f"{executor} places {order.side} {order.amount} {order.symbol} ({order.id})")
    fill = {
        "id": f"fill-{order.id}",
        "order": order.id,
        "symbol": order.symbol,
        "side": order.side,
        "price": order.price,
        "amount": order.amount,
    }
    await cache.trades.push_user_trade("main", fill, exchange="binance")
    await cache.orders.save(order.replace(status="closed", filled=order.amount), "binance")


async def main(url: str | None = None, namespace: str = "example") -> dict[str, Any]:
    """Submit orders, execute them with a crash and a takeover, stream trades; return counts.

    Example: ``result = await main("redis://localhost:6379/0")``
    """
    async with redis_url(url) as address, Cache.connect(address, namespace=namespace) as cache:
        # A bot submits orders. submit() is idempotent by client order id: a retry
        # after a timeout returns the first entry id and enqueues nothing.
        run_id = uuid.uuid4().hex[:8]
        orders = [
            {
                "id": f"{run_id}-{n}",
                "clientOrderId": f"{run_id}-{n}",
                "symbol": "BTC/USDT",
                "side": "buy",
                "type": "limit",
                "amount": "0.01",
                "price": "60000",
            }
            for n in range(3)
        ]
        entry_ids = [await cache.orders.submit(o, exchange="binance") for o in orders]
        retried = await cache.orders.submit(orders[0], exchange="binance")
        print(f"submitted 3 orders; the retry got the same entry: {retried == entry_ids[0]}")

        # executor-1 dies before acknowledging its last order (block=0: stop when drained).
        crashed = orders[-1]["id"]
        async for delivery in cache.orders.consume("executors", "executor-1", block=0):
            if delivery.item.id == crashed:
                print(f"executor-1 crashes while placing {crashed}: it stays pending")
                continue
            await execute(cache, delivery.item, "executor-1")
            await delivery.ack()
        pending = await cache.orders.pending("executors")
        print(f"pending after the crash: {pending}")

        # executor-2 takes over what executor-1 left (use e.g. min_idle=30 in production).
        for delivery in await cache.orders.reclaim("executors", "executor-2", min_idle=0):
            await execute(cache, delivery.item, "executor-2")
            await delivery.ack()
        print(f"pending after the takeover: {await cache.orders.pending('executors')}")
        closed = [
            o
            for o in await cache.orders.list("binance", status="closed")
            if o.id.startswith(run_id)
        ]

        # Public trades: pushed by a feed, consumed at least once by a candle builder.
        trades = [
            {
                "id": f"{run_id}-t{n}",
                "symbol": "BTC/USDT",
                "price": 60000 + n,
                "amount": "0.5",
                "side": "sell",
                "timestamp": 1_700_000_000_000 + n,
            }
            for n in range(4)
        ]
        await cache.trades.push_many(trades, exchange="binance")
        consumed = 0
        async for trade in cache.trades.consume("candles", "w1", "binance", "BTC/USDT", block=0):
            consumed += 1  # a candle builder would add trade.item to its bar
            await trade.ack()
        tape = await cache.trades.recent("binance", "BTC/USDT", 4)  # never consumes
        fills = await cache.trades.recent_user_trades("main", 3)
        print(f"consumed {consumed} trades; tape ends at {tape[-1].price}; {len(fills)} fills")
        return {
            "submitted": len(entry_ids),
            "retry_same_entry": retried == entry_ids[0],
            "pending_after_crash": pending,
            "closed": sorted(o.id for o in closed),
            "trades_consumed": consumed,
            "tape": [t.price for t in tape],
            "fills": [t.order for t in fills],
        }


if __name__ == "__main__":
    run(main)
