"""Build a redis-py asyncio client from a URL or :class:`~tradecache.config.Settings`.

One function, :func:`create_client`, understands every deployment::

    from tradecache.connection import create_client

    client = create_client("redis://localhost:6379/0")           # standalone, TCP
    client = create_client("rediss://:secret@cache:6380/0")        # TLS
    client = create_client("unix:///run/redis.sock?db=2")          # unix socket
    client = create_client("redis+cluster://10.0.0.1:7000")        # Redis Cluster
    client = create_client("redis://10.0.0.1:7000", cluster=True)  # same
    client = create_client("redis+sentinel://s1:26379,s2:26379/mymaster/0")  # Sentinel

Standalone and Sentinel clients use a blocking pool of ``pool_size``
connections (a burst of concurrent calls waits up to ``pool_timeout`` for a
connection instead of failing). The retry policy is explicit
and small: by default one retry after 10 ms, with a 0.5 s connect timeout and
a 1 s read timeout, so a dead server costs well under a second per call and
surfaces as :class:`~tradecache.errors.ConnectionLost`, never as a hang.

Sentinel: the sentinels are asked for the master's address, all at once,
whenever a connection is opened (redis-py's ``SentinelConnectionPool``), so
after a failover the next call reaches the promoted replica on the same
client; while no master is known, calls raise ``ConnectionLost`` within the
same budget (a sentinel query waits at most ``connect_timeout``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .config import Settings
from .errors import ConfigError

__all__ = [
    "Client",
    "SentinelAddress",
    "create_client",
    "is_cluster",
    "parse_sentinel_url",
    "redact_url",
    "send_commands",
]

Client: TypeAlias = "Redis | RedisCluster"

_PASSWORD_IN_URL = re.compile(r"(?P<scheme>[a-z+]+://)(?P<user>[^:@/]*):(?P<pw>[^@/]*)@")
_PASSWORD_IN_QUERY = re.compile(r"(?P<key>[?&]password=)[^&]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``; safe to log or repr.

    >>> redact_url("redis://user:s3cret@host:6379/0")
    'redis://user:***@host:6379/0'
    """
    url = _PASSWORD_IN_URL.sub(r"\g<scheme>\g<user>:***@", url)
    return _PASSWORD_IN_QUERY.sub(r"\g<key>***", url)


def is_cluster(client: Any) -> bool:
    """True when ``client`` is a redis-py ``RedisCluster``."""
    return isinstance(client, RedisCluster)


def _retry(settings: Settings) -> Retry:
    backoff = (
        ExponentialBackoff(cap=settings.retry_backoff_cap, base=settings.retry_backoff)
        if settings.retry_backoff > 0
        else NoBackoff()
    )
    return Retry(
        backoff,
        settings.retry_attempts,
        supported_errors=(RedisConnectionError, RedisTimeoutError),
    )


def _common_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.socket_timeout,
        "retry": _retry(settings),
        "protocol": 2,
        "client_name": settings.client_name,
    }
    if settings.username is not None:
        kwargs["username"] = settings.username
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    return kwargs


def _ssl_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"ssl_cert_reqs": settings.ssl_cert_reqs}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, name)
        if value is not None:
            kwargs[name] = value
    return kwargs


@dataclass(frozen=True, slots=True)
class SentinelAddress:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: list[tuple[str, int]]
    service: str | None
    db: int
    username: str | None
    password: str | None


def parse_sentinel_url(url: str) -> SentinelAddress:
    """Parse ``redis+sentinel://[user:pass@]host:port[,host:port...]/service[/db]``.

    >>> parse_sentinel_url("redis+sentinel://s1:26379,s2/mymaster/1").sentinels
    [('s1', 26379), ('s2', 26379)]
    """
    rest = url[len("redis+sentinel://") :]
    auth, _, hosts_and_path = rest.rpartition("@")
    hosts, _, path = hosts_and_path.partition("/")
    path = path.split("?", 1)[0]
    sentinels: list[tuple[str, int]] = []
    for item in filter(None, hosts.split(",")):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        try:
            sentinels.append((host, int(port)))
        except ValueError:
            raise ConfigError("url", f"bad sentinel port in {item!r}") from None
    if not sentinels:
        raise ConfigError("url", "a redis+sentinel:// URL needs at least one host")
    parts = [p for p in path.split("/") if p]
    service = parts[0] if parts else None
    try:
        db = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ConfigError("url", f"bad database number {parts[1]!r}") from None
    username = password = None
    if auth:
        user, _, pw = auth.partition(":")
        username = unquote(user) or None
        password = unquote(pw) or None
    return SentinelAddress(sentinels, service, db, username, password)


