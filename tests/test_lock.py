"""cache.lock: leases with fencing, renewal, loss detection, push wake-up, real faults."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import pytest

from helpers.locking import (
    SPAWN,
    check_exclusive,
    client_ids,
    kill_clients,
    mutex_worker,
    processes,
    receive,
    stale_holder,
)
from tradecache import Cache
from tradecache.coordination.lock import Lease, LockManager, _Link, _Waiter
from tradecache.errors import ConnectionLost, LockLost, ValidationError, WaitTimeout
from tradecache.server import RedisServer
from tradecache.testing import wait_until


async def settled(cache: Cache) -> None:
    """Wait until the background releases of the cache's locks are done."""
    await wait_until(lambda: not cache.locks._tasks, timeout=5, message="background tasks")


# --- grants, fences, ownership -----------------------------------------------------------------


async def test_acquire_release_and_inspect(cache):
    lock = cache.lock("job", ttl=5)
    assert await lock.holder() is None
    assert not await lock.locked()
    async with lock as lease:
        assert isinstance(lease, Lease)
        assert lease.held and not lease.lost.is_set()
        assert lease.name == "job" and lease.ttl == 5.0
        holder = await lock.holder()
        assert holder is not None
        assert (holder.owner, holder.fence) == (lease.owner, lease.fence)
        assert 4 < holder.ttl <= 5
        assert await lock.locked()
        assert str(os.getpid()) in lease.owner
        assert "held" in repr(lease) and "job" in repr(lock)
        assert 4.8 < lease.remaining() <= 5
    assert "released" in repr(lease)
    assert not lease.held
    assert not await lock.locked()
    assert cache.locks.hub.connects == 0  # uncontended: no wake-up connection was opened
    with pytest.raises(LockLost, match="released"):
        lease.ensure_held()


async def test_fences_strictly_increase(cache):
    fences = []
    for _ in range(20):
        async with cache.lock("seq", ttl=2) as lease:
            fences.append(lease.fence)
    assert fences == sorted(set(fences))
    async with cache.lock("other", ttl=2) as other:
        assert other.fence > 0  # every name has its own counter


async def test_fence_survives_a_lost_counter(cache):
    """Evicted or lost counter key: the server clock keeps fences above the old ones."""
    lock = cache.lock("evict", ttl=2)
    async with lock as first:
        pass
    await cache.client.delete(lock.spec.fence_key)
    async with lock as second:
        pass
    assert second.fence > first.fence
    await cache.client.set(lock.spec.fence_key, second.fence + 10**9)  # ahead of the clock
    async with lock as third:
        assert third.fence == second.fence + 10**9 + 1


async def test_wait_zero_tries_once(cache):
    lock = cache.lock("busy", ttl=5, wait=0)
    async with lock as lease:
        with pytest.raises(WaitTimeout, match=lease.owner):
            await lock.acquire()
        got, owner = await lock.try_acquire()
        assert got is None and owner == lease.owner
    got, owner = await lock.try_acquire()
    assert got is not None and owner is None
    await got.release()


async def test_bounded_wait_raises_wait_timeout(cache):
    lock = cache.lock("bounded", ttl=10)
    async with lock:
        started = time.monotonic()
        with pytest.raises(WaitTimeout):
            await lock.acquire(wait=0.3)
        assert time.monotonic() - started >= 0.3
        with pytest.raises(TimeoutError):  # WaitTimeout is a TimeoutError
            async with cache.lock("bounded", wait=0.05):
                pass  # pragma: no cover
    assert cache.locks.hub.waiting == 0  # every waiter left


async def test_waiter_is_woken_by_the_release(cache):
    """The holder's TTL is 30 s: only the release's publish can wake the waiter quickly."""
    lock = cache.lock("push", ttl=30)
    holder = await lock.acquire()
    waiter = asyncio.create_task(lock.acquire(wait=20))
    await wait_until(lambda: cache.locks.hub.waiting == 1, timeout=5)
    await asyncio.sleep(0.05)  # the waiter is subscribed; let it reach its wait
    started = time.monotonic()
    assert await holder.release()
    lease = await asyncio.wait_for(waiter, 10)
    assert time.monotonic() - started < 5  # far below the 30 s TTL slice
    assert lease.fence > holder.fence
    await lease.release()


async def test_many_waiters_share_one_subscription(cache):
    lock = cache.lock("crowd", ttl=30)
    first = await lock.acquire()
    order = []

    async def worker(i):
        async with lock as lease:
            order.append((i, lease.fence))

    tasks = [asyncio.create_task(worker(i)) for i in range(8)]
    await wait_until(lambda: cache.locks.hub.waiting == 8, timeout=5)
    assert cache.locks.hub.channels == 1
    await first.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    fences = [fence for _, fence in order]
    assert len(order) == 8 and fences == sorted(fences)
    assert cache.locks.hub.waiting == 0
    assert cache.locks.hub.connects == 1  # one shared pub/sub connection


