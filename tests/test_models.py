"""Models: ccxt conversion, validation rules (field named), normalisation, helpers.

Pure unit tests: no Redis.
"""

from __future__ import annotations

import copy
import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import msgspec
import pytest

from tradecache import models
from tradecache.errors import ValidationError
from tradecache.models import (
    Balance,
    BotStatus,
    Candle,
    Exchange,
    Fee,
    Market,
    MarketLimits,
    MarketPrecision,
    MarketType,
    MinMax,
    Order,
    OrderSide,
    OrderStatus,
    OrderType,
    Position,
    PositionSide,
    ProcessInfo,
    ProcessStatus,
    TakerOrMaker,
    Ticker,
    Trade,
    balances_from_ccxt,
    convert,
    dec_hook,
    enc_hook,
    from_ms,
    to_ms,
    translate_msgspec_error,
    utc_now,
)

T0 = 1700000000123  # 2023-11-14T22:13:20.123Z
T0_DT = datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)

# --------------------------------------------------------------------------- ccxt fixtures
# Shapes as ccxt 4.x emits them (binance / binanceusdm), `info` included.

WATCH_TICKER: dict[str, Any] = {
    "symbol": "BTC/USDT",
    "timestamp": T0,
    "datetime": "2023-11-14T22:13:20.123Z",
    "high": 37980.0,
    "low": 36300.0,
    "bid": 37100.01,
    "bidVolume": 2.35,
    "ask": 37100.02,
    "askVolume": 0.41,
    "vwap": 37002.5,
    "open": 36500.0,
    "close": 37100.02,
    "last": 37100.02,
    "previousClose": 36499.99,
    "change": 600.02,
    "percentage": 1.644,
    "average": 36800.01,
    "baseVolume": 32145.2,
    "quoteVolume": 1189464523.2,
    "markPrice": None,
    "indexPrice": None,
    "info": {"e": "24hrTicker", "E": T0, "s": "BTCUSDT", "p": "600.02", "c": "37100.02"},
}

WATCH_ORDER: dict[str, Any] = {
    "info": {"e": "executionReport", "s": "BTCUSDT", "i": 28457, "X": "PARTIALLY_FILLED"},
    "id": "28457",
    "clientOrderId": "x-R4BD3S82abc",
    "timestamp": T0 + 377,
    "datetime": "2023-11-14T22:13:20.500Z",
    "lastTradeTimestamp": T0 + 477,
    "lastUpdateTimestamp": T0 + 477,
    "symbol": "BTC/USDT",
    "type": "limit",
    "timeInForce": "GTC",
    "postOnly": False,
    "reduceOnly": None,
    "side": "buy",
    "price": 37000.0,
    "stopPrice": None,
    "triggerPrice": None,
    "takeProfitPrice": None,
    "stopLossPrice": None,
    "amount": 0.015,
    "cost": 277.5,
    "average": 37000.0,
    "filled": 0.0075,
    "remaining": 0.0075,
    "status": "open",
    "fee": {"cost": 0.0000075, "currency": "BTC"},
    "trades": [],
    "fees": [{"cost": 0.0000075, "currency": "BTC"}],
}

WATCH_TRADE: dict[str, Any] = {
    "info": {"e": "trade", "t": 3290394883, "p": "37100.01", "q": "0.00134", "m": True},
    "timestamp": T0 + 577,
    "datetime": "2023-11-14T22:13:20.700Z",
    "symbol": "BTC/USDT",
    "id": "3290394883",
    "order": None,
    "type": None,
    "side": "sell",
    "takerOrMaker": None,
    "price": 37100.01,
    "amount": 0.00134,
    "cost": 49.7140134,
    "fee": None,
    "fees": [],
}

WATCH_MY_TRADE: dict[str, Any] = {
    "info": {"e": "executionReport", "t": 3290394999, "n": "0.0000075", "N": "BTC"},
    "timestamp": T0 + 477,
    "datetime": "2023-11-14T22:13:20.600Z",
    "symbol": "BTC/USDT",
    "id": "3290394999",
    "order": "28457",
    "type": "limit",
    "side": "buy",
    "takerOrMaker": "maker",
    "price": 37000.0,
    "amount": 0.0075,
    "cost": 277.5,
    "fee": {"cost": 0.0000075, "currency": "BTC", "rate": 0.001},
    "fees": [{"cost": 0.0000075, "currency": "BTC", "rate": 0.001}],
}

FETCH_BALANCE: dict[str, Any] = {
    "info": {
        "makerCommission": 10,
        "balances": [{"asset": "BTC", "free": "0.5", "locked": "0.015"}],
    },
    "timestamp": T0 + 1000,
    "datetime": "2023-11-14T22:13:21.123Z",
    "BTC": {"free": 0.5, "used": 0.015, "total": 0.515},
    "USDT": {"free": 1000.12, "used": 555.0, "total": 1555.12},
    "free": {"BTC": 0.5, "USDT": 1000.12},
    "used": {"BTC": 0.015, "USDT": 555.0},
    "total": {"BTC": 0.515, "USDT": 1555.12},
}

FETCH_POSITION: dict[str, Any] = {
    "info": {"symbol": "BTCUSDT", "positionAmt": "-0.010", "entryPrice": "37223.4"},
    "id": None,
    "symbol": "BTC/USDT:USDT",
    "contracts": 0.01,
    "contractSize": 1.0,
    "unrealizedPnl": -1.234,
    "leverage": 20.0,
    "liquidationPrice": 31000.5,
    "collateral": 18.5,
    "notional": 371.0,
    "markPrice": 37100.0,
    "entryPrice": 37223.4,
    "timestamp": T0 + 2000,
    "initialMargin": 18.55,
    "initialMarginPercentage": 0.05,
    "maintenanceMargin": 1.484,
    "maintenanceMarginPercentage": 0.004,
    "marginRatio": 0.0802,
    "datetime": "2023-11-14T22:13:22.123Z",
    "marginMode": "cross",
    "marginType": "cross",
    "side": "short",
    "hedged": False,
    "percentage": -6.65,
    "stopLossPrice": None,
    "takeProfitPrice": None,
}

