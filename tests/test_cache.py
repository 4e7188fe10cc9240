import pytest

import tradecache
from tradecache import Cache, Settings
from tradecache.cache import _parse_version
from tradecache.connection import create_client


async def test_cache_fixture_pings_on_both_topologies(cache):
    assert await cache.ping() > 0
    assert cache.server_version >= (6, 2, 0)
    assert cache.supports(6, 2)
    assert not cache.supports(99)
    assert cache.mode == ("cluster" if cache.is_cluster else "standalone")
    stats = cache.stats()["cache.ping"]
    assert stats.count == 1 and stats.errors == 0


async def test_health_reports_version_memory_and_policy(cache):
    report = await cache.health()
    assert report.version == ".".join(map(str, cache.server_version))
    assert report.nodes == (3 if cache.is_cluster else 1)
    assert report.used_memory > 0
    assert report.latency_ms > 0
    assert report.maxmemory_policy == "noeviction"
    assert report.ok and report.warnings == ()


async def test_health_warns_about_evicting_policies(redis_url):
    async with Cache.connect(redis_url, namespace="h") as cache:
        await cache.client.config_set("maxmemory-policy", "allkeys-lru")
        try:
            report = await cache.health()
        finally:
            await cache.client.config_set("maxmemory-policy", "noeviction")
    assert not report.ok
    assert "allkeys-lru" in report.warnings[0]


async def test_connect_forms(redis_url):
    cache = await Cache.connect(redis_url, namespace="a", codec="msgpack")
    assert cache.keys.prefix == "a:"
    assert cache.codec.name == "msgpack"
    await cache.close()
    await cache.close()  # idempotent
    assert "closed" in repr(cache)

    async with tradecache.connect(Settings(url=redis_url, namespace="b")) as cache:
        assert cache.settings.namespace == "b"
        assert "open" in repr(cache)

    base = Settings(url=redis_url, namespace="c", pool_size=5)
    async with Cache.connect(settings=base, namespace="d") as cache:
        assert (cache.settings.namespace, cache.settings.pool_size) == ("d", 5)
    async with Cache.connect(settings=base) as cache:
        assert cache.settings is base


async def test_injected_client_is_never_closed(redis_url):
    client = create_client(redis_url)
    async with Cache.connect(client=client, namespace="di") as cache:
        assert cache.client is client
        await cache.ping()
    assert await client.ping()  # still usable: the cache did not own it
    await client.aclose()


async def test_repr_never_shows_the_password(redis_url):
    cache = Cache(create_client(redis_url), Settings(url="redis://u:hunter2@h:1/0"))
    assert "hunter2" not in repr(cache)
    assert "u:***@h" in repr(cache)
    await cache.close()


def test_sentinel_mode_is_reported():
    client = create_client("redis+sentinel://127.0.0.1:1/m")
    cache = Cache(client, Settings(url="redis+sentinel://127.0.0.1:1/m"))
    assert cache.mode == "sentinel"


def test_parse_version():
    assert _parse_version("7.0.15") == (7, 0, 15)
    assert _parse_version("7") == (7, 0, 0)


async def test_failed_connect_closes_the_client():
    with pytest.raises(tradecache.ConnectionLost):
        await Cache.connect("redis://127.0.0.1:1/0")


async def test_connect_with_an_explicit_cluster_flag(redis_url):
    async with Cache.connect(redis_url, namespace="flag", cluster=False) as cache:
        assert not cache.is_cluster
        assert cache.settings.cluster is False


async def test_health_warns_about_an_unsupported_server_version(redis_url):
    async with Cache.connect(redis_url, namespace="old") as cache:
        cache.server_version = (6, 0, 16)
        report = await cache.health()
    assert not report.ok
    assert any("older than the supported 6.2" in warning for warning in report.warnings)
