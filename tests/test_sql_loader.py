"""tradecache.loaders.sql: schema, ccxt import, loaders, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from helpers.postgres import postgres_server
from tradecache.errors import ValidationError
from tradecache.loaders.sql import SqlLoader, markets_table
from tradecache.models import Exchange, Market, MarketType


def ccxt_market(symbol: str, **extra: Any) -> dict[str, Any]:
    base, quote = symbol.split("/")
    return {
        "id": symbol.replace("/", ""),
        "symbol": symbol,
        "base": base,
        "quote": quote,
        "baseId": base,
        "quoteId": quote,
        "type": "spot",
        "spot": True,
        "margin": False,
        "active": True,
        "precision": {"amount": 0.0001, "price": 0.01},
        "limits": {"amount": {"min": 0.0001, "max": 9000.0}, "cost": {"min": 5.0}},
        "taker": 0.001,
        "maker": 0.0008,
        "feeSide": "quote",
        "info": {"symbol": symbol.replace("/", ""), "status": "TRADING"},
        **extra,
    }


def swap_market() -> dict[str, Any]:
    return ccxt_market(
        "BTC/USDT:USDT",
        id="BTCUSDT_PERP",
        type="swap",
        spot=False,
        swap=True,
        contract=True,
        linear=True,
        inverse=False,
        settle="USDT",
        contractSize=1.0,
        expiry=None,
        lowercaseId="btcusdt_perp",  # a ccxt key tradecache does not model
    )


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str | None]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def sql_url(request, tmp_path, postgres_admin_url) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'metadata.db'}"
        return
    if postgres_admin_url is None:
        pytest.skip("no PostgreSQL: install it (initdb/pg_ctl) or set TRADECACHE_TEST_POSTGRES_URL")
    name = f"tc_{uuid.uuid4().hex[:16]}"
    admin = create_async_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = sa.make_url(postgres_admin_url).set(database=name)
        yield url.render_as_string(hide_password=False)
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@pytest.fixture
async def sql(sql_url) -> AsyncIterator[SqlLoader]:
    async with SqlLoader(sql_url) as loader:
        await loader.create_schema()
        yield loader


async def count_markets(loader: SqlLoader) -> int:
    async with loader.engine.connect() as conn:
        return int(
            (await conn.execute(sa.select(sa.func.count()).select_from(markets_table))).scalar_one()
        )


async def test_round_trip(sql):
    await sql.create_schema()  # idempotent
    saved = await sql.save_exchange({"id": "Binance", "name": "Binance", "has": {"ws": True}})
    assert saved == Exchange(id="binance", name="Binance", has={"ws": True})
    markets = {m["symbol"]: m for m in (ccxt_market("BTC/USDT"), swap_market())}
    assert await sql.import_markets("binance", markets) == 2
    spot = await sql.load_symbol("binance", "BTC/USDT")
    assert spot == Market.from_ccxt(markets["BTC/USDT"], exchange="binance")
    assert spot.limits.amount.max == 9000.0
    assert spot.fee_side == "quote"
    swap = await sql.load_symbol("Binance", "BTC/USDT:USDT")
    assert swap == Market.from_ccxt(markets["BTC/USDT:USDT"], exchange="binance")
    assert swap.type is MarketType.SWAP
    assert swap.contract_size == 1.0
    assert [m.symbol for m in await sql.load_symbols("binance")] == ["BTC/USDT", "BTC/USDT:USDT"]
    assert await sql.load_symbol("binance", "ETH/USDT") is None
    assert await sql.load_symbols("kraken") == []
    assert await sql.load_exchange("binance") == saved
    assert await sql.load_exchange("kraken") is None
    assert [e.id for e in await sql.load_exchanges()] == ["binance"]
    async with sql.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(markets_table).where(markets_table.c.symbol == "BTC/USDT:USDT")
            )
        ).one()
    assert row.market_id == "BTCUSDT_PERP"
    assert row.type == "swap"
    assert row.extra["lowercaseId"] == "btcusdt_perp"  # unmodelled ccxt keys are kept
    assert row.extra["baseId"] == "BTC"
    assert "info" not in row.extra
    assert row.updated > 0


async def test_import_upserts_prunes_and_creates_the_exchange(sql):
    await sql.save_exchange(Exchange(id="kraken", name="Kraken Pro"))
    first = [ccxt_market(s) for s in ("BTC/USD", "ETH/USD", "SOL/USD")]
    assert await sql.import_markets("kraken", first) == 3
    assert await sql.import_markets("bybit", []) == 0
    model = Market.from_ccxt(ccxt_market("ADA/USDT"))  # models work as well as ccxt dicts
    assert await sql.import_markets("bybit", [model]) == 1
    assert await sql.load_symbol("bybit", "ADA/USDT") == model.replace(exchange="bybit")
    changed = [ccxt_market("BTC/USD", taker=0.002), ccxt_market("ETH/USD")]
    assert await sql.import_markets("kraken", changed) == 2
    assert (await sql.load_symbol("kraken", "BTC/USD")).taker == 0.002
    assert len(await sql.load_symbols("kraken")) == 3  # not pruned
    assert await sql.import_markets("kraken", changed, prune=True) == 2
    assert [m.symbol for m in await sql.load_symbols("kraken")] == ["BTC/USD", "ETH/USD"]
    exchanges = {e.id: e for e in await sql.load_exchanges()}
    assert exchanges["kraken"].name == "Kraken Pro"  # an import never overwrites the record
    assert exchanges["bybit"] == Exchange(id="bybit")
    assert await sql.delete_market("kraken", "ETH/USD") is True
    assert await sql.delete_market("kraken", "ETH/USD") is False
    assert [m.symbol for m in await sql.load_symbols("kraken")] == ["BTC/USD"]


async def test_concurrent_imports_do_not_conflict(sql):
    markets = [ccxt_market(f"C{i}/USDT") for i in range(50)]
    counts = await asyncio.gather(*(sql.import_markets("okx", markets) for _ in range(4)))
    assert counts == [50, 50, 50, 50]
    assert len(await sql.load_symbols("okx")) == 50


async def test_prune_deletes_in_chunks(sql):
    await sql.import_markets("okx", [ccxt_market(f"C{i}/USDT") for i in range(1200)])
    assert await sql.import_markets("okx", [ccxt_market("C1/USDT")], prune=True) == 1
    assert [m.symbol for m in await sql.load_symbols("okx")] == ["C1/USDT"]


@pytest.mark.parametrize(
    ("exchange", "markets", "field"),
    [
        ("bin ance", [ccxt_market("BTC/USDT")], "exchange"),
        ("binance", 42, "markets"),
        ("binance", "BTC/USDT", "markets"),
        ("binance", [ccxt_market("BTC/USDT"), {"symbol": "X/Y"}], "markets[1].id"),
        ("binance", [ccxt_market("BTC/USDT", taker="cheap")], "markets[0].taker"),
        ("binance", [ccxt_market("BTC/USDT"), 7], "markets[1]"),
        ("binance", [{**ccxt_market("BTC/USDT"), "exchange": "kraken"}], "markets[0].exchange"),
    ],
)
async def test_bad_markets_raise_and_write_nothing(sql, exchange, markets, field):
    await sql.import_markets("binance", [ccxt_market("ETH/USDT")])
    with pytest.raises(ValidationError) as err:
        await sql.import_markets(exchange, markets)
    assert err.value.field == field
    assert await count_markets(sql) == 1
    assert [e.id for e in await sql.load_exchanges()] == ["binance"]


async def test_bad_exchange_record_is_rejected(sql):
    with pytest.raises(ValidationError) as err:
        await sql.save_exchange({"id": "a b"})
    assert err.value.field == "id"
    assert await sql.load_exchanges() == []


async def test_attached_to_a_cache(cache, tmp_path):
    async with SqlLoader(f"sqlite:///{tmp_path / 'meta.db'}") as sql:
        await sql.create_schema()
        await sql.save_exchange({"id": "binance", "name": "Binance"})
        await sql.import_markets("binance", {"BTC/USDT": ccxt_market("BTC/USDT")})
        sql.attach(cache)
        market = await cache.symbols.get("binance", "BTC/USDT")
        assert market is not None
        assert market.precision.price == 0.01
        assert await cache.symbols.get("binance", "DOGE/USDT") is None
        assert [m.symbol for m in await cache.symbols.list("binance")] == ["BTC/USDT"]
        assert (await cache.exchanges.get("binance")).name == "Binance"
        assert [e.id for e in await cache.exchanges.list()] == ["binance"]
        # the cache now answers without the database
        await sql.drop_schema()
        assert await cache.symbols.get("binance", "BTC/USDT") == market


def test_urls_and_engines(tmp_path):
    loader = SqlLoader(f"sqlite:///{tmp_path / 'a.db'}")
    assert loader.engine.url.drivername == "sqlite+aiosqlite"
    assert repr(loader).startswith("SqlLoader('sqlite+aiosqlite:///")
    pg = SqlLoader("postgresql://user:secret@db.example:5432/meta")
    assert pg.engine.url.drivername == "postgresql+asyncpg"
    assert "secret" not in repr(pg)
    for bad in ("mysql://u@h/db", "not a url", 42):
        with pytest.raises(ValidationError) as err:
            SqlLoader(bad)  # type: ignore[arg-type]
        assert err.value.field == "url"


async def test_a_handed_in_engine_is_not_disposed(tmp_path):
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    async with SqlLoader(engine) as sql:
        await sql.create_schema()
    async with engine.connect() as conn:  # still usable
        assert (await conn.execute(sa.text("select 1"))).scalar_one() == 1
    await engine.dispose()


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    monkeypatch.delitem(sys.modules, "tradecache.loaders.sql")
    with pytest.raises(ImportError, match=r"tradecache\[sql\]"):
        importlib.import_module("tradecache.loaders.sql")


def test_missing_driver_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "aiosqlite", None)
    with pytest.raises(ImportError, match=r"tradecache\[sql\]"):
        SqlLoader(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