SPOT_MARKET: dict[str, Any] = {
    "id": "BTCUSDT",
    "lowercaseId": "btcusdt",
    "symbol": "BTC/USDT",
    "base": "BTC",
    "quote": "USDT",
    "settle": None,
    "baseId": "BTC",
    "quoteId": "USDT",
    "settleId": None,
    "type": "spot",
    "spot": True,
    "margin": True,
    "swap": False,
    "future": False,
    "option": False,
    "index": None,
    "active": True,
    "contract": False,
    "linear": None,
    "inverse": None,
    "subType": None,
    "taker": 0.001,
    "maker": 0.001,
    "contractSize": None,
    "expiry": None,
    "expiryDatetime": None,
    "strike": None,
    "optionType": None,
    "precision": {"amount": 1e-05, "price": 0.01, "cost": None, "base": 1e-08, "quote": 1e-08},
    "limits": {
        "leverage": {"min": None, "max": None},
        "amount": {"min": 1e-05, "max": 9000.0},
        "price": {"min": 0.01, "max": 1000000.0},
        "cost": {"min": 5.0, "max": 9000000.0},
        "market": {"min": 0.0, "max": 107.4},
    },
    "marginModes": {"cross": True, "isolated": True},
    "created": 1502942400000,
    "info": {"symbol": "BTCUSDT", "status": "TRADING", "filters": [{"filterType": "PRICE_FILTER"}]},
    "tierBased": False,
    "percentage": True,
    "feeSide": "get",
}

FUTURE_MARKET: dict[str, Any] = {
    **SPOT_MARKET,
    "id": "BTCUSDT_231229",
    "symbol": "BTC/USDT:USDT-231229",
    "settle": "USDT",
    "settleId": "USDT",
    "type": "future",
    "spot": False,
    "margin": False,
    "future": True,
    "contract": True,
    "linear": True,
    "inverse": False,
    "subType": "linear",
    "taker": 0.0005,
    "maker": -0.0001,
    "contractSize": 1.0,
    "expiry": None,
    "expiryDatetime": "2023-12-29T08:00:00.000Z",
    "limits": {
        "leverage": {"min": 1.0, "max": 125.0},
        "amount": {"min": 0.001, "max": 500.0},
        "price": {"min": 556.8, "max": 4529764.0},
        "cost": {"min": 5.0, "max": None},
    },
}

DESCRIBE: dict[str, Any] = {
    "id": "binance",
    "name": "Binance",
    "countries": ["JP", "MT"],
    "rateLimit": 50,
    "pro": True,
    "has": {"fetchTicker": True, "watchTicker": True, "fetchOHLCV": "emulated", "fetchX": None},
}


def _raises(field: str) -> Any:
    """``pytest.raises(ValidationError)`` that also checks the named field."""

    class _Check:
        def __enter__(self) -> None:
            self._ctx = pytest.raises(ValidationError)
            self._info = self._ctx.__enter__()

        def __exit__(self, *exc: Any) -> bool:
            handled = bool(self._ctx.__exit__(*exc))
            assert self._info.value.field == field, (self._info.value.field, field)
            return handled

    return _Check()


# --------------------------------------------------------------------------- ccxt conversion


def test_ticker_from_ccxt() -> None:
    before = utc_now()
    t = Ticker.from_ccxt(WATCH_TICKER, exchange="binance")
    assert t.symbol == "BTC/USDT"
    assert t.exchange == "binance"
    assert t.timestamp == T0_DT
    assert t.timestamp is not None and t.timestamp.tzinfo is not None
    assert t.received is not None and t.received >= before
    assert t.bid == 37100.01
    assert t.bid_volume == 2.35
    assert t.quote_volume == 1189464523.2
    assert t.previous_close == 36499.99
    assert t.mark_price is None
    assert isinstance(t.bid, float)
    assert t.mid == pytest.approx(37100.015)
    assert t.spread == pytest.approx(0.01)
    assert t.price == 37100.02
    assert WATCH_TICKER["info"]["s"] == "BTCUSDT"  # the caller's dict is untouched
    assert "exchange" not in WATCH_TICKER


def test_ticker_properties_without_sides() -> None:
    t = Ticker(symbol="X")
    assert (t.mid, t.spread, t.price) == (None, None, None)
    assert Ticker(symbol="X", bid=1.0).mid is None
    assert Ticker(symbol="X", close=5.0, bid=1.0, ask=3.0).price == 5.0
    assert Ticker(symbol="X", bid=1.0, ask=3.0).price == 2.0
    crossed = Ticker(symbol="X", bid=3.0, ask=1.0)
    assert crossed.spread == -2.0  # the store rejects crossed books, the model reports them


def test_ticker_age_and_staleness() -> None:
    t = Ticker(symbol="X", timestamp=from_ms(0), received=from_ms(1_000))
    assert t.age(now=from_ms(3_500)) == 2.5
    assert Ticker(symbol="X", timestamp=from_ms(0)).age(now=from_ms(500)) == 0.5
    assert Ticker(symbol="X").age() is None
    assert Ticker(symbol="X").is_stale(30)
    assert t.is_stale(2, now=from_ms(3_500))
    assert not t.is_stale(timedelta(seconds=3), now=from_ms(3_500))
    assert not Ticker(symbol="X", received=utc_now()).is_stale(60)


def test_ticker_numbers_as_str_int_decimal() -> None:
    t = Ticker.from_ccxt({"symbol": "X", "bid": "1.5", "ask": 2, "last": Decimal("1.75")})
    assert (t.bid, t.ask, t.last) == (1.5, 2.0, 1.75)
    assert all(type(v) is float for v in (t.bid, t.ask, t.last))


