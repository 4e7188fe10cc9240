"""Shared fixtures of tradecache's own suite (the plugin provides the Redis ones)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tradecache.server import RedisServer

pytest_plugins = ["pytester"]


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start private servers a test may stop, pause, kill or restart.

    ``redis_server_factory(port=0, appendonly=True)`` takes RedisServer's
    arguments; every server it started is stopped at teardown.
    """
    servers: list[RedisServer] = []

    def start(**kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.running:
            server.resume()
            server.stop()
