"""The tradecache exception hierarchy.

Every error the library raises is a :class:`TradecacheError`, so a caller can
always tell a *miss* (``None``) from an *outage* (:class:`ConnectionLost`) or a
*bad input* (:class:`ValidationError`)::

    from tradecache.errors import ConnectionLost, ValidationError

    try:
        ticker = await cache.tickers.get("binance", "BTC/USDT")
    except ConnectionLost:
        ...  # Redis is unreachable: stop trading, do not assume "no ticker"
    if ticker is None:
        ...  # a real miss

Errors that have a natural builtin counterpart also subclass it
(``ConnectionLost`` is a ``ConnectionError``, ``ValidationError`` is a
``ValueError``, ``WaitTimeout`` is a ``TimeoutError``), so generic handlers
keep working.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from redis import exceptions as redis_exceptions

__all__ = [
    "CircuitOpen",
    "Claimed",
    "CommandError",
    "ConfigError",
    "ConnectionLost",
    "InProgress",
    "KeyReuse",
    "LockLost",
    "NotFound",
    "NotReplicated",
    "ReplayedFailure",
    "TradecacheError",
    "ValidationError",
    "WaitTimeout",
    "redis_errors",
    "translate_redis_errors",
]


class TradecacheError(Exception):
    """Base class of every error raised by tradecache."""


class ConnectionLost(TradecacheError, ConnectionError):
    """Redis could not be reached within the configured latency budget.

    Raised instead of returning ``None`` or hanging: a trading system must be
    able to tell "no data" from "no Redis".
    """


class ValidationError(TradecacheError, ValueError):
    """An input was rejected before anything was written.

    ``field`` names the offending field (``"price"``, ``"symbol"``,
    ``"TRADECACHE_POOL_SIZE"`` ...), ``reason`` says what is wrong with it.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.reason))


class ConfigError(ValidationError):
    """A setting (an environment variable or a ``Settings`` argument) is invalid."""


class NotFound(TradecacheError, LookupError):
    """An operation needed an existing record (``update`` of an unknown order ...)."""


class CommandError(TradecacheError):
    """Redis answered with an error reply the library did not expect."""


class LockLost(TradecacheError):
    """A lease (lock or claim) is no longer held by its owner."""


class InProgress(TradecacheError):
    """An idempotent operation with this key is still running elsewhere."""


class KeyReuse(TradecacheError):
    """An idempotency key was reused with a different payload."""


class ReplayedFailure(TradecacheError):
    """An idempotent operation already ran and failed with an error classified final.

    The failure is replayed instead of running the operation again;
    ``error_type`` and ``message`` describe the original exception.
    """

    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        self.message = message
        super().__init__(f"already failed with {error_type}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.error_type, self.message))


class CircuitOpen(TradecacheError):
    """A circuit breaker is open: the guarded call was not made.

    ``retry_after`` is the number of seconds until the breaker lets a probe
    through (``None`` when unknown).
    """

    def __init__(self, name: str, retry_after: float | None = None) -> None:
        self.name = name
        self.retry_after = retry_after
        suffix = "" if retry_after is None else f", retry after {retry_after:.3f}s"
        super().__init__(f"circuit {name!r} is open{suffix}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.retry_after))


class Claimed(TradecacheError):
    """A symbol is already claimed by another bot (``holder``)."""

    def __init__(self, key: str, holder: str | None) -> None:
        self.key = key
        self.holder = holder
        super().__init__(f"{key} is claimed by {holder!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.holder))


class NotReplicated(TradecacheError):
    """Fewer replicas than asked (``wait_replicas=``) acknowledged a write in time.

    The write happened on the master; a failover may still lose it.
    ``acked`` replicas confirmed it, ``wanted`` were asked for. A lock or
    claim is released before this is raised (it was never handed out); an
    order stays submitted (``reply`` holds the script's reply, and a retry of
    the same submit is idempotent and waits again).
    """

    def __init__(self, acked: int, wanted: int, reply: Any = None) -> None:
        self.acked = acked
        self.wanted = wanted
        self.reply = reply
        super().__init__(f"{acked} of {wanted} replicas acknowledged the write in time")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.acked, self.wanted, self.reply))


class WaitTimeout(TradecacheError, TimeoutError):
    """A bounded wait (``tickers.next``, ``lock(wait=...)`` ...) ran out."""


# Connection-level failures of redis-py, including its pool timeout
# ("No connection available") and socket timeouts of a stalled server.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis_exceptions.ConnectionError,
    redis_exceptions.TimeoutError,
    redis_exceptions.BusyLoadingError,
    redis_exceptions.ClusterDownError,
    redis_exceptions.TryAgainError,
    redis_exceptions.MasterDownError,
    redis_exceptions.ReadOnlyError,
    redis_exceptions.SlotNotCoveredError,  # a Cluster slot without a master (failover)
    ConnectionError,
    OSError,
)