def test_order_from_ccxt() -> None:
    o = Order.from_ccxt(WATCH_ORDER, exchange="binance")
    assert o.id == "28457"
    assert o.client_order_id == "x-R4BD3S82abc"
    assert o.exchange == "binance"
    assert o.side is OrderSide.BUY
    assert o.type is OrderType.LIMIT
    assert o.status is OrderStatus.OPEN
    assert o.time_in_force == "GTC"
    assert o.post_only is False
    assert o.reduce_only is None
    assert o.price == Decimal("37000.0")
    assert o.amount == Decimal("0.015")
    assert str(o.amount) == "0.015"  # Decimal(str(x)), not Decimal(0.015)
    assert str(o.filled) == "0.0075"
    assert o.fee == Fee(cost=Decimal("0.0000075"), currency="BTC")
    assert o.fees == (Fee(cost=Decimal("7.5E-6"), currency="BTC"),)
    assert o.trades == ()
    assert o.timestamp == T0_DT + timedelta(milliseconds=377)
    assert o.last_trade_timestamp == o.last_update_timestamp == from_ms(T0 + 477)
    assert not o.is_terminal


def test_order_with_nested_trades_and_terminal_status() -> None:
    data = {**WATCH_ORDER, "status": "cancelled", "trades": [WATCH_MY_TRADE]}
    o = Order.from_ccxt(data, exchange="binance")
    assert o.status is OrderStatus.CANCELED
    assert o.is_terminal
    assert o.trades[0].order == "28457"
    assert o.trades[0].fee == Fee(cost=Decimal("0.0000075"), currency="BTC", rate=Decimal("0.001"))


def test_order_status_none_means_open_and_type_optional() -> None:
    o = Order.from_ccxt({**WATCH_ORDER, "status": None, "type": None, "fees": None})
    assert o.status is OrderStatus.OPEN
    assert o.type is None
    assert o.fees == ()


def test_order_enum_spellings_are_normalised() -> None:
    o = Order.from_ccxt({**WATCH_ORDER, "side": "SELL", "type": "Stop-Limit", "status": "FILLED"})
    assert (o.side, o.type, o.status) == (OrderSide.SELL, OrderType.STOP_LIMIT, OrderStatus.CLOSED)
    o = Order.from_ccxt({**WATCH_ORDER, "side": OrderSide.SELL, "status": "partially_filled"})
    assert (o.side, o.status) == (OrderSide.SELL, OrderStatus.OPEN)
    assert OrderType("take profit market") is OrderType.TAKE_PROFIT_MARKET


def test_order_status_terminal_set() -> None:
    terminal = {s for s in OrderStatus if s.is_terminal}
    assert terminal == {
        OrderStatus.CLOSED,
        OrderStatus.CANCELED,
        OrderStatus.EXPIRED,
        OrderStatus.REJECTED,
    }
    assert OrderStatus("cancelled") is OrderStatus.CANCELED


def test_public_and_private_trades() -> None:
    public = Trade.from_ccxt(WATCH_TRADE, exchange="binance")
    assert public.id == "3290394883"
    assert public.order is None
    assert public.side is OrderSide.SELL
    assert public.taker_or_maker is None
    assert public.price == Decimal("37100.01")
    assert str(public.cost) == "49.7140134"
    assert public.fee is None
    mine = Trade.from_ccxt(WATCH_MY_TRADE, exchange="binance")
    assert mine.order == "28457"
    assert mine.taker_or_maker is TakerOrMaker.MAKER
    assert mine.type is OrderType.LIMIT
    assert mine.fee is not None and mine.fee.rate == Decimal("0.001")


def test_balances_from_full_ccxt_dict() -> None:
    balances = balances_from_ccxt(FETCH_BALANCE)
    assert set(balances) == {"BTC", "USDT"}
    btc = balances["BTC"]
    assert (btc.currency, btc.free, btc.used, btc.total) == (
        "BTC",
        Decimal("0.5"),
        Decimal("0.015"),
        Decimal("0.515"),
    )
    assert btc.updated == from_ms(T0 + 1000)
    assert str(balances["USDT"].free) == "1000.12"


def test_balances_from_columns_only_and_datetime() -> None:
    data = {
        "info": {},
        "timestamp": None,
        "datetime": "2023-11-14T22:13:20.123Z",
        "free": {"ETH": "1.5"},
        "used": {"ETH": 0},
        "total": {"ETH": 1.5},
        "debt": {"ETH": 0.25},
    }
    eth = balances_from_ccxt(data)["ETH"]
    assert (eth.free, eth.used, eth.total, eth.debt) == (
        Decimal("1.5"),
        Decimal(0),
        Decimal("1.5"),
        Decimal("0.25"),
    )
    assert eth.updated == T0_DT


def test_balances_from_plain_mapping() -> None:
    before = utc_now()
    given = Balance(currency="BTC", free=Decimal(1))
    balances = balances_from_ccxt(
        {"BTC": given, "USDT": {"free": "-5", "total": "10", "updated": T0}, "X": {"total": 1}}
    )
    assert balances["BTC"].free == Decimal(1)
    assert balances["BTC"].updated is not None and balances["BTC"].updated >= before
    assert balances["USDT"].free == Decimal(-5)  # margin accounts may go negative
    assert balances["USDT"].updated == from_ms(T0)
    assert balances["X"].updated is not None and balances["X"].updated >= before
    stamped = Balance(currency="ETH", updated=T0_DT)
    assert balances_from_ccxt({"ETH": stamped})["ETH"] is stamped


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([1, 2], "$"),
        ({"BTC": {"free": "abc"}}, "BTC.free"),
        ({"BTC": {"debt": -1}}, "BTC.debt"),
        ({"BTC": 5}, "BTC"),
        ({"BTC": {"currency": "ETH"}}, "BTC.currency"),
        ({"BTC": Balance(currency="ETH")}, "BTC.currency"),
        ({"": {"free": 1}}, "$"),
        ({5: {"free": 1}}, "$"),
    ],
)
def test_balances_invalid(data: Any, field: str) -> None:
    with _raises(field):
        balances_from_ccxt(data)