async def test_a_process_that_waited_before_queues_on_its_first_try(cache):
    """The subscription outlives the wait: the next contended acquire saves a round trip."""
    lock = cache.lock("warm", ttl=30)
    hub = cache.locks.hub
    for _ in range(2):
        holder = await lock.acquire()
        waiter = asyncio.create_task(lock.acquire(wait=20))
        await wait_until(lambda: cache.client.zcard(lock.spec.queue), timeout=5)  # queued
        await holder.release()
        await (await asyncio.wait_for(waiter, 10)).release()
        assert hub.waiting == 0 and hub.channels == 1  # still subscribed
        assert hub.live(lock.spec.channel)
    assert hub.connects == 1
    async with lock:  # uncontended, with a live subscription: still granted at once
        pass


async def test_idle_subscriptions_are_bounded(cache):
    hub = cache.locks.hub
    hub.max_idle = 2
    for name in ("i1", "i2", "i3", "i4"):
        lock = cache.lock(name, ttl=30)
        holder = await lock.acquire()
        waiter = asyncio.create_task(lock.acquire(wait=20))
        await wait_until(lambda lock=lock: cache.client.zcard(lock.spec.queue), timeout=5)
        await holder.release()
        await (await asyncio.wait_for(waiter, 10)).release()
    assert hub.channels == 2  # the two least recently used were unsubscribed
    assert hub.live(cache.keys.lock_channel("i4"))
    assert not hub.live(cache.keys.lock_channel("i1"))


async def test_a_crashed_holder_expires_and_the_waiter_gets_it(cache):
    """No release is ever published: the waiter wakes at the end of its TTL slice."""
    dead = await cache.lock("crash", ttl=0.5, renew=False).acquire()
    dead._stop()  # the holder "crashed": no watchdog, no timer, never released
    started = time.monotonic()
    async with cache.lock("crash", ttl=5, wait=10) as lease:
        assert time.monotonic() - started < 5
        assert lease.fence > dead.fence


async def test_two_tasks_sharing_one_lock_object_cannot_release_each_other(cache):
    """redis-py's asyncio Lock fails this (its token is thread-local, shared by tasks)."""
    lock = cache.lock("shared", ttl=1.0, renew=False)
    a_inside = asyncio.Event()
    b_has_it = asyncio.Event()

    async def task_a():
        async with lock:
            a_inside.set()
            await b_has_it.wait()  # meanwhile A's lease expires and B acquires

    async def task_b():
        await a_inside.wait()
        async with lock as lease:
            b_has_it.set()
            await asyncio.sleep(0.1)
            assert lease.held
            holder = await lock.holder()
            assert holder is not None and holder.fence == lease.fence  # A did not delete it
            return lease

    a = asyncio.create_task(task_a())
    b_lease = await asyncio.wait_for(task_b(), 10)
    with pytest.raises(LockLost):  # A learns it lost the lease when it leaves the block
        await a
    assert b_lease.fence and not await lock.locked()


async def test_leases_are_not_reentrant(cache):
    lock = cache.lock("reent", ttl=5)
    async with lock:
        with pytest.raises(WaitTimeout):
            await lock.acquire(wait=0)


async def test_nested_different_locks_in_one_task(cache):
    a, b = cache.lock("a", ttl=5), cache.lock("b", ttl=5)
    async with a as la, b as lb:
        assert la.held and lb.held
    assert not la.held and not lb.held


async def test_lease_is_its_own_context_manager(cache):
    lease = await cache.lock("own", ttl=5).acquire()
    async with lease as same:
        assert same is lease
    assert not lease.held
    assert await lease.release() is False  # a second release does nothing


async def test_validation(cache):
    for bad in (0, -1, float("nan"), float("inf"), "10", True, 0.001):
        with pytest.raises(ValidationError, match="ttl"):
            cache.lock("v", ttl=bad)
    for bad in (-1, float("nan"), "1", True):
        with pytest.raises(ValidationError, match="wait"):
            cache.lock("v", wait=bad)
    with pytest.raises(ValidationError, match="name"):
        cache.lock("a{b}")
    with pytest.raises(ValidationError, match="owner"):
        cache.locks.lock("v", owner="bad owner")
    assert cache.lock("v", wait=float("inf")).wait is None
    with pytest.raises(ValidationError, match="wait"):
        await cache.lock("v").acquire(wait=-2)


# --- loss detection and reporting -------------------------------------------------------------


