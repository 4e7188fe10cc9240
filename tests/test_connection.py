import asyncio
import socket
import time

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import TimeoutError as RedisTimeoutError

from tradecache import Cache, Settings
from tradecache.connection import (
    create_client,
    is_cluster,
    parse_sentinel_url,
    redact_url,
    send_commands,
)
from tradecache.errors import ConfigError, ConnectionLost
from tradecache.testing import wait_until

# Written to a stopped server, it fills the socket buffers and the write waits.
TOO_BIG_FOR_THE_BUFFERS = b"x" * (64 * 2**20)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("rediss://u:p%40w@h/0", "rediss://u:***@h/0"),
        ("redis+sentinel://:pw@a:1,b:2/m", "redis+sentinel://:***@a:1,b:2/m"),
        ("unix:///tmp/r.sock?db=1&password=pw", "unix:///tmp/r.sock?db=1&password=***"),
        ("redis://h:1/0", "redis://h:1/0"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_parse_sentinel_url():
    a = parse_sentinel_url("redis+sentinel://user:p%3Aw@s1:26380,s2/mymaster/2?x=1")
    assert a.sentinels == [("s1", 26380), ("s2", 26379)]
    assert (a.service, a.db, a.username, a.password) == ("mymaster", 2, "user", "p:w")
    b = parse_sentinel_url("redis+sentinel://s1")
    assert (b.service, b.db, b.username, b.password) == (None, 0, None, None)
    with pytest.raises(ConfigError, match="bad sentinel port"):
        parse_sentinel_url("redis+sentinel://s1:x/m")
    with pytest.raises(ConfigError, match="at least one host"):
        parse_sentinel_url("redis+sentinel:///m")
    with pytest.raises(ConfigError, match="bad database"):
        parse_sentinel_url("redis+sentinel://s1/m/zero")


async def test_standalone_client_uses_a_blocking_pool(redis_url):
    client = create_client(redis_url, settings=Settings(pool_size=3, pool_timeout=0.2))
    try:
        assert isinstance(client, Redis)
        pool = client.connection_pool
        assert isinstance(pool, BlockingConnectionPool)
        assert pool.max_connections == 3
        assert await client.ping()
    finally:
        await client.aclose()


async def test_unix_and_tls_urls_pick_their_connection_class(tmp_path):
    unix = create_client(f"unix://{tmp_path}/r.sock?db=2")
    assert issubclass(unix.connection_pool.connection_class, UnixDomainSocketConnection)
    tls = create_client(
        "rediss://:pw@localhost:6380/0",
        settings=Settings(ssl_ca_certs="/nonexistent/ca.pem", ssl_cert_reqs="none"),
    )
    assert issubclass(tls.connection_pool.connection_class, SSLConnection)
    assert tls.connection_pool.connection_kwargs["ssl_ca_certs"] == "/nonexistent/ca.pem"
    assert "pw" not in repr(tls)
    await unix.aclose()
    await tls.aclose()


async def test_cluster_flags():
    port = closed_port()
    for client in (
        create_client(f"redis+cluster://127.0.0.1:{port}"),
        create_client(f"redis://127.0.0.1:{port}", cluster=True),
        create_client(f"redis://127.0.0.1:{port}/0?cluster=true"),
        create_client(Settings(url=f"redis://127.0.0.1:{port}", cluster=True)),
        create_client(
            f"rediss+cluster://127.0.0.1:{port}", settings=Settings(ssl_cert_reqs="none")
        ),
    ):
        assert is_cluster(client)
        await client.aclose()
    plain = create_client(f"redis://127.0.0.1:{port}/0?cluster=no&client_name=x")
    assert not is_cluster(plain)
    await plain.aclose()


def test_sentinel_needs_a_service():
    with pytest.raises(ConfigError, match="service name"):
        create_client("redis+sentinel://127.0.0.1:1")
    client = create_client(
        "redis+sentinel://127.0.0.1:1",
        settings=Settings(sentinel_service="m", sentinel_password="pw", username="u", password="p"),
    )
    assert isinstance(client, Redis)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:{port}/0",
        "redis+cluster://127.0.0.1:{port}",
        "redis+sentinel://u:pw@127.0.0.1:{port}/mymaster",
    ],
)
async def test_closed_port_raises_connection_lost_fast(url):
    url = url.format(port=closed_port())
    started = time.monotonic()
    with pytest.raises(ConnectionLost):
        await Cache.connect(url)
    assert time.monotonic() - started < 1.0