def test_position_from_ccxt() -> None:
    p = Position.from_ccxt(FETCH_POSITION, exchange="binanceusdm")
    assert p.symbol == "BTC/USDT:USDT"
    assert p.id is None
    assert p.side is PositionSide.SHORT
    assert p.contracts == Decimal("0.01")
    assert p.unrealized_pnl == Decimal("-1.234")
    assert p.percentage == Decimal("-6.65")
    assert p.maintenance_margin_percentage == Decimal("0.004")
    assert p.margin_mode == "cross"
    assert p.hedged is False
    assert p.timestamp == from_ms(T0 + 2000)


def test_markets_from_load_markets() -> None:
    spot = Market.from_ccxt(SPOT_MARKET, exchange="binance")
    assert (spot.id, spot.symbol, spot.base, spot.quote) == ("BTCUSDT", "BTC/USDT", "BTC", "USDT")
    assert spot.type is MarketType.SPOT
    assert spot.spot is True and spot.margin is True and spot.contract is False
    assert spot.precision == MarketPrecision(amount=1e-05, price=0.01, base=1e-08, quote=1e-08)
    assert spot.limits.amount == MinMax(min=1e-05, max=9000.0)
    assert spot.limits.leverage == MinMax()
    assert spot.created == from_ms(1502942400000)
    assert spot.taker == 0.001
    future = Market.from_ccxt(FUTURE_MARKET)
    assert future.type is MarketType.FUTURE
    assert future.expiry == datetime(2023, 12, 29, 8, tzinfo=UTC)  # from expiryDatetime
    assert future.maker == -0.0001  # rebates are negative fees
    assert future.limits.market == MinMax()
    assert future.limits.leverage.max == 125.0
    assert future.to_ccxt()["expiryDatetime"] == "2023-12-29T08:00:00.000Z"
    assert spot.to_ccxt()["expiryDatetime"] is None


def test_market_defaults() -> None:
    m = Market(id="a", symbol="A/B", base="A", quote="B")
    assert m.type is MarketType.SPOT
    assert m.precision == MarketPrecision()
    assert m.limits == MarketLimits()


def test_exchange_from_describe() -> None:
    ex = Exchange.from_ccxt(DESCRIBE)
    assert (ex.id, ex.name, ex.enabled) == ("binance", "Binance", True)
    assert ex.has["fetchOHLCV"] == "emulated"
    assert ex.params == {}
    off = Exchange.from_ccxt({"id": "kraken", "enabled": None, "params": {"sandbox": True}})
    assert off.enabled is True  # None means the default
    assert off.params == {"sandbox": True}


def test_bot_status_and_process_info() -> None:
    before = utc_now()
    bot = BotStatus.from_ccxt({"botId": "b1", "status": "trading", "data": {"pnl": "1.5"}})
    assert bot.bot_id == "b1"
    assert bot.updated is not None and bot.updated >= before
    p = ProcessInfo.from_ccxt(
        {
            "id": "p1",
            "kind": "bot",
            "component": "grid",
            "pid": 123,
            "host": "h",
            "params": {"a": 1},
        }
    )
    assert p.status is ProcessStatus.STARTING
    assert p.started is not None and p.started >= before
    assert p.updated is not None and p.updated >= before
    assert p.pid == 123
    assert [s.value for s in ProcessStatus] == [
        "starting",
        "running",
        "processing",
        "idle",
        "error",
        "stopped",
    ]


def test_candle_list_and_dict_forms() -> None:
    row = [T0, 1, 2, 0.5, 1.5, 10]
    c = Candle.from_ccxt(row)
    assert c.timestamp == T0_DT
    assert (c.open, c.high, c.low, c.close, c.volume, c.count) == (1.0, 2.0, 0.5, 1.5, 10.0, None)
    assert c.to_list() == [T0, 1.0, 2.0, 0.5, 1.5, 10.0]
    assert Candle.from_ccxt([*row, 42]).to_list() == [T0, 1.0, 2.0, 0.5, 1.5, 10.0, 42]
    assert Candle.from_ccxt(tuple(row)) == c
    as_dict = {"timestamp": T0, "open": 1, "high": 2, "low": 0.5, "close": 1.5, "volume": 10}
    assert Candle.from_ccxt(as_dict) == c
    assert c.to_dict() == {**as_dict, "count": None}
    iso = {"datetime": "2023-11-14T22:13:20.123Z", "open": 1, "high": 2, "low": 0.5, "close": 1.5}
    assert Candle.from_ccxt(iso).timestamp == T0_DT
    assert Candle.from_ccxt(row, count=7).count == 7
    assert Candle.from_ccxt([*row[:5], None]).volume is None


# --------------------------------------------------------------------------- dict handling


def test_snake_case_keys_are_accepted() -> None:
    t = Ticker.from_ccxt({"symbol": "X", "bid_volume": 1.0, "bidVolume": None, "ask_volume": 2.0})
    assert (t.bid_volume, t.ask_volume) == (1.0, 2.0)
    t = Ticker.from_ccxt({"symbol": "X", "bid_volume": 1.0, "bidVolume": 3.0})
    assert t.bid_volume == 3.0  # the ccxt spelling wins
    o = Order.from_ccxt(msgspec.structs.asdict(Order.from_ccxt(WATCH_ORDER)))
    assert o.client_order_id == "x-R4BD3S82abc"