async def test_renewal_keeps_a_lease_past_its_ttl(cache):
    async with cache.lock("renewed", ttl=1.0) as lease:
        await asyncio.sleep(2.5)  # the point: 2.5 TTLs
        assert lease.held
        holder = await cache.lock("renewed").holder()
        assert holder is not None and holder.fence == lease.fence


async def test_taken_over_lease_is_reported_by_the_watchdog(cache):
    calls = []
    lock = cache.lock("taken", ttl=0.3, on_lost=calls.append)
    lease = await lock.acquire()
    await cache.client.delete(lock.spec.key)  # e.g. eviction, FLUSHALL, failover
    await asyncio.wait_for(lease.lost.wait(), 5)
    assert calls == [lease]
    assert "taken over" in (lease.lost_reason or "")
    with pytest.raises(LockLost, match="taken over"):
        lease.ensure_held()
    assert "lost" in repr(lease)
    with pytest.raises(LockLost, match="lost while held"):
        await lease.__aexit__(None, None, None)
    assert cache.stats()["lock.lost"].errors == 1


async def test_without_renewal_the_local_deadline_declares_loss(cache):
    reported = asyncio.Event()

    async def on_lost(lease):
        reported.set()

    lease = await cache.lock("deadline", ttl=0.2, renew=False, on_lost=on_lost).acquire()
    await asyncio.wait_for(lease.lost.wait(), 5)
    await asyncio.wait_for(reported.wait(), 5)  # an async callback runs too
    assert "deadline" in (lease.lost_reason or "")
    assert await lease.release() is False


async def test_a_blocked_event_loop_past_the_deadline_is_caught(cache):
    lease = await cache.lock("blocked", ttl=0.2, renew=False).acquire()
    time.sleep(0.25)  # noqa: ASYNC251 - the point: the loop cannot run the deadline timer
    with pytest.raises(LockLost, match="deadline"):
        lease.ensure_held()
    lease2 = await cache.lock("blocked2", ttl=0.2, renew=False).acquire()
    time.sleep(0.25)  # noqa: ASYNC251
    assert await lease2.release() is False
    assert "deadline" in (lease2.lost_reason or "")
    await settled(cache)
    assert not await cache.lock("blocked2").locked()  # the release still deleted our key


async def test_release_of_an_expired_lease_reports_it(cache):
    lock = cache.lock("gone", ttl=5, renew=False)
    lease = await lock.acquire()
    await cache.client.delete(lock.spec.key)
    assert await lease.release() is False
    assert lease.lost.is_set() and "gone" in (lease.lost_reason or "")


async def test_failing_on_lost_callback_is_logged(cache, caplog):
    def explode(lease):
        raise RuntimeError("callback bug")

    lease = await cache.lock("cb", ttl=0.1, renew=False, on_lost=explode).acquire()
    with caplog.at_level(logging.ERROR, logger="tradecache.coordination.lock"):
        await asyncio.wait_for(lease.lost.wait(), 5)
    assert "callback bug" in caplog.text


async def test_explicit_renew(cache):
    lock = cache.lock("manual", ttl=2, renew=False)
    lease = await lock.acquire()
    await asyncio.sleep(0.1)
    left = lease.remaining()
    await lease.renew()
    assert lease.remaining() > left  # the local deadline moved with the server TTL
    assert await cache.client.pttl(lock.spec.key) > 1900
    assert lease.held
    await cache.client.delete(lock.spec.key)
    with pytest.raises(LockLost, match="taken over"):
        await lease.renew()
    await lease.release()
    with pytest.raises(LockLost, match="released"):
        await lease.renew()


async def test_renewing_by_hand_keeps_the_watchdog(cache):
    lease = await cache.lock("both", ttl=1.0).acquire()
    await lease.renew()  # before the watchdog's first renewal
    await asyncio.sleep(2.5)  # the watchdog still renews
    assert lease.held
    assert await lease.release()


async def test_a_renewal_answered_after_the_deadline_does_not_revive_the_lease(cache):
    """The deadline timer runs before the late reply is read: the lease stays lost."""
    lease = await cache.lock("late", ttl=0.2, renew=False).acquire()
    renewal = asyncio.create_task(lease.renew())
    await asyncio.sleep(0)  # the renewal is sent
    time.sleep(0.25)  # noqa: ASYNC251 - the loop is stalled past the deadline
    with pytest.raises(LockLost, match="deadline"):
        await renewal
    assert not lease.held