def translate(exc: BaseException) -> TradecacheError:
    """Return the tradecache error that stands for a redis-py exception."""
    if isinstance(exc, TradecacheError):
        return exc
    if isinstance(exc, redis_exceptions.RedisClusterException) and "slot" not in str(exc):
        # "Redis Cluster cannot be connected", "All nodes are down" ...
        return ConnectionLost(f"Redis unreachable: {exc}")
    if isinstance(exc, _CONNECTION_ERRORS):
        return ConnectionLost(f"Redis unreachable: {exc}")
    if isinstance(exc, AttributeError | TypeError):
        return ConnectionLost(f"Redis connection closed while in use: {exc!r}")
    return CommandError(f"{type(exc).__name__}: {exc}")


_TRANSLATED: tuple[type[BaseException], ...] = (
    redis_exceptions.RedisError,
    redis_exceptions.RedisClusterException,
    ConnectionError,
    OSError,
)
_REDIS_ASYNCIO = f"{os.sep}redis{os.sep}asyncio{os.sep}"


def _broken_under_us(exc: BaseException) -> bool:
    """An AttributeError/TypeError from inside redis-py's asyncio connection code.

    During a Cluster failover redis-py closes every connection of a node
    (``RedisCluster.aclose()`` after CLUSTERDOWN, a pipeline retry) while other
    tasks are still using some of them: their next read or write fails with
    ``'NoneType' object has no attribute 'writelines'`` or similar
    (redis-py #3546). That is a lost connection, not a bug of the caller.
    """
    tb = exc.__traceback__
    inside = False
    while tb is not None:
        inside = inside or _REDIS_ASYNCIO in tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return inside


@contextmanager
def translate_redis_errors() -> Iterator[None]:
    """Re-raise redis-py failures inside the block as tradecache errors.

    For async generators and other places a decorator does not fit::

        with translate_redis_errors():
            reply = await client.xreadgroup(...)
    """
    try:
        yield
    except TradecacheError:
        raise
    except (AttributeError, TypeError) as exc:
        if not _broken_under_us(exc):
            raise
        raise translate(exc) from exc
    except _TRANSLATED as exc:
        raise translate(exc) from exc


P = ParamSpec("P")
T = TypeVar("T")


def redis_errors(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Decorate a coroutine function so redis-py failures become tradecache errors.

    ``redis.ConnectionError`` and friends become :class:`ConnectionLost`; any
    other error reply becomes :class:`CommandError`. Errors that already are
    :class:`TradecacheError` pass through untouched.
    """

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except TradecacheError:
            raise
        except (AttributeError, TypeError) as exc:
            if not _broken_under_us(exc):
                raise
            raise translate(exc) from exc
        except _TRANSLATED as exc:
            raise translate(exc) from exc

    return wrapper


def redis_errors_iter(
    fn: Callable[P, AsyncIterator[T]],
) -> Callable[P, AsyncIterator[T]]:
    """The :func:`redis_errors` counterpart for async generator functions."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
        with translate_redis_errors():
            async for item in fn(*args, **kwargs):
                yield item

    return wrapper
