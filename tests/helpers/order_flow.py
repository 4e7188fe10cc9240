"""Factories and probes for the order, trade and account store tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from tradecache import Cache
from tradecache.context import Context


async def snapshot(cache: Cache) -> dict[bytes, bytes | None]:
    """Every key of the test's namespace with its DUMP: equal snapshots = nothing written."""
    keys = [key async for key in cache.client.scan_iter(match=cache.keys.all_pattern())]
    return {key: await cache.client.dump(key) for key in sorted(keys)}


def with_settings(cache: Cache, **settings: Any) -> Context:
    """The cache's context with some settings changed (``order_ttl=1``, ``stream_maxlen=50``)."""
    return dataclasses.replace(cache.context, settings=cache.settings.model_copy(update=settings))


def ccxt_order(order_id: str = "1001", **fields: Any) -> dict[str, Any]:
    """An order shaped like ccxt.pro's watch_orders() entries."""
    data: dict[str, Any] = {
        "info": {"orderId": order_id, "raw": True},
        "id": order_id,
        "clientOrderId": f"cid-{order_id}",
        "timestamp": 1_700_000_000_000,
        "datetime": "2023-11-14T22:13:20.000Z",
        "lastTradeTimestamp": None,
        "lastUpdateTimestamp": None,
        "symbol": "BTC/USDT",
        "type": "limit",
        "timeInForce": "GTC",
        "postOnly": False,
        "reduceOnly": None,
        "side": "buy",
        "price": 60000.5,
        "stopPrice": None,
        "triggerPrice": None,
        "amount": 0.25,
        "cost": 0.0,
        "average": None,
        "filled": 0.0,
        "remaining": 0.25,
        "status": "open",
        "fee": None,
        "trades": [],
        "fees": [],
    }
    data.update(fields)
    return data


def ccxt_trade(trade_id: str = "1", symbol: str = "BTC/USDT", **fields: Any) -> dict[str, Any]:
    """A trade shaped like ccxt.pro's watch_trades() / watch_my_trades() entries."""
    data: dict[str, Any] = {
        "info": {"t": trade_id},
        "id": trade_id,
        "timestamp": 1_700_000_000_000 + int(trade_id) if trade_id.isdigit() else None,
        "datetime": None,
        "symbol": symbol,
        "order": None,
        "type": None,
        "side": "sell",
        "takerOrMaker": "taker",
        "price": 60000.1,
        "amount": 0.002,
        "cost": 120.0002,
        "fee": {"cost": 0.01, "currency": "USDT"},
        "fees": [],
    }
    data.update(fields)
    return data


def ccxt_position(symbol: str = "BTC/USDT:USDT", **fields: Any) -> dict[str, Any]:
    """A position shaped like ccxt's fetch_positions() / watch_positions() entries."""
    data: dict[str, Any] = {
        "info": {"raw": True},
        "id": None,
        "symbol": symbol,
        "timestamp": 1_700_000_000_000,
        "datetime": "2023-11-14T22:13:20.000Z",
        "isolated": False,
        "hedged": False,
        "side": "long",
        "contracts": 0.5,
        "contractSize": 1.0,
        "entryPrice": 60000.0,
        "markPrice": 60100.0,
        "notional": 30050.0,
        "leverage": 10.0,
        "collateral": 3005.0,
        "initialMargin": 3000.0,
        "maintenanceMargin": 150.0,
        "initialMarginPercentage": 0.1,
        "maintenanceMarginPercentage": 0.005,
        "unrealizedPnl": 50.0,
        "liquidationPrice": 54000.0,
        "marginMode": "cross",
        "percentage": 1.66,
    }
    data.update(fields)
    return data
