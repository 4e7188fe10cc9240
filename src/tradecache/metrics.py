"""Per-operation counters and latency histograms with bounded memory.

Every :class:`~tradecache.cache.Cache` owns a :class:`Metrics`; stores record
into it and ``cache.stats()`` reads it::

    stats = cache.stats()
    stats["tickers.set"].count, stats["tickers.set"].p99_ms

Latencies go into log-linear buckets (HDR-style: 16 sub-buckets per power of
two from 1 µs to ~70 min), so a histogram is a fixed array of counters however
many samples it sees, and percentiles are accurate to about 6 %.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import update_wrapper
from typing import Concatenate, ParamSpec, Protocol, TypeVar

__all__ = ["Histogram", "Metrics", "OperationStats", "instrumented"]

_SUB_BUCKETS = 16
_MAX_EXPONENT = 32  # 2**32 µs ~ 71 minutes
_BUCKETS = _SUB_BUCKETS * (_MAX_EXPONENT + 1)


def _bucket(micros: float) -> int:
    if micros < 1.0:
        return 0
    mantissa, exponent = math.frexp(micros)  # micros = mantissa * 2**exponent, 0.5 <= m < 1
    sub = int((mantissa - 0.5) * 2 * _SUB_BUCKETS)
    return min((exponent - 1) * _SUB_BUCKETS + sub, _BUCKETS - 1)


def _bucket_value(index: int) -> float:
    """Upper bound, in µs, of bucket ``index``."""
    exponent, sub = divmod(index, _SUB_BUCKETS)
    return math.ldexp(0.5 + (sub + 1) / (2 * _SUB_BUCKETS), exponent + 1)


class Histogram:
    """A fixed-size log-linear latency histogram (microsecond resolution)."""

    __slots__ = ("count", "counts", "max_us", "total_us")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.total_us = 0.0
        self.max_us = 0.0

    def record(self, seconds: float) -> None:
        """Add one sample, in seconds."""
        micros = seconds * 1e6
        self.counts[_bucket(micros)] += 1
        self.count += 1
        self.total_us += micros
        self.max_us = max(self.max_us, micros)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) in milliseconds; 0.0 when empty."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(self.count * q / 100))
        seen = 0
        for index, bucket_count in enumerate(self.counts):  # pragma: no branch
            seen += bucket_count
            if seen >= rank:
                return min(_bucket_value(index), self.max_us) / 1000
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class OperationStats:
    """A snapshot of one operation's counters; latencies in milliseconds."""

    count: int
    errors: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


class Metrics:
    """Counters and histograms per operation name.

    Example::

        metrics = Metrics()
        started = time.perf_counter()
        ...
        metrics.observe("orders.submit", time.perf_counter() - started)
        metrics.snapshot()["orders.submit"].p99_ms
    """

    __slots__ = ("_errors", "_histograms")

    def __init__(self) -> None:
        self._histograms: dict[str, Histogram] = {}
        self._errors: dict[str, int] = {}

    def observe(self, operation: str, seconds: float, *, error: bool = False) -> None:
        """Record one call of ``operation`` that took ``seconds``."""
        histogram = self._histograms.get(operation)
        if histogram is None:
            histogram = self._histograms[operation] = Histogram()
            self._errors[operation] = 0
        histogram.record(seconds)
        if error:
            self._errors[operation] += 1

    def snapshot(self) -> dict[str, OperationStats]:
        """Every operation seen so far, by name."""
        result = {}
        for name, h in sorted(self._histograms.items()):
            result[name] = OperationStats(
                count=h.count,
                errors=self._errors[name],
                mean_ms=h.total_us / h.count / 1000,
                p50_ms=h.percentile(50),
                p90_ms=h.percentile(90),
                p99_ms=h.percentile(99),
                max_ms=h.max_us / 1000,
            )
        return result

    def reset(self) -> None:
        """Forget every sample."""
        self._histograms.clear()
        self._errors.clear()


class _HasMetrics(Protocol):
    metrics: Metrics


S = TypeVar("S", bound=_HasMetrics)
P = ParamSpec("P")
T = TypeVar("T")


def instrumented(
    operation: str,
) -> Callable[
    [Callable[Concatenate[S, P], Awaitable[T]]], Callable[Concatenate[S, P], Awaitable[T]]
]:
    """Time a coroutine method into ``self.metrics`` under ``operation``.

    Example::

        class TickCache:
            @instrumented("tickers.get")
            async def get(self, exchange, symbol): ...
    """

    def decorate(
        fn: Callable[Concatenate[S, P], Awaitable[T]],
    ) -> Callable[Concatenate[S, P], Awaitable[T]]:
        async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
            started = time.perf_counter()
            try:
                result = await fn(self, *args, **kwargs)
            except Exception:
                self.metrics.observe(operation, time.perf_counter() - started, error=True)
                raise
            self.metrics.observe(operation, time.perf_counter() - started)
            return result

        update_wrapper(wrapper, fn)
        return wrapper

    return decorate
