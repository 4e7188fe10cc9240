"""Bot coordination: one bot per symbol (claims), locks with fencing tokens, bot status.

Run it: ``python -m tradecache.examples.bot_coordination [URL]``.

A claim is a lease: it has an owner, a TTL renewed while the bot holds it, and
a fencing token that grows with every grant. A bot that crashes loses its
claim after ``ttl`` seconds; a second bot is refused with ``Claimed``.
"""

from __future__ import annotations

from typing import Any

from tradecache import Cache, Claimed
from tradecache.examples import redis_url, run


async def run_bot(cache: Cache, bot_id: str, symbol: str) -> int | None:
    """One bot's turn on ``symbol``: trade it unless another bot does; return the fence."""
    try:  # wait=0 (the default) tries once; wait=5 would wait for the release, woken by push
        async with cache.bots.claim("binance", symbol, bot_id, ttl=10) as claim:
            claim.ensure_held()  # before each order: raises LockLost if the claim ran out
            print(f"{bot_id} trades {symbol} (fence {claim.fence})")
            await cache.bots.set_status(bot_id, {"status": "trading", "symbol": symbol})
            return claim.fence
    except Claimed as busy:
        print(f"{bot_id} skips {symbol}: claimed by {busy.holder}")
        return None


async def main(url: str | None = None, namespace: str = "example") -> dict[str, Any]:
    """Two bots compete for BTC/USDT; a fenced write under a lock; return what happened.

    Example: ``result = await main("redis://localhost:6379/0")``
    """
    async with redis_url(url) as address, Cache.connect(address, namespace=namespace) as cache:
        async with cache.bots.claim("binance", "BTC/USDT", "grid-1", ttl=10) as claim:
            print(f"grid-1 holds BTC/USDT (fence {claim.fence})")
            refused = await run_bot(cache, "grid-2", "BTC/USDT")
            other = await run_bot(cache, "grid-2", "ETH/USDT")
            claims = sorted((c.symbol, c.bot_id) for c in await cache.bots.claims("binance"))
            print(f"live claims: {claims}")
        # Released on leaving the block; a crashed bot's claim would expire after ttl.
        print(f"BTC/USDT holder now: {await cache.bots.holder('binance', 'BTC/USDT')}")
        later = await run_bot(cache, "grid-2", "BTC/USDT")

        # A lock guards any critical section; its fence makes writes safe even if a
        # paused holder wakes up after its lease expired: the server rejects the
        # older fence's write.
        plan_key = cache.keys.key("plan", "rebalance")
        async with cache.lock("rebalance", ttl=5) as lease:
            await lease.fenced_set(plan_key, '{"sell": "BTC", "buy": "ETH"}')
        stored = await cache.locks.fenced_get(plan_key)
        assert stored is not None
        print(f"plan written under fence {stored.fence}: {stored.value!r}")

        status = await cache.bots.get_status("grid-2")
        assert status is not None
        print(f"grid-2 status: {status.status} on {status.symbol}, at {status.updated}")
        return {
            "first_fence": claim.fence,
            "refused": refused,
            "other_symbol_fence": other,
            "later_fence": later,
            "claims": claims,
            "plan_fence": stored.fence,
            "lease_fence": lease.fence,
            "status": status.status,
        }


if __name__ == "__main__":
    run(main)
