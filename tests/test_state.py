"""Shared state: atomic writes, optimistic update, TTL, watch by push; standalone and Cluster."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from helpers.pubsub import kill_subscribers
from tradecache.coordination.state import _WRITE, SharedState, UpdateConflict
from tradecache.coordination.subscription import publish_command
from tradecache.errors import ValidationError, WaitTimeout
from tradecache.testing import wait_until


@pytest.fixture
async def cache(cache_factory, redis_namespace):
    return await cache_factory(client_name=redis_namespace)


async def write_silently(state: SharedState, value: bytes, mode: str = "set") -> int:
    """A write whose announcement is lost in transit (published to no one)."""
    ctx = state._ctx
    args = [
        ctx.keys.channel("nowhere", state.name),
        state.name,
        "test",
        value,
        0,
        -1,
        publish_command(ctx),
        mode,
    ]
    return await _WRITE(ctx.client, keys=[ctx.keys.state(state.name)], args=args)


async def next_value(values, wait: float = 10):
    async with asyncio.timeout(wait):
        return await anext(values)


async def test_get_set_delete(cache):
    state = cache.state("limits")
    assert repr(state) == "SharedState('limits', ttl=None)"
    assert await state.get() is None
    assert await state.version() == 0
    assert await state.set({"max": Decimal("2.5"), "on": True}) == 1
    assert await state.get() == {"max": "2.5", "on": True}
    assert await state.set([1, 2]) == 2
    assert await state.get() == [1, 2]
    assert await state.delete() is True
    assert await state.get() is None
    assert await state.version() == 3  # the tombstone keeps the version growing
    assert await state.delete() is False
    assert await state.set("back") == 4
    assert await state.get() == "back"
    assert await cache.state("never").delete() is False


async def test_state_survives_a_worker_restart(cache_factory):
    first = await cache_factory()
    await first.state("plan").set({"step": 3})
    await first.close()
    second = await cache_factory()  # a new process, same namespace
    assert await second.state("plan").get() == {"step": 3}


async def test_ttl_expiry(cache):
    state = cache.state("short", ttl=0.2)
    await state.set("soon gone")
    key = cache.keys.state("short")
    assert 0 < await cache.client.pttl(key) <= 200

    async def gone() -> bool:
        return await state.get() is None

    await wait_until(gone, timeout=5)
    assert await state.version() == 0
    # A per-write ttl overrides the default; a state without one never expires.
    await state.set("longer", ttl=30)
    assert await cache.client.pttl(key) > 1000
    forever = cache.state("forever")
    await forever.set(1, ttl=30)
    await forever.set(2)
    assert await cache.client.pttl(cache.keys.state("forever")) == -1


async def test_concurrent_updates_lose_nothing(cache_factory):
    workers = [await cache_factory() for _ in range(4)]  # separate clients, like processes
    states = [w.state("counter") for w in workers]
    runs = []

    def increment(value):
        runs.append(value)
        value = value or {"n": 0, "by": []}
        return {"n": value["n"] + 1, "by": [*value["by"], len(runs)]}

    results = await asyncio.gather(*(states[i % 4].update(increment) for i in range(20)))
    final = await states[0].get()
    assert final["n"] == 20
    assert len(final["by"]) == 20
    assert sorted(r["n"] for r in results) == list(range(1, 21))
    assert await states[0].version() == 20
    assert len(runs) >= 20  # conflicts re-ran fn; no update was lost


async def test_update_with_a_coroutine_and_retries(cache):
    state = cache.state("u")
    other = cache.state("u")

    async def double(value):
        return (value or 1) * 2

    assert await state.update(double) == 2
    attempts = 0

    async def meddle(value):
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await other.set(100)  # a concurrent writer wins the first round
        return value + 1

    assert await state.update(meddle) == 101
    assert attempts == 2

    async def always_meddle(value):
        await other.set(value + 1)
        return value

    with pytest.raises(UpdateConflict):
        await state.update(always_meddle, retries=2)


async def test_invalid_input_writes_nothing(cache):
    with pytest.raises(ValidationError) as info:
        cache.state("bad name")
    assert info.value.field == "name"
    with pytest.raises(ValidationError) as info:
        cache.state("x", ttl=0)
    assert info.value.field == "ttl"
    state = cache.state("x")
    with pytest.raises(ValidationError):
        await state.set(1, ttl=-1)
    with pytest.raises(ValidationError):
        await state.set(1, ttl=True)
    with pytest.raises(ValidationError) as info:
        await state.set(object())
    assert info.value.field == "payload"
    assert await state.version() == 0


# --- watch ----------------------------------------------------------------------------------


async def test_watch_yields_every_change(cache):
    state = cache.state("w")
    async with state.watch() as values:
        assert values.subscription.connected
        await state.set(1)
        assert await next_value(values) == 1
        await state.update(lambda v: v + 1)
        assert await next_value(values) == 2
        await state.delete()
        assert await next_value(values) is None
        await state.set("again")
        assert await next_value(values) == "again"
    await values.close()  # idempotent
    assert not values.subscription.connected


async def test_watch_current_value_first(cache):
    state = cache.state("c")
    await state.set({"a": 1})
    values = await state.watch(current=True)
    seen = []
    async for value in values:
        seen.append(value)
        if len(seen) == 1:
            await state.set({"a": 2})
        else:
            break
    assert seen == [{"a": 1}, {"a": 2}]
    await values.close()
    with pytest.raises(StopAsyncIteration):
        await next_value(values)


async def test_watch_catches_up_after_a_reconnect(cache):
    state = cache.state("r")
    async with state.watch() as values:
        await state.set(1)
        assert await next_value(values) == 1
        await write_silently(state, b"2")  # lost in transit
        await write_silently(state, b"3")
        await kill_subscribers(cache)
        assert await next_value(values) == 3  # the latest value; 2 was superseded
        await write_silently(state, b"null", mode="delete")
        await kill_subscribers(cache)
        assert await next_value(values) is None  # the tombstone tells
        await state.set(4)
        assert await next_value(values) == 4
        await cache.client.delete(cache.keys.state("r"))  # gone without a trace
        await kill_subscribers(cache)
        assert await next_value(values) is None


async def test_watch_after_expiry_yields_the_new_value_once(cache):
    state = cache.state("e", ttl=0.1)
    async with state.watch() as values:
        await state.set("a")
        await state.set("b")
        assert await next_value(values) == "a"
        assert await next_value(values) == "b"

        async def expired() -> bool:
            return await state.version() == 0

        await wait_until(expired, timeout=5)
        await state.set("c")  # version 1 again: the watcher sees a restarted sequence
        assert await next_value(values) == "c"
        await state.set("d")
        assert await next_value(values) == "d"
        with pytest.raises(TimeoutError):
            await next_value(values, wait=0.2)  # "c" was not yielded twice


async def test_watch_starts_when_iterated_and_reports_timeouts(cache):
    state = cache.state("lazy")
    values = state.watch(queue_size=5)
    assert await values is values
    assert values.subscription.connected
    with pytest.raises(WaitTimeout):
        await values.subscription.get(timeout=0.01)
    await values.close()
