"""Idempotent execution: claims, replays, key reuse, leases, outages, canonical hashing.

The acceptance scenarios with real OS processes (32 submitters, SIGKILL of the
executor) are at the end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum, IntEnum
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradecache import (
    ConnectionLost,
    InProgress,
    KeyReuse,
    LockLost,
    ReplayedFailure,
    ValidationError,
)
from tradecache.coordination.idempotency import Idempotency, canonical_hash
from tradecache.testing import wait_until


class Rejected(Exception):
    """A final error: the exchange said no."""


class Flaky(Exception):
    """A retryable error."""


def order(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "symbol": "BTC/USDT",
        "side": "buy",
        "type": "limit",
        "amount": Decimal("0.5"),
        "price": Decimal("60000.10"),
        "clientOrderId": "c-1",
    }
    data.update(changes)
    return data


class Counter:
    """An async callable counting its calls; returns ``result``."""

    def __init__(self, result: Any = None) -> None:
        self.calls = 0
        self.result = {"id": "ex-1", "filled": "0"} if result is None else result

    async def __call__(self) -> Any:
        self.calls += 1
        return self.result


# --- run once, replay ---------------------------------------------------------------------


async def test_runs_once_and_replays_the_stored_bytes(cache):
    idem = cache.idempotency("orders")
    submit = Counter({"id": "ex-1", "price": "60000.1", "ok": True})
    first = await idem.run(order(), submit)
    again = await idem.run(order(), submit)
    assert submit.calls == 1
    assert first == again == submit.result
    record = await idem.lookup(order())
    assert record is not None
    assert (record.status, record.attempt) == ("completed", 1)
    assert record.result == cache.codec.encode(submit.result)  # byte-identical
    assert cache.codec.encode(again) == record.result


async def test_the_same_content_in_another_form_is_the_same_key(cache):
    idem = cache.idempotency("orders")
    submit = Counter()
    await idem.run(order(), submit)
    reordered = dict(reversed(list(order().items())))
    await idem.run(reordered, submit)
    await idem.run(order(amount=0.5, price=Decimal("60000.1000"), extra=None), submit)
    assert submit.calls == 1
    await idem.run(order(amount=Decimal("0.51")), submit)
    assert submit.calls == 2


async def test_typed_results(cache):
    idem = cache.idempotency("orders")
    first = await idem.run("k1", Counter(Decimal("1.50")), result_type=Decimal)
    again = await idem.run("k1", Counter(), result_type=Decimal)
    assert first == again == Decimal("1.50") and isinstance(again, Decimal)
    assert await idem.run("k2", Counter([1, "a", None])) == [1, "a", None]
    assert await idem.run("k2", Counter()) == [1, "a", None]


async def test_explicit_key_with_payload_detects_reuse(cache):
    idem = cache.idempotency("orders")
    submit = Counter()
    await idem.run("cid-7", submit, payload=order())
    await idem.run("cid-7", submit, payload=order())
    assert submit.calls == 1
    with pytest.raises(KeyReuse):
        await idem.run("cid-7", submit, payload=order(amount=Decimal(2)))
    with pytest.raises(KeyReuse):
        await idem.run("cid-7", submit)  # no payload is another payload
    assert submit.calls == 1


async def test_field_selection_makes_the_key_and_the_rest_must_match(cache):
    idem = cache.idempotency("orders")
    submit = Counter()
    await idem.run(order(), submit, fields=("clientOrderId",))
    await idem.run(order(), submit, fields=["clientOrderId"])
    with pytest.raises(KeyReuse):
        await idem.run(order(price=Decimal(1)), submit, fields=("clientOrderId",))
    await idem.run(order(clientOrderId="c-2", price=Decimal(1)), submit, fields=("clientOrderId",))
    assert submit.calls == 2
    key, fingerprint = idem.key_for(order(), fields=("clientOrderId",))
    assert key == "sha256-" + canonical_hash({"clientOrderId": "c-1"})
    assert fingerprint == canonical_hash(order())


# --- in flight ------------------------------------------------------------------------------


async def test_duplicate_in_flight_raises_or_waits(cache):
    idem = cache.idempotency("orders")
    gate = asyncio.Event()
    started = asyncio.Event()
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await gate.wait()
        return "placed"

    first = asyncio.create_task(idem.run(order(), slow))
    await started.wait()
    with pytest.raises(InProgress):
        await idem.run(order(), slow)
    with pytest.raises(InProgress):
        await idem.run(order(), slow, wait=0.05)  # still running when the wait ends
    waiter = asyncio.create_task(idem.run(order(), slow, wait=10))
    await asyncio.sleep(0.05)  # let the waiter poll at least once
    gate.set()
    assert await first == "placed"
    assert await waiter == "placed"
    assert calls == 1


async def test_a_waiter_runs_the_call_itself_after_a_retryable_failure(cache):
    idem = cache.idempotency("orders")
    gate = asyncio.Event()
    started = asyncio.Event()

    async def fails() -> str:
        started.set()
        await gate.wait()
        raise Flaky

    first = asyncio.create_task(idem.run("k", fails))
    await started.wait()
    waiter = asyncio.create_task(idem.run("k", Counter("second"), wait=10))
    gate.set()
    with pytest.raises(Flaky):
        await first
    assert await waiter == "second"


async def test_renewal_keeps_a_long_call_claimed(cache):
    idem = cache.idempotency("orders", in_flight_ttl=1.0)
    gate = asyncio.Event()
    started = asyncio.Event()

    async def long_call() -> str:
        started.set()
        await gate.wait()
        return "done"

    task = asyncio.create_task(idem.run("k", long_call))
    await started.wait()
    began = time.monotonic()
    await wait_until(lambda: time.monotonic() - began > 2.5, timeout=10)  # > 2 leases
    with pytest.raises(InProgress):
        await idem.run("k", Counter())  # the lease was renewed: nobody takes over
    gate.set()
    assert await task == "done"


# --- failures -------------------------------------------------------------------------------


async def test_a_retryable_failure_releases_the_claim(cache):
    idem = cache.idempotency("orders")

    async def flaky() -> None:
        raise Flaky

    with pytest.raises(Flaky):
        await idem.run(order(), flaky)
    assert await idem.lookup(order()) is None
    assert await idem.run(order(), Counter("ok")) == "ok"


async def test_a_final_failure_is_stored_and_replayed(cache):
    idem = cache.idempotency("orders", final=(Rejected, lambda exc: isinstance(exc, KeyError)))

    async def rejected() -> None:
        raise Rejected("insufficient funds")

    async def missing() -> None:
        raise KeyError("no market")

    with pytest.raises(Rejected):
        await idem.run("a", rejected)
    with pytest.raises(ReplayedFailure) as info:
        await idem.run("a", Counter())
    assert (info.value.error_type, info.value.message) == ("Rejected", "insufficient funds")
    with pytest.raises(KeyError):
        await idem.run("b", missing)
    with pytest.raises(ReplayedFailure):
        await idem.run("b", Counter())
    record = await idem.lookup("a")
    assert record is not None
    assert (record.status, record.error_type, record.result) == ("failed", "Rejected", None)


async def test_a_predicate_that_does_not_match_is_retryable(cache):
    idem = cache.idempotency("orders", final=(lambda exc: False,))

    async def flaky() -> None:
        raise Flaky

    with pytest.raises(Flaky):
        await idem.run("a", flaky)
    assert await idem.lookup("a") is None


async def test_a_cancelled_call_releases_the_claim(cache):
    idem = cache.idempotency("orders")
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(idem.run("k", hang))
    await started.wait()
    task.cancel()
    await asyncio.wait([task])
    assert task.cancelled()
    assert await wait_until(_released(idem, "k"))
    assert await idem.run("k", Counter("again")) == "again"


def _released(idem: Idempotency, key: str):
    async def check() -> bool:
        return await idem.lookup(key) is None

    return check


async def test_a_result_the_codec_cannot_store_is_a_final_failure(cache):
    idem = cache.idempotency("orders")
    with pytest.raises(ValidationError) as info:
        await idem.run("k", Counter(object()))
    assert info.value.field == "result"
    with pytest.raises(ReplayedFailure) as replay:
        await idem.run("k", Counter())
    assert replay.value.error_type == "ValidationError"


# --- leases and takeover --------------------------------------------------------------------


async def claim_orphan(idem: Idempotency, key: str, fingerprint: str = "") -> None:
    """A claim whose owner died right after claiming: nobody renews or completes it."""
    from tradecache.coordination.idempotency import _CLAIM

    record = idem._ctx.keys.idempotency(idem.scope, key)
    reply = await _CLAIM(
        idem._client, [record], ["dead-owner", fingerprint, idem._lease_ms, idem._ttl_ms]
    )
    assert reply[0] == b"claimed"


async def test_a_dead_owners_claim_is_taken_over_once_after_its_lease(cache, caplog):
    idem = cache.idempotency("orders", in_flight_ttl=1.0)
    await claim_orphan(idem, "k")
    claimed_at = time.monotonic()
    with pytest.raises(InProgress):
        await idem.run("k", Counter())
    calls = 0

    async def submit() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)  # a slow exchange: others see it in flight
        return "placed"

    with caplog.at_level(logging.WARNING, logger="tradecache.coordination.idempotency"):
        results = await asyncio.gather(
            *(idem.run("k", submit, wait=5) for _ in range(10)), return_exceptions=True
        )
    assert calls == 1
    assert results == ["placed"] * 10
    assert time.monotonic() - claimed_at >= 1.0
    record = await idem.lookup("k")
    assert record is not None and record.attempt == 2
    assert "earlier attempt may have had side effects" in caplog.text


async def test_losing_the_claim_while_running_is_reported(cache, caplog):
    idem = cache.idempotency("orders", in_flight_ttl=0.3)
    record = cache.keys.idempotency("orders", "k")

    def renewals() -> int:
        stats = cache.stats().get("idempotency.renew")
        return 0 if stats is None else stats.count

    async def hijacked() -> str:
        await cache.client.hset(record, "o", "someone-else")
        await wait_until(lambda: renewals() >= 1, timeout=30)  # a renewal came due
        return "placed"

    with (
        caplog.at_level(logging.ERROR, logger="tradecache.coordination.idempotency"),
        pytest.raises(LockLost),
    ):
        await idem.run("k", hijacked)
    taken = [r for r in caplog.records if "taken over while its call ran" in r.getMessage()]
    assert [r.record for r in taken] == [record]  # structured: which claim
    assert "taken over while its call ran" in caplog.text


async def test_a_renewal_on_the_wire_when_the_call_ends_is_its_last(cache, caplog):
    from tradecache.coordination.idempotency import _Renewal

    idem = cache.idempotency("orders", in_flight_ttl=30)
    renewal = _Renewal(idem, cache.keys.idempotency("orders", "k"), "token")

    def renewals() -> int:
        stats = cache.stats().get("idempotency.renew")
        return 0 if stats is None else stats.count

    with caplog.at_level(logging.ERROR, logger="tradecache.coordination.idempotency"):
        renewal._due()  # a renewal goes on the wire (the record is gone: "not owned")...
        renewal.cancel()  # ...and the call ends before its reply
        await wait_until(lambda: renewals() == 1)
    assert renewal._handle.cancelled()  # nothing scheduled again
    assert "taken over" not in caplog.text  # the call's outcome decides, not a late reply


# --- Redis unreachable -----------------------------------------------------------------------


async def test_fail_closed_and_fail_open(redis_server_factory, caplog):
    from tradecache import Cache

    server = redis_server_factory(port=0)
    async with Cache.connect(server.url, namespace="idem") as cache:
        closed = cache.idempotency("orders")
        opened = cache.idempotency("orders", on_redis_down="fail_open")
        server.stop()
        submit = Counter("unprotected")
        started = time.monotonic()
        with pytest.raises(ConnectionLost):
            await closed.run(order(), submit)
        assert time.monotonic() - started < 1.0  # decided within the settings' budget
        assert submit.calls == 0
        with caplog.at_level(logging.WARNING, logger="tradecache.coordination.idempotency"):
            assert await opened.run(order(), submit) == "unprotected"
        assert submit.calls == 1
        assert "running unprotected" in caplog.text


async def test_an_outage_after_the_call_keeps_the_result_and_stores_it_later(
    redis_server_factory, caplog
):
    from tradecache import Cache

    server = redis_server_factory(port=0, appendonly=True)
    async with Cache.connect(server.url, namespace="idem") as cache:
        idem = cache.idempotency("orders", in_flight_ttl=5)

        async def submit() -> str:
            server.kill()  # Redis dies while the exchange call runs
            return "placed"

        with caplog.at_level(logging.WARNING, logger="tradecache.coordination.idempotency"):
            assert await idem.run("k", submit) == "placed"
        assert "could not store the outcome" in caplog.text
        server.restart()
        assert await wait_until(_completed(idem, "k"), timeout=10, interval=0.05)
        assert await idem.run("k", Counter()) == "placed"


def _completed(idem: Idempotency, key: str):
    async def check() -> bool:
        try:
            record = await idem.lookup(key)
        except ConnectionLost:
            return False
        return record is not None and record.status == "completed"

    return check


async def test_a_renewal_during_an_outage_is_retried(redis_server_factory):
    from tradecache import Cache

    server = redis_server_factory(port=0, appendonly=True)
    async with Cache.connect(server.url, namespace="idem") as cache:
        idem = cache.idempotency("orders", in_flight_ttl=0.6)

        def renew_errors() -> int:
            stats = cache.stats().get("idempotency.renew")
            return 0 if stats is None else stats.errors

        async def submit() -> str:
            server.kill()
            await wait_until(lambda: renew_errors() >= 1, timeout=10)
            server.restart()
            await wait_until(lambda: cache.stats()["idempotency.renew"].count >= 2, timeout=10)
            return "placed"

        assert await idem.run("k", submit) == "placed"
        record = await idem.lookup("k")
        assert record is not None and record.status == "completed"


async def test_an_outage_after_a_failure_leaves_the_claim_to_expire(redis_server_factory, caplog):
    from tradecache import Cache

    server = redis_server_factory(port=0)
    async with Cache.connect(server.url, namespace="idem") as cache:
        idem = cache.idempotency("orders")

        async def fails() -> None:
            server.stop()
            raise Flaky

        with (
            caplog.at_level(logging.WARNING, logger="tradecache.coordination.idempotency"),
            pytest.raises(Flaky),  # the call's own error, not the outage
        ):
            await idem.run("k", fails)
        assert "could not release" in caplog.text


async def test_storing_later_gives_up_after_the_lease(redis_server_factory, caplog):
    from tradecache import Cache

    server = redis_server_factory(port=0)
    async with Cache.connect(server.url, namespace="idem") as cache:
        idem = cache.idempotency("orders", in_flight_ttl=0.3)

        async def submit() -> str:
            server.stop()
            return "placed"

        with caplog.at_level(logging.WARNING, logger="tradecache.coordination.idempotency"):
            assert await idem.run("k", submit) == "placed"
            await wait_until(lambda: "gave up storing" in caplog.text, timeout=10)


async def test_a_claim_taken_over_before_a_late_store(redis_server_factory, caplog):
    from tradecache import Cache

    server = redis_server_factory(port=0, appendonly=True)
    async with Cache.connect(server.url, namespace="idem") as cache:
        idem = cache.idempotency("orders", in_flight_ttl=5)
        record = cache.keys.idempotency("orders", "k")

        async def submit() -> str:
            server.kill()
            return "placed"

        with caplog.at_level(logging.ERROR, logger="tradecache.coordination.idempotency"):
            assert await idem.run("k", submit) == "placed"
            server.restart()
            await server_client_hset(server, record)
            await wait_until(lambda: "before its outcome was stored" in caplog.text, timeout=10)


async def server_client_hset(server: Any, record: str) -> None:
    client = server.client()
    try:
        client.hset(record, "o", "another-owner")
    finally:
        client.close()


# --- inspection and validation ---------------------------------------------------------------


async def test_lookup_and_forget(cache):
    idem = cache.idempotency("orders")
    assert await idem.lookup(order()) is None
    assert not await idem.forget(order())
    await idem.run(order(), Counter())
    assert await idem.forget(order())
    assert await idem.lookup(order()) is None
    assert "orders" in repr(idem)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"scope": "bad scope"}, "scope"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"in_flight_ttl": float("nan")}, "in_flight_ttl"),
        ({"ttl": 10, "in_flight_ttl": 20}, "ttl"),
        ({"on_redis_down": "maybe"}, "on_redis_down"),
        ({"final": (42,)}, "final"),
    ],
)
async def test_option_validation(cache, options, field):
    options = {"scope": "orders", **options}
    with pytest.raises(ValidationError) as info:
        cache.idempotency(**options)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ({"key_or_payload": "bad key"}, "key"),
        ({"key_or_payload": "k", "fields": ("a",)}, "fields"),
        ({"key_or_payload": {"a": 1}, "payload": {"a": 1}}, "payload"),
        ({"key_or_payload": {"a": 1}, "fields": "a"}, "fields"),
        ({"key_or_payload": {"a": 1}, "fields": ()}, "fields"),
        ({"key_or_payload": [1, 2], "fields": ("a",)}, "fields"),
        ({"key_or_payload": "k", "wait": -1}, "wait"),
        ({"key_or_payload": "k", "wait": "1"}, "wait"),
        ({"key_or_payload": {"a": object()}}, "a"),
        ({"key_or_payload": {1: "a"}}, "payload"),
        ({"key_or_payload": {"a": {"b": float("nan")}}}, "payload"),
        ({"key_or_payload": {"t": datetime(2024, 1, 1)}}, "t"),
        ({"key_or_payload": {"d": Decimal("Infinity")}}, "payload"),
    ],
)
async def test_run_validation(cache, call, field):
    idem = cache.idempotency("orders")
    submit = Counter()
    with pytest.raises(ValidationError) as info:
        await idem.run(fn=submit, **call)
    assert info.value.field == field
    assert submit.calls == 0


# --- canonical hashing ------------------------------------------------------------------------


class Side(Enum):
    BUY = "buy"


class Level(IntEnum):
    ONE = 1


class Leg(msgspec.Struct):
    client_order_id: str = msgspec.field(name="clientOrderId")
    amount: Decimal = Decimal(0)
    note: str | None = None


@dataclass
class Intent:
    symbol: str
    amount: float


def test_canonical_forms_are_equal_where_the_content_is():
    stamp = datetime(2024, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert canonical_hash({"a": 1, "b": 2}) == canonical_hash({"b": 2, "a": 1})
    assert canonical_hash({"x": Decimal("1.0")}) == canonical_hash({"x": 1})
    assert canonical_hash({"x": 0.1}) == canonical_hash({"x": Decimal("0.10")})
    assert canonical_hash({"x": Decimal("-0.00")}) == canonical_hash({"x": 0})
    assert canonical_hash({"x": 100}) == canonical_hash({"x": Decimal("1E+2")})
    assert canonical_hash({"x": None, "y": 1}) == canonical_hash({"y": 1})
    assert canonical_hash({"t": stamp}) == canonical_hash({"t": 1704110400123})
    assert canonical_hash({"t": stamp}) == canonical_hash(
        {"t": stamp.astimezone(timezone_plus_2())}
    )
    assert canonical_hash({"s": Side.BUY, "l": Level.ONE}) == canonical_hash({"s": "buy", "l": 1})
    assert canonical_hash(Leg("c-1", Decimal("2.0"))) == canonical_hash(
        {"clientOrderId": "c-1", "amount": 2}
    )
    assert canonical_hash(Intent("BTC", 1.5)) == canonical_hash({"symbol": "BTC", "amount": 1.5})
    assert canonical_hash({"l": (1, 2)}) == canonical_hash({"l": [1, 2]})
    assert canonical_hash({"b": b"\x00\x01"}) == canonical_hash({"b": bytearray(b"\x00\x01")})
    assert canonical_hash(Leg("c-1"), fields=("client_order_id",)) == canonical_hash(
        {"clientOrderId": "c-1"}, fields=("clientOrderId",)
    )


def test_canonical_forms_differ_where_the_content_does():
    assert canonical_hash({"x": "1"}) != canonical_hash({"x": 1})
    assert canonical_hash({"x": True}) != canonical_hash({"x": 1})
    assert canonical_hash({"x": 1}) != canonical_hash(
        {"x": Decimal("1.0000000000000000000000000001")}
    )
    assert canonical_hash({"x": "a"}) != canonical_hash({"x": b"a"})
    assert canonical_hash({"a": {"b": 1}}) != canonical_hash({"a": [["b", 1]]})
    assert canonical_hash([1, 2]) != canonical_hash([2, 1])


def timezone_plus_2() -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=2))


numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.decimals(allow_nan=False, allow_infinity=False, places=None),
    st.floats(allow_nan=False, allow_infinity=False),
)
leaves = st.one_of(st.none(), st.booleans(), st.text(max_size=8), numbers)
payloads = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=6), children, max_size=5),
    ),
    max_leaves=20,
)


def reshape(value: Any, flip: bool) -> Any:
    """The same content in another form: dict order reversed, numbers re-expressed."""
    if isinstance(value, dict):
        items = list(value.items())
        if flip:
            items.reverse()
        return {key: reshape(item, flip) for key, item in items}
    if isinstance(value, list):
        return tuple(reshape(item, flip) for item in value) if flip else list(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if not flip:
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, int):
        value = Decimal(value)
    sign, digits, exponent = value.as_tuple()
    return Decimal((sign, (*digits, 0, 0, 0), exponent - 3))  # exact: more trailing zeros


@settings(max_examples=300, deadline=None)
@given(payloads, st.booleans())
def test_canonical_hash_ignores_form(payload, flip):
    assert canonical_hash(reshape(payload, flip)) == canonical_hash(payload)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), leaves, min_size=1, max_size=6), st.data())
def test_canonical_hash_sees_a_changed_value(payload, data):
    key = data.draw(st.sampled_from(sorted(payload)))
    changed = dict(payload)
    changed[key] = [payload[key]]  # wrapped: never equal to the original value
    assert canonical_hash(changed) != canonical_hash(payload)


# --- acceptance: real processes --------------------------------------------------------------


@pytest.mark.slow
async def test_thirty_two_processes_submit_the_same_order_once(cache):
    import multiprocessing

    from helpers.coordination_workers import CTX, processes, receive, submit_worker

    n = 32
    counter = cache.keys.key("test", "side-effects")
    go = CTX.Event()
    results: multiprocessing.Queue[Any] = CTX.Queue()
    url, namespace = cache.settings.url, cache.settings.namespace
    argsets = [(url, namespace, counter, index, go, results) for index in range(n)]
    with processes(submit_worker, argsets) as procs:
        await receive(results, n, 300, procs)
        go.set()  # all at once
        outcomes = await receive(results, n, 300, procs)
    assert int(await cache.client.get(counter)) == 1  # the exchange saw one order
    ran = [o for o in outcomes if o[0] == "ran"]
    assert len(ran) == 1
    winner = ran[0][2]
    for kind, _, result in outcomes:
        assert kind in ("ran", "replayed", "in_progress")
        if kind == "replayed":
            assert result == winner  # the stored result, not a second call
    waited = [o for o in outcomes if o[0] == "replayed"]
    assert len(waited) >= n // 2 - 1  # every process that waited got the result


@pytest.mark.slow
async def test_a_killed_executor_is_taken_over_once_after_its_lease(cache):
    import multiprocessing
    import os
    import signal

    from helpers.coordination_workers import (
        CTX,
        executor_worker,
        order_content,
        processes,
        receive,
        retry_worker,
    )

    lease = 2.0
    first, second = cache.keys.key("test", "first"), cache.keys.key("test", "second")
    url, namespace = cache.settings.url, cache.settings.namespace
    # The executor gets a queue of its own: a process killed while its queue's feeder thread
    # holds the shared write lock would leave that lock taken for every other writer.
    doomed: multiprocessing.Queue[Any] = CTX.Queue()
    results: multiprocessing.Queue[Any] = CTX.Queue()
    with processes(executor_worker, [(url, namespace, first, lease, doomed)]) as [executor]:
        [(_, pid, in_call_at)] = await receive(doomed, 1, 300, [executor])
        os.kill(pid, signal.SIGKILL)  # mid-call: the order may or may not have gone out
        await asyncio.get_running_loop().run_in_executor(None, executor.join, 10)
    idem = cache.idempotency("orders", in_flight_ttl=lease)
    record = await idem.lookup(order_content(0))
    assert record is not None and record.status == "in_flight"
    argsets = [(url, namespace, second, lease, index, results) for index in range(1, 9)]
    with processes(retry_worker, argsets) as procs:
        outcomes = await receive(results, 8, 300, procs)
    assert int(await cache.client.get(first)) == 1
    assert int(await cache.client.get(second)) == 1  # taken over by exactly one process
    assert {o[2] for o in outcomes} == {"placed-by-retry"}
    [started] = [o[3] for o in outcomes if o[3] is not None]
    assert started - in_call_at >= lease - 0.1  # not before the dead owner's lease ran out
    record = await idem.lookup(order_content(0))
    assert record is not None and (record.status, record.attempt) == ("completed", 2)
