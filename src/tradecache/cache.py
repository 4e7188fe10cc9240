"""The :class:`Cache` facade: owns the client and exposes stores and primitives.

Connect with a URL, :class:`~tradecache.config.Settings`, or nothing (then
``Settings()`` reads ``TRADECACHE_*`` / ``REDIS_URL`` from the environment)::

    from tradecache import Cache

    async with Cache.connect("redis://localhost:6379/0", namespace="prod") as cache:
        await cache.ping()

    cache = await Cache.connect()          # awaitable too; close it yourself
    await cache.close()

An existing redis-py client can be handed in (dependency injection); the
cache then never closes it::

    cache = await Cache.connect(client=my_redis, namespace="prod")
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from functools import cached_property
from types import TracebackType
from typing import Any, Literal

from redis.asyncio.cluster import RedisCluster

from .codec import Codec, get_codec
from .config import Settings
from .connection import Client, create_client, redact_url
from .context import Context
from .coordination.breaker import Breakers, CircuitBreaker
from .coordination.events import EventBus
from .coordination.idempotency import Final_, Idempotency, OnRedisDown
from .coordination.lock import Lock, LockManager, OnLost
from .coordination.state import SharedState
from .errors import ConnectionLost, redis_errors
from .keys import Keys
from .local_cache import LocalCache
from .metrics import Metrics, OperationStats
from .stores.accounts import AccountCache
from .stores.bots import BotCache
from .stores.exchanges import ExchangeCache
from .stores.ohlcv import OHLCVCache
from .stores.orders import OrdersCache
from .stores.processes import ProcessCache
from .stores.symbols import SymbolCache
from .stores.tickers import TickCache
from .stores.trades import TradesCache

__all__ = ["Cache", "Health", "connect"]

Mode = Literal["standalone", "cluster", "sentinel"]


@dataclass(frozen=True, slots=True)
class Health:
    """What :meth:`Cache.health` found out about the server (latency in ms)."""

    ok: bool
    mode: Mode
    version: str
    latency_ms: float
    nodes: int
    used_memory: int
    maxmemory: int
    maxmemory_policy: str
    warnings: tuple[str, ...]


# Policies that may evict keys without a TTL, i.e. locks, claims and queues.
_UNSAFE_EVICTION = frozenset(
    {"allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu"}
    | {"volatile-random", "volatile-ttl"}
)


def _parse_version(text: str) -> tuple[int, int, int]:
    parts = [*text.split("."), "0", "0"][:3]
    return (int(parts[0]), int(parts[1]), int(parts[2]))


class Cache:
    """One connection to Redis, with every store and coordination primitive.

    Build it with :meth:`Cache.connect`. Attributes:

    * ``client``: the redis-py asyncio client (``Redis`` or ``RedisCluster``);
    * ``settings``: the :class:`~tradecache.config.Settings` in force;
    * ``keys``: the :class:`~tradecache.keys.Keys` schema of the namespace;
    * ``codec``: the :class:`~tradecache.codec.Codec` models are stored with;
    * ``metrics``: per-operation counters behind :meth:`stats`;
    * ``server_version``: ``(major, minor, patch)`` of the server, read at connect;
    * ``local_cache``: the :class:`~tradecache.local_cache.LocalCache` serving hot
      reads from memory when the ``local_cache`` setting is on, else None.
    """

    def __init__(
        self,
        client: Client,
        settings: Settings,
        *,
        owns_client: bool = True,
        server_version: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.codec: Codec = get_codec(settings.codec)
        self.metrics = Metrics()
        self.server_version = server_version
        self._owns_client = owns_client
        self._closed = False
        self.local_cache: LocalCache | None = None
        if settings.local_cache:
            prefix = self.keys.prefix
            self.local_cache = LocalCache(
                client,
                [prefix + "ticker:", prefix + "exmeta:", prefix + "symmeta:"],
                max_size=settings.local_cache_size,
                health_interval=settings.local_cache_health_interval,
                connect_timeout=settings.connect_timeout + settings.socket_timeout,
            )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<Cache {state} url={redact_url(self.settings.url)!r} "
            f"namespace={self.settings.namespace!r} mode={self.mode}>"
        )

    @property
    def mode(self) -> Mode:
        """``"standalone"``, ``"cluster"`` or ``"sentinel"``."""
        if isinstance(self.client, RedisCluster):
            return "cluster"
        if self.settings.url.startswith("redis+sentinel://") and self._owns_client:
            return "sentinel"
        return "standalone"

    @property
    def is_cluster(self) -> bool:
        """True on a Redis Cluster."""
        return isinstance(self.client, RedisCluster)

    def supports(self, major: int, minor: int = 0) -> bool:
        """True when the server is at least ``major.minor`` (feature detection).

        Example: ``cache.supports(7)`` before using sharded pub/sub.
        """
        return self.server_version >= (major, minor, 0)

    # --- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        url: str | Settings | None = None,
        *,
        namespace: str | None = None,
        settings: Settings | None = None,
        client: Client | None = None,
        cluster: bool | None = None,
        local_cache: bool | None = None,
        **overrides: Any,
    ) -> _Connecting:
        """Connect to Redis; await it, or use it as an async context manager.

        ``url`` may be a URL or a ``Settings``; ``namespace`` and any other
        keyword (``socket_timeout=0.2``, ``codec="msgpack"`` ...) override the
        settings. With ``client=`` the given redis-py client is used as is and
        never closed by the cache. ``local_cache=True`` serves hot reads from
        memory, kept correct by Redis invalidations (see
        :mod:`tradecache.local_cache`; size: ``local_cache_size=``).

        Raises :class:`~tradecache.errors.ConnectionLost` if the server cannot
        be reached within the latency budget.

        Example::

            async with Cache.connect("redis://localhost:6379/0", namespace="prod") as cache:
                ...
        """
        if isinstance(url, Settings):
            settings, url = url, None
        values: dict[str, Any] = dict(overrides)
        if url is not None:
            values["url"] = url
        if namespace is not None:
            values["namespace"] = namespace
        if cluster is not None:
            values["cluster"] = cluster
        if local_cache is not None:
            values["local_cache"] = local_cache
        if settings is None:
            settings = Settings(**values)
        elif values:
            settings = Settings(**(settings.model_dump() | values))
        return _Connecting(cls, settings, client)

    async def _start(self) -> None:
        try:
            info = await self._info("server")
        except BaseException:
            await self.close()
            raise
        self.server_version = _parse_version(str(info.get("redis_version", "0.0.0")))
        if self.local_cache is not None:
            await self.local_cache.start()

    @redis_errors
    async def _info(self, section: str) -> dict[str, Any]:
        if isinstance(self.client, RedisCluster):
            # One node answers for the server section; memory is summed by health().
            reply = await self.client.info(section, target_nodes=RedisCluster.RANDOM)
        else:
            reply = await self.client.info(section)
        return dict(reply)

    async def close(self) -> None:
        """Close the client (unless it was handed in). Safe to call twice.

        Stops the stores' background work first (lock renewals, breaker and
        ticker subscriptions) and hands back the locks and bot claims this
        cache still holds, so other processes need not wait for their TTL.
        ``async with Cache.connect(...)`` calls it.

        Example: ``cache = await Cache.connect(); ...; await cache.close()``
        """
        if self._closed:
            return
        self._closed = True
        if "locks" in self.__dict__:  # background releases need the client: first
            await self.locks.aclose()
        if "breakers" in self.__dict__:
            await self.breakers.close()
        if "tickers" in self.__dict__:  # its watchers' subscriptions and reader tasks
            await self.tickers.close()
        if self.local_cache is not None:
            await self.local_cache.close()
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> Cache:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- health --------------------------------------------------------------------------------

    async def ping(self) -> float:
        """Round-trip time of a ``PING`` in seconds; raises ``ConnectionLost`` when down.

        Example: ``rtt = await cache.ping()``
        """
        started = time.perf_counter()
        try:
            await self._ping()
        except ConnectionLost:
            self.metrics.observe("cache.ping", time.perf_counter() - started, error=True)
            raise
        elapsed = time.perf_counter() - started
        self.metrics.observe("cache.ping", elapsed)
        return elapsed

    @redis_errors
    async def _ping(self) -> None:
        await self.client.ping()

    async def health(self) -> Health:
        """Server mode, version, latency, memory and eviction-policy warnings.

        Raises ``ConnectionLost`` when the server is down (it never reports a
        dead server as merely unhealthy: a caller must not mistake that).

        Example::

            report = await cache.health()
            if report.warnings: log.warning("redis: %s", report.warnings)
        """
        latency = await self.ping()
        memory, nodes = await self._memory()
        version = ".".join(map(str, self.server_version))
        policy = str(memory.get("maxmemory_policy", "noeviction"))
        warnings = []
        if policy in _UNSAFE_EVICTION:
            warnings.append(
                f"maxmemory-policy {policy} may evict locks, claims and queued orders; "
                "use noeviction"
            )
        if not self.supports(6, 2):
            warnings.append(f"Redis {version} is older than the supported 6.2")
        return Health(
            ok=not warnings,
            mode=self.mode,
            version=version,
            latency_ms=latency * 1000,
            nodes=nodes,
            used_memory=int(memory.get("used_memory", 0)),
            maxmemory=int(memory.get("maxmemory", 0)),
            maxmemory_policy=policy,
            warnings=tuple(warnings),
        )

    @redis_errors
    async def _memory(self) -> tuple[dict[str, Any], int]:
        if not isinstance(self.client, RedisCluster):
            return dict(await self.client.info("memory")), 1
        replies = await self.client.info("memory", target_nodes=RedisCluster.PRIMARIES)
        per_node = list(replies.values())
        merged = dict(per_node[0])
        merged["used_memory"] = sum(int(node.get("used_memory", 0)) for node in per_node)
        return merged, len(per_node)

    # --- stores and primitives: each is built on first use from the context --------------------

    @cached_property
    def context(self) -> Context:
        """The :class:`~tradecache.context.Context` the stores are built with."""
        return Context(
            client=self.client,
            keys=self.keys,
            codec=self.codec,
            settings=self.settings,
            metrics=self.metrics,
            server_version=self.server_version,
            local_cache=self.local_cache,
        )

    @cached_property
    def tickers(self) -> TickCache:
        """Latest tickers per exchange, with push updates (a ``TickCache``)."""
        return TickCache(self.context)

    @cached_property
    def ohlcv(self) -> OHLCVCache:
        """Candle series per exchange, symbol and timeframe (an ``OHLCVCache``)."""
        return OHLCVCache(self.context)

    @cached_property
    def orders(self) -> OrdersCache:
        """The order queue and order status records (an ``OrdersCache``)."""
        return OrdersCache(self.context)

    @cached_property
    def trades(self) -> TradesCache:
        """Public and user trade streams (a ``TradesCache``)."""
        return TradesCache(self.context)

    @cached_property
    def accounts(self) -> AccountCache:
        """Balances and positions per account (an ``AccountCache``)."""
        return AccountCache(self.context)

    @cached_property
    def processes(self) -> ProcessCache:
        """Process registry, heartbeats and system health (a ``ProcessCache``)."""
        return ProcessCache(self.context)

    @cached_property
    def exchanges(self) -> ExchangeCache:
        """Exchange metadata, read through from ``exchanges.loader`` (an ``ExchangeCache``)."""
        return ExchangeCache(self.context)

    @cached_property
    def symbols(self) -> SymbolCache:
        """Market metadata, read through from ``symbols.loader`` (a ``SymbolCache``)."""
        return SymbolCache(self.context)

    @cached_property
    def bots(self) -> BotCache:
        """Bot symbol claims (leases), opening marks and status documents (a ``BotCache``)."""
        return BotCache(self.context, self.locks)

    @cached_property
    def locks(self) -> LockManager:
        """The lock machinery (renewal and wake-up connections) behind :meth:`lock`."""
        return LockManager(self.context)

    def lock(
        self,
        name: str,
        ttl: float = 10.0,
        wait: float | None = None,
        renew: bool = True,
        on_lost: OnLost | None = None,
        *,
        wait_replicas: int | None = None,
    ) -> Lock:
        """A distributed lock with fencing; ``async with`` it to get a ``Lease``.

        ``ttl`` bounds a lease (renewed every ``ttl/3`` while ``renew``);
        ``wait=None`` blocks, ``0`` tries once, ``s`` raises ``WaitTimeout``
        after ``s`` seconds; ``on_lost(lease)`` runs once if a lease is lost.
        ``wait_replicas=n`` (default ``Settings.wait_replicas``) grants a lease
        only once ``n`` replicas have it (``WAIT``), else releases it and raises
        ``NotReplicated``. See :mod:`tradecache.coordination.lock` for the
        guarantees and the ``failover`` guide for what survives a failover.

        Example::

            async with cache.lock("rebalance", ttl=5) as lease:
                await lease.fenced_set(cache.keys.key("plan", "current"), plan_json)
        """
        return self.locks.lock(
            name, ttl=ttl, wait=wait, renew=renew, on_lost=on_lost, wait_replicas=wait_replicas
        )

    @cached_property
    def breakers(self) -> Breakers:
        """The registry behind :meth:`breaker` (one instance per breaker name)."""
        return Breakers(self.context)

    def breaker(self, name: str, **options: Any) -> CircuitBreaker:
        """The circuit breaker ``name``, shared by every process (same name, same instance).

        Options (see :class:`~tradecache.coordination.breaker.BreakerConfig`):
        ``failure_threshold=5, window=60, reset_timeout=30, half_open_probes=1,
        success_threshold=1, exclude=(), failure_rate=None, minimum_calls=10,
        probe_timeout=None, redis_backoff=1.0``.

        Example::

            breaker = cache.breaker("binance", failure_threshold=5, reset_timeout=30)
            async with breaker:
                await exchange.create_order(...)
        """
        return self.breakers.get(name, **options)

    def idempotency(
        self,
        scope: str,
        ttl: float = 86_400.0,
        in_flight_ttl: float = 30.0,
        on_redis_down: OnRedisDown = "fail_closed",
        final: tuple[Final_, ...] = (),
    ) -> Idempotency:
        """Run-once execution for ``scope``: ``await idem.run(key_or_payload, fn)``.

        See :mod:`tradecache.coordination.idempotency` for the guarantees.

        Example::

            idem = cache.idempotency("orders")
            result = await idem.run(order, lambda: exchange.create_order(**order))
        """
        return Idempotency(
            self.context,
            scope,
            ttl=ttl,
            in_flight_ttl=in_flight_ttl,
            on_redis_down=on_redis_down,
            final=final,
        )

    @cached_property
    def events(self) -> EventBus:
        """The event bus: ``publish(topic, payload)``, ``subscribe(*topics)`` (an ``EventBus``)."""
        return EventBus(self.context)

    def state(self, name: str, ttl: float | None = None) -> SharedState:
        """A shared JSON value named ``name``; it expires ``ttl`` s after a write (None: never).

        Example::

            limits = cache.state("risk-limits")
            await limits.update(lambda v: {**(v or {}), "halted": True})
        """
        return SharedState(self.context, name, ttl)

    def stats(self) -> dict[str, OperationStats]:
        """Per-operation counts, errors and latency percentiles of this process.

        Example: ``cache.stats()["cache.ping"].p99_ms``
        """
        return self.metrics.snapshot()


class _Connecting:
    """What :meth:`Cache.connect` returns: awaitable and an async context manager."""

    __slots__ = ("_cache", "_client", "_cls", "_settings")

    def __init__(self, cls: type[Cache], settings: Settings, client: Client | None) -> None:
        self._cls = cls
        self._settings = settings
        self._client = client
        self._cache: Cache | None = None

    async def _open(self) -> Cache:
        if self._client is None:
            cache = self._cls(create_client(settings=self._settings), self._settings)
        else:
            cache = self._cls(self._client, self._settings, owns_client=False)
        await cache._start()
        return cache

    def __await__(self) -> Generator[Any, None, Cache]:
        return self._open().__await__()

    async def __aenter__(self) -> Cache:
        self._cache = await self._open()
        return self._cache

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Only reached after __aenter__ succeeded, so the cache exists.
        await self._cache.close()  # type: ignore[union-attr]


def connect(
    url: str | Settings | None = None, *, namespace: str | None = None, **kwargs: Any
) -> _Connecting:
    """Shorthand for :meth:`Cache.connect`.

    Example: ``async with tradecache.connect(namespace="prod") as cache: ...``
    """
    return Cache.connect(url, namespace=namespace, **kwargs)