async def test_one_lock_object_nested_in_one_task_pairs_each_exit_with_its_lease(cache):
    lock = cache.lock("nested", ttl=0.5, renew=False)

    async def nested():
        async with lock as outer:
            await asyncio.wait_for(outer.lost.wait(), 5)  # expired: the name is free again
            async with lock as inner:
                assert inner.fence > outer.fence and inner.held
            assert not inner.held  # the inner exit released the inner lease

    with pytest.raises(LockLost):  # the outer exit reports the outer lease's loss
        await nested()
    assert not await lock.locked()


# --- fenced writes -----------------------------------------------------------------------------


async def test_fenced_set_rejects_older_fences(cache):
    resource = cache.keys.key("res", "plan")
    lock = cache.lock("plan", ttl=5)
    old = await lock.acquire()
    await old.fenced_set(resource, "v1")
    await old.fenced_set(resource, "v1b")  # the same fence may write again
    await old.release()
    async with lock as new:
        await new.fenced_set(resource, b"v2", ttl=30)
        assert 29 < await cache.client.ttl(resource) <= 30
    stored = await cache.locks.fenced_get(resource)
    assert stored is not None and (stored.value, stored.fence) == (b"v2", new.fence)
    with pytest.raises(LockLost, match="stale fence"):
        await old.fenced_set(resource, "late")
    assert (await cache.locks.fenced_get(resource)).value == b"v2"
    assert await cache.locks.fenced_get(cache.keys.key("res", "none")) is None
    written, fence = await cache.locks.fenced_set(resource, 3, new.fence + 1)
    assert written and fence == new.fence + 1
    assert await cache.client.ttl(resource) == -1  # no ttl: persisted
    with pytest.raises(ValidationError):
        await cache.locks.fenced_set(resource, 3, new.fence + 1, ttl=-1)


async def test_stale_fenced_write_marks_a_held_lease_lost(cache):
    resource = cache.keys.key("res", "x")
    lease = await cache.lock("fx", ttl=5).acquire()
    await cache.locks.fenced_set(resource, "newer", lease.fence + 1)
    with pytest.raises(LockLost):
        await lease.fenced_set(resource, "mine")
    assert lease.lost.is_set() and "newer fence" in (lease.lost_reason or "")
    await lease.release()


# --- cancellation at every await ---------------------------------------------------------------


async def run_cancelled_after(make, steps):
    """Start make() as a task, cancel it after ``steps`` loop iterations; its result or None."""
    task = asyncio.create_task(make())
    for _ in range(steps):
        await asyncio.sleep(0)
    if task.done():
        return task.result(), True
    task.cancel()
    try:
        return await task, True
    except asyncio.CancelledError:
        return None, False


async def test_cancelled_acquire_never_strands_the_lock(cache):
    lock = cache.lock("cancel-acq", ttl=30)
    completed = 0
    for steps in range(200):
        lease, finished = await run_cancelled_after(lock.acquire, steps)
        if finished:
            completed += 1
            await lease.release()
        await settled(cache)
        assert not await lock.locked(), f"stranded after cancellation at step {steps}"
        if completed >= 3:
            break
    assert completed >= 3 and steps > 3


async def test_cancelled_contended_acquire_never_strands_the_lock(cache):
    lock = cache.lock("cancel-wait", ttl=30)
    for steps in range(0, 120, 3):
        holder = await lock.acquire()
        waiter = asyncio.create_task(lock.acquire(wait=10))
        for _ in range(steps):
            await asyncio.sleep(0)
        await holder.release()  # the release races the waiter's steps
        for _ in range(steps % 7):
            await asyncio.sleep(0)
        waiter.cancel()
        try:
            lease = await waiter
        except asyncio.CancelledError:
            pass
        else:
            await lease.release()
        await settled(cache)
        assert not await lock.locked(), f"stranded after cancellation at step {steps}"
        assert cache.locks.hub.waiting == 0


async def test_cancelled_release_still_releases(cache):
    lock = cache.lock("cancel-rel", ttl=30)
    for steps in range(1, 40):  # from 1: a task cancelled before it ever ran did not call release
        lease = await lock.acquire()
        _, finished = await run_cancelled_after(lease.release, steps)
        await settled(cache)
        assert not await lock.locked(), f"stranded after cancelling release at step {steps}"
        if finished and steps > 5:
            break


async def test_cancelled_try_while_held_leaves_the_holder_alone(cache):
    lock = cache.lock("cancel-held", ttl=30)
    holder = await lock.acquire()
    _, finished = await run_cancelled_after(lambda: lock.acquire(wait=0), 1)  # mid-script
    assert not finished
    await settled(cache)
    info = await lock.holder()
    assert info is not None and info.fence == holder.fence  # the compensation did nothing
    assert await holder.release()


