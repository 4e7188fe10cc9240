"""Pub/sub fault helpers: kill this test's subscriber connections, lose messages in transit.

Give the cache a client name (``await cache_factory(client_name=redis_namespace)``)
so that, on the shared Cluster, only this test's connections are killed.
"""

from __future__ import annotations

from typing import Any

from tradecache.coordination.events import _PUBLISH
from tradecache.coordination.subscription import publish_command


async def subscribers(cache: Any) -> list[tuple[Any, dict[str, Any]]]:
    """``(node, CLIENT LIST entry)`` of this cache's pub/sub connections (by client name)."""
    nodes = cache.client.get_primaries() if cache.is_cluster else [None]
    found = []
    for node in nodes:
        kwargs = {"target_nodes": node} if node is not None else {}
        for client in await cache.client.client_list(_type="pubsub", **kwargs):
            if client["name"] == cache.settings.client_name:
                found.append((node, client))
    return found


async def kill_subscribers(cache: Any) -> None:
    """``CLIENT KILL TYPE pubsub``; on the shared Cluster only this cache's connections."""
    if not cache.is_cluster:
        await cache.client.execute_command("CLIENT KILL TYPE pubsub")
        return
    for node, client in await subscribers(cache):
        await cache.client.client_kill_filter(_id=client["id"], target_nodes=node)


async def publish_silently(cache: Any, topic: str, count: int = 1) -> int:
    """Publish like the event bus (sequence number, backlog) to no subscriber.

    A message lost in transit: subscribers only learn of it from a later
    message or a resync. Returns the last sequence number.
    """
    seq = 0
    for _ in range(count):
        args = [
            cache.keys.channel("nowhere", topic),
            "event",
            topic,
            "test",
            b"null",
            cache.settings.event_backlog,
            publish_command(cache.context),
        ]
        seq = await _PUBLISH(cache.client, keys=[cache.keys.events(topic)], args=args)
    return seq