def test_datetime_used_only_without_timestamp() -> None:
    t = Ticker.from_ccxt({**WATCH_TICKER, "datetime": "2000-01-01T00:00:00Z"})
    assert t.timestamp == T0_DT
    t = Ticker.from_ccxt({**WATCH_TICKER, "timestamp": None})
    assert t.timestamp == T0_DT
    t = Ticker.from_ccxt({"symbol": "X", "timestamp": None, "datetime": None})
    assert t.timestamp is None


@pytest.mark.parametrize("wrap", [dict, MappingProxyType], ids=["dict", "mapping"])
def test_prepare_copies_never_mutate_input(wrap: Any) -> None:
    raw = {
        "id": "1",
        "symbol": "X",
        "side": "BUY",
        "amount": "1",
        "status": None,
        "datetime": "2023-11-14T22:13:20.123Z",
    }
    data = wrap(dict(raw))
    o = Order.from_ccxt(data, exchange="ex", client_order_id=None)
    assert (o.side, o.status, o.exchange, o.timestamp) == (
        OrderSide.BUY,
        OrderStatus.OPEN,
        "ex",
        T0_DT,
    )
    assert dict(data) == raw
    for one in ({"status": None}, {"side": "SELL"}, {"datetime": "2023-11-14T22:13:20.123Z"}):
        base = {"id": "1", "symbol": "X", "side": "buy", "amount": "1", **one}
        assert Order.from_ccxt(wrap(dict(base))).id == "1"
    assert Ticker.from_ccxt(wrap({"symbol": "X"})).received is not None
    assert Ticker.from_ccxt(wrap({"symbol": "X", "received": T0})).received == T0_DT
    assert Ticker.from_ccxt(wrap({"symbol": "X"}), exchange="e").exchange == "e"
    assert Ticker.from_ccxt(wrap({"symbol": "X", "exchange": "e"}), exchange="e").exchange == "e"


def test_extra_fills_but_never_overrides() -> None:
    with _raises("exchange"):
        Ticker.from_ccxt({"symbol": "X", "exchange": "okx"}, exchange="binance")
    with _raises("nonsense"):
        Ticker.from_ccxt({"symbol": "X"}, nonsense=1)
    t = Ticker(symbol="X", exchange="okx", received=T0_DT)
    assert Ticker.from_ccxt(t) is t
    assert Ticker.from_ccxt(t, exchange="okx") is t
    assert Ticker.from_ccxt(t, exchange=None) is t
    with _raises("exchange"):
        Ticker.from_ccxt(t, exchange="binance")
    with _raises("nonsense"):
        Ticker.from_ccxt(t, nonsense=1)
    bare = Ticker(symbol="X")
    assert Ticker.from_ccxt(bare, exchange=None, received=T0_DT).exchange is None
    filled = Ticker.from_ccxt(bare, exchange="binance", received=T0_DT)
    assert (filled.exchange, filled.received) == ("binance", T0_DT)
    assert Ticker.from_ccxt(bare).received is not None


def test_convert_rejects_other_models_and_garbage() -> None:
    with _raises("$"):
        convert(Fee(), Ticker)
    with _raises("$"):
        convert(42, Ticker)
    with _raises("$"):
        convert([1, 2], Ticker)
    with _raises("$"):
        Order.from_ccxt("order")


# --------------------------------------------------------------------------- validation rules