async def test_timeout_around_a_blocked_acquire(cache):
    lock = cache.lock("tmo", ttl=30)
    async with lock:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await lock.acquire()
    await settled(cache)
    assert not await lock.locked()
    assert cache.locks.hub.waiting == 0


# --- connection faults (on the shared servers: CLIENT KILL only touches our connections) -------


async def test_killed_renewal_connection_reconnects(cache):
    async with cache.lock("kill-renew", ttl=1.5) as lease:
        await wait_until(lambda: client_ids(cache, f"lock-renew:{cache.locks.id}"), timeout=5)
        for _ in range(4):
            assert await kill_clients(cache, f"lock-renew:{cache.locks.id}") >= 1
            await wait_until(
                lambda: client_ids(cache, f"lock-renew:{cache.locks.id}"), timeout=5
            )  # renewed again
        await asyncio.sleep(1.5)
        assert lease.held  # every kill was survived by the next renewal


async def test_killed_wakeup_connection_still_wakes_waiters(cache):
    lock = cache.lock("kill-wake", ttl=30)
    holder = await lock.acquire()
    waiter = asyncio.create_task(lock.acquire(wait=20))
    await wait_until(lambda: cache.locks.hub.waiting == 1, timeout=5)
    await wait_until(lambda: client_ids(cache, f"lock-wake:{cache.locks.id}"), timeout=5)
    assert await kill_clients(cache, f"lock-wake:{cache.locks.id}") == 1
    await wait_until(lambda: cache.locks.hub.connects >= 2, timeout=5)  # resubscribed
    started = time.monotonic()
    await holder.release()
    lease = await asyncio.wait_for(waiter, 15)
    assert time.monotonic() - started < 5  # by push again, not by the 30 s TTL
    await lease.release()


async def test_release_when_redis_is_gone_raises_connection_lost():
    with RedisServer(port=0) as server:
        async with Cache.connect(server.url, namespace="down", socket_timeout=0.3) as cache:
            lease = await cache.lock("x", ttl=5, renew=False).acquire()
            server.kill()
            with pytest.raises(ConnectionLost):
                await lease.release()
            with pytest.raises(ConnectionLost):
                await cache.lock("y", ttl=5).acquire()


async def test_body_error_wins_over_a_failed_release(caplog):
    with RedisServer(port=0) as server:
        async with Cache.connect(server.url, namespace="down", socket_timeout=0.3) as cache:
            lease = await cache.lock("x", ttl=5, renew=False).acquire()
            server.kill()
            with caplog.at_level(logging.WARNING):
                await lease.__aexit__(KeyError, KeyError("body"), None)  # the body's error wins
            assert "release of lock 'x' failed" in caplog.text
            server.restart()
            with pytest.raises(ConnectionLost):
                async with cache.lock("x", ttl=5, renew=False):
                    server.kill()


# --- the shared wake-up subscriber -------------------------------------------------------------


async def test_wakeups_for_other_waiters_are_ignored(cache):
    lock = cache.lock("targeted", ttl=30)
    holder = await lock.acquire()
    waiter = asyncio.create_task(lock.acquire(wait=20))
    hub = cache.locks.hub
    await wait_until(lambda: cache.client.zcard(lock.spec.queue), timeout=5)  # subscribed, queued
    await cache.client.publish(f"{lock.spec.channel}:{hub.id}", "someone-else")
    await asyncio.sleep(0.1)
    assert not waiter.done()  # not its token: not woken
    await holder.release()
    lease = await asyncio.wait_for(waiter, 10)
    await lease.release()


async def test_a_waiter_leaving_hands_its_wakeup_on(cache):
    """The oldest waiter is woken alone; if it is gone, the next one still wakes by push."""
    lock = cache.lock("baton", ttl=30)
    holder = await lock.acquire()
    first = asyncio.create_task(lock.acquire(wait=20))
    await wait_until(lambda: cache.client.zcard(lock.spec.queue), timeout=5)
    second = asyncio.create_task(lock.acquire(wait=20))

    async def both_queued():
        return await cache.client.zcard(lock.spec.queue) == 2

    await wait_until(both_queued, timeout=5)
    first.cancel()  # the oldest waiter goes away just as the lock is released
    started = time.monotonic()
    await holder.release()
    lease = await asyncio.wait_for(second, 10)
    assert time.monotonic() - started < 5  # not the 30 s TTL slice
    assert first.cancelled()
    await lease.release()
    await settled(cache)
    assert await cache.client.zcard(lock.spec.queue) == 0


