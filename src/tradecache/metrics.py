"""Per-operation counters and latency histograms with bounded memory.

Every :class:`~tradecache.cache.Cache` owns a :class:`Metrics`; stores record
into it and ``cache.stats()`` reads it::

    stats = cache.stats()
    stats["tickers.set"].count, stats["tickers.set"].p99_ms

Latencies go into log-linear buckets (HDR-style: 16 sub-buckets per power of
two from 1 µs to ~70 min), so a histogram is a fixed array of counters however
many samples it sees, and percentiles are accurate to about 6 %.

**Prometheus** (extra ``prometheus``: ``pip install 'tradecache[prometheus]'``).
:class:`PrometheusCollector` exports a cache's metrics as
``tradecache_operations_total``, ``tradecache_operation_errors_total`` and the
histogram ``tradecache_operation_duration_seconds``, labelled by ``operation``
(and ``namespace``). Serve them on their own, independent of ``tradecache top``::

    from tradecache.metrics import start_http_server, prometheus_app

    server, thread = start_http_server(cache, port=9464)   # GET /metrics, own thread
    app.mount("/metrics", prometheus_app(cache))           # or inside an ASGI app

or add the collector to your own registry:
``REGISTRY.register(PrometheusCollector(cache))``. Reading happens in the
exporter's thread while the event loop records: every read copies first, and a
series' ``_count`` is the sum of its copied buckets, so a scrape is consistent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, update_wrapper
from typing import TYPE_CHECKING, Any, Concatenate, Final, ParamSpec, Protocol, TypeVar, cast

if TYPE_CHECKING:
    from threading import Thread
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector as _CollectorBase
    from prometheus_client.registry import CollectorRegistry
else:  # prometheus_client is optional: registries only duck-type collectors at run time
    _CollectorBase = object

__all__ = [
    "DEFAULT_BUCKETS",
    "Histogram",
    "Metrics",
    "OperationStats",
    "PrometheusCollector",
    "instrumented",
    "prometheus_app",
    "prometheus_registry",
    "prometheus_text",
    "prometheus_wsgi_app",
    "start_http_server",
]

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

    def cumulative(self, bounds: Sequence[float]) -> tuple[list[int], int, float]:
        """Cumulative counts at each upper bound (seconds, ascending), the count and the sum.

        Samples are counted at the first bound >= their bucket's upper edge
        (rounding up by at most ~6 %). The count is the sum of a copy of the
        buckets, so it matches them even while another thread records.

        Example: ``counts, n, total_s = histogram.cumulative((0.001, 0.01, 0.1))``
        """
        counts = list(self.counts)  # one atomic copy; the event loop may be recording
        total_s = self.total_us / 1e6
        targets = _targets(tuple(bounds))
        per_bound = [0] * (len(bounds) + 1)  # the last slot: above every bound (+Inf)
        for index, bucket_count in enumerate(counts):
            if bucket_count:
                per_bound[targets[index]] += bucket_count
        cumulative, running = [], 0
        for value in per_bound[:-1]:
            running += value
            cumulative.append(running)
        return cumulative, running + per_bound[-1], total_s


@lru_cache(maxsize=8)
def _targets(bounds: tuple[float, ...]) -> tuple[int, ...]:
    """For each histogram bucket, the index of the first bound >= its upper edge."""
    micros = [bound * 1e6 for bound in bounds]
    return tuple(
        next((i for i, limit in enumerate(micros) if _bucket_value(index) <= limit), len(micros))
        for index in range(_BUCKETS)
    )


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

    def operations(self) -> list[tuple[str, Histogram, int]]:
        """``(name, histogram, errors)`` of every operation, sorted; safe from another thread.

        Example: ``for name, histogram, errors in cache.metrics.operations(): ...``
        """
        histograms = sorted(self._histograms.items())  # a copy: safe while others record
        return [(name, h, self._errors.get(name, 0)) for name, h in histograms]


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


# --- Prometheus exposition (extra "prometheus") -------------------------------------------------

DEFAULT_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the exported latency histogram: 100 µs to 10 s."""


def _prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core
    except ImportError:
        raise ModuleNotFoundError(
            "Prometheus exposition needs prometheus-client: pip install 'tradecache[prometheus]'",
            name="prometheus_client",
        ) from None
    return prometheus_client


def _metrics_of(source: Metrics | _HasMetrics) -> Metrics:
    return source if isinstance(source, Metrics) else source.metrics