GOOD_ORDER = {"id": "1", "symbol": "BTC/USDT", "side": "buy", "amount": "1"}
GOOD_TRADE = {"symbol": "BTC/USDT", "price": "1", "amount": "1"}
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("model", "data", "field"),
    [
        # Ticker: prices and volumes >= 0 and finite, change/percentage finite, symbol required
        (Ticker, {"symbol": "X", "bid": NAN}, "bid"),
        (Ticker, {"symbol": "X", "ask": INF}, "ask"),
        (Ticker, {"symbol": "X", "last": -1}, "last"),
        (Ticker, {"symbol": "X", "baseVolume": -0.5}, "base_volume"),
        (Ticker, {"symbol": "X", "quoteVolume": "nan"}, "quote_volume"),
        (Ticker, {"symbol": "X", "change": INF}, "change"),
        (Ticker, {"symbol": "X", "percentage": NAN}, "percentage"),
        (Ticker, {"symbol": "X", "bid": "abc"}, "bid"),
        (Ticker, {"symbol": "X", "bid": True}, "bid"),
        (Ticker, {"symbol": "X", "bid": [1]}, "bid"),
        (Ticker, {"bid": 1.0}, "symbol"),
        (Ticker, {"symbol": None}, "symbol"),
        (Ticker, {"symbol": ""}, "symbol"),
        (Ticker, {"symbol": 5}, "symbol"),
        (Ticker, {"symbol": "X", "exchange": 5}, "exchange"),
        (Ticker, {"symbol": "X", "exchange": ""}, "exchange"),
        (Ticker, {"symbol": "X", "timestamp": -1}, "timestamp"),
        (Ticker, {"symbol": "X", "timestamp": True}, "timestamp"),
        (Ticker, {"symbol": "X", "timestamp": NAN}, "timestamp"),
        (Ticker, {"symbol": "X", "timestamp": 10**20}, "timestamp"),
        (Ticker, {"symbol": "X", "timestamp": [1]}, "timestamp"),
        (Ticker, {"symbol": "X", "timestamp": "yesterday"}, "timestamp"),
        (Ticker, {"symbol": "X", "timestamp": "2023-11-14T22:13:20"}, "timestamp"),
        (Ticker, {"symbol": "X", "timestamp": datetime(2023, 1, 1)}, "timestamp"),
        (Ticker, {"symbol": "X", "datetime": "2023-11-14 22:13:20"}, "timestamp"),
        # Order
        (Order, {**GOOD_ORDER, "id": ""}, "id"),
        (Order, {**GOOD_ORDER, "id": None}, "id"),
        (Order, {**GOOD_ORDER, "id": 28457}, "id"),
        (Order, {k: v for k, v in GOOD_ORDER.items() if k != "id"}, "id"),
        (Order, {**GOOD_ORDER, "clientOrderId": ""}, "client_order_id"),
        (Order, {**GOOD_ORDER, "amount": 0}, "amount"),
        (Order, {**GOOD_ORDER, "amount": "-1"}, "amount"),
        (Order, {**GOOD_ORDER, "amount": None}, "amount"),
        (Order, {**GOOD_ORDER, "amount": "NaN"}, "amount"),
        (Order, {**GOOD_ORDER, "amount": "Infinity"}, "amount"),
        (Order, {**GOOD_ORDER, "amount": NAN}, "amount"),
        (Order, {**GOOD_ORDER, "price": -1}, "price"),
        (Order, {**GOOD_ORDER, "filled": "-0.1"}, "filled"),
        (Order, {**GOOD_ORDER, "remaining": INF}, "remaining"),
        (Order, {**GOOD_ORDER, "cost": "-3"}, "cost"),
        (Order, {**GOOD_ORDER, "stopPrice": -2}, "stop_price"),
        (Order, {**GOOD_ORDER, "side": "hold"}, "side"),
        (Order, {**GOOD_ORDER, "side": None}, "side"),
        (Order, {**GOOD_ORDER, "side": 1}, "side"),
        (Order, {**GOOD_ORDER, "type": "yolo"}, "type"),
        (Order, {**GOOD_ORDER, "status": "lost"}, "status"),
        (Order, {**GOOD_ORDER, "fee": {"cost": "x"}}, "fee.cost"),
        (Order, {**GOOD_ORDER, "fee": {"cost": NAN}}, "fee.cost"),
        (Order, {**GOOD_ORDER, "fees": [{"rate": INF}]}, "fees[0].rate"),
        (Order, {**GOOD_ORDER, "trades": [{**GOOD_TRADE, "price": -1}]}, "trades[0].price"),
        (Order, {**GOOD_ORDER, "trades": [{"price": 1, "amount": 1}]}, "trades[0].symbol"),
        (Order, {**GOOD_ORDER, "reduceOnly": "maybe"}, "reduce_only"),
        (Order, {**GOOD_ORDER, "lastTradeTimestamp": "x"}, "last_trade_timestamp"),
        # Trade
        (Trade, {**GOOD_TRADE, "price": -1}, "price"),
        (Trade, {**GOOD_TRADE, "amount": "-1"}, "amount"),
        (Trade, {**GOOD_TRADE, "side": "long"}, "side"),
        (Trade, {**GOOD_TRADE, "takerOrMaker": "both"}, "taker_or_maker"),
        (Trade, {**GOOD_TRADE, "id": 5}, "id"),
        (Trade, {**GOOD_TRADE, "order": ""}, "order"),
        # Balance, Position, Market, Candle, metadata
        (Balance, {"currency": "BTC", "free": NAN}, "free"),
        (Balance, {"currency": "BTC", "debt": -1}, "debt"),
        (Balance, {"free": 1}, "currency"),
        (Position, {"symbol": "X", "contracts": -1}, "contracts"),
        (Position, {"symbol": "X", "entryPrice": -1}, "entry_price"),
        (Position, {"symbol": "X", "leverage": -5}, "leverage"),
        (Position, {"symbol": "X", "unrealizedPnl": "inf"}, "unrealized_pnl"),
        (Position, {"symbol": "X", "side": "buy"}, "side"),
        (Market, {**SPOT_MARKET, "type": "perp"}, "type"),
        (Market, {**SPOT_MARKET, "base": ""}, "base"),
        (Market, {**SPOT_MARKET, "precision": {"amount": -1}}, "precision.amount"),
        (Market, {**SPOT_MARKET, "limits": {"cost": {"min": NAN}}}, "limits.cost.min"),
        (Market, {**SPOT_MARKET, "taker": INF}, "taker"),
        (Candle, [T0, 1, 0.9, 0.5, 1.5, 10], "high"),
        (Candle, [T0, 1, 2, 1.2, 1.5, 10], "low"),
        (Candle, [T0, 1, 2, 0.5, 1.5, -1], "volume"),
        (Candle, [T0, NAN, 2, 0.5, 1.5, 1], "open"),
        (Candle, [T0, 1, "x", 0.5, 1.5, 10], "high"),
        (Candle, [T0, 1, 2, 0.5, 1.5, 10, -3], "count"),
        (Candle, [T0, 1, 2, 0.5], "$"),
        (Candle, {"timestamp": T0, "open": 1, "high": 2, "low": 0.5}, "close"),
        (Candle, {"open": 1, "high": 2, "low": 0.5, "close": 1}, "timestamp"),
        (Exchange, {"id": ""}, "id"),
        (Exchange, {"id": "x", "enabled": "perhaps"}, "enabled"),
        (Exchange, {"id": "x", "has": [1]}, "has"),
        (BotStatus, {"botId": 7}, "bot_id"),
        (ProcessInfo, {"id": "p", "kind": "k", "component": "c", "status": "dead"}, "status"),
        (ProcessInfo, {"id": "p", "kind": "k", "component": "c", "pid": -1}, "pid"),
        (ProcessInfo, {"id": "p", "kind": "k", "component": "c", "params": "x"}, "params"),
    ],
)
def test_validation_names_the_field(model: type[models.Model], data: Any, field: str) -> None:
    with _raises(field):
        convert(data, model)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Ticker(symbol="X", bid=NAN), "bid"),
        (lambda: Ticker(symbol="X", ask=-INF), "ask"),
        (lambda: Ticker(symbol="X", change=INF), "change"),
        (lambda: Ticker(symbol="X", bid=-1.0), "bid"),
        (lambda: Ticker(symbol="X", bid="1.x"), "bid"),
        (lambda: Ticker(symbol=""), "symbol"),
        (lambda: Ticker(symbol=None), "symbol"),
        (lambda: Ticker(symbol=b"X"), "symbol"),
        (lambda: Ticker(symbol="X", timestamp=datetime(2023, 1, 1)), "timestamp"),
        (lambda: Ticker(symbol="X", timestamp=1.5e300), "timestamp"),
        (lambda: Order(id="1", symbol="X", side="buy", amount=Decimal(0)), "amount"),
        (lambda: Order(id="1", symbol="X", side="buy", amount=Decimal("-1")), "amount"),
        (lambda: Order(id="1", symbol="X", side="buy", amount=Decimal("NaN")), "amount"),
        (lambda: Order(id="1", symbol="X", side="buy", amount=Decimal("sNaN")), "amount"),
        (lambda: Order(id="1", symbol="X", side="buy", amount=True), "amount"),
        (lambda: Order(id="1", symbol="X", side="buy", amount=None), "amount"),
        (lambda: Order(id="1", symbol="X", side="buy", amount="1", price=Decimal(-1)), "price"),
        (lambda: Order(id="1", symbol="X", side="up", amount=1), "side"),
        (lambda: Order(id="1", symbol="X", side="buy", amount=1, status=3), "status"),
        (lambda: Order(id="1", symbol="X", side="buy", amount=1, post_only=1), "post_only"),
        (lambda: Order(id="1", symbol="X", side="buy", amount=1, fee={"cost": "z"}), "fee.cost"),
        (
            lambda: Order(id="1", symbol="X", side="buy", amount=1, fees=[{"cost": "z"}]),
            "fees[0].cost",
        ),
        (lambda: Order(id="", symbol="X", side="buy", amount=1), "id"),
        (lambda: Balance(currency="X", free=Decimal("Infinity")), "free"),
        (lambda: Balance(currency="X", debt=Decimal("-1")), "debt"),
        (lambda: ProcessInfo(id="p", kind="k", component="c", pid=-1), "pid"),
        (lambda: ProcessInfo(id="p", kind="k", component="c", pid="7"), "pid"),
        (lambda: ProcessInfo(id="p", kind="k", component="c", pid=1.5), "pid"),
        (lambda: Candle(timestamp=T0, open=1.0, high=0.5, low=0.1, close=0.2), "high"),
        (lambda: Candle(timestamp=T0, open=1.0, high=2.0, low=1.5, close=1.2), "low"),
        (lambda: Candle(timestamp=T0, open=1.0, high=2.0, low=0.5, close=1.5, count=-1), "count"),
    ],
)
def test_direct_construction_is_validated(build: Any, field: str) -> None:
    with _raises(field):
        build()


