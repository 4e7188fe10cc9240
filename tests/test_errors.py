import pickle

import pytest
from redis import exceptions as rx

from tradecache import errors
from tradecache.errors import (
    CircuitOpen,
    Claimed,
    CommandError,
    ConnectionLost,
    TradecacheError,
    ValidationError,
    redis_errors,
    redis_errors_iter,
    translate,
    translate_redis_errors,
)


def test_hierarchy_and_builtin_bases():
    assert issubclass(ConnectionLost, ConnectionError)
    assert issubclass(ValidationError, ValueError)
    assert issubclass(errors.WaitTimeout, TimeoutError)
    assert issubclass(errors.NotFound, LookupError)
    assert issubclass(errors.ConfigError, ValidationError)
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, TradecacheError), name


def test_validation_error_names_the_field_and_pickles():
    exc = ValidationError("price", "must be finite")
    assert exc.field == "price"
    assert str(exc) == "price: must be finite"
    clone = pickle.loads(pickle.dumps(exc))
    assert (clone.field, clone.reason) == ("price", "must be finite")


def test_circuit_open_and_claimed_messages_pickle():
    exc = CircuitOpen("binance", 1.5)
    assert "binance" in str(exc) and "1.500" in str(exc)
    assert "retry" not in str(CircuitOpen("x"))
    assert pickle.loads(pickle.dumps(exc)).retry_after == 1.5
    claimed = Claimed("binance:BTC/USDT", "bot-1")
    assert claimed.holder == "bot-1" and "bot-1" in str(claimed)
    assert pickle.loads(pickle.dumps(claimed)).key == "binance:BTC/USDT"


@pytest.mark.parametrize(
    "raised",
    [
        rx.ConnectionError("refused"),
        rx.TimeoutError("slow"),
        rx.ClusterDownError("down"),
        rx.RedisClusterException("Redis Cluster cannot be connected"),
        OSError("net down"),
    ],
)
def test_outages_become_connection_lost(raised):
    assert isinstance(translate(raised), ConnectionLost)


def test_other_replies_become_command_errors():
    assert isinstance(translate(rx.ResponseError("WRONGTYPE")), CommandError)
    slot = rx.RedisClusterException("all keys must map to the same key slot")
    assert isinstance(translate(slot), CommandError)
    mine = ValidationError("x", "y")
    assert translate(mine) is mine


async def test_decorators_translate_and_pass_through():
    @redis_errors
    async def fails(exc: BaseException) -> None:
        raise exc

    with pytest.raises(ConnectionLost) as info:
        await fails(rx.ConnectionError("refused"))
    assert isinstance(info.value.__cause__, rx.ConnectionError)
    with pytest.raises(ValidationError):
        await fails(ValidationError("a", "b"))
    with pytest.raises(KeyError):
        await fails(KeyError("not a redis error"))

    @redis_errors_iter
    async def stream(exc: BaseException | None):
        yield 1
        if exc is not None:
            raise exc

    assert [item async for item in stream(None)] == [1]
    with pytest.raises(CommandError):
        async for _ in stream(rx.ResponseError("boom")):
            pass


def test_context_manager_translates():
    with pytest.raises(ConnectionLost), translate_redis_errors():
        raise rx.ConnectionError("gone")
    with pytest.raises(Claimed), translate_redis_errors():
        raise Claimed("k", None)


def test_replayed_failure_pickles():
    from tradecache.errors import ReplayedFailure

    exc = ReplayedFailure("ValueError", "bad price")
    clone = pickle.loads(pickle.dumps(exc))
    assert (clone.error_type, clone.message) == ("ValueError", "bad price")
    assert "ValueError" in str(clone)
