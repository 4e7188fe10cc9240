"""A writer process for the multi-process order and position acceptance tests.

Run as a script (the tests spawn it with ``subprocess``)::

    python tests/helpers/flow_worker.py updates URL NAMESPACE EXCHANGE ORDER_ID I,J,K
    python tests/helpers/flow_worker.py positions URL NAMESPACE ACCOUNT I,J,K

It connects, adds its name to ``<ns>:test:{flow}:ready``, waits for
``<ns>:test:{flow}:go`` (so every process writes at the same moment), then fires
its writes concurrently: ``orders.update`` with ``TWENTY_CHANGES[i]``, or
``accounts.set_position`` of symbol ``S<i>/USDT:USDT``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from order_flow import TWENTY_CHANGES, ccxt_position

from tradecache import Cache
from tradecache.testing import wait_until


async def main(mode: str, url: str, namespace: str, target: str, *rest: str) -> None:
    indexes = [int(i) for i in rest[-1].split(",")]
    async with Cache.connect(
        url, namespace=namespace, connect_timeout=5.0, socket_timeout=5.0, pool_timeout=5.0
    ) as cache:
        await cache.ping()
        go = cache.keys.key("test", "flow", "go")
        await cache.client.sadd(cache.keys.key("test", "flow", "ready"), str(os.getpid()))
        await wait_until(lambda: cache.client.exists(go), timeout=120, interval=0.001)
        if mode == "updates":
            await asyncio.gather(
                *(cache.orders.update(target, rest[0], **TWENTY_CHANGES[i]) for i in indexes)
            )
        else:
            await asyncio.gather(
                *(
                    cache.accounts.set_position(
                        target, ccxt_position(f"S{i}/USDT:USDT", contracts=i + 1)
                    )
                    for i in indexes
                )
            )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
