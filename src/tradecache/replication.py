"""Writes confirmed by replicas: a script plus ``WAIT`` on the same connection.

Redis replicates asynchronously: a write the master acknowledged can vanish
when that master dies and a replica that had not received it yet is
promoted. ``WAIT numreplicas timeout`` blocks until ``numreplicas``
replicas acknowledged every write *of the calling connection*, so it must
follow the write on the very connection that sent it. :func:`run_replicated`
does that: it sends the script and ``WAIT`` back to back on one connection
(on a Cluster, a connection to the node that owns the key), one round trip::

    reply = await run_replicated(client, key, ACQUIRE, keys, args, replicas=1, timeout=0.5)

When fewer replicas acknowledge within ``timeout`` it raises
:class:`~tradecache.errors.NotReplicated`: the write *did* happen on the
master (it may still reach the replicas, or be lost in a failover). Callers
decide what that means: a lock or a claim releases the grant and raises, an
order submit raises (a retry is idempotent and waits again).

``WAIT`` makes a write survive the failover of its master as long as one of
the acknowledging replicas is promoted (Redis Cluster and Sentinel promote
the most up-to-date replica); it is not a consensus protocol (see the
``failover`` guide).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connection import send_commands
from .errors import ConnectionLost, NotReplicated, ValidationError, redis_errors
from .scripts import Arg, Script

__all__ = ["Call", "check_replicas", "refresh_routing", "run_replicated", "run_replicated_many"]

_MAX_REPLICAS = 16


def check_replicas(value: object, name: str = "wait_replicas") -> int:
    """Validate a ``wait_replicas`` argument: an int in ``0..16``.

    >>> check_replicas(1)
    1
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_REPLICAS:
        raise ValidationError(name, f"must be an integer from 0 to {_MAX_REPLICAS}")
    return value


async def refresh_routing(client: Any, key: str) -> None:
    """After a failure on a node connection of our own: let a Cluster client re-read its slots.

    redis-py refreshes a Cluster's slot table only when one of *its* commands
    fails; dedicated connections (lock renewals, ``WAIT`` writes) would keep
    going to a dead master. A cheap keyed read through the client marks the
    table stale and, with its retry, reloads it. A no-op on other clients.

    Example: ``await refresh_routing(cache.client, key)``
    """
    if isinstance(client, RedisCluster):
        with contextlib.suppress(RedisError, OSError):
            await client.execute_command("PTTL", key)


async def _exchange(
    connection: Any, commands: list[tuple[Arg, ...]], wait_read: float
) -> list[Any]:
    """Send ``commands`` in one write and read every reply (error replies as values).

    The last command is a ``WAIT``: its reply is read within ``wait_read`` seconds.
    """
    await send_commands(connection, *commands)
    replies = [await _reply(connection, None) for _ in commands[:-1]]
    return [*replies, _checked_wait(await _reply(connection, wait_read), wait_read)]


async def _reply(connection: Any, read_timeout: float | None) -> Any:
    try:
        return await connection.read_response(timeout=read_timeout)
    except ResponseError as exc:
        return exc


def _checked_wait(reply: Any, wait_read: float) -> Any:
    # redis-py returns None when a read given a timeout runs out (a master stalled mid-WAIT).
    if reply is None:
        raise RedisTimeoutError(f"no reply to WAIT within {wait_read:g}s")
    return reply


async def _release(pool: Any, connection: Any) -> None:
    if isinstance(pool, ClusterNode):
        pool.release(connection)
    else:
        await pool.release(connection)


#: One script call of :func:`run_replicated_many`: ``(script, keys, args)``.
Call = tuple[Script, Sequence[str], Sequence[Arg]]


