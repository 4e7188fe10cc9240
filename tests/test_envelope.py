from datetime import UTC, datetime

import msgspec
import pytest

from tradecache.codec import CodecError, get_codec
from tradecache.envelope import VERSION, Envelope, decode_envelope, encode_envelope
from tradecache.errors import ValidationError
from tradecache.models import Ticker
from tradecache.scripts import Script

ENVELOPE_ECHO = Script(
    "test_envelope",
    "return tc_envelope(ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5])",
    include=("envelope",),
)


def test_round_trip_keeps_payload_raw_until_asked():
    data = encode_envelope("event", "orders", 7, 1_700_000_000_123, b'{"id":"1","n":2}', "me")
    env = decode_envelope(data)
    assert (env.v, env.type, env.topic, env.seq, env.source) == (
        VERSION,
        "event",
        "orders",
        7,
        "me",
    )
    assert isinstance(env.payload, msgspec.Raw)
    assert env.decode() == {"id": "1", "n": 2}
    assert env.decode(dict[str, str | int]) == {"id": "1", "n": 2}
    assert env.datetime == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)


def test_payload_type_mismatch_raises_codec_error():
    env = decode_envelope(encode_envelope("event", "t", 1, 0, b'"text"'))
    with pytest.raises(CodecError):
        env.decode(int)


def test_payload_decodes_into_models():
    ticker = Ticker(symbol="BTC/USDT", exchange="binance", last=1.5, timestamp=datetime.now(UTC))
    env = decode_envelope(encode_envelope("ticker", "t", 1, 0, get_codec("json").encode(ticker)))
    assert env.decode(Ticker) == ticker


@pytest.mark.parametrize(
    "garbage",
    [
        b"not json",
        b"{}",
        b'{"v":1,"type":"event","topic":"t","seq":"x","time":0}',
        b'{"v":2,"type":"event","topic":"t","seq":1,"time":0}',
        "[]",
    ],
)
def test_malformed_messages_raise_validation_error(garbage):
    with pytest.raises(ValidationError) as info:
        decode_envelope(garbage)
    assert info.value.field == "envelope"


def test_defaults_for_optional_fields():
    env = decode_envelope(b'{"v":1,"type":"e","topic":"t","seq":1,"time":5}')
    assert env.source == ""
    assert env.decode() is None
    assert isinstance(env, Envelope)


async def test_lua_builds_the_same_envelope(cache):
    topic = 'we"ird\\topic'
    reply = await ENVELOPE_ECHO(cache.client, [], ["ticker", topic, 42, "src", '{"a":[1,2]}'])
    env = decode_envelope(reply)
    assert (env.type, env.topic, env.seq, env.source) == ("ticker", topic, 42, "src")
    assert env.decode() == {"a": [1, 2]}
    now_ms = datetime.now(UTC).timestamp() * 1000
    assert abs(env.time - now_ms) < 60_000  # server clock, same machine