async def test_subscription_acks_are_matched_in_order(cache):
    hub = cache.locks.hub
    hub.max_idle = 0  # unsubscribe as soon as the last waiter leaves
    spec = cache.lock("acks").spec
    prefix = spec.channel
    first, again = _Waiter(), _Waiter()
    await hub.watch(spec, "t0", first, 5)  # connects the hub
    hub.unwatch(prefix, "t0")
    # Queued without a pause: SUBSCRIBE, UNSUBSCRIBE, SUBSCRIBE, UNSUBSCRIBE, SUBSCRIBE.
    await hub.watch(spec, "t1", first, 0)  # do not wait for the ack
    hub.unwatch(prefix, "t1")  # its ack will find no channel
    hub.unwatch(prefix, "t1")  # twice: nothing to do
    await hub.watch(spec, "t2", again, 0)
    hub.unwatch(prefix, "t2")
    await hub.watch(spec, "t3", again, 5)  # ready only at the third SUBSCRIBE's ack
    assert again.event.is_set()  # (re)subscribed: woken once, a handoff may have been missed
    assert again.fence is None
    again.event.clear()
    await cache.client.publish(f"{prefix}:{hub.id}", "t3:42")  # what a handoff sends
    await asyncio.wait_for(again.event.wait(), 5)
    assert again.fence == 42
    hub.unwatch(prefix, "t3")
    assert hub.channels == 0 and hub.connects == 1


async def test_wakeup_subscriber_without_a_server_lets_waiters_fall_back():
    with RedisServer(port=0) as server:
        async with Cache.connect(server.url, namespace="hub", connect_timeout=0.2) as cache:
            server.kill()  # nothing listens on the port any more
            hub = cache.locks.hub
            waiter = _Waiter()
            spec = cache.lock("x").spec
            started = time.monotonic()
            await hub.watch(spec, "t1", waiter, 10)  # released by the failure, not the 10 s
            assert time.monotonic() - started < 5
            await wait_until(waiter.event.is_set, timeout=5)  # woken: a handoff may be missed
            other = _Waiter()
            await hub.watch(cache.lock("y").spec, "t2", other, 10)  # down: no wait
            assert hub.connects == 0
            hub.max_idle = 0
            hub.unwatch(spec.channel, "t1")
            hub.unwatch(cache.lock("y").spec.channel, "t2")
            assert hub.channels == 0  # dropped without a connection to unsubscribe on
            server.restart()
            await wait_until(lambda: hub.connects == 1, timeout=10)  # back, nothing to resubscribe


async def test_a_late_handoff_message_for_a_held_lease_is_ignored(cache):
    """A waiter's own try can win the handoff race; the handoff's message comes after."""
    lock = cache.lock("late-msg", ttl=30)
    holder = await lock.acquire()
    waiter = asyncio.create_task(lock.acquire(wait=20))  # makes the subscription live
    await wait_until(lambda: cache.client.zcard(lock.spec.queue), timeout=5)
    await holder.release()
    await (await asyncio.wait_for(waiter, 10)).release()
    lease = await lock.acquire()  # holds it, the channel still subscribed
    hub = cache.locks.hub
    await cache.client.publish(f"{lock.spec.channel}:{hub.id}", f"{lease.token}:{lease.fence}")
    await asyncio.sleep(0.2)
    await settled(cache)
    info = await lock.holder()
    assert info is not None and info.fence == lease.fence  # not handed on
    assert await lease.release()


async def test_idle_wakeup_connection_is_probed_and_replaced_when_dead():
    with RedisServer(port=0) as server:
        async with Cache.connect(server.url, namespace="hub", socket_timeout=0.3) as cache:
            manager = LockManager(cache.context, wake_idle=0.1)
            lock = manager.lock("idle", ttl=30)
            holder = await lock.acquire()
            waiter = asyncio.create_task(lock.acquire(wait=30))
            await wait_until(lambda: manager.hub.waiting == 1, timeout=5)
            await asyncio.sleep(0.5)  # several idle periods: PINGs answered
            assert manager.hub.connects == 1
            server.pause()  # PINGs go unanswered: the connection is declared dead
            try:
                await asyncio.sleep(0.5)
            finally:
                server.resume()
            await wait_until(lambda: manager.hub.connects >= 2, timeout=10)
            await holder.release()
            lease = await asyncio.wait_for(waiter, 15)
            await lease.release()
            await manager.aclose()


# --- server faults on private servers ----------------------------------------------------------