def _cluster_client(url: str, settings: Settings) -> RedisCluster:
    kwargs = _common_kwargs(settings)
    if url.startswith("rediss://"):
        kwargs.update(_ssl_kwargs(settings))
    # The same small Retry bounds the cluster client's own retries of
    # MOVED/ASK/CLUSTERDOWN, so a dead cluster fails inside the latency budget.
    # redis-py's cluster pool raises MaxConnectionsError instead of waiting
    # for a free connection, so it gets its own, larger per-node cap.
    client = RedisCluster.from_url(url, max_connections=settings.cluster_pool_size, **kwargs)
    # Every node (the seeds here, those discovered later) is built from these kwargs.
    node_kwargs = client.nodes_manager.connection_kwargs
    node_kwargs["connection_class"] = _with_bounded_writes(node_kwargs["connection_class"])
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = node_kwargs["connection_class"]
    return client


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel pool that waits for a free connection, as the standalone pool does.

    redis-py's own ``SentinelConnectionPool`` has no upper bound (or fails at
    the bound): this one keeps ``pool_size`` and ``pool_timeout`` meaningful.
    Closing the client closes the connections to the sentinels as well.
    """

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # the client closes (a new master only drops idle ones)
            for node in self.sentinel_manager.sentinels:
                await node.connection_pool.disconnect()


class _Sentinel(Sentinel):
    """redis-py's ``Sentinel``, asking every sentinel at once where the master is.

    redis-py asks one sentinel after the other, so each frozen or unreachable
    sentinel costs a whole timeout before the next one is asked. Here the
    first valid answer wins: all sentinels down cost one timeout, not one each.
    """

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        queries = [asyncio.ensure_future(node.sentinel_masters()) for node in self.sentinels]
        errors: list[str] = []
        try:
            for reply in asyncio.as_completed(queries):
                try:
                    masters: dict[str, Any] = await reply  # type: ignore[assignment]
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    errors.append(repr(exc))
                    continue
                state = masters.get(service_name)
                if state and self.check_master_state(state, service_name):
                    return state["ip"], state["port"]
        finally:
            for query in queries:
                # Cancelled, not awaited: a query that misses the cancellation still
                # ends within its timeout; its outcome is read, never raised.
                query.cancel()
                query.add_done_callback(_consume_outcome)
        raise MasterNotFoundError(f"no sentinel names a master for {service_name!r}: {errors}")


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _sentinel_client(url: str, settings: Settings) -> Redis:
    address = parse_sentinel_url(url)
    service = address.service or settings.sentinel_service
    if not service:
        raise ConfigError("url", "a redis+sentinel:// URL needs a service name")
    kwargs = _common_kwargs(settings)
    if address.password is not None and settings.password is None:
        kwargs["password"] = address.password
    if address.username is not None and settings.username is None:
        kwargs["username"] = address.username
    # A sentinel query is tiny: it gets connect_timeout as its read timeout too,
    # and no retry of its own (an unanswered query moves on to the next sentinel,
    # and the master's client retries the whole discovery), so that frozen or
    # unreachable sentinels cost a bounded time per connection, not seconds each.
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": min(settings.connect_timeout, settings.socket_timeout),
        "retry": Retry(NoBackoff(), 0),
    }
    if settings.sentinel_password is not None:
        sentinel_kwargs["password"] = settings.sentinel_password.get_secret_value()
    sentinel = _Sentinel(  # type: ignore[no-untyped-call]
        address.sentinels, sentinel_kwargs=sentinel_kwargs, **kwargs
    )
    client: Redis = sentinel.master_for(
        service,
        connection_pool_class=_BlockingSentinelPool,
        db=address.db,
        max_connections=settings.pool_size,
        timeout=settings.pool_timeout,
    )
    pool = client.connection_pool
    pool.connection_class = _with_bounded_writes(pool.connection_class)
    return client


def _standalone_client(url: str, settings: Settings) -> Redis:
    kwargs = _common_kwargs(settings)
    if url.startswith("rediss://"):
        kwargs.update(_ssl_kwargs(settings))
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.pool_size,
        timeout=settings.pool_timeout,
        **kwargs,
    )
    pool.connection_class = _with_bounded_writes(pool.connection_class)
    return Redis.from_pool(pool)


def _pop_cluster_flag(url: str) -> tuple[str, bool]:
    """Remove ``cluster=...`` from the query string (redis-py rejects it)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    flag = query.pop("cluster", ["false"])[0].lower() in ("1", "true", "yes")
    rest = "&".join(f"{key}={value}" for key, values in query.items() for value in values)
    return urlunsplit(parts._replace(query=rest)), flag