@redis_errors
async def run_replicated(
    client: Any,
    key: str,
    script: Script,
    keys: Sequence[str],
    args: Sequence[Arg],
    *,
    replicas: int,
    timeout: float,  # noqa: ASYNC109 - WAIT's own timeout, sent to the server
) -> Any:
    """Run ``script`` on ``key``'s master, then ``WAIT replicas timeout`` on that connection.

    Returns the script's reply once at least ``replicas`` replicas have it.
    Raises :class:`~tradecache.errors.NotReplicated` (``acked``, ``wanted``,
    ``reply``) when fewer acknowledged within ``timeout`` seconds, and
    :class:`~tradecache.errors.ConnectionLost` when the node is unreachable
    (or the slot just moved: retry, as during any failover).

    Example::

        reply = await run_replicated(cache.client, key, SUBMIT, [queue, marker], args,
                                     replicas=1, timeout=0.5)
    """
    (reply,), acked = await _replicated(client, key, [(script, keys, args)], replicas, timeout)
    if acked < replicas:
        raise NotReplicated(acked, replicas, reply)
    return reply


@redis_errors
async def run_replicated_many(
    client: Any,
    key: str,
    calls: Sequence[Call],
    *,
    replicas: int,
    timeout: float,  # noqa: ASYNC109 - WAIT's own timeout, sent to the server
) -> list[Any]:
    """:func:`run_replicated` for several script calls, in one round trip and one ``WAIT``.

    Every call's keys must live in ``key``'s slot (share its hash tag). Returns
    the replies in order; :class:`~tradecache.errors.NotReplicated` carries
    them all as its ``reply``. An error reply of one call is raised after
    every call ran. Calls the server had no script for (``NOSCRIPT``, after a
    restart or a failover) are sent again as ``EVAL``, after the others.

    Example::

        replies = await run_replicated_many(cache.client, stream, [(PUSH, k1, a1), (PUSH, k2, a2)],
                                            replicas=1, timeout=0.5)
    """
    replies, acked = await _replicated(client, key, calls, replicas, timeout)
    if acked < replicas:
        raise NotReplicated(acked, replicas, replies)
    return replies


def _eval(call: Call, *, by_sha: bool) -> tuple[Arg, ...]:
    script, keys, args = call
    if by_sha:
        return ("EVALSHA", script.sha, len(keys), *keys, *args)
    return ("EVAL", script.source, len(keys), *keys, *args)


async def _connection_for(client: Any, key: str) -> tuple[Any, Any]:
    """A connection to ``key``'s master, and the pool to give it back to."""
    if isinstance(client, RedisCluster):
        node: Any
        try:
            node = client.get_node_from_key(key)
        except SlotNotCoveredError:  # no slot table yet (or a stale one): load it
            await client.initialize()
            node = client.get_node_from_key(key)  # still uncovered: ConnectionLost
        return node, node.acquire_connection()
    return client.connection_pool, await client.connection_pool.get_connection()


async def _replicated(
    client: Any, key: str, calls: Sequence[Call], replicas: int, wait_timeout: float
) -> tuple[list[Any], int]:
    """Send ``calls`` then ``WAIT replicas timeout`` on one connection: (replies, acked)."""
    timeout_ms = max(1, math.ceil(wait_timeout * 1000))
    pool, connection = await _connection_for(client, key)
    read_timeout = wait_timeout + (connection.socket_timeout or 1.0)
    wait = ("WAIT", replicas, timeout_ms)
    try:
        commands = [_eval(call, by_sha=True) for call in calls]
        *replies, acked = await _exchange(connection, [*commands, wait], read_timeout)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # A server that lost its script cache (restart, failover): those did not run.
            commands = [_eval(calls[i], by_sha=False) for i in missing]
            *rerun, acked = await _exchange(connection, [*commands, wait], read_timeout)
            for i, reply in zip(missing, rerun, strict=True):
                replies[i] = reply
    except BaseException as exc:
        # Cancelled or failed mid-exchange: a late reply must not reach the next user.
        await connection.disconnect(nowait=True)
        await _release(pool, connection)
        if not isinstance(exc, asyncio.CancelledError):
            await refresh_routing(client, key)  # the node may be gone (a failover)
        raise
    await _release(pool, connection)
    for reply in replies:
        if isinstance(reply, MovedError | AskError):
            await refresh_routing(client, key)
            raise ConnectionLost(f"slot of {key!r} moved (failover?): {reply}")
    for reply in (*replies, acked):
        if isinstance(reply, ResponseError):
            raise reply
    return replies, acked
