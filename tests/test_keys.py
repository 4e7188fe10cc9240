import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradecache.errors import ValidationError
from tradecache.keys import Keys, validate_exchange, validate_part, validate_symbol


def test_key_layout_and_hash_tag():
    keys = Keys("prod")
    assert keys.prefix == "prod:"
    assert keys.key("lock", "x") == "prod:lock:{x}"
    assert keys.key("ticker", "binance", "BTC/USDT", "x") == "prod:ticker:{binance}:BTC/USDT:x"
    assert keys.channel("ticker", "binance") == "prod:ch:ticker:{binance}"
    assert keys.pattern("lock") == "prod:lock:*"
    assert keys.all_pattern() == "prod:*"
    assert repr(keys) == "Keys(namespace='prod')"


@pytest.mark.parametrize(
    "bad", ["", "a{b", "a}b", "a*", "a?", "a[1]", "a b", "a\nb", "a\tb", "a\\b", "\x00", "x" * 201]
)
def test_bad_parts_are_rejected_naming_the_field(bad):
    with pytest.raises(ValidationError) as info:
        validate_part(bad, "order_id")
    assert info.value.field == "order_id"


def test_wrong_type_is_rejected():
    with pytest.raises(ValidationError, match="must be a str, not int"):
        validate_symbol(5)


def test_symbols_allow_ccxt_shapes():
    for symbol in ("BTC/USDT", "BTC/USDT:USDT", "ETH-PERP", "BTC/USD:BTC-240927"):
        assert validate_symbol(symbol) == symbol
    with pytest.raises(ValidationError):
        validate_symbol("x" * 101)


def test_exchange_ids_are_lowercased_and_strict():
    assert validate_exchange("Binance") == "binance"
    assert validate_exchange("okx") == "okx"
    with pytest.raises(ValidationError, match="only letters"):
        validate_exchange("bin:ance")
    with pytest.raises(ValidationError):
        Keys("a:b")
    with pytest.raises(ValidationError) as info:
        Keys("")
    assert info.value.field == "namespace"


@given(st.text(min_size=1, max_size=200))
def test_accepted_parts_never_carry_a_hash_tag_or_glob(text):
    try:
        part = validate_part(text, "id")
    except ValidationError:
        return
    assert not set("{}*?[]\\") & set(part)
    assert not any(c.isspace() for c in part)
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in part)
    key = Keys("ns").key("kind", part)
    # the only hash tag of the key is the one Keys put there
    assert key.count("{") == 1 and key.count("}") == 1