class PrometheusCollector(_CollectorBase):
    """A prometheus_client collector of a :class:`Metrics` (or of ``cache.metrics``).

    Exports, labelled by ``operation`` plus ``labels`` (default: the cache's
    ``namespace`` when it has one):

    * ``<prefix>_operations_total``: calls (counter);
    * ``<prefix>_operation_errors_total``: calls that raised (counter);
    * ``<prefix>_operation_duration_seconds``: latency histogram (``buckets``).

    Example::

        from prometheus_client import REGISTRY
        REGISTRY.register(PrometheusCollector(cache))
    """

    def __init__(
        self,
        source: Metrics | _HasMetrics,
        *,
        prefix: str = "tradecache",
        labels: Mapping[str, str] | None = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        _prometheus()
        self.metrics = _metrics_of(source)
        self.prefix = prefix
        if labels is None:
            namespace = getattr(getattr(source, "keys", None), "namespace", None)
            labels = {} if namespace is None else {"namespace": namespace}
        self.labels = dict(labels)
        self.buckets = tuple(sorted(float(bound) for bound in buckets))

    def collect(self) -> Iterator[Metric]:
        """The three metric families, read from the metrics now (prometheus_client API).

        Example: ``[family.name for family in PrometheusCollector(cache).collect()]``
        """
        core = _prometheus().core
        names = ["operation", *self.labels]
        values = list(self.labels.values())
        calls = core.CounterMetricFamily(
            f"{self.prefix}_operations", "Calls of each tradecache operation.", labels=names
        )
        errors = core.CounterMetricFamily(
            f"{self.prefix}_operation_errors",
            "Calls of each tradecache operation that raised.",
            labels=names,
        )
        latency = core.HistogramMetricFamily(
            f"{self.prefix}_operation_duration_seconds",
            "Latency of each tradecache operation (bounds rounded up by at most 6%).",
            labels=names,
        )
        for operation, histogram, failed in self.metrics.operations():
            cumulative, count, total = histogram.cumulative(self.buckets)
            series = [operation, *values]
            calls.add_metric(series, count)
            errors.add_metric(series, failed)
            edges = [
                (repr(bound), float(n)) for bound, n in zip(self.buckets, cumulative, strict=True)
            ]
            latency.add_metric(series, [*edges, ("+Inf", float(count))], sum_value=total)
        yield calls
        yield errors
        yield latency


def prometheus_registry(source: Metrics | _HasMetrics, **options: Any) -> CollectorRegistry:
    """A new ``CollectorRegistry`` holding only a :class:`PrometheusCollector` of ``source``.

    ``options`` go to the collector (``prefix``, ``labels``, ``buckets``).
    Example: ``generate_latest(prometheus_registry(cache))``
    """
    registry = _prometheus().CollectorRegistry()
    registry.register(PrometheusCollector(source, **options))
    return cast("CollectorRegistry", registry)


def prometheus_text(source: Metrics | _HasMetrics, **options: Any) -> bytes:
    """The Prometheus text exposition of ``source``'s metrics, now.

    Example: ``print(prometheus_text(cache).decode())``
    """
    return cast(bytes, _prometheus().generate_latest(prometheus_registry(source, **options)))


def prometheus_app(source: Metrics | _HasMetrics, **options: Any) -> Callable[..., Any]:
    """An ASGI app answering every request with ``source``'s metrics (mount it at /metrics).

    Example (Starlette/FastAPI): ``app.mount("/metrics", prometheus_app(cache))``
    """
    app = _prometheus().make_asgi_app(prometheus_registry(source, **options))
    return cast("Callable[..., Any]", app)


def prometheus_wsgi_app(source: Metrics | _HasMetrics, **options: Any) -> Callable[..., Any]:
    """A WSGI app answering every request with ``source``'s metrics.

    Example: ``wsgiref.simple_server.make_server("", 9464, prometheus_wsgi_app(cache))``
    """
    app = _prometheus().make_wsgi_app(prometheus_registry(source, **options))
    return cast("Callable[..., Any]", app)


def start_http_server(
    source: Metrics | _HasMetrics,
    port: int = 9464,
    addr: str = "127.0.0.1",
    **options: Any,
) -> tuple[WSGIServer, Thread]:
    """Serve ``source``'s metrics at ``http://addr:port/metrics`` from a daemon thread.

    ``port=0`` picks a free port (``server.server_port``). Stop it with
    ``server.shutdown(); server.server_close()``.

    Example::

        server, thread = start_http_server(cache, port=9464)
    """
    registry = prometheus_registry(source, **options)
    server, thread = _prometheus().start_http_server(port, addr=addr, registry=registry)
    return cast("tuple[WSGIServer, Thread]", (server, thread))
