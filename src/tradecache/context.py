"""The core every store and primitive is built with (never the facade itself).

A :class:`Context` bundles the client, the key schema, the codec, the
settings, the metrics and the server version. The :class:`~tradecache.Cache`
facade builds one and hands it to each store; a store never reaches back to
the facade. Building a store by hand::

    ctx = Context(client=create_client(url), keys=Keys("prod"), codec=get_codec("json"),
                  settings=Settings(), metrics=Metrics(), server_version=(7, 0, 15))
    tickers = TickCache(ctx)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.asyncio.cluster import RedisCluster

from .codec import Codec
from .config import Settings
from .connection import Client
from .keys import Keys
from .metrics import Metrics

if TYPE_CHECKING:
    from .local_cache import LocalCache

__all__ = ["Context"]


@dataclass(frozen=True, slots=True)
class Context:
    """Client, keys, codec, settings, metrics, server version and local cache of one cache."""

    client: Client
    keys: Keys
    codec: Codec
    settings: Settings
    metrics: Metrics
    server_version: tuple[int, int, int]
    local_cache: LocalCache | None = None  # set when the ``local_cache`` setting is on

    @property
    def is_cluster(self) -> bool:
        """True on a Redis Cluster (multi-key operations must share a hash tag)."""
        return isinstance(self.client, RedisCluster)

    def supports(self, major: int, minor: int = 0) -> bool:
        """True when the server is at least ``major.minor``: ``ctx.supports(7)``."""
        return self.server_version >= (major, minor, 0)
