"""Push: the event bus (sequence numbers, gaps) and live tickers.

Run it: ``python -m tradecache.examples.pubsub [URL]``.

Every message carries a per-topic sequence number. A subscriber that missed
messages (a reconnect, a slow consumer) gets them backfilled, or a ``Gap``
naming what it could not recover: nothing is lost silently.
"""

from __future__ import annotations

from typing import Any

from tradecache import Cache
from tradecache.coordination.events import Event
from tradecache.examples import redis_url, run


async def main(url: str | None = None, namespace: str = "example") -> dict[str, Any]:
    """Publish fills and read them back; watch a ticker move; return what arrived.

    Example: ``result = await main("redis://localhost:6379/0")``
    """
    async with redis_url(url) as address, Cache.connect(address, namespace=namespace) as cache:
        # subscribe() returns once the server acknowledged the subscription:
        # everything published afterwards reaches this subscriber, or is reported.
        # A tiny queue (default: settings.subscriber_queue) shows what overflow does.
        fills: list[Any] = []
        gaps: list[tuple[int, int | None, str]] = []
        async with cache.events.subscribe("fills", queue_size=2) as sub:
            for n in range(1, 6):
                seq = await cache.events.publish("fills", {"order": f"o-{n}", "qty": "0.1"})
                print(f"published fill o-{n} as seq {seq}")
            async for item in sub:
                if isinstance(item, Event):
                    print(f"received {item.topic} #{item.seq}: {item.payload}")
                    fills.append(item.payload)
                else:  # a Gap: messages first_seq..last_seq will not be delivered
                    print(f"missed {item.topic} #{item.first_seq}..{item.last_seq}: {item.reason}")
                    gaps.append((item.first_seq, item.last_seq, item.reason))
                if sub.cursor("fills") == seq and not sub.pending:
                    break  # every published fill was delivered or reported
        backlog = await cache.events.recent("fills", 10)  # reading never consumes
        print(f"backlog holds {len(backlog)} fills")

        # Tickers by push. With initial=True the stored ticker comes first (read
        # after subscribing, so no update falls in between).
        await cache.tickers.set({"symbol": "ETH/USDT", "last": 3000.0}, exchange="binance")
        updates = cache.tickers.watch("binance", ["ETH/USDT"], initial=True)
        ticker = await anext(updates)  # the stored ticker: read after subscribing
        print(f"watch: {ticker.symbol} {ticker.last}")
        prices = [ticker.last]
        for _ in range(2):
            # Normally a feed process sets tickers; here we do it ourselves.
            price = (ticker.last or 0) + 1.5
            await cache.tickers.set({"symbol": "ETH/USDT", "last": price}, exchange="binance")
            ticker = await anext(updates)
            print(f"watch: {ticker.symbol} {ticker.last}")
            prices.append(ticker.last)
        return {"fills": fills, "gaps": gaps, "backlog": len(backlog), "prices": prices}


if __name__ == "__main__":
    run(main)
