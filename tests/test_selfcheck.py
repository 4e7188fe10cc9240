"""The self-check suite (tradecache.testing.selfcheck) against real servers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from tradecache.cache import Cache
from tradecache.errors import ValidationError
from tradecache.server import RedisServer
from tradecache.testing import selfcheck
from tradecache.testing.plugin import Endpoint
from tradecache.testing.selfcheck import (
    Check,
    CheckFailed,
    Report,
    cluster_verdict,
    describe,
    iter_keys,
    memory_warnings,
    slot_gaps,
    unlink_prefix,
)

NAMES = [
    "connection",
    "namespace",
    "server",
    "memory",
    "basic ops",
    "pub/sub",
    "stream",
    "lock",
    "latency",
    "cluster slots",
    "cleanup",
]


async def _keys(url: str, pattern: str) -> list[bytes]:
    async with Cache.connect(url, namespace="probe") as cache:
        return [key async for key in iter_keys(cache.client, pattern)]


async def test_every_check_passes_and_nothing_is_left(redis_endpoint: Endpoint) -> None:
    report = await selfcheck.run(redis_endpoint.url)
    assert [check.name for check in report.checks] == NAMES, report.to_json()
    assert report.ok and not report.failures, report.to_json()
    assert report.success_rate == 1.0
    assert report.namespace.startswith("tcselfcheck-")
    assert report.mode == redis_endpoint.topology
    assert report.version == ".".join(map(str, redis_endpoint.version))
    assert report.warnings == []
    by_name = {check.name: check for check in report.checks}
    assert by_name["cluster slots"].skipped is (not redis_endpoint.is_cluster)
    if redis_endpoint.is_cluster:
        assert "all 16384 slots covered by 3 range(s), cluster_state ok" in (
            by_name["cluster slots"].detail
        )
        assert "3 node(s)" in by_name["server"].detail
        assert len(report.counted) == 11
    else:
        assert len(report.counted) == 10
    assert by_name["cleanup"].detail.startswith("removed ")
    expected = {"ping_ms", "pubsub_ms", "stream_ms", "lock_ms", "load_ops_per_s"}
    expected |= {"load_p50_ms", "load_p90_ms", "load_p99_ms", "load_max_ms"}
    assert set(report.timings) == expected
    assert 0 < report.timings["load_p50_ms"] <= report.timings["load_p99_ms"]
    assert report.timings["load_p99_ms"] <= report.timings["load_max_ms"]
    assert all(check.duration >= 0 for check in report.checks)
    assert await _keys(redis_endpoint.url, f"{report.namespace}:*") == []
    data = json.loads(report.to_json())
    assert data["ok"] is True and data["success_rate"] == 1.0
    assert [c["name"] for c in data["checks"]] == NAMES
    assert data["namespace"] == report.namespace
    assert report.to_json(indent=None) == json.dumps(data)


async def test_writes_only_inside_its_namespace(
    redis_server_factory: Any,
) -> None:
    server: RedisServer = redis_server_factory()
    client = aioredis.Redis.from_url(server.url)
    await client.config_set("notify-keyspace-events", "KA")
    pubsub = client.pubsub()
    await pubsub.psubscribe("__keyspace@*__:*")
    await pubsub.get_message(timeout=1.0)  # the psubscribe confirmation
    try:
        report = await selfcheck.run(server.url, load=50)
        await client.set("zz-sentinel", "1")
        touched = set()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
            assert message is not None, "the sentinel's notification never came"
            key = message["channel"].decode().partition(":")[2]
            if key == "zz-sentinel":
                break
            touched.add(key)
    finally:
        await pubsub.aclose()
        await client.aclose()
    assert report.ok, report.to_json()
    assert touched  # it did write: tickers, stream, lock, load keys ...
    assert all(key.startswith(report.namespace + ":") for key in touched), touched


async def test_unreachable_server_is_a_failed_connection() -> None:
    report = await selfcheck.run("redis://user:secret@127.0.0.1:1/0")
    assert not report.ok
    assert report.success_rate == 0.0
    [check] = report.checks
    assert check.name == "connection" and not check.ok
    assert check.detail.startswith("ConnectionLost: Redis unreachable")
    assert report.url == "redis://user:***@127.0.0.1:1/0"
    assert "secret" not in report.to_json()


async def test_connection_budget_is_the_check_timeout(redis_url: str) -> None:
    report = await selfcheck.run(redis_url, timeout=1e-6)
    [check] = report.checks
    assert not check.ok and check.detail == "timed out after 1e-06s"


async def test_url_from_the_environment(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.delenv("TRADECACHE_URL", raising=False)
    report = await selfcheck.run(load=20)
    assert report.ok, report.to_json()
    assert report.url == redis_url


async def test_a_namespace_with_keys_is_left_untouched(redis_url: str) -> None:
    async with Cache.connect(redis_url, namespace="mine") as cache:
        await cache.client.set("mine:precious", "1")
        report = await selfcheck.run(redis_url, namespace="mine")
        assert await cache.client.get("mine:precious") == b"1"
    assert [check.name for check in report.checks] == ["connection", "namespace"]
    assert not report.ok
    assert report.checks[1].detail == (
        "namespace 'mine' is not empty (holds 'mine:precious'): nothing written"
    )


async def test_a_failing_check_is_reported_and_the_rest_still_runs(
    redis_server_factory: Any,
) -> None:
    server: RedisServer = redis_server_factory(port=0)
    admin = server.client()
    admin.execute_command(
        "ACL", "SETUSER", "noread", "on", ">pw", "~*", "&*", "+@all", "-xreadgroup"
    )
    admin.close()
    assert server.tcp_url is not None
    url = server.tcp_url.replace("redis://", "redis://noread:pw@")
    report = await selfcheck.run(url, load=20)
    assert [check.name for check in report.failures] == ["stream"]
    [stream] = report.failures
    assert stream.detail.startswith("CommandError: ")
    assert "xreadgroup" in stream.detail
    assert report.success_rate == pytest.approx(9 / 10)
    assert report.checks[-1].name == "cleanup" and report.checks[-1].ok
    assert server.client().dbsize() == 0


async def test_a_check_past_its_budget_times_out_and_cleanup_runs(redis_url: str) -> None:
    report = await selfcheck.run(redis_url, load=10**9, timeout=1.0)
    by_name = {check.name: check for check in report.checks}
    # The load stops itself at 80 % of the budget, or the budget cancels it.
    detail = by_name["latency"].detail
    assert detail == "timed out after 1s" or (
        detail.startswith("only ") and detail.endswith(" of 1000000000 calls done within 0.8s")
    ), detail
    assert not by_name["latency"].ok
    assert by_name["cleanup"].ok
    assert await _keys(redis_url, f"{report.namespace}:*") == []


async def test_memory_and_eviction_warnings_do_not_fail(redis_server_factory: Any) -> None:
    server: RedisServer = redis_server_factory()
    client = server.client()
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used + 16 * 2**20))  # room for the checks' writes
    client.config_set("maxmemory-policy", "allkeys-lru")
    report = await selfcheck.run(server.url, load=20, concurrency=1)
    assert report.ok, report.to_json()
    assert any("allkeys-lru may evict locks" in warning for warning in report.warnings)
    memory = next(check for check in report.checks if check.name == "memory")
    assert "policy allkeys-lru" in memory.detail and "maxmemory " in memory.detail

    # Nearly full: the memory check warns (the writes after it may well fail: not asserted).
    # 95 %, not just over 80 %: closing this client and opening the check's own connections
    # moves used_memory by some kilobytes either way.
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(int(used / 0.95)))
    client.close()
    report = await selfcheck.run(server.url, load=20, concurrency=1)
    assert any(warning.startswith("memory at ") for warning in report.warnings)


def test_run_sync(redis_url: str) -> None:
    report = selfcheck.run_sync(redis_url, load=20, concurrency=2)
    assert report.ok, report.to_json()


@pytest.mark.parametrize(("load", "concurrency", "budget"), [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
async def test_bad_arguments_raise(load: int, concurrency: int, budget: float) -> None:
    with pytest.raises(ValidationError):
        await selfcheck.run(
            "redis://127.0.0.1:1", load=load, concurrency=concurrency, timeout=budget
        )


async def test_iter_keys_and_unlink_prefix_page_through_every_node(cache: Cache) -> None:
    for i in range(5):
        await cache.client.set(cache.keys.key("k", str(i)), "1")
    found = [key async for key in iter_keys(cache.client, cache.keys.all_pattern(), count=1)]
    assert len(found) == 5
    assert await unlink_prefix(cache.client, cache.keys.prefix, batch=2) == 5
    for i in range(4):
        await cache.client.set(cache.keys.key("k", str(i)), "1")
    assert await unlink_prefix(cache.client, cache.keys.prefix, batch=2) == 4
    assert [key async for key in iter_keys(cache.client, cache.keys.all_pattern())] == []


def test_slot_coverage() -> None:
    assert slot_gaps([(0, 5460), (5461, 10922), (10923, 16383)]) == []
    assert slot_gaps([(10, 20), (0, 16383)]) == []
    assert slot_gaps([(0, 99), (200, 300), (250, 16000)]) == [(100, 199), (16001, 16383)]
    assert slot_gaps([]) == [(0, 16383)]
    assert cluster_verdict([(0, 16383)], "ok").startswith("all 16384 slots covered")
    with pytest.raises(CheckFailed, match=r"^100 slot\(s\) not covered: 0-99$"):
        cluster_verdict([(100, 16383)], "ok")
    with pytest.raises(CheckFailed, match="cluster_state is fail"):
        cluster_verdict([(0, 16383)], "fail")


def test_helpers() -> None:
    assert memory_warnings(900, 1000) == ["memory at 90% of maxmemory (900 B of 1000 B)"]
    assert memory_warnings(799, 1000) == []
    assert memory_warnings(10**9, 0) == []
    assert selfcheck._size(512) == "512 B"
    assert selfcheck._size(1536) == "1.5 KiB"
    assert selfcheck._size(5 * 2**20) == "5.0 MiB"
    assert selfcheck._size(3 * 2**30) == "3.0 GiB"
    assert selfcheck._size(2**42) == "4096.0 GiB"
    assert describe(CheckFailed("fence did not increase")) == "fence did not increase"
    assert describe(KeyError("x")) == "KeyError: 'x'"
    assert describe(TimeoutError()) == "TimeoutError"


def test_report_properties() -> None:
    empty = Report(url="u", namespace="n")
    assert not empty.ok and empty.success_rate == 0.0 and empty.failures == []
    report = Report(
        url="u",
        namespace="n",
        checks=[
            Check("a", True, 0.1, "fine"),
            Check("b", False, 0.2, "broken"),
            Check("c", True, 0.0, "n/a", skipped=True),
        ],
    )
    assert [c.name for c in report.counted] == ["a", "b"]
    assert [c.name for c in report.failures] == ["b"]
    assert report.success_rate == 0.5 and not report.ok
    assert report.to_dict()["checks"][2] == {
        "name": "c",
        "ok": True,
        "duration": 0.0,
        "detail": "n/a",
        "skipped": True,
    }


async def test_the_load_stops_itself_within_the_budget(cache: Cache) -> None:
    state = selfcheck._Run(cache, Report(url="u", namespace=cache.keys.namespace), timeout=0.05)
    with pytest.raises(CheckFailed, match=r"^only \d+ of 1000000000 calls done within 0.04s$"):
        await state.latency(10**9, 2)


async def test_a_check_body_past_the_budget_is_cut(cache: Cache) -> None:
    report = Report(url="u", namespace=cache.keys.namespace)
    state = selfcheck._Run(cache, report, timeout=0.01)

    async def forever() -> str:
        await asyncio.Event().wait()
        return "never"

    check = await state.check("slow", forever)
    assert (check.name, check.ok, check.detail) == ("slow", False, "timed out after 0.01s")
    assert report.checks == [check]