async def test_debug_sleep_past_the_ttl_loses_the_lease_without_double_grant():
    with RedisServer(port=0) as server:
        async with Cache.connect(server.url, namespace="ds") as cache:
            lock = cache.lock("x", ttl=0.6)
            lease = await lock.acquire()
            stall = server.client()
            sleeper = asyncio.create_task(
                asyncio.to_thread(stall.execute_command, "DEBUG", "SLEEP", 1.2)
            )
            await asyncio.wait_for(
                lease.lost.wait(), 5
            )  # the local deadline fires during the stall
            assert "deadline" in (lease.lost_reason or "")
            await sleeper
            successor = await cache.lock("x", ttl=5).acquire(wait=5)  # expired in the stall
            assert successor.fence > lease.fence
            assert await lease.release() is False  # the stale release leaves the successor alone
            holder = await lock.holder()
            assert holder is not None and holder.fence == successor.fence
            await successor.release()


async def test_debug_sleep_shorter_than_the_ttl_is_survived():
    with RedisServer(port=0) as server:
        async with (
            Cache.connect(server.url, namespace="ds") as cache,
            cache.lock("x", ttl=2.0) as lease,
        ):
            await asyncio.to_thread(server.client().execute_command, "DEBUG", "SLEEP", 0.5)
            await asyncio.sleep(1.0)
            assert lease.held


async def test_paused_server_cannot_keep_a_lease_alive():
    """SIGSTOP the server: renewals hang, the local deadline still reports the loss."""
    with RedisServer(port=0) as server:
        async with Cache.connect(server.url, namespace="ps", socket_timeout=0.3) as cache:
            lease = await cache.lock("x", ttl=0.6).acquire()
            server.pause()
            try:
                started = time.monotonic()
                await asyncio.wait_for(lease.lost.wait(), 5)
                assert time.monotonic() - started < 2.0  # at the deadline, not after retries
            finally:
                server.resume()
            with pytest.raises(LockLost):
                lease.ensure_held()
            await settled(cache)


async def test_restart_with_persistence_keeps_fences_and_leases(tmp_path):
    with RedisServer(port=0, appendonly=True, dir=tmp_path) as server:
        async with Cache.connect(server.url, namespace="rs") as cache:
            lock = cache.lock("x", ttl=5)
            lease = await lock.acquire()
            server.restart()  # the lease (with its expiry) and the counter come back
            holder = await wait_until(lock.holder, timeout=5)
            assert holder.fence == lease.fence
            await asyncio.sleep(2)  # renewals after the restart reconnect
            assert lease.held
            assert await lease.release()
            async with lock as after:
                assert after.fence > lease.fence


async def test_restart_without_data_still_increases_fences():
    with RedisServer(port=0) as server:
        async with Cache.connect(server.url, namespace="rs") as cache:
            lock = cache.lock("x", ttl=0.5)
            lease = await lock.acquire()
            server.restart()  # no persistence: lease and counter are gone
            await asyncio.wait_for(lease.lost.wait(), 5)  # reported, not hidden
            async with cache.lock("x", ttl=5) as after:
                assert after.fence > lease.fence


async def test_cluster_renewal_link_per_node(cache):
    """Leases on different slots renew over one dedicated link per node."""
    leases = [await cache.lock(f"node-{i}", ttl=1.0).acquire() for i in range(6)]
    await asyncio.sleep(0.7)  # renewed at least once
    assert all(lease.held for lease in leases)
    links = cache.locks._links
    assert all(isinstance(link, _Link) for link in links.values())
    if cache.is_cluster:
        assert 1 < len(links) <= 3  # six names hash to several of the three masters
    else:
        assert len(links) == 1
    for lease in leases:
        assert await lease.release()


async def test_manager_close_waits_for_background_releases(cache):
    manager = LockManager(cache.context)
    lock = manager.lock("bg", ttl=30)
    _, finished = await run_cancelled_after(lock.acquire, 1)
    assert not finished
    assert manager._tasks or not await lock.locked()
    await manager.aclose()
    assert not await lock.locked()
    assert "LockManager" in repr(manager)


async def test_manager_close_waits_for_tasks_started_by_ending_tasks(cache, monkeypatch):
    manager = LockManager(cache.context)
    finished = []

    async def follow_up():
        await asyncio.sleep(0.01)
        finished.append("follow-up")

    async def first():
        await asyncio.sleep(0.01)
        manager._spawn(follow_up())  # like the release compensating a cancelled acquire

    manager._spawn(first())
    await manager.aclose()
    assert finished == ["follow-up"] and not manager._tasks
    # past the grace period, what still runs is cancelled
    monkeypatch.setattr("tradecache.coordination.lock._CLOSE_GRACE", 0.05)
    manager = LockManager(cache.context)
    stuck = manager._spawn(asyncio.sleep(30))
    await manager.aclose()
    await asyncio.sleep(0)
    assert stuck.cancelled()


