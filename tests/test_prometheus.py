"""Prometheus exposition of a cache's metrics (tradecache.metrics, extra "prometheus")."""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tradecache import Cache
from tradecache.errors import ConnectionLost
from tradecache.metrics import (
    DEFAULT_BUCKETS,
    Histogram,
    Metrics,
    PrometheusCollector,
    prometheus_app,
    prometheus_registry,
    prometheus_text,
    prometheus_wsgi_app,
    start_http_server,
)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_histogram_cumulative_counts() -> None:
    histogram = Histogram()
    for seconds in (0.00005, 0.0002, 0.0008, 0.003, 0.003, 20.0):
        histogram.record(seconds)
    counts, total, total_s = histogram.cumulative((0.0001, 0.001, 0.01))
    assert counts == [1, 3, 5]
    assert total == 6
    assert total_s == pytest.approx(20.00705)
    # An empty histogram, and bounds that cover everything.
    assert Histogram().cumulative((1.0,)) == ([0], 0, 0.0)
    histogram = Histogram()
    histogram.record(0.5)
    assert histogram.cumulative(DEFAULT_BUCKETS)[0][-1] == 1


def test_bucket_edges_round_up_by_at_most_six_percent() -> None:
    histogram = Histogram()
    histogram.record(0.000995)  # 995 µs: its bucket (992..1024 µs) ends above 1 ms
    histogram.record(0.000930)
    counts, _, _ = histogram.cumulative((0.001, 0.0011))
    assert counts == [1, 2]


def test_metrics_operations_lists_every_operation() -> None:
    metrics = Metrics()
    metrics.observe("b.op", 0.001)
    metrics.observe("a.op", 0.002, error=True)
    assert [(name, h.count, errors) for name, h, errors in metrics.operations()] == [
        ("a.op", 1, 1),
        ("b.op", 1, 0),
    ]


async def test_collector_exports_calls_errors_and_latency(cache: Cache) -> None:
    for _ in range(3):
        await cache.ping()
    await cache.tickers.get("binance", "BTC/USDT")
    cache.metrics.observe("tickers.get", 0.5, error=True)
    samples = _samples(prometheus_text(cache).decode())
    ns = cache.keys.namespace
    ping = _labels(operation="cache.ping", namespace=ns)
    get = _labels(operation="tickers.get", namespace=ns)
    assert samples[("tradecache_operations_total", ping)] == 3
    assert samples[("tradecache_operation_errors_total", ping)] == 0
    assert samples[("tradecache_operations_total", get)] == 2
    assert samples[("tradecache_operation_errors_total", get)] == 1
    stats = cache.stats()["tickers.get"]
    assert samples[("tradecache_operation_duration_seconds_count", get)] == stats.count
    assert samples[("tradecache_operation_duration_seconds_sum", get)] == pytest.approx(
        stats.mean_ms * stats.count / 1000
    )
    inf = _labels(operation="tickers.get", namespace=ns, le="+Inf")
    assert samples[("tradecache_operation_duration_seconds_bucket", inf)] == 2
    half = _labels(operation="tickers.get", namespace=ns, le="0.25")
    assert samples[("tradecache_operation_duration_seconds_bucket", half)] == 1
    edges = [
        key
        for key in samples
        if key[0].endswith("_bucket") and ("operation", "cache.ping") in key[1]
    ]
    assert len(edges) == len(DEFAULT_BUCKETS) + 1


def test_collector_of_plain_metrics_with_options() -> None:
    metrics = Metrics()
    metrics.observe("orders.submit", 0.002)
    text = prometheus_text(
        metrics, prefix="bot", labels={"service": "executor"}, buckets=(0.01, 0.001)
    ).decode()
    samples = _samples(text)
    series = _labels(operation="orders.submit", service="executor")
    assert samples[("bot_operations_total", series)] == 1
    bucket = _labels(operation="orders.submit", service="executor", le="0.001")
    assert samples[("bot_operation_duration_seconds_bucket", bucket)] == 0
    bucket = _labels(operation="orders.submit", service="executor", le="0.01")
    assert samples[("bot_operation_duration_seconds_bucket", bucket)] == 1
    assert "namespace" not in text
    collector = PrometheusCollector(metrics)
    assert collector.labels == {} and collector.buckets == DEFAULT_BUCKETS
    registry = CollectorRegistry()
    registry.register(collector)
    assert (
        registry.get_sample_value("tradecache_operations_total", {"operation": "orders.submit"})
        == 1
    )


async def test_errors_are_counted_for_a_dead_server(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    async with Cache.connect(server.url, namespace="dead") as cache:
        server.stop()
        with pytest.raises(ConnectionLost):
            await cache.tickers.get("binance", "BTC/USDT")
        registry = prometheus_registry(cache)
    labels = {"operation": "tickers.get", "namespace": "dead"}
    assert registry.get_sample_value("tradecache_operation_errors_total", labels) == 1
    assert registry.get_sample_value("tradecache_operations_total", labels) == 1


async def test_scrape_the_http_server(cache: Cache) -> None:
    await cache.ping()
    server, thread = start_http_server(cache, port=0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200
                return response.read().decode()

        first = _samples(await asyncio.to_thread(scrape))
        await cache.ping()
        second = _samples(await asyncio.to_thread(scrape))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    key = (
        "tradecache_operations_total",
        _labels(operation="cache.ping", namespace=cache.keys.namespace),
    )
    assert first[key] == 1 and second[key] == 2
    assert not thread.is_alive()


async def test_asgi_app() -> None:
    metrics = Metrics()
    metrics.observe("events.publish", 0.001)
    app = prometheus_app(metrics)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/metrics",
        "query_string": b"",
        "headers": [],
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    body = b"".join(message.get("body", b"") for message in sent[1:]).decode()
    assert 'tradecache_operations_total{operation="events.publish"} 1.0' in body


def test_wsgi_app() -> None:
    metrics = Metrics()
    metrics.observe("state.set", 0.001)
    app = prometheus_wsgi_app(metrics)
    environ: dict[str, Any] = {"PATH_INFO": "/metrics"}
    setup_testing_defaults(environ)
    statuses: list[str] = []
    body = b"".join(app(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["200 OK"]
    assert b'tradecache_operations_total{operation="state.set"} 1.0' in body


def test_without_the_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'tradecache\[prometheus\]'"):
        PrometheusCollector(Metrics())
