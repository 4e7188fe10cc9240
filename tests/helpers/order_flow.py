"""Factories and probes for the order, trade and account store tests."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from tradecache import Cache
from tradecache.context import Context
from tradecache.testing import wait_until

FLOW_WORKER = Path(__file__).parent / "flow_worker.py"


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


# Twenty changes to twenty different fields of one order (the concurrent-update tests).
TWENTY_CHANGES: list[dict[str, Any]] = [
    {"price": "101"},
    {"average": "100.5"},
    {"filled": "0.1"},
    {"remaining": "0.15"},
    {"cost": "10.05"},
    {"stop_price": "90"},
    {"trigger_price": "91"},
    {"take_profit_price": "120"},
    {"stop_loss_price": "80"},
    {"reduce_only": True},
    {"post_only": True},
    {"time_in_force": "FOK"},
    {"type": "stop_limit"},
    {"last_trade_timestamp": 1_700_000_001_000},
    {"fee": {"cost": "0.01", "currency": "BNB"}},
    {"fees": [{"cost": "0.02", "currency": "USDT"}]},
    {"trades": [{"symbol": "BTC/USDT", "price": "100", "amount": "0.1"}]},
    {"client_order_id": "new-cid"},
    {"symbol": "ETH/USDT"},
    {"amount": "0.3"},
]


async def run_writer_processes(cache: Cache, jobs: list[list[str]]) -> None:
    """Run one ``flow_worker.py`` process per job, released together; all must succeed.

    Every process is killed and reaped before this returns, even on failure.
    """
    url, ns = cache.settings.url, cache.keys.namespace
    procs: list[asyncio.subprocess.Process] = []
    ready = cache.keys.key("test", "flow", "ready")
    try:
        for job in jobs:
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(FLOW_WORKER),
                    job[0],
                    url,
                    ns,
                    *job[1:],
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            )

        async def all_ready() -> bool:
            for proc in procs:
                if proc.returncode is not None:
                    _, err = await proc.communicate()
                    raise AssertionError(f"writer exited early: {err.decode()}")
            return bool(await cache.client.scard(ready) == len(procs))

        await wait_until(all_ready, timeout=120, message="writer processes never got ready")
        await cache.client.set(cache.keys.key("test", "flow", "go"), 1)
        for proc in procs:
            _, err = await asyncio.wait_for(proc.communicate(), timeout=120)
            assert proc.returncode == 0, err.decode()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