def create_client(
    url: str | Settings | None = None,
    *,
    cluster: bool | None = None,
    settings: Settings | None = None,
) -> Client:
    """Build the redis-py asyncio client for ``url`` (or ``settings.url``).

    ``cluster=True`` (or ``settings.cluster``, or ``?cluster=true`` in the URL)
    makes a ``redis://`` URL a cluster seed; ``redis+cluster://`` always is.
    The client is not connected yet: redis-py connects on first use.

    Example::

        client = create_client("redis+cluster://127.0.0.1:7000")
        await client.ping()
    """
    if isinstance(url, Settings):
        settings, url = url, None
    settings = settings or Settings()
    url = url or settings.url
    if url.startswith("redis+sentinel://"):
        return _sentinel_client(url, settings)
    if url.startswith("redis+cluster://"):
        return _cluster_client("redis://" + url[len("redis+cluster://") :], settings)
    if url.startswith("rediss+cluster://"):
        return _cluster_client("rediss://" + url[len("rediss+cluster://") :], settings)
    url, flagged = _pop_cluster_flag(url)
    if cluster is None:
        cluster = settings.cluster or flagged
    if cluster:
        return _cluster_client(url, settings)
    return _standalone_client(url, settings)


async def send_commands(connection: Any, *commands: Sequence[Any]) -> None:
    """Write ``commands`` on a dedicated redis-py ``connection`` (connecting if need be).

    Like ``connection.send_packed_command(connection.pack_commands(commands))``
    but bounded by :func:`asyncio.timeout` instead of redis-py's
    :func:`asyncio.wait_for`: on Python 3.11, ``wait_for`` drops a cancellation
    that arrives while the write completes, so a background loop (a lease
    renewal, a subscription reader) could outlive ``task.cancel()``, and
    ``asyncio.run()`` would wait for it forever at shutdown. A write that takes
    longer than the connection's socket timeout raises redis-py's
    ``TimeoutError`` and drops the connection. (The clients that
    :func:`create_client` builds write this way on every connection.)

    Example: ``await send_commands(conn, ("SUBSCRIBE", "a", "b"), ("PING",))``
    """
    packed = connection.pack_commands(commands)
    await _write_bounded(connection, connection.send_packed_command, packed, False)


async def _write_bounded(connection: Any, send: Any, command: Any, check_health: bool) -> None:
    """``send(command, check_health)`` under :func:`asyncio.timeout`, not ``wait_for``."""
    limit = connection.socket_timeout
    if not limit:  # no bound: redis-py writes without wait_for already
        await send(command, check_health)
        return
    if not connection.is_connected:
        # As redis-py connects here: bounded by the connect and socket timeouts, with its retry.
        await connection.connect_check_health(check_health=False)
    connection.socket_timeout = None  # redis-py writes without wait_for when it has none
    try:
        async with asyncio.timeout(limit):
            await send(command, check_health)
    except TimeoutError:
        await connection.disconnect(nowait=True)
        raise RedisTimeoutError(f"no write to Redis within the socket timeout ({limit}s)") from None
    finally:
        connection.socket_timeout = limit


class _BoundedWrites:
    """Mixed into redis-py's connection classes: every write goes through :func:`_write_bounded`.

    Without it a user's own loop of cache calls, cancelled once on Python
    3.11, may survive the cancellation (the write's ``wait_for`` drops it;
    8 to 35 loops of 200 did), and ``asyncio.run()`` or a ``TaskGroup`` waits
    for that loop forever.
    """

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        send = super().send_packed_command  # type: ignore[misc]
        await _write_bounded(self, send, command, check_health)


_BOUNDED: dict[type[Any], type[Any]] = {}


def _with_bounded_writes(cls: type[Any]) -> type[Any]:
    """``cls`` with :class:`_BoundedWrites` mixed in (same name and module, for reprs)."""
    bounded = _BOUNDED.get(cls)
    if bounded is None:
        namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
        bounded = _BOUNDED[cls] = type(cls.__name__, (_BoundedWrites, cls), namespace)
    return bounded