async def test_shielded_outcome(cache):
    manager = LockManager(cache.context)
    # the task is cancelled while the caller waits: the caller is cancelled too
    task, outcome = manager._shielded(asyncio.sleep(30))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outcome
    assert task.cancelled()

    # the caller stopped waiting (cancelled): the task still runs to its end
    async def fail():
        await asyncio.sleep(0.01)
        raise ConnectionLost("gone")

    task, outcome = manager._shielded(fail())
    outcome.cancel()
    with pytest.raises(ConnectionLost):
        await task
    task, outcome = manager._shielded(asyncio.sleep(0.01, "done"))
    outcome.cancel()
    assert await task == "done"
    # the caller waits: it gets the outcome
    task, outcome = manager._shielded(fail())
    with pytest.raises(ConnectionLost):
        await outcome
    task, outcome = manager._shielded(asyncio.sleep(0, "ok"))
    assert await outcome == "ok"
    await manager.aclose()


# --- real processes ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_mutual_exclusion_16_processes_x_300_grants(cache):
    workers, grants = 16, 300
    results = SPAWN.Queue()
    args = [(cache.settings.url, cache.keys.namespace, "mx", grants, results)] * workers
    with processes(mutex_worker, args) as procs:
        batches = await asyncio.to_thread(receive, results, workers, 120, procs)
    all_grants = [grant for batch in batches for grant in batch]
    assert len(all_grants) == workers * grants
    check_exclusive(all_grants)
    counter = await cache.client.get(cache.keys.key("counter", "mx"))
    assert int(counter) == workers * grants  # the unprotected GET+SET counter lost nothing


@pytest.mark.slow
async def test_sigstopped_holder_is_fenced_off(cache):
    name, resource = "paused", cache.keys.key("res", "paused")
    commands, results = SPAWN.Queue(), SPAWN.Queue()
    args = [(cache.settings.url, cache.keys.namespace, name, resource, commands, results)]
    with processes(stale_holder, args) as procs:
        ((_, pid, stale_fence),) = await asyncio.to_thread(receive, results, 1, 60, procs)
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            lock = cache.lock(name, ttl=5)
            successor = await lock.acquire(wait=10)  # once the stopped holder's TTL ran out
            # Granted when the 1 s TTL ran out, long before the 10 s wait would end (a loose
            # bound: two loaded cores stretch the wake-up, never to the wait's end).
            assert time.monotonic() - started < 8
            assert successor.fence > stale_fence
            await successor.fenced_set(resource, "successor")
        finally:
            os.kill(pid, signal.SIGCONT)
        commands.put("go")
        ((_, report),) = await asyncio.to_thread(receive, results, 1, 60, procs)
        assert report["lost"] is True
        assert len(report["callbacks"]) == 1
        assert report["ensure_held"] == "LockLost"
        assert report["fenced_set"] == "LockLost"  # rejected by the server
        assert report["released"] is False
        stored = await cache.locks.fenced_get(resource)
        assert (stored.value, stored.fence) == (b"successor", successor.fence)
        holder = await lock.holder()
        assert holder is not None and holder.fence == successor.fence  # not deleted
        assert successor.held
        await successor.release()


async def test_a_renewal_loop_that_outlived_its_stop_ends_by_itself(cache):
    """release() cancels the watchdog; should that cancel be dropped, the loop still ends."""
    lease = await cache.lock("zombie", ttl=0.3).acquire()
    await wait_until(lambda: lease._watchdog is not None, timeout=10)  # renewing (ttl/3)
    watchdog = lease._watchdog
    lease._released = True  # what release() sets, without the cancel reaching the task
    await wait_until(watchdog.done, timeout=10)
    assert not watchdog.cancelled() and watchdog.exception() is None
    lease._released = False
    await lease.release()


async def test_closing_the_cache_hands_back_the_leases_it_holds(cache_factory):
    holder, other = await cache_factory(), await cache_factory()
    lease = await holder.lock("handback", ttl=30).acquire()
    claim = await holder.bots.claim("binance", "BTC/USDT", "bot-1", ttl=30)
    await holder.close()
    assert not lease.held and not claim.held
    async with other.lock("handback", ttl=5, wait=0) as again:  # not after the 30 s TTL
        assert again.fence > lease.fence
    async with other.bots.claim("binance", "BTC/USDT", "bot-2", wait=0) as taken:
        assert taken.fence > claim.fence


async def test_a_loop_stalled_before_the_first_renewal_reports_the_loss(cache):
    lease = await cache.lock("stall", ttl=0.3).acquire()
    time.sleep(0.35)  # noqa: ASYNC251 - the fault: this loop stalls past the deadline (a GC pause)
    await wait_until(lease.lost.is_set, timeout=5)
    assert lease.lost_reason == "the local deadline passed before a renewal succeeded"
    assert lease._watchdog is None  # no renewal was started for a lease already lost
