"""The shared circuit breaker: policies, half-open probes, push, listeners, fallback.

Single-process tests use two caches (``cache_factory``) where two processes are
needed; the acceptance scenarios with real OS processes are at the end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from tradecache import CircuitOpen, ConnectionLost, ValidationError
from tradecache.coordination.breaker import BreakerConfig, BreakerState, CircuitBreaker, Transition
from tradecache.coordination.subscription import publish_command
from tradecache.envelope import decode_envelope, encode_envelope
from tradecache.testing import wait_until

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class Boom(Exception):
    """The downstream failure of these tests."""


class Business(Exception):
    """An error that means the service answered (excluded)."""


async def fail() -> None:
    raise Boom("down")


async def ok(value: int = 1) -> int:
    return value


async def failures(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            await breaker.call(fail)


def recorder(breaker: CircuitBreaker) -> list[Transition]:
    seen: list[Transition] = []
    breaker.on_change(seen.append)
    return seen


async def until_probe_allowed(breaker: CircuitBreaker, fn=ok) -> None:
    """Call ``fn`` through the breaker until the open period is over (server clock)."""

    async def attempt() -> bool:
        try:
            await breaker.call(fn)
        except CircuitOpen:
            return False
        except Boom:
            return True
        return True

    await wait_until(attempt, timeout=10, interval=0.02)


async def publish(cache: Any, channel: str, data: bytes) -> None:
    """Publish the way breakers do: sharded pub/sub on a Cluster of Redis 7+."""
    if publish_command(cache.context) == "SPUBLISH":
        await cache.client.spublish(channel, data)
    else:
        await cache.client.publish(channel, data)


# --- closed -> open ------------------------------------------------------------------------------


async def test_opens_after_the_threshold_and_fails_fast(cache):
    breaker = cache.breaker("b", failure_threshold=3, window=60, reset_timeout=30)
    seen = recorder(breaker)
    assert await breaker.sync() is CLOSED
    await failures(breaker, 3)
    assert breaker.state is OPEN
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1

    with pytest.raises(CircuitOpen) as info:
        await breaker.call(counted)
    assert calls == 0
    assert info.value.name == "b"
    assert 29 < info.value.retry_after <= 30
    await wait_until(lambda: len(seen) == 1)
    [opened] = seen
    assert (opened.previous, opened.state, opened.seq) == (CLOSED, OPEN, 1)
    assert (opened.reason, opened.failures, opened.local) == ("failure_threshold", 3, False)
    assert opened.name == "b"


async def test_async_with_guards_like_call(cache):
    breaker = cache.breaker("b", failure_threshold=1)
    async with breaker:
        pass
    with pytest.raises(Boom):
        async with breaker:
            raise Boom
    with pytest.raises(CircuitOpen):
        async with breaker:
            pytest.fail("an open breaker let the block run")


async def test_closed_hot_path_costs_no_round_trip(cache):
    breaker = cache.breaker("b", failure_threshold=100)
    await breaker.sync()
    before = breaker.redis_calls
    for _ in range(50):
        assert await breaker.call(ok, 7) == 7
        async with breaker:
            pass
    assert breaker.redis_calls == before  # the check and a success are free
    await failures(breaker, 1)
    assert breaker.redis_calls == before + 1  # a failure is one script call


async def test_failures_outside_the_window_do_not_count(cache):
    breaker = cache.breaker("b", failure_threshold=3, window=1.0)
    await failures(breaker, 2)
    started = time.monotonic()
    await wait_until(lambda: time.monotonic() - started > 1.1)  # the window slides past them
    await failures(breaker, 2)
    assert breaker.state is CLOSED
    await failures(breaker, 1)
    assert breaker.state is OPEN


async def test_excluded_errors_count_as_success(cache):
    breaker = cache.breaker(
        "b",
        failure_threshold=2,
        exclude=(Business, lambda exc: isinstance(exc, KeyError)),
    )

    async def business() -> None:
        raise Business

    async def missing() -> None:
        raise KeyError("x")

    for _ in range(5):
        with pytest.raises(Business):
            await breaker.call(business)
        with pytest.raises(KeyError):
            await breaker.call(missing)
    assert breaker.state is CLOSED


async def test_guarded_calls_run_concurrently(cache):
    breaker = cache.breaker("b")
    await breaker.sync()
    inside = 0
    everyone_in = asyncio.Event()

    async def slow() -> None:
        nonlocal inside
        inside += 1
        if inside == 10:
            everyone_in.set()
        await everyone_in.wait()

    async with asyncio.timeout(5):
        await asyncio.gather(*(breaker.call(slow) for _ in range(10)))
    assert inside == 10


# --- half-open -----------------------------------------------------------------------------------


async def test_probe_success_closes(cache):
    breaker = cache.breaker("b", failure_threshold=1, reset_timeout=0.2, probe_timeout=30)
    seen = recorder(breaker)
    await breaker.sync()
    await failures(breaker, 1)
    await until_probe_allowed(breaker)
    assert breaker.state is CLOSED
    await wait_until(lambda: len(seen) == 3)
    assert [(t.seq, t.state, t.reason) for t in seen] == [
        (1, OPEN, "failure_threshold"),
        (2, HALF_OPEN, "reset_timeout"),
        (3, CLOSED, "probe_success"),
    ]


async def test_probe_failure_opens_again(cache):
    breaker = cache.breaker("b", failure_threshold=1, reset_timeout=0.2, probe_timeout=30)
    seen = recorder(breaker)
    await breaker.sync()
    await failures(breaker, 1)
    await until_probe_allowed(breaker, fail)
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpen):
        await breaker.call(ok)
    await wait_until(lambda: len(seen) == 3)
    assert [t.reason for t in seen] == ["failure_threshold", "reset_timeout", "probe_failure"]


async def test_success_threshold_needs_several_probes(cache):
    breaker = cache.breaker(
        "b", failure_threshold=1, reset_timeout=0.2, probe_timeout=30, success_threshold=3
    )
    await failures(breaker, 1)
    await until_probe_allowed(breaker)
    assert breaker.state is HALF_OPEN
    await breaker.call(ok)
    assert breaker.state is HALF_OPEN
    await breaker.call(ok)
    assert breaker.state is CLOSED


async def test_at_most_half_open_probes_at_once(cache):
    breaker = cache.breaker(
        "b", failure_threshold=1, reset_timeout=0.2, probe_timeout=30, half_open_probes=2
    )
    await failures(breaker, 1)
    release = asyncio.Event()
    entered = 0

    async def held() -> None:
        nonlocal entered
        entered += 1
        await release.wait()

    async def try_held() -> str:
        try:
            await breaker.call(held)
        except CircuitOpen as exc:
            return "rejected" if exc.retry_after > 0 else "no retry_after"
        return "ran"

    await wait_until(lambda: breaker.seq >= 0)
    await wait_until(
        lambda: breaker.state is OPEN and breaker._deadline <= time.monotonic(), timeout=5
    )
    tasks = [asyncio.create_task(try_held()) for _ in range(5)]
    await wait_until(lambda: sum(t.done() for t in tasks) == 3 and entered == 2, timeout=5)
    release.set()
    results = sorted(await asyncio.gather(*tasks))
    assert results == ["ran", "ran", "rejected", "rejected", "rejected"]
    assert breaker.state is CLOSED


async def test_an_expired_probe_lease_frees_the_permit_and_its_outcome_is_ignored(cache):
    breaker = cache.breaker("b", failure_threshold=1, reset_timeout=0.2, probe_timeout=1.0)
    await failures(breaker, 1)
    stuck = asyncio.Event()
    release = asyncio.Event()

    async def hang() -> None:
        stuck.set()
        await release.wait()
        raise Boom("late")

    async def first_probe() -> None:
        await until_probe_allowed(breaker, hang)

    task = asyncio.create_task(first_probe())
    await stuck.wait()
    assert breaker.state is HALF_OPEN
    with pytest.raises(CircuitOpen):
        await breaker.call(ok)  # the permit is taken
    await until_probe_allowed(breaker)  # ... until its lease runs out
    assert breaker.state is CLOSED
    release.set()
    await task  # the late failure of the stale probe changes nothing
    assert breaker.state is CLOSED
    assert await breaker.sync() is CLOSED


async def test_a_cancelled_probe_hands_its_permit_back(cache):
    breaker = cache.breaker("b", failure_threshold=1, reset_timeout=0.2, probe_timeout=30)
    await failures(breaker, 1)
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async def probe() -> None:
        await until_probe_allowed(breaker, forever)

    task = asyncio.create_task(probe())
    await started.wait()
    task.cancel()
    await asyncio.wait([task])
    assert task.cancelled()
    await until_probe_allowed(breaker)  # without the release this would wait 30 s
    assert breaker.state is CLOSED


# --- failure-rate policy -------------------------------------------------------------------------


async def test_failure_rate_needs_minimum_calls_and_the_rate(cache):
    breaker = cache.breaker("b", failure_rate=0.5, minimum_calls=10, window=60)
    seen = recorder(breaker)
    await breaker.sync()
    for _ in range(6):
        await breaker.call(ok)
    await failures(breaker, 3)  # 3 of 9: not enough calls yet, and below the rate
    assert breaker.state is CLOSED
    await failures(breaker, 2)  # 5 of 11 = 45%: below
    assert breaker.state is CLOSED
    await failures(breaker, 1)  # 6 of 12 = 50%: open
    assert breaker.state is OPEN
    await wait_until(lambda: seen)
    assert (seen[0].reason, seen[0].failures, seen[0].calls) == ("failure_rate", 6, 12)


async def test_successes_are_batched_and_can_trip_at_minimum_calls(cache):
    breaker = cache.breaker("b", failure_rate=0.5, minimum_calls=4)
    await breaker.sync()
    await failures(breaker, 3)  # 3 of 3: under minimum_calls
    assert breaker.state is CLOSED
    before = breaker.redis_calls
    await breaker.call(ok)  # counted locally
    assert breaker.redis_calls == before
    await breaker.flush()  # 3 of 4 reach Redis: open
    assert breaker.redis_calls == before + 1
    assert breaker.state is OPEN
    await breaker.flush()  # nothing pending: no round trip
    assert breaker.redis_calls == before + 1


async def test_batched_successes_flush_on_their_own(cache):
    breaker = cache.breaker("b", failure_rate=0.9, minimum_calls=2)
    await breaker.sync()
    before = breaker.redis_calls
    for _ in range(20):
        await breaker.call(ok)
    assert breaker.redis_calls == before  # nothing sent yet

    async def flushed() -> bool:
        window = await cache.client.hgetall(cache.keys.breaker_window("b"))
        return sum(int(v) for k, v in window.items() if k.startswith(b"n")) == 20

    await wait_until(flushed)
    assert breaker.redis_calls - before in (1, 2)  # one batch (two if a flush fell mid-loop)


# --- push and listeners --------------------------------------------------------------------------


async def test_every_process_learns_transitions_by_push(cache, cache_factory):
    other = await cache_factory()
    mine = cache.breaker("b", failure_threshold=2, reset_timeout=0.2, probe_timeout=30)
    theirs = other.breaker("b", failure_threshold=2, reset_timeout=0.2, probe_timeout=30)
    seen_mine, seen_theirs = recorder(mine), recorder(theirs)
    await mine.sync()
    await theirs.sync()
    await failures(mine, 2)
    await wait_until(lambda: theirs.state is OPEN)  # no call made there: pushed
    calls = theirs.redis_calls
    with pytest.raises(CircuitOpen):
        await theirs.call(ok)
    assert theirs.redis_calls == calls  # rejected locally, from the pushed view
    await until_probe_allowed(theirs)
    await wait_until(lambda: mine.state is CLOSED)
    await wait_until(lambda: len(seen_mine) == 3 and len(seen_theirs) == 3)
    await asyncio.sleep(0.1)  # let any duplicate arrive before counting
    assert [t.seq for t in seen_mine] == [t.seq for t in seen_theirs] == [1, 2, 3]


async def test_listeners_async_failing_and_removed(cache, caplog):
    breaker = cache.breaker("b", failure_threshold=1, reset_timeout=60)
    got: list[int] = []

    async def async_listener(t: Transition) -> None:
        got.append(t.seq or 0)

    def broken(t: Transition) -> None:
        raise RuntimeError("listener bug")

    removed: list[Transition] = []
    breaker.on_change(async_listener)
    breaker.on_change(broken)
    remove = breaker.on_change(removed.append)
    remove()
    remove()  # twice is fine
    await breaker.sync()
    with caplog.at_level(logging.ERROR, logger="tradecache.coordination.breaker"):
        await failures(breaker, 1)
        await wait_until(lambda: got == [1])
    assert removed == []
    assert "on_change listener failed" in caplog.text


async def test_missed_pushes_are_backfilled_in_order(cache, cache_factory):
    other = await cache_factory()
    mine = cache.breaker("b", failure_threshold=1, reset_timeout=60)
    theirs = other.breaker("b", failure_threshold=1, reset_timeout=60)
    seen = recorder(theirs)
    await mine.sync()
    await theirs.sync()
    sub = theirs._sub
    assert sub is not None
    # Cut their push connection, then make transitions while it reconnects.
    for link in sub._links:
        await link.conn.disconnect()
    await failures(mine, 1)
    await mine.reset()
    await mine.trip()
    await wait_until(lambda: [t.seq for t in seen] == [1, 2, 3], timeout=10)
    assert [t.reason for t in seen] == ["failure_threshold", "forced", "forced"]
    assert theirs.state is OPEN


async def test_view_is_reread_while_the_push_is_down(cache):
    breaker = cache.breaker("b", failure_threshold=5)
    await breaker.sync()
    sub = breaker._sub
    assert sub is not None
    await sub.close()  # push gone for good: every call reads the state first
    await wait_until(lambda: breaker._sub is None)
    before = breaker.redis_calls
    await breaker.call(ok)
    assert breaker.redis_calls > before
    assert breaker._sub is not None  # ... and subscribes again


async def test_malformed_transition_messages_are_ignored(cache, caplog):
    breaker = cache.breaker("b", failure_threshold=1)
    seen = recorder(breaker)
    await breaker.sync()
    channel = cache.keys.breaker_channel("b")
    bad = encode_envelope("breaker", "b", 1, 0, b'{"nonsense": true}')
    with caplog.at_level(logging.WARNING, logger="tradecache.coordination.breaker"):
        await publish(cache, channel, bad)
        await wait_until(lambda: "malformed transition" in caplog.text)
    assert seen == []
    assert breaker.state is CLOSED


async def test_a_transition_lost_beyond_the_log_is_a_gap(cache, caplog):
    breaker = cache.breaker("b", failure_threshold=1)
    await breaker.sync()
    channel = cache.keys.breaker_channel("b")
    epoch = (await cache.client.hget(cache.keys.breaker("b"), "epoch")).decode()
    payload = f'{{"state":"closed","previous":"open","reason":"forced","epoch":"{epoch}"}}'
    jump = encode_envelope("breaker", "b", 5, int(time.time() * 1000), payload.encode())
    with caplog.at_level(logging.WARNING, logger="tradecache.coordination.breaker"):
        await publish(cache, channel, jump)
        await wait_until(lambda: "were missed" in caplog.text)
    assert breaker.seq == 5
    assert not breaker._synced  # the next call re-reads the state


async def test_a_recreated_breaker_starts_a_new_sequence(cache, caplog):
    breaker = cache.breaker("b", failure_threshold=1, reset_timeout=60)
    await breaker.sync()
    await failures(breaker, 1)
    assert breaker.seq == 1
    for key in breaker._keys:
        await cache.client.delete(key)  # as if Redis lost its data
    with caplog.at_level(logging.WARNING, logger="tradecache.coordination.breaker"):
        await breaker.reset()  # sees a new epoch: state closed, seq restarts
    assert "recreated" in caplog.text
    assert (breaker.state, breaker.seq) == (CLOSED, 0)


# --- administration, registry, validation --------------------------------------------------------


async def test_reset_and_trip(cache):
    breaker = cache.breaker("b", reset_timeout=60)
    seen = recorder(breaker)
    await breaker.sync()
    await breaker.trip()
    assert breaker.state is OPEN
    await breaker.trip()  # already open: no transition
    await breaker.reset()
    assert breaker.state is CLOSED
    await wait_until(lambda: len(seen) == 2)
    assert [(t.state, t.reason) for t in seen] == [(OPEN, "forced"), (CLOSED, "forced")]
    assert "closed" in repr(breaker)


async def test_registry_returns_one_instance_per_name(cache):
    a = cache.breaker("x", failure_threshold=3)
    assert cache.breaker("x", failure_threshold=3) is a
    with pytest.raises(ValidationError) as info:
        cache.breaker("x", failure_threshold=4)
    assert info.value.field == "name"
    with pytest.raises(ValidationError):
        cache.breaker("bad name")


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": True}, "failure_threshold"),
        ({"window": 0}, "window"),
        ({"window": "1"}, "window"),
        ({"reset_timeout": float("inf")}, "reset_timeout"),
        ({"half_open_probes": 0}, "half_open_probes"),
        ({"success_threshold": 1.5}, "success_threshold"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"failure_rate": 0}, "failure_rate"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"probe_timeout": -1}, "probe_timeout"),
        ({"redis_backoff": 0}, "redis_backoff"),
        ({"exclude": (42,)}, "exclude"),
    ],
)
def test_config_validation(options, field):
    with pytest.raises(ValidationError) as info:
        BreakerConfig(**options)
    assert info.value.field == field


def test_config_defaults():
    config = BreakerConfig(exclude=[Boom])
    assert config.exclude == (Boom,)
    assert config.probe_lease == config.reset_timeout == 30
    assert BreakerConfig(probe_timeout=2).probe_lease == 2
    assert BreakerConfig(failure_rate=0.3, minimum_calls=10).trips(3, 10)
    assert not BreakerConfig(failure_rate=0.3, minimum_calls=10).trips(2, 10)


# --- Redis unreachable: the local fallback -------------------------------------------------------


async def test_local_fallback_keeps_tripping_while_redis_is_down(redis_server_factory, caplog):
    from tradecache import Cache

    server = redis_server_factory(port=0)
    async with Cache.connect(server.url, namespace="fb") as cache:
        breaker = cache.breaker("b", failure_threshold=3, reset_timeout=0.3, redis_backoff=0.2)
        seen = recorder(breaker)
        await breaker.sync()
        await failures(breaker, 1)
        server.stop()
        with caplog.at_level(logging.WARNING, logger="tradecache.coordination.breaker"):
            costs = []
            for _ in range(2):
                started = time.monotonic()
                with pytest.raises(Boom):
                    await breaker.call(fail)
                costs.append(time.monotonic() - started)
            assert breaker.fallback
            assert breaker.state is OPEN  # 3 failures in the window, counted locally
            calls = breaker.redis_calls
            with pytest.raises(CircuitOpen):
                await breaker.call(ok)
            assert breaker.redis_calls == calls  # decided locally: no Redis call in the way
        assert max(costs) < 1.0  # the Redis call that found the outage is bounded
        assert "Redis unreachable" in caplog.text
        # Structured fields for log pipelines: which breaker, which transition.
        fields = [
            (r.name, getattr(r, "breaker", None), getattr(r, "state", None)) for r in caplog.records
        ]
        assert ("tradecache.coordination.breaker", "b", None) in fields  # the fallback began
        assert ("tradecache.coordination.breaker", "b", "open") in fields  # local transition
        local = [t for t in seen if t.local]
        assert [(t.state, t.seq) for t in local] == [(OPEN, None)]
        # Local half-open: one probe, it fails, open again.
        await until_probe_allowed(breaker, fail)
        assert breaker.state is OPEN
        # ... and a successful local probe closes it.
        await until_probe_allowed(breaker)
        assert breaker.state is CLOSED
        assert [t.reason for t in seen if t.local] == [
            "failure_threshold",
            "reset_timeout",
            "probe_failure",
            "reset_timeout",
            "probe_success",
        ]
        await breaker.close()


async def test_fallback_ends_when_redis_is_back(redis_server_factory):
    from tradecache import Cache

    server = redis_server_factory(port=0, appendonly=True)
    async with Cache.connect(server.url, namespace="fb") as cache:
        breaker = cache.breaker("b", failure_threshold=2, redis_backoff=0.1)
        await breaker.sync()
        server.kill()
        await failures(breaker, 1)
        assert breaker.fallback
        server.restart()

        async def recovered() -> bool:
            await breaker.call(ok)  # the re-check runs in the background
            return not breaker.fallback

        await wait_until(recovered, timeout=10, interval=0.05)
        assert breaker.state is CLOSED
        await failures(breaker, 2)  # shared counting again
        assert breaker.state is OPEN
        assert await breaker.sync() is OPEN


async def test_explicit_calls_raise_when_redis_is_down(redis_server_factory):
    from tradecache import Cache

    server = redis_server_factory(port=0)
    async with Cache.connect(server.url, namespace="fb") as cache:
        breaker = cache.breaker("b")
        server.stop()
        with pytest.raises(ConnectionLost):
            await breaker.sync()
        with pytest.raises(ConnectionLost):
            await breaker.reset()
        assert await breaker.call(ok) == 1  # a guarded call falls back instead
        assert breaker.fallback


async def test_concurrent_calls_failing_into_the_outage(redis_server_factory):
    from tradecache import Cache

    server = redis_server_factory(port=0)
    async with Cache.connect(server.url, namespace="fb") as cache:
        breaker = cache.breaker("b", failure_threshold=3, redis_backoff=5)
        await breaker.sync()
        first, later = asyncio.Event(), asyncio.Event()

        entered = 0

        async def fail_after(gate: asyncio.Event) -> None:
            nonlocal entered
            entered += 1
            await gate.wait()
            raise Boom

        async def succeed_after(gate: asyncio.Event) -> int:
            nonlocal entered
            entered += 1
            await gate.wait()
            return 1

        # Every call holds a closed permit from the pushed view before Redis goes away.
        both = [asyncio.create_task(breaker.call(fail_after, first)) for _ in range(2)]
        slow_ok = asyncio.create_task(breaker.call(succeed_after, later))
        slow_fails = [asyncio.create_task(breaker.call(fail_after, later)) for _ in range(2)]
        await wait_until(lambda: entered == 5)
        server.stop()
        first.set()  # two failures race into the outage: both fall back
        results = await asyncio.gather(*both, return_exceptions=True)
        assert all(isinstance(r, Boom) for r in results)
        assert breaker.fallback and breaker.state is CLOSED  # 2 of 3 failures so far
        later.set()  # outcomes of permits granted before the outage now count locally
        assert await slow_ok == 1
        for task in slow_fails:
            with pytest.raises(Boom):
                await task
        assert breaker.state is OPEN


async def test_a_cancelled_closed_call_counts_as_nothing(cache):
    breaker = cache.breaker("b", failure_threshold=1)
    await breaker.sync()
    entered = asyncio.Event()

    async def hang() -> None:
        entered.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.call(hang))
    await entered.wait()
    before = breaker.redis_calls
    task.cancel()
    await asyncio.wait([task])
    assert task.cancelled()
    assert (breaker.state, breaker.redis_calls) == (CLOSED, before)


async def test_a_corrupt_log_entry_does_not_break_subscribing(cache, cache_factory):
    breaker = cache.breaker("b", failure_threshold=1)
    await failures(breaker, 1)
    await cache.client.rpush(cache.keys.breaker_log("b"), b"garbage")
    other = await cache_factory()
    assert await other.breaker("b", failure_threshold=1).sync() is OPEN


async def test_local_fallback_probe_rules(redis_server_factory):
    from tradecache import Cache

    server = redis_server_factory(port=0)
    async with Cache.connect(server.url, namespace="fb") as cache:
        breaker = cache.breaker(
            "b", failure_threshold=1, reset_timeout=0.2, success_threshold=2, redis_backoff=60
        )
        await breaker.sync()
        server.stop()
        await failures(breaker, 1)
        assert (breaker.fallback, breaker.state) == (True, OPEN)
        gate = asyncio.Event()
        entered = asyncio.Event()

        async def held() -> int:
            entered.set()
            await gate.wait()
            return 1

        first = asyncio.create_task(until_probe_allowed(breaker, held))
        await entered.wait()
        assert breaker.state is HALF_OPEN
        with pytest.raises(CircuitOpen) as info:
            await breaker.call(ok)  # the one local probe is out
        assert info.value.retry_after == 0.2
        gate.set()
        await first
        assert breaker.state is HALF_OPEN  # 1 of 2 successes
        # A cancelled local probe counts as nothing and frees its slot.
        gate.clear()
        entered.clear()
        task = asyncio.create_task(breaker.call(held))
        await entered.wait()
        task.cancel()
        await asyncio.wait([task])
        assert task.cancelled()
        assert breaker.state is HALF_OPEN
        await breaker.call(ok)
        assert breaker.state is CLOSED
        # A cancelled closed call counts as nothing either.
        gate.clear()
        entered.clear()
        task = asyncio.create_task(breaker.call(held))
        await entered.wait()
        task.cancel()
        await asyncio.wait([task])
        assert breaker.state is CLOSED
        await failures(breaker, 1)
        assert breaker.state is OPEN


async def test_outage_during_a_probe_and_a_flush(redis_server_factory):
    from tradecache import Cache

    server = redis_server_factory(port=0)
    async with Cache.connect(server.url, namespace="fb") as cache:
        breaker = cache.breaker(
            "b", failure_threshold=1, reset_timeout=0.2, probe_timeout=30, redis_backoff=60
        )
        await failures(breaker, 1)
        gate = asyncio.Event()
        entered = asyncio.Event()

        async def probe_fails() -> None:
            entered.set()
            await gate.wait()
            raise Boom

        task = asyncio.create_task(until_probe_allowed(breaker, probe_fails))
        await entered.wait()
        assert breaker.state is HALF_OPEN
        server.stop()
        gate.set()
        await task  # its outcome could not reach Redis: the local breaker takes it
        assert (breaker.fallback, breaker.state) == (True, OPEN)

    server = redis_server_factory(port=0)
    async with Cache.connect(server.url, namespace="fb") as cache:
        breaker = cache.breaker("r", failure_rate=0.5, minimum_calls=100, redis_backoff=60)
        await breaker.call(ok)
        server.stop()
        await breaker.flush()
        assert breaker.fallback
        await breaker.call(ok)  # successes in fallback stay local
        await breaker.flush()  # nothing to send while Redis is down
        assert breaker._pending == 0


async def test_recovery_is_not_started_twice(redis_server_factory):
    from tradecache import Cache

    server = redis_server_factory(port=0)
    async with Cache.connect(
        server.url, namespace="fb", socket_timeout=1.0, retry_attempts=0
    ) as cache:
        breaker = cache.breaker("b", redis_backoff=0.05)
        await breaker.sync()
        server.pause()
        try:
            await failures(breaker, 1)  # times out against the paused server
            assert breaker.fallback
            started = time.monotonic()
            await wait_until(lambda: time.monotonic() - started > 0.06)
            await breaker.call(ok)  # starts the background re-check (it hangs)
            assert breaker._recovering
            breaker._retry_redis_at = 0.0
            await breaker.call(ok)  # a re-check is running: no second one
            assert len([t for t in breaker._tasks if not t.done()]) >= 1
        finally:
            server.resume()
        await wait_until(lambda: not breaker.fallback, timeout=10)


async def test_a_stale_view_is_corrected_by_the_server(cache):
    breaker = cache.breaker("b", failure_threshold=1, reset_timeout=0.2, probe_timeout=30)
    await breaker.sync()
    await breaker.trip()
    await wait_until(lambda: breaker._deadline <= time.monotonic())
    state_key = cache.keys.breaker("b")
    # Behind the push's back: Redis says closed, this process still thinks open.
    await cache.client.hset(state_key, mapping={"state": "closed", "until": 0})
    assert breaker.state is OPEN
    assert await breaker.call(ok) == 1  # the acquire script answers "closed: go"
    assert breaker.state is CLOSED
    # ... and open for a long time while this process thinks the period is over.
    await breaker.trip()
    await wait_until(lambda: breaker._deadline <= time.monotonic())
    far = (await cache.client.time())[0] * 1000 + 60_000
    await cache.client.hset(state_key, "until", far)
    with pytest.raises(CircuitOpen) as info:
        await breaker.call(ok)
    assert 50 < info.value.retry_after <= 60


async def test_an_older_reply_does_not_roll_the_view_back(cache):
    breaker = cache.breaker("b", failure_threshold=1, reset_timeout=60)
    await breaker.sync()
    epoch = (await cache.client.hget(cache.keys.breaker("b"), "epoch")).decode()
    await failures(breaker, 1)
    breaker._apply_reply([0, b"closed", 0, 0, epoch.encode(), b""])
    assert (breaker.state, breaker.seq) == (OPEN, 1)


async def test_a_new_epoch_learned_by_push(cache, cache_factory):
    other = await cache_factory()
    mine = cache.breaker("b", failure_threshold=1, reset_timeout=60)
    theirs = other.breaker("b", failure_threshold=1, reset_timeout=60)
    seen = recorder(mine)
    await mine.sync()
    await theirs.sync()
    await failures(theirs, 1)
    await wait_until(lambda: mine.seq == 1)
    for key in mine._keys:
        await cache.client.delete(key)
    await theirs.trip()  # recreates the breaker (new epoch) and opens it: seq 1 again
    await wait_until(lambda: len(seen) == 2)
    assert mine.state is OPEN and mine.seq == 1
    assert seen[1].reason == "forced"


async def test_excluding_predicates_that_do_not_match(cache):
    breaker = cache.breaker("b", failure_threshold=1, exclude=(lambda exc: False,))
    await failures(breaker, 1)
    assert breaker.state is OPEN


async def test_close_stops_push_and_is_idempotent(cache):
    breaker = cache.breaker("b", failure_threshold=1)
    hanging = asyncio.Event()

    async def slow_listener(t: Transition) -> None:
        hanging.set()
        await asyncio.Event().wait()

    breaker.on_change(slow_listener)
    await breaker.sync()
    await failures(breaker, 1)
    await hanging.wait()
    sub = breaker._sub
    await breaker.close()  # cancels the listener task too
    await breaker.close()
    assert breaker._sub is None and sub is not None and not sub.connected
    assert await breaker.sync() is OPEN  # usable again: subscribes anew
    await cache.close()  # closes every breaker of the cache


async def test_failing_async_listener_is_logged(cache, caplog):
    breaker = cache.breaker("b", failure_threshold=1)

    async def broken(t: Transition) -> None:
        raise RuntimeError("async listener bug")

    breaker.on_change(broken)
    await breaker.sync()
    with caplog.at_level(logging.ERROR, logger="tradecache.coordination.breaker"):
        await failures(breaker, 1)
        await wait_until(lambda: "background task failed" in caplog.text)


async def test_the_client_clock_does_not_matter(cache, monkeypatch):
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # a client an hour ahead
    breaker = cache.breaker("b", failure_threshold=1, reset_timeout=30)
    await failures(breaker, 1)
    with pytest.raises(CircuitOpen) as info:
        await breaker.call(ok)
    assert 29 < info.value.retry_after <= 30


def test_local_window_slides():
    from tradecache.coordination.breaker import _Window

    window = _Window(1.0)
    window.add(1, 1, 100.0)
    window.add(1, 2, 100.01)
    assert window.totals(100.5) == (2, 3)
    assert window.totals(101.1) == (0, 0)


# --- acceptance: real processes ------------------------------------------------------------------


@pytest.mark.slow
async def test_sixteen_processes_share_one_breaker(cache):
    import multiprocessing

    from helpers.coordination_workers import CTX, breaker_worker, processes, receive

    name, n = "exchange", 16
    options = {"failure_threshold": 5, "window": 60, "reset_timeout": 1.0, "probe_timeout": 10}
    go, stop, report = CTX.Event(), CTX.Event(), CTX.Event()
    results: multiprocessing.Queue[Any] = CTX.Queue()
    args = (cache.settings.url, cache.settings.namespace, name, options, go, stop, report, results)
    state_key = cache.keys.breaker(name)
    with processes(breaker_worker, [args] * n) as procs:
        assert len(await receive(results, n, 300, procs)) == n  # all subscribed
        go.set()

        async def cycles_done() -> bool:
            seq = await cache.client.hget(state_key, "seq")
            return seq is not None and int(seq) >= 5  # open, half-open, open, half-open, open

        await wait_until(cycles_done, timeout=300, interval=0.05)
        stop.set()
        await receive(results, n, 300, procs)
        report.set()
        reports = await receive(results, n, 300, procs)

    log = [
        decode_envelope(raw)
        for raw in await cache.client.lrange(cache.keys.breaker_log(name), 0, -1)
    ]
    final_seq = log[-1].seq
    assert [e.seq for e in log] == list(range(1, final_seq + 1))
    opened = log[0].decode()
    # It opened on the 5th recorded failure, not later: counts are atomic across processes.
    assert (opened["state"], opened["reason"], opened["failures"]) == (
        "open",
        "failure_threshold",
        5,
    )
    hits = [
        int(seq)
        for seq in await cache.client.lrange(cache.keys.key("breaker", name, "hits"), 0, -1)
    ]
    assert hits.count(0) >= 5  # the failures that opened it (plus calls already in flight)
    for half_open in (e.seq for e in log if e.decode()["state"] == "half_open"):
        # After reset_timeout exactly one trial call reached the downstream, across 16 processes.
        assert hits.count(half_open) == 1, (half_open, hits)
    expected = [
        (e.seq, e.decode()["previous"], e.decode()["state"], e.decode()["reason"], False)
        for e in log
    ]
    for _, pid, seen, state, rejected in reports:
        # Every process saw OPEN, and its listeners fired once per transition, in order.
        assert [tuple(t) for t in seen] == expected, pid
        assert state == log[-1].decode()["state"]
        assert rejected > 0  # it failed fast while open


@pytest.mark.slow
async def test_sixteen_processes_keep_tripping_with_redis_stopped(redis_server_factory):
    import multiprocessing

    from helpers.coordination_workers import CTX, fallback_worker, processes, receive

    server = redis_server_factory(port=0)
    n, threshold = 16, 4
    options = {"failure_threshold": threshold, "reset_timeout": 30, "redis_backoff": 5}
    go = CTX.Event()
    results: multiprocessing.Queue[Any] = CTX.Queue()
    with processes(fallback_worker, [(server.url, "b", options, go, results)] * n) as procs:
        await receive(results, n, 300, procs)
        server.stop()
        go.set()
        done = await receive(results, n, 300, procs)
    for _, pid, hits, outcome, fallback, slowest in done:
        assert (hits, outcome, fallback) == (threshold, "open", True), pid
        assert slowest < 1.0, pid  # the added latency of finding Redis gone is bounded