async def test_outage_after_connect_raises_connection_lost(redis_server_factory):
    server = redis_server_factory()
    cache = await Cache.connect(server.url, namespace="outage")
    try:
        assert await cache.ping() > 0
        server.stop()
        started = time.monotonic()
        with pytest.raises(ConnectionLost):
            await cache.ping()
        assert time.monotonic() - started < 1.0
        assert cache.stats()["cache.ping"].errors == 1
    finally:
        await cache.close()


# --- send_commands: writes that keep cancellations -----------------------------------------------


async def test_send_commands_writes_several_commands_at_once(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    conn = client.connection_pool.make_connection()
    timeout = conn.socket_timeout
    try:
        await send_commands(conn, ("SET", "tc-send", "1"), ("GET", "tc-send"), ("DEL", "tc-send"))
        assert [await conn.read_response() for _ in range(3)] == [b"OK", b"1", 1]
        assert conn.socket_timeout == timeout  # restored
    finally:
        await conn.disconnect()
        await client.aclose()


async def test_a_reader_loop_always_ends_on_one_cancel(redis_url: str) -> None:
    """What a lease renewal or a subscription reader does; cancelled at every step it takes."""
    client = Redis.from_url(redis_url)
    conn = client.connection_pool.make_connection()
    steps = 0

    async def loop() -> None:
        nonlocal steps
        while True:
            await send_commands(conn, ("PING",))
            steps += 1
            await conn.read_response()

    try:
        for skip in range(40):
            # Connected first: a reconnect waits on the server, and how many loop turns that
            # takes depends on the machine, so the turns counted here are the loop's own.
            await conn.connect()
            task = asyncio.create_task(loop())
            for _ in range(skip):  # let it run `skip` loop iterations, then cancel it there
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=5)
            assert done == {task} and task.cancelled()
            await conn.disconnect()  # a cancelled read leaves a reply behind
        assert steps > 0
    finally:
        await conn.disconnect()
        await client.aclose()


async def test_send_commands_is_bounded_by_the_socket_timeout(redis_server_factory) -> None:
    server = redis_server_factory(port=0)
    client = Redis.from_url(server.url, socket_timeout=0.3)
    conn = client.connection_pool.make_connection()
    await conn.connect()
    server.pause()  # reads nothing: a large write fills the socket buffers and waits
    try:
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError, match="socket timeout"):
            await send_commands(conn, ("SET", "big", TOO_BIG_FOR_THE_BUFFERS))
        assert time.monotonic() - started < 5
        assert not conn.is_connected  # half a command was written: the connection is dropped
        assert conn.socket_timeout == 0.3
    finally:
        server.resume()
        await conn.disconnect()
        await client.aclose()


async def test_a_user_loop_of_cache_calls_always_ends_on_one_cancel(cache) -> None:
    """On Python 3.11 redis-py's write (``wait_for``) dropped such cancellations (35 of 200)."""
    calls = 0

    async def loop() -> None:
        nonlocal calls
        while True:
            await cache.client.set("tc-loop", calls)
            calls += 1

    for skip in range(60):
        task = asyncio.create_task(loop())
        started = calls
        await wait_until(lambda s=started: calls > s + 2, timeout=10)  # its calls are going on
        for _ in range(skip % 7):  # then cancelled at a different point of a call each time
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        assert done == {task} and task.cancelled()


async def test_a_pooled_write_is_bounded_by_the_socket_timeout(redis_server_factory) -> None:
    server = redis_server_factory(port=0)
    async with Cache.connect(server.url, namespace="w", socket_timeout=0.3) as cache:
        await cache.ping()
        server.pause()  # reads nothing: a large write fills the socket buffers and waits
        try:
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):  # the raw client: redis-py's error
                await cache.client.set("big", TOO_BIG_FOR_THE_BUFFERS)
            assert time.monotonic() - started < 5
        finally:
            server.resume()
        assert await cache.ping() > 0  # and the pool works again
