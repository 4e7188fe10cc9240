"""Explicit, typed configuration.

``Settings()`` reads ``TRADECACHE_*`` variables and ``REDIS_URL`` from the
environment; nothing is read at import time and no ``.env`` file is loaded
unless you ask for it::

    from tradecache import Settings

    settings = Settings()                                  # environment only
    settings = Settings(_env_file=".env")                  # opt-in .env
    settings = Settings(url="redis://cache:6379/0", namespace="prod", pool_size=64)

Every duration is in seconds. An invalid value fails at construction with a
:class:`~tradecache.errors.ConfigError` naming the environment variable::

    TRADECACHE_POOL_SIZE=-1  ->  ConfigError: TRADECACHE_POOL_SIZE: ...
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import pydantic
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError

__all__ = ["DEFAULT_URL", "ENV_PREFIX", "Settings"]

ENV_PREFIX = "TRADECACHE_"
DEFAULT_URL = "redis://localhost:6379/0"

_NAMESPACE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_URL_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
)


def _positive(value: float, *, allow_zero: bool = False) -> float:
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError("must be a finite number " + (">= 0" if allow_zero else "> 0"))
    return value


class Settings(BaseSettings):
    """Connection, latency budget and store limits.

    Example::

        Settings(url="redis+cluster://10.0.0.1:7000", namespace="prod",
                 socket_timeout=0.25, retry_attempts=0)
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=None,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    # --- where -----------------------------------------------------------------------------
    url: str = Field(
        default=DEFAULT_URL,
        validation_alias=AliasChoices("TRADECACHE_URL", "REDIS_URL"),
        repr=False,
        description="redis://, rediss:// (TLS), unix://, redis+cluster://, redis+sentinel://",
    )
    namespace: str = Field(default="tc", description="prefix of every key and channel")
    cluster: bool = Field(default=False, description="treat a redis:// URL as a cluster seed")
    username: str | None = None
    password: SecretStr | None = Field(default=None, description="overrides the URL password")
    client_name: str | None = None

    # --- TLS -------------------------------------------------------------------------------
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"

    # --- Sentinel --------------------------------------------------------------------------
    sentinel_service: str | None = Field(
        default=None, description="master name, when the URL does not carry one"
    )
    sentinel_password: SecretStr | None = Field(
        default=None, description="password of the sentinels themselves (not of the data nodes)"
    )

    # --- latency budget ------------------------------------------------------------------
    connect_timeout: float = Field(default=0.5, description="TCP/unix connect timeout")
    socket_timeout: float = Field(default=1.0, description="read timeout of one command")
    retry_attempts: int = Field(default=1, ge=0, le=10, description="retries after a failure")
    retry_backoff: float = Field(default=0.01, description="first retry delay")
    retry_backoff_cap: float = Field(default=0.1, description="longest retry delay")
    pool_size: int = Field(default=32, ge=1, le=10_000, description="max connections")
    pool_timeout: float = Field(default=0.5, description="wait for a free pooled connection")
    cluster_pool_size: int = Field(
        default=512,
        ge=1,
        le=100_000,
        description="max connections per Cluster node (redis-py's cluster pool cannot wait)",
    )

    # --- replication (see the "failover" guide) --------------------------------------------
    wait_replicas: int = Field(
        default=0,
        ge=0,
        le=16,
        description="replicas that must confirm a lock, claim or order submit (WAIT); 0: none",
    )
    wait_replicas_timeout: float = Field(
        default=0.5, description="how long a write waits for those replicas (NotReplicated after)"
    )

    # --- encoding ----------------------------------------------------------------------------
    codec: Literal["json", "msgpack"] = "json"

    # --- store limits ------------------------------------------------------------------------
    stale_after: float = Field(default=30.0, description="a ticker older than this is stale")
    ticker_cross_tolerance: float = Field(
        default=0.001,
        description="a ticker whose bid exceeds its ask by more than this fraction is rejected",
    )
    max_candles: int = Field(default=10_000, ge=1, description="candles kept per series")
    order_ttl: float = Field(default=86_400.0, description="lifetime of a terminal order")
    stream_maxlen: int = Field(default=100_000, ge=1, description="approximate stream cap")
    event_backlog: int = Field(default=10_000, ge=1, description="events kept for backfill")
    subscriber_queue: int = Field(default=10_000, ge=1, description="per-subscriber buffer")
    metadata_ttl: float = Field(default=86_400.0, description="exchange/symbol cache TTL")
    negative_ttl: float = Field(default=30.0, description="TTL of a cached loader miss")
    metadata_load_timeout: float = Field(
        default=10.0, description="fill lock TTL: how long other processes wait for a loader"
    )
    process_stale_after: float = Field(
        default=60.0, description="a process without a heartbeat for this long is stale"
    )
    process_retention: float = Field(
        default=86_400.0, description="how long a stopped process record is kept"
    )

    # --- client-side caching (local_cache.py) ------------------------------------------------
    local_cache: bool = Field(
        default=False,
        description="serve hot reads (tickers, exchange/symbol metadata) from process memory",
    )
    local_cache_size: int = Field(
        default=10_000, ge=1, le=10_000_000, description="entries kept by the local cache (LRU)"
    )
    local_cache_health_interval: float = Field(
        default=1.0,
        description="a tracking connection silent this long is pinged; twice: flushed",
    )

    @field_validator(
        "connect_timeout",
        "socket_timeout",
        "pool_timeout",
        "stale_after",
        "order_ttl",
        "metadata_ttl",
        "negative_ttl",
        "metadata_load_timeout",
        "process_stale_after",
        "process_retention",
        "local_cache_health_interval",
    )
    @classmethod
    def _check_positive(cls, value: float) -> float:
        return _positive(value)

    @field_validator("wait_replicas_timeout")
    @classmethod
    def _check_wait_timeout(cls, value: float) -> float:
        return _positive(value)

    @field_validator("retry_backoff", "retry_backoff_cap", "ticker_cross_tolerance")
    @classmethod
    def _check_non_negative(cls, value: float) -> float:
        return _positive(value, allow_zero=True)

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not _NAMESPACE.fullmatch(value):
            raise ValueError("1-64 characters of A-Z a-z 0-9 _ . - (no braces, colons or spaces)")
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(_URL_SCHEMES):
            raise ValueError("scheme must be one of " + ", ".join(_URL_SCHEMES))
        return value

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except pydantic.ValidationError as exc:
            raise _config_error(exc) from None

    def __repr_args__(self) -> Any:
        from .connection import redact_url

        yield "url", redact_url(self.url)
        yield from super().__repr_args__()

    @property
    def redacted_url(self) -> str:
        """The URL with any password replaced by ``***`` (safe to log)."""
        from .connection import redact_url

        return redact_url(self.url)


def _config_error(exc: pydantic.ValidationError) -> ConfigError:
    first = exc.errors()[0]
    loc = first["loc"]
    name = str(loc[0]) if loc else "settings"
    variable = name if name.isupper() else ENV_PREFIX + name.upper()
    if name == "url":
        variable = "TRADECACHE_URL/REDIS_URL"
    message = first["msg"]
    if "input" in first and name not in ("password", "sentinel_password", "url"):
        message += f" (got {first['input']!r})"
    return ConfigError(variable, message)
