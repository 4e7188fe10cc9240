"""Testing helpers: real Redis in tests, and polling with a deadline.

The pytest plugin :mod:`tradecache.testing.plugin` is registered by entry
point when tradecache is installed; it gives every test an isolated
:class:`~tradecache.Cache` on a real standalone server *and* on a real Redis
Cluster::

    async def test_ticker_roundtrip(cache):          # runs twice: standalone, cluster
        await cache.tickers.set(ticker, exchange="binance")
        assert await cache.tickers.get("binance", "BTC/USDT") == ticker

When a test must wait for something that has no event to await, poll it with
a deadline instead of sleeping::

    from tradecache.testing import wait_until, wait_until_sync

    await wait_until(lambda: server.pid is None, timeout=2)
    entry = await wait_until(lambda: client.xinfo_stream(key), timeout=1)  # async works too
    wait_until_sync(lambda: not pid_alive(pid), timeout=5)   # in a plain (sync) test
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

from ..errors import WaitTimeout

__all__ = ["WaitTimeout", "wait_until", "wait_until_sync"]

T = TypeVar("T")


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,  # noqa: ASYNC109
    *,
    interval: float = ...,
    message: str | None = ...,
) -> T: ...


@overload
async def wait_until(
    predicate: Callable[[], T],
    timeout: float = ...,  # noqa: ASYNC109
    *,
    interval: float = ...,
    message: str | None = ...,
) -> T: ...


async def wait_until(
    predicate: Callable[[], object],
    timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for polling, not for one call
    *,
    interval: float = 0.005,
    message: str | None = None,
) -> object:
    """Call ``predicate`` until it returns something truthy; return that value.

    ``predicate`` may be a plain function or return an awaitable. Between
    calls the loop yields for ``interval`` seconds (5 ms by default), so other
    tasks run. After ``timeout`` seconds it raises
    :class:`~tradecache.errors.WaitTimeout` (a ``TimeoutError``) naming the
    condition (``message``, else the predicate) and its last value.

    Example::

        await wait_until(lambda: not pid_alive(pid), timeout=5, message="server exited")
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise _timeout(predicate, message, value, timeout)
        await asyncio.sleep(min(interval, remaining))


def wait_until_sync(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    *,
    interval: float = 0.005,
    message: str | None = None,
) -> T:
    """:func:`wait_until` for synchronous tests and threads: blocks between polls.

    Example::

        wait_until_sync(lambda: proc.poll() is not None, timeout=5, message="child exited")
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout(predicate, message, value, timeout)
        time.sleep(min(interval, remaining))


def _timeout(
    predicate: Callable[[], object], message: str | None, value: object, timeout: float
) -> WaitTimeout:
    what = message or getattr(predicate, "__qualname__", repr(predicate))
    return WaitTimeout(f"{what}: still {value!r} after {timeout:g}s")
