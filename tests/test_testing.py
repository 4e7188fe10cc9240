"""tradecache.testing: polling with a deadline, and DB leases on a shared server."""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
from collections.abc import Iterator

import pytest

from tradecache.errors import WaitTimeout
from tradecache.server import RedisServer
from tradecache.testing import wait_until, wait_until_sync
from tradecache.testing.lease import LEASE_KEY, MARKER_KEY, DbLease, LeaseError

# --- wait_until --------------------------------------------------------------------------------


async def test_wait_until_returns_the_first_truthy_value() -> None:
    calls = itertools.count(1)
    assert await wait_until(lambda: next(calls) >= 3 and "done") == "done"


async def test_wait_until_awaits_async_predicates() -> None:
    calls = itertools.count(1)

    async def second_call() -> int:
        await asyncio.sleep(0)
        call = next(calls)
        return call if call >= 2 else 0

    assert await wait_until(second_call, timeout=2) == 2


async def test_wait_until_times_out_naming_the_condition() -> None:
    with pytest.raises(WaitTimeout, match=r"replica promoted: still 0 after 0.05s"):
        await wait_until(lambda: 0, timeout=0.05, message="replica promoted")
    with pytest.raises(TimeoutError, match=r"functools.partial\(<class 'bool'>, 0\)"):
        await wait_until(functools.partial(bool, 0), timeout=0.01)


def test_wait_until_sync() -> None:
    flag = threading.Event()
    threading.Timer(0.01, flag.set).start()
    assert wait_until_sync(flag.is_set, timeout=5) is True
    with pytest.raises(WaitTimeout, match=r"test_wait_until_sync\.<locals>\.<lambda>: still None"):
        wait_until_sync(lambda: None, timeout=0.02)


# --- DbLease -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared() -> Iterator[RedisServer]:
    with RedisServer(port=0) as server:
        yield server


@pytest.fixture
def url(shared: RedisServer) -> Iterator[str]:
    yield shared.url + "/0"
    shared.client().flushall()


def test_leases_are_exclusive_and_never_db_0(shared: RedisServer, url: str) -> None:
    with DbLease.acquire(url, "a") as first, DbLease.acquire(url, "b") as second:
        assert (first.db, second.db) == (1, 2)
        assert shared.client(db=1).get(LEASE_KEY) == "a"
        assert shared.client(db=1).exists(MARKER_KEY)
        assert "db=1" in repr(first)
    assert shared.client(db=1).get(LEASE_KEY) is None  # released
    with pytest.raises(ValueError, match="DB 0 is never leased"):
        DbLease.acquire(url, "c", dbs=[0, 1])


def test_all_taken_names_the_holders(shared: RedisServer, url: str) -> None:
    shared.client(db=3).set("customer", "data")  # foreign: no marker
    with (
        DbLease.acquire(url, "holder", dbs=[2], heartbeat=False),
        pytest.raises(LeaseError, match=r"db2: holder, db3: foreign data"),
    ):
        DbLease.acquire(url, "late", dbs=[2, 3])
    assert shared.client(db=3).keys("*") == ["customer"]  # untouched, no lease left


def test_a_db_of_an_old_test_run_is_reused(shared: RedisServer, url: str) -> None:
    leftovers = shared.client(db=4)
    leftovers.set(MARKER_KEY, "1")
    leftovers.set("t0ldrungw0n1:k", "crashed mid-test")
    with DbLease.acquire(url, "new", dbs=[4]) as lease:
        assert lease.db == 4


async def test_a_crashed_holders_lease_expires(url: str) -> None:
    crashed = DbLease.acquire(url, "crashed", ttl=0.2, heartbeat=False)  # never renewed
    with pytest.raises(LeaseError):
        DbLease.acquire(url, "next", dbs=[crashed.db], heartbeat=False)

    def take() -> DbLease | None:
        try:
            return DbLease.acquire(url, "next", dbs=[crashed.db], heartbeat=False)
        except LeaseError:
            return None

    lease = await wait_until(take, timeout=5, message="lease expired")
    assert lease.db == crashed.db
    lease.release()
    crashed.client.close()


async def test_heartbeat_renews_then_notices_loss(shared: RedisServer, url: str) -> None:
    lease = DbLease.acquire(url, "beating", ttl=0.3)
    client = shared.client(db=lease.db)
    seen = {"renewals": 0, "ttl": client.pttl(LEASE_KEY)}

    def renewed_three_times() -> bool:
        ttl = client.pttl(LEASE_KEY)
        seen["renewals"] += ttl > seen["ttl"]
        seen["ttl"] = ttl
        return seen["renewals"] >= 3

    await wait_until(renewed_three_times, timeout=10)  # alive well past its 0.3 s ttl
    client.delete(LEASE_KEY)
    await wait_until(lambda: lease.lost, timeout=5)
    assert not lease.refresh()
    lease.release()
    lease.release()  # idempotent


async def test_heartbeat_survives_an_outage() -> None:
    with RedisServer(port=0) as server:
        lease = DbLease.acquire(server.url, "patient", ttl=0.3)
        server.kill()
        await wait_until(lambda: lease.last_error is not None, timeout=5)
        server.restart()  # ephemeral: the lease key is gone now
        await wait_until(lambda: lease.lost, timeout=5)
        lease.release()


def test_config_disabled_means_16_databases() -> None:
    with (
        RedisServer(port=0, args=["--rename-command", "CONFIG", ""]) as server,
        DbLease.acquire(server.url, "managed", heartbeat=False) as lease,
    ):
        assert lease.db == 1
