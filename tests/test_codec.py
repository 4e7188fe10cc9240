"""Codec: round trips of every model in both formats, wire format, errors, caching.

Pure unit tests: no Redis.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradecache import models
from tradecache.codec import Codec, CodecError, get_codec
from tradecache.errors import ValidationError
from tradecache.models import (
    Candle,
    Fee,
    Model,
    Order,
    OrderStatus,
    Ticker,
    convert,
    from_ms,
    utc_now,
)

CODECS = ("json", "msgpack")
T0 = 1700000000123

# --------------------------------------------------------------------------- strategies

_BIG = 1e300
_ZONES = [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]
_TIMES = st.one_of(
    st.integers(0, 253402300799999).map(from_ms),
    # aware datetimes with microseconds: models truncate them to the millisecond
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(_ZONES),
    ),
)
_JSONISH = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=8))


def _number(spec: Any) -> st.SearchStrategy[Any]:
    if spec.kind == "float":
        low = 0.0 if spec.nonneg else -_BIG
        return st.floats(min_value=low, max_value=_BIG, allow_nan=False, allow_infinity=False)
    if spec.kind == "int":
        return st.integers(0, 2**62)
    if spec.positive:
        return st.decimals(min_value=Decimal("1e-30"), allow_nan=False, allow_infinity=False)
    low = Decimal(0) if spec.nonneg else None
    return st.decimals(min_value=low, allow_nan=False, allow_infinity=False)


def _field(spec: Any) -> st.SearchStrategy[Any]:
    kind = spec.kind
    if kind == "str":
        strategy: st.SearchStrategy[Any] = st.text(min_size=1 if spec.nonempty else 0, max_size=12)
    elif kind in ("float", "dec", "int"):
        strategy = _number(spec)
    elif kind == "time":
        strategy = _TIMES
    elif kind == "bool":
        strategy = st.booleans()
    elif kind == "enum":
        strategy = st.sampled_from(list(spec.tp))
    elif kind == "dict":
        strategy = st.dictionaries(st.text(max_size=6), _JSONISH, max_size=3)
    elif kind == "struct":
        strategy = model_strategy(spec.tp)
    else:  # tuple of structs
        strategy = st.lists(model_strategy(spec.tp), max_size=1).map(tuple)
    if type(None) in spec.allowed:
        strategy = st.none() | strategy
    return strategy


@st.composite
def _candles(draw: st.DrawFn) -> Candle:
    price = st.floats(min_value=0, max_value=_BIG, allow_nan=False, allow_infinity=False)
    low, a, b, high = sorted(draw(st.lists(price, min_size=4, max_size=4)))
    return Candle(
        timestamp=draw(_TIMES),
        open=draw(st.sampled_from([a, b])),
        high=high,
        low=low,
        close=draw(st.sampled_from([a, b])),
        volume=draw(st.none() | price),
        count=draw(st.none() | st.integers(0, 10**9)),
    )


@functools.cache
def model_strategy(model: type[Model]) -> st.SearchStrategy[Any]:
    """Valid instances of ``model``, built from its own field rules."""
    if model is Candle:
        return _candles()
    specs = models._meta(model).specs
    return st.builds(model, **{spec.name: _field(spec) for spec in specs})


ALL_MODELS = list(models._models())
ANY_MODEL = st.sampled_from(ALL_MODELS).flatmap(model_strategy)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("name", CODECS)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_model(name: str, model: type[Model], data: st.DataObject) -> None:
    obj = data.draw(model_strategy(model))
    codec = get_codec(name)  # type: ignore[arg-type]
    raw = codec.encode(obj)
    back = codec.decode(raw, model)
    assert back == obj
    assert repr(back) == repr(obj)  # Decimal exponents and float bits survive, not just ==
    assert Codec(name, validate=True).decode(raw, model) == obj  # type: ignore[arg-type]
    assert codec.decode_many([raw, raw], model) == [obj, obj]
    assert codec.decode(codec.encode([obj]), list[model]) == [obj]  # type: ignore[valid-type]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=ANY_MODEL)
def test_dict_views_round_trip(obj: Model) -> None:
    stamped = convert(obj, type(obj))  # fills arrival stamps once
    assert convert(stamped.to_dict(), type(obj)) == stamped
    assert convert(stamped.to_ccxt(), type(obj)) == stamped
    wire = msgspec.json.decode(get_codec("json").encode(stamped))
    if isinstance(wire, list):  # Candle: the ccxt array
        wire = dict(zip(type(obj).__struct_encode_fields__, wire, strict=True))
    assert wire == msgspec.json.decode(msgspec.json.encode(stamped.to_dict()))


@settings(max_examples=100, deadline=None)
@given(stamp=_TIMES, name=st.sampled_from(CODECS))
def test_timestamps_are_epoch_ms_on_the_wire(stamp: datetime, name: str) -> None:
    codec = get_codec(name)  # type: ignore[arg-type]
    t = Ticker(symbol="X", timestamp=stamp)
    plain = codec.decode(codec.encode(t))
    assert type(plain["timestamp"]) is int
    assert plain["timestamp"] == (stamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        milliseconds=1
    )
    back = codec.decode(codec.encode(t), Ticker).timestamp
    assert back is not None and back.tzinfo is not None and back.utcoffset() == timedelta(0)
    assert back.microsecond % 1000 == 0
    assert timedelta(0) <= stamp - back < timedelta(milliseconds=1)


@settings(max_examples=100, deadline=None)
@given(value=st.decimals(allow_nan=False, allow_infinity=False), name=st.sampled_from(CODECS))
def test_decimal_is_an_exact_string(value: Decimal, name: str) -> None:
    codec = get_codec(name)  # type: ignore[arg-type]
    fee = Fee(cost=value)
    assert codec.decode(codec.encode(fee))["cost"] == str(value)
    assert str(codec.decode(codec.encode(fee), Fee).cost) == str(value)


def test_wire_shapes() -> None:
    codec = get_codec("json")
    t = Ticker(symbol="BTC/USDT", exchange="binance", timestamp=from_ms(T0), bid=1.5)
    assert codec.encode(t) == (
        b'{"symbol":"BTC/USDT","exchange":"binance","timestamp":1700000000123,"bid":1.5}'
    )
    c = Candle.from_ccxt([T0, 1, 2, 0.5, 1.5, 10])
    assert codec.encode(c) == b"[1700000000123,1.0,2.0,0.5,1.5,10.0,null]"
    o = Order(id="1", symbol="X", side="buy", amount=Decimal("0.10"))  # type: ignore[arg-type]
    assert codec.encode(o) == b'{"id":"1","symbol":"X","side":"buy","amount":"0.10"}'
    closed = o.replace(status=OrderStatus.CLOSED, fee=Fee(cost=Decimal("-0.01")))
    assert codec.decode(codec.encode(closed)) == {
        "id": "1",
        "symbol": "X",
        "side": "buy",
        "amount": "0.10",
        "status": "closed",
        "fee": {"cost": "-0.01"},
    }
    packed = get_codec("msgpack").encode(o)
    assert msgspec.msgpack.decode(packed)["amount"] == "0.10"


def test_plain_data_and_ccxt_dicts() -> None:
    for name in CODECS:
        codec = get_codec(name)  # type: ignore[arg-type]
        assert codec.decode(codec.encode({"a": [1, "x", None]})) == {"a": [1, "x", None]}
        assert codec.decode(codec.encode({"a": 1}), dict[str, int]) == {"a": 1}
    # the tickers of a ccxt watch_tickers() call, stored as one JSON map
    tickers = {
        s: Ticker.from_ccxt({"symbol": s, "timestamp": T0, "bid": 1.0, "info": {}}, exchange="e")
        for s in ("BTC/USDT", "ETH/USDT")
    }
    codec = get_codec("json")
    assert codec.decode(codec.encode(tickers), dict[str, Ticker]) == tickers


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", CODECS)
def test_garbage_raises_codec_error(name: str) -> None:
    codec = get_codec(name)  # type: ignore[arg-type]
    with pytest.raises(CodecError) as info:
        codec.decode(b"\xc1\xff{not data", Ticker)
    assert info.value.field == "$"
    assert isinstance(info.value, ValidationError)
    with pytest.raises(CodecError) as info:
        codec.decode(codec.encode({"symbol": "X", "bidVolume": "x"}), Ticker)
    assert info.value.field == "bid_volume"
    with pytest.raises(CodecError) as info:
        codec.decode(codec.encode({"bid": 1.0}), Ticker)
    assert info.value.field == "symbol"
    with pytest.raises(CodecError) as info:
        codec.decode(codec.encode({"symbol": "X", "timestamp": "soon"}), Ticker)
    assert info.value.field == "timestamp"
    with pytest.raises(CodecError) as info:
        codec.decode(codec.encode([T0, 1, "x", 0, 0]), Candle)
    assert info.value.field == "high"
    with pytest.raises(CodecError) as info:
        codec.decode(codec.encode([[T0, 1, "x", 0, 0]]), list[Candle])
    assert info.value.field == "[0][2]"
    with pytest.raises(CodecError) as info:
        codec.decode_many([codec.encode({"symbol": "X"}), codec.encode({"symbol": 1})], Ticker)
    assert info.value.field == "symbol"
    with pytest.raises(CodecError) as info:
        codec.decode_many([b"\xc1\xff{"], Ticker)
    assert info.value.field == "$"


def test_msgpack_rejects_text() -> None:
    with pytest.raises(CodecError, match="malformed msgpack"):
        get_codec("msgpack").decode('{"symbol": "X"}', Ticker)
    assert get_codec("json").decode('{"symbol": "X"}', Ticker).symbol == "X"


def test_values_are_trusted_unless_validate() -> None:
    raw = b'{"symbol":"X","bid":-1.0}'
    assert get_codec("json").decode(raw, Ticker).bid == -1.0  # validated when written
    strict = Codec("json", validate=True)
    for decode in (strict.decode, lambda data, t: strict.decode_many([data], t)):
        with pytest.raises(CodecError) as info:
            decode(raw, Ticker)
        assert info.value.field == "bid"
    with pytest.raises(CodecError) as info:
        strict.decode(b'{"id":"1","symbol":"X","side":"buy","amount":"0"}', Order)
    assert info.value.field == "amount"
    # the trust ends with the decode, even a failed one
    with pytest.raises(CodecError):
        get_codec("json").decode(b"{", Ticker)
    assert not models.trusted.get()
    with pytest.raises(ValidationError):
        Ticker(symbol="X", bid=-1.0)


def test_encode_errors() -> None:
    for name in CODECS:
        with pytest.raises(CodecError, match="cannot encode object") as info:
            get_codec(name).encode(object())  # type: ignore[arg-type]
        assert info.value.field == "$"


def test_codec_construction_and_cache() -> None:
    assert get_codec() is get_codec("json")
    assert get_codec("msgpack") is get_codec("msgpack")
    assert get_codec("msgpack").name == "msgpack"
    assert repr(get_codec("json")) == "Codec('json')"
    assert Codec().name == "json" and not Codec().validate
    with pytest.raises(ValidationError) as info:
        Codec("yaml")  # type: ignore[arg-type]
    assert info.value.field == "codec"
    with pytest.raises(ValidationError):
        get_codec("xml")  # type: ignore[arg-type]


def test_decoders_are_cached_per_type() -> None:
    codec = Codec("json")
    raw = codec.encode(Ticker(symbol="X"))
    codec.decode(raw, Ticker)
    first = codec._decoders[Ticker]
    codec.decode(raw, Ticker)
    codec.decode_many([raw], Ticker)
    assert codec._decoders[Ticker] is first
    assert set(codec._decoders) == {Ticker}


def test_received_survives_storage() -> None:
    t = Ticker.from_ccxt({"symbol": "X"}, exchange="e")
    codec = get_codec("msgpack")
    back = codec.decode(codec.encode(t), Ticker)
    assert back.received == t.received
    assert back.received is not None and abs(back.received - utc_now()) < timedelta(minutes=1)