def test_replace_is_validated() -> None:
    o = Order.from_ccxt(WATCH_ORDER)
    with _raises("filled"):
        o.replace(filled=Decimal("-1"))
    with _raises("status"):
        msgspec.structs.replace(o, status="gone")
    done = o.replace(status="cancelled", filled="0.015", timestamp=datetime.now(UTC))
    assert done.status is OrderStatus.CANCELED
    assert done.filled == Decimal("0.015")
    assert done.timestamp is not None and done.timestamp.microsecond % 1000 == 0
    assert o.status is OrderStatus.OPEN  # frozen: the original is unchanged
    with pytest.raises(AttributeError):
        o.status = OrderStatus.CLOSED  # type: ignore[misc]


# --------------------------------------------------------------------------- normalisation


def test_direct_construction_normalises_types() -> None:
    o = Order(
        id="1",
        symbol="X",
        side="buy",  # type: ignore[arg-type]
        amount=0.1,  # type: ignore[arg-type]
        price="100.5 ",  # type: ignore[arg-type]
        filled=3,  # type: ignore[arg-type]
        type="Market",  # type: ignore[arg-type]
        timestamp=datetime(2023, 11, 14, 23, 13, 20, 123999, tzinfo=timezone(timedelta(hours=1))),
        fee={"cost": 0.01, "currency": "USDT"},  # type: ignore[arg-type]
        fees=[{"cost": "0.01"}],  # type: ignore[arg-type]
        trades=({"symbol": "X", "price": 1, "amount": 1},),  # type: ignore[arg-type]
    )
    assert o.side is OrderSide.BUY and o.type is OrderType.MARKET
    assert (str(o.amount), str(o.price), o.filled) == ("0.1", "100.5", Decimal(3))
    assert o.timestamp == T0_DT and o.timestamp.utcoffset() == timedelta(0)
    assert o.fee == Fee(cost=Decimal("0.01"), currency="USDT")
    assert o.fees == (Fee(cost=Decimal("0.01")),)
    assert o.trades == (Trade(symbol="X", price=Decimal(1), amount=Decimal(1)),)
    t = Ticker(symbol=OrderSide.BUY, bid=1, ask=Decimal("2.5"))  # type: ignore[arg-type]
    assert type(t.symbol) is str and t.symbol == "buy"
    assert (t.bid, t.ask) == (1.0, 2.5) and type(t.bid) is float
    t = Ticker(symbol="X", timestamp=T0, received="2023-11-14T22:13:20.123+00:00")  # type: ignore[arg-type]
    assert t.timestamp == t.received == T0_DT
    assert Ticker(symbol="X", timestamp=str(T0)).timestamp == T0_DT  # type: ignore[arg-type]
    assert Ticker(symbol="X", timestamp=float(T0)).timestamp == T0_DT  # type: ignore[arg-type]
    assert Ticker(symbol="X", timestamp=Decimal(T0)).timestamp == T0_DT  # type: ignore[arg-type]


