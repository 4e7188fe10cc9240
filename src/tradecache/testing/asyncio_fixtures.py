"""The async fixtures of the plugin (``cache``, ``cache_factory``), for pytest-asyncio.

Registered by :mod:`tradecache.testing.plugin` when pytest-asyncio is active;
they work in its ``strict`` and ``auto`` modes alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, Protocol

import pytest_asyncio

from ..cache import Cache

if TYPE_CHECKING:
    from .plugin import _Backend

__all__ = ["CacheFactory", "cache", "cache_factory"]


class CacheFactory(Protocol):
    """``await cache_factory(**connect_kwargs)``: another cache on the test's backend."""

    def __call__(self, **kwargs: Any) -> Awaitable[Cache]: ...


@pytest_asyncio.fixture
async def cache_factory(
    _tradecache_backend: _Backend, redis_namespace: str
) -> AsyncIterator[CacheFactory]:
    """Make caches on this test's backend (``namespace`` defaults to the test's).

    Every cache made is closed at teardown, then the keys of every namespace
    used are deleted. Extra namespaces must start with ``redis_namespace``
    (e.g. ``f"{redis_namespace}b"``) so no other test can share them.

    Example::

        async def test_two_bots(cache_factory):
            bot1, bot2 = await cache_factory(), await cache_factory()
    """
    made: list[Cache] = []

    def clean() -> None:
        for prefix in sorted({cache.keys.prefix for cache in made}):
            _tradecache_backend.clean_prefix(prefix)

    async with contextlib.AsyncExitStack() as stack:
        # Runs last, and even when closing a cache fails: no test leaves keys behind.
        stack.callback(clean)

        async def make(**kwargs: Any) -> Cache:
            kwargs.setdefault("namespace", redis_namespace)
            cache = await Cache.connect(_tradecache_backend.endpoint.url, **kwargs)
            made.append(cache)
            stack.push_async_callback(cache.close)
            return cache

        yield make


@pytest_asyncio.fixture
async def cache(cache_factory: CacheFactory) -> Cache:
    """An isolated :class:`~tradecache.Cache` on ``redis_backend`` (standalone and cluster).

    Example::

        async def test_ping(cache):
            assert await cache.ping() > 0
    """
    return await cache_factory()
