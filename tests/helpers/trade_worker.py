"""A trade producer or consumer process for the multi-process trade acceptance test.

Run as a script (the test spawns it with ``subprocess``)::

    python tests/helpers/trade_worker.py produce URL NAMESPACE EXCHANGE SYMBOL COUNT
    python tests/helpers/trade_worker.py consume URL NAMESPACE EXCHANGE SYMBOL GROUP NAME [STALL]

A consumer records every trade it processes with ``HINCRBY <ns>:test:{trades}:processed
<trade id> 1`` before acknowledging it, then reclaims entries idle for a second (a
dead consumer's), and exits once ``<ns>:test:{trades}:stop`` exists and nothing is
pending. With ``STALL`` it hangs, holding its unacknowledged batch, after
processing that many trades (so it can be SIGKILLed mid-batch), and sets
``<ns>:test:{trades}:stalled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys

from tradecache import Cache
from tradecache.errors import ConnectionLost
from tradecache.stores.streams import Delivery


def test_key(cache: Cache, name: str) -> str:
    """A key of the test's namespace (deleted with it)."""
    return cache.keys.key("test", "trades", name)


async def produce(url: str, namespace: str, exchange: str, symbol: str, count: int) -> None:
    async with Cache.connect(url, namespace=namespace) as cache:
        rng = random.Random(7)
        sent = 0
        while sent < count:
            size = min(rng.randint(1, 60), count - sent)
            batch = [
                {
                    "id": str(i),
                    "symbol": symbol,
                    "price": "100.5",
                    "amount": "0.01",
                    "side": "buy",
                    "timestamp": 1_700_000_000_000 + i,
                }
                for i in range(sent, sent + size)
            ]
            if size == 1:
                await cache.trades.push(batch[0], exchange=exchange)
            else:
                assert await cache.trades.push_many(batch, exchange=exchange) == size
            sent += size


async def consume(
    url: str, namespace: str, exchange: str, symbol: str, group: str, name: str, stall: int
) -> None:
    async with Cache.connect(url, namespace=namespace) as cache:
        processed = test_key(cache, "processed")
        done = 0

        async def handle(delivery: Delivery[object]) -> None:
            nonlocal done
            trade_id = delivery.item.id  # type: ignore[attr-defined]
            await cache.client.hincrby(processed, trade_id, 1)
            done += 1
            if stall and done >= stall:
                await cache.client.set(test_key(cache, "stalled"), name)
                await asyncio.Event().wait()  # hang, holding the rest of the batch
            await delivery.ack()

        while True:
            # A consumer outlives a slow or lost connection (a read timeout on an overloaded
            # machine): what it handled but did not ack is pending and comes back by reclaim.
            with contextlib.suppress(ConnectionLost):
                async for delivery in cache.trades.consume(
                    group, name, exchange, symbol, count=20, block=0.3
                ):
                    await handle(delivery)
                for delivery in await cache.trades.reclaim(group, name, 1.0, exchange, symbol):
                    await handle(delivery)
                stop = await cache.client.exists(test_key(cache, "stop"))
                if stop and await cache.trades.pending(group, exchange, symbol) == 0:
                    return


def main(argv: list[str]) -> None:
    mode, url, namespace, exchange, symbol, *rest = argv
    if mode == "produce":
        asyncio.run(produce(url, namespace, exchange, symbol, int(rest[0])))
    else:
        group, name, *stall = rest
        asyncio.run(
            consume(url, namespace, exchange, symbol, group, name, int(stall[0]) if stall else 0)
        )


if __name__ == "__main__":
    main(sys.argv[1:])