def test_zero_and_huge_values_pass() -> None:
    t = Ticker(symbol="X", bid=0.0, ask=1e308, last=1e308, change=-1e308, percentage=-1e308)
    assert t.ask == 1e308  # the fast path's overflowing sum falls back to per-field checks
    assert (
        Order(id="1", symbol="X", side="sell", amount=Decimal("1E-18"), filled=Decimal(0)).filled
        == 0
    )
    assert Position(symbol="X", contracts=Decimal(0), unrealized_pnl=Decimal("-5")).contracts == 0
    assert ProcessInfo(id="p", kind="k", component="c", pid=0).pid == 0


def test_known_good_signatures_are_bounded() -> None:
    meta = models._meta(Fee)
    saved = set(meta.good_types)
    try:
        meta.good_types.clear()
        meta.good_types.update((int,) * i for i in range(1024))
        assert Fee(cost=1).cost == Decimal(1)  # type: ignore[arg-type]
        assert len(meta.good_types) == 1024
    finally:
        meta.good_types.clear()
        meta.good_types.update(saved)


def test_caller_objects_are_not_shared() -> None:
    data = copy.deepcopy(WATCH_ORDER)
    Order.from_ccxt(data)
    assert data == WATCH_ORDER


# --------------------------------------------------------------------------- time helpers


def test_time_helpers() -> None:
    assert from_ms(0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert to_ms(from_ms(T0)) == T0
    assert to_ms(T0_DT.astimezone(timezone(timedelta(hours=-5)))) == T0
    assert to_ms(datetime(2023, 11, 14, 22, 13, 20, 123999, tzinfo=UTC)) == T0  # floored
    with _raises("datetime"):
        to_ms(datetime(2023, 1, 1))
    with pytest.raises(ValueError, match="out of range"):
        from_ms(-1)
    now = utc_now()
    assert now.tzinfo is not None and now.microsecond % 1000 == 0
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


def test_hooks() -> None:
    assert enc_hook(from_ms(T0)) == T0
    with pytest.raises(TypeError):
        enc_hook(object())
    with pytest.raises(TypeError):
        enc_hook(datetime.now(UTC))  # msgspec encodes plain datetimes itself
    stamp_type = type(from_ms(0))
    assert dec_hook(stamp_type, T0) == T0_DT
    assert dec_hook(stamp_type, "2023-11-14T23:13:20.123+01:00") == T0_DT
    with pytest.raises(ValueError, match="out of range"):
        dec_hook(stamp_type, -5)
    with pytest.raises(TypeError):
        dec_hook(complex, 1)


def test_enum_lookups() -> None:
    assert OrderSide("Buy") is OrderSide.BUY
    assert PositionSide(" LONG ") is PositionSide.LONG
    assert TakerOrMaker("taker") is TakerOrMaker.TAKER
    assert MarketType("SWAP") is MarketType.SWAP
    assert ProcessStatus("Idle") is ProcessStatus.IDLE
    with pytest.raises(ValueError, match="is not a valid"):
        OrderSide(1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is not a valid"):
        OrderStatus("gone")
    assert OrderSide.BUY == "buy"  # StrEnum: compares equal to the ccxt string


# --------------------------------------------------------------------------- dict views


def test_to_dict_and_to_ccxt() -> None:
    o = Order.from_ccxt(WATCH_ORDER, exchange="binance")
    d = o.to_dict()
    assert d["clientOrderId"] == "x-R4BD3S82abc"
    assert d["timestamp"] == T0 + 377
    assert d["amount"] == Decimal("0.015") and isinstance(d["amount"], Decimal)
    assert d["side"] == "buy" and type(d["side"]) is str
    assert "status" not in d  # equal to its default: omitted, like on the wire
    assert "stopPrice" not in d
    assert d["fee"] == {"cost": Decimal("0.0000075"), "currency": "BTC"}
    c = o.to_ccxt()
    assert c["status"] == "open"
    assert c["stopPrice"] is None
    assert c["datetime"] == "2023-11-14T22:13:20.500Z"
    assert tuple(c["trades"]) == ()
    assert Order.from_ccxt(c) == o
    assert Ticker(symbol="X").to_ccxt()["datetime"] is None
    assert Fee(cost=Decimal("0.1"), currency="BNB").to_dict() == {
        "currency": "BNB",
        "cost": Decimal("0.1"),
    }
    assert ProcessInfo.from_ccxt(ProcessInfo(id="p", kind="k", component="c").to_ccxt()).id == "p"


# --------------------------------------------------------------------------- error translation


class Inner(msgspec.Struct, rename="camel"):
    price_value: float


class Outer(msgspec.Struct):
    items: dict[str, list[Inner]]


def test_translate_msgspec_error_paths() -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"items": {"a": [{"priceValue": 1.0}, {"priceValue": "x"}]}}, Outer)
    err = translate_msgspec_error(info.value)
    assert (err.field, err.reason) == ("items[...][1].price_value", "Expected `float`, got `str`")
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"items": {"a": [{}]}}, Outer)
    assert (
        translate_msgspec_error(info.value, prefix="outer").field
        == "outer.items[...][0].price_value"
    )
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(5, Outer)
    assert translate_msgspec_error(info.value).field == "$"
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert([T0, 1, "x", 0, 0], Candle, dec_hook=dec_hook)
    assert translate_msgspec_error(info.value, Candle).field == "high"
    assert translate_msgspec_error(info.value).field == "[2]"
    assert isinstance(translate_msgspec_error(info.value), ValidationError)


def test_rule_repr() -> None:
    assert repr(models._NONNEG) == "NONNEG"


def test_no_float_constructor_noise() -> None:
    # 0.1 as a float is 0.1000000000000000055511151231257827...; money keeps what was meant
    assert Fee.from_ccxt({"cost": 0.1}).cost == Decimal("0.1")
    assert Decimal(0.1) != Decimal("0.1")  # noqa: RUF032 (the point of the test)
    assert math.isclose(float(Fee(cost=0.3).cost or 0), 0.3)  # type: ignore[arg-type]
