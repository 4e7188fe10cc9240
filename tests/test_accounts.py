"""cache.accounts: balances and positions, per-field atomic writes, scoped reads."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from helpers.order_flow import ccxt_position, run_writer_processes, snapshot
from tradecache import Cache, ValidationError
from tradecache.models import Balance, Position, PositionSide, from_ms

# generous timeouts for the concurrency tests: they are about atomicity, on a loaded machine
PATIENT = {"connect_timeout": 5.0, "socket_timeout": 5.0, "pool_timeout": 5.0}


def ccxt_balance() -> dict[str, Any]:
    """fetch_balance()/watch_balance() as ccxt returns it."""
    return {
        "info": {"raw": True},
        "timestamp": 1_700_000_000_000,
        "datetime": "2023-11-14T22:13:20.000Z",
        "BTC": {"free": 0.5, "used": 0.25, "total": 0.75},
        "USDT": {"free": "1000.10", "used": "0", "total": "1000.10"},
        "free": {"BTC": 0.5, "USDT": "1000.10"},
        "used": {"BTC": 0.25, "USDT": "0"},
        "total": {"BTC": 0.75, "USDT": "1000.10"},
    }


# --- balances ----------------------------------------------------------------------------------


async def test_set_and_get_balances_from_a_ccxt_balance(cache: Cache) -> None:
    assert await cache.accounts.set_balances("main", ccxt_balance()) == 2
    btc = await cache.accounts.get_balance("main", "BTC")
    assert btc == Balance(
        currency="BTC",
        free=Decimal("0.5"),
        used=Decimal("0.25"),
        total=Decimal("0.75"),
        updated=from_ms(1_700_000_000_000),
    )
    balances = await cache.accounts.get_balances("main")
    assert list(balances) == ["BTC", "USDT"]
    assert balances["USDT"].free == Decimal("1000.10")
    assert await cache.accounts.get_balance("main", "ETH") is None
    assert await cache.accounts.get_balance("other", "BTC") is None
    assert await cache.accounts.get_balances("other") == {}


async def test_set_balances_merges_unless_replace(cache: Cache) -> None:
    await cache.accounts.set_balances("main", ccxt_balance())
    await cache.accounts.set_balances("main", {"ETH": {"free": 1, "used": 0, "total": 1}})
    assert list(await cache.accounts.get_balances("main")) == ["BTC", "ETH", "USDT"]
    eth = Balance(currency="ETH", free=Decimal(2), total=Decimal(2))
    assert await cache.accounts.set_balances("main", [eth], replace=True) == 1
    assert await cache.accounts.get_balances("main") == {"ETH": eth}
    assert await cache.accounts.set_balances("main", {}) == 0
    assert list(await cache.accounts.get_balances("main")) == ["ETH"]
    assert await cache.accounts.set_balances("main", {}, replace=True) == 0
    assert await cache.accounts.get_balances("main") == {}


async def test_concurrent_balance_writers_of_different_currencies_never_clash(
    cache_factory: Any,
) -> None:
    cache = await cache_factory(**PATIENT)
    codes = [f"C{i}" for i in range(30)]
    await asyncio.gather(
        *(
            cache.accounts.set_balances("main", {code: {"free": i, "total": i}})
            for i, code in enumerate(codes)
        )
    )
    assert sorted(await cache.accounts.get_balances("main")) == sorted(codes)


@pytest.mark.parametrize(
    ("balances", "field"),
    [
        ({"BTC": {"free": "abc"}}, "BTC.free"),
        ({"BTC": {"debt": -1}}, "BTC.debt"),
        ({"B TC": {"free": 1}}, "currency"),
        ([{"currency": "BTC"}], "[0]"),
        ("nope", "[0]"),
    ],
)
async def test_bad_balances_raise_and_write_nothing(
    cache: Cache, balances: Any, field: str
) -> None:
    await cache.accounts.set_balances("main", ccxt_balance())
    before = await snapshot(cache)
    with pytest.raises(ValidationError) as info:
        await cache.accounts.set_balances("main", balances, replace=True)
    assert info.value.field == field
    assert await snapshot(cache) == before


async def test_account_names_are_validated(cache: Cache) -> None:
    for call in (
        cache.accounts.set_balances("a b", ccxt_balance()),
        cache.accounts.get_balances("a{b}"),
        cache.accounts.set_position("", ccxt_position()),
        cache.accounts.positions("a*"),
    ):
        with pytest.raises(ValidationError) as info:
            await call
        assert info.value.field == "account"
    with pytest.raises(ValidationError) as info:
        await cache.accounts.get_balance("main", "B TC")
    assert info.value.field == "currency"


# --- positions ---------------------------------------------------------------------------------


async def test_set_and_get_a_ccxt_position_keeps_side_and_decimals(cache: Cache) -> None:
    await cache.accounts.set_position("main", ccxt_position(side="short", contracts="0.10"))
    position = await cache.accounts.get_position("main", "BTC/USDT:USDT")
    assert position is not None
    assert position.side is PositionSide.SHORT
    assert position.contracts == Decimal("0.10")
    assert position.entry_price == Decimal("60000.0")
    assert position.unrealized_pnl == Decimal("50.0")
    assert position == Position.from_ccxt(ccxt_position(side="short", contracts="0.10"))
    assert await cache.accounts.get_position("main", "ETH/USDT:USDT") is None
    assert await cache.accounts.get_position("other", "BTC/USDT:USDT") is None


async def test_positions_are_scoped_to_their_account(cache: Cache) -> None:
    await cache.accounts.set_position("a", ccxt_position("BTC/USDT:USDT"))
    await cache.accounts.set_position("a", ccxt_position("ETH/USDT:USDT"))
    await cache.accounts.set_position("b", ccxt_position("SOL/USDT:USDT", side="short"))
    assert [p.symbol for p in await cache.accounts.positions("a")] == [
        "BTC/USDT:USDT",
        "ETH/USDT:USDT",
    ]
    assert [p.symbol for p in await cache.accounts.positions("b")] == ["SOL/USDT:USDT"]
    assert await cache.accounts.positions("c") == []
    everything = await cache.accounts.all_positions()
    assert {k: [p.symbol for p in v] for k, v in everything.items()} == {
        "a": ["BTC/USDT:USDT", "ETH/USDT:USDT"],
        "b": ["SOL/USDT:USDT"],
    }


async def test_the_account_index_heals_after_data_loss(cache: Cache) -> None:
    await cache.accounts.set_position("a", ccxt_position("BTC/USDT:USDT"))
    await cache.accounts.set_position("a", ccxt_position("BTC/USDT:USDT", contracts=2))
    assert list(await cache.accounts.all_positions()) == ["a"]
    # the server lost everything (a restart without persistence); this process did not
    await cache.client.delete(cache.keys.positions("a"), cache.keys.position_accounts())
    await cache.accounts.set_position("a", ccxt_position("ETH/USDT:USDT"))
    everything = await cache.accounts.all_positions()
    assert [p.symbol for p in everything["a"]] == ["ETH/USDT:USDT"]


async def test_all_positions_without_any_account(cache: Cache) -> None:
    assert await cache.accounts.all_positions() == {}


async def test_fifty_concurrent_writers_of_fifty_symbols_keep_all_fifty(
    cache_factory: Any,
) -> None:
    """The reference library kept 1 of these 50 (one JSON blob per account)."""
    writers = [await cache_factory(**PATIENT) for _ in range(5)]
    symbols = [f"S{i}/USDT:USDT" for i in range(50)]
    await asyncio.gather(
        *(
            writers[i % 5].accounts.set_position("a", ccxt_position(symbol, contracts=i + 1))
            for i, symbol in enumerate(symbols)
        ),
        *(writers[i % 5].accounts.set_position("b", ccxt_position(f"B{i}/USDT")) for i in range(5)),
    )
    positions = await writers[0].accounts.positions("a")
    assert sorted(p.symbol for p in positions) == sorted(symbols)
    assert {p.symbol: p.contracts for p in positions}["S7/USDT:USDT"] == Decimal(8)
    assert all(not p.symbol.startswith("B") for p in positions)


@pytest.mark.slow
async def test_fifty_set_position_calls_from_five_processes_keep_all_fifty(
    cache: Cache,
) -> None:
    await cache.accounts.set_position("b", ccxt_position("OTHER/USDT:USDT"))
    jobs = [["positions", "a", ",".join(str(i) for i in range(k, 50, 5))] for k in range(5)]
    await run_writer_processes(cache, jobs)
    positions = await cache.accounts.positions("a")
    assert sorted(p.symbol for p in positions) == sorted(f"S{i}/USDT:USDT" for i in range(50))
    assert all(p.contracts == int(p.symbol[1:].split("/")[0]) + 1 for p in positions)
    assert [p.symbol for p in await cache.accounts.positions("b")] == ["OTHER/USDT:USDT"]


async def test_set_positions_merges_or_replaces_atomically(cache: Cache) -> None:
    await cache.accounts.set_position("a", ccxt_position("OLD/USDT:USDT"))
    batch = [ccxt_position("BTC/USDT:USDT"), Position(symbol="ETH/USDT:USDT", side="short")]
    assert await cache.accounts.set_positions("a", batch) == 2
    assert len(await cache.accounts.positions("a")) == 3
    assert await cache.accounts.set_positions("a", batch, replace=True) == 2
    assert [p.symbol for p in await cache.accounts.positions("a")] == [
        "BTC/USDT:USDT",
        "ETH/USDT:USDT",
    ]
    assert await cache.accounts.set_positions("a", []) == 0
    assert len(await cache.accounts.positions("a")) == 2
    assert await cache.accounts.set_positions("a", [], replace=True) == 0
    assert await cache.accounts.positions("a") == []
    assert await cache.accounts.all_positions() == {}
    await cache.accounts.set_positions("new", batch)
    assert list(await cache.accounts.all_positions()) == ["new"]


async def test_replace_handles_many_symbols(cache: Cache) -> None:
    many = [Position(symbol=f"S{i}/USDT") for i in range(1000)]
    assert await cache.accounts.set_positions("a", many, replace=True) == 1000
    assert len(await cache.accounts.positions("a")) == 1000


async def test_delete_position(cache: Cache) -> None:
    await cache.accounts.set_position("a", ccxt_position("BTC/USDT:USDT"))
    await cache.accounts.set_position("a", ccxt_position("ETH/USDT:USDT"))
    assert await cache.accounts.delete_position("a", "BTC/USDT:USDT") is True
    assert await cache.accounts.delete_position("a", "BTC/USDT:USDT") is False
    assert [p.symbol for p in await cache.accounts.positions("a")] == ["ETH/USDT:USDT"]
    assert await cache.accounts.delete_position("a", "ETH/USDT:USDT") is True
    assert await cache.accounts.all_positions() == {}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"symbol": None}, "symbol"),
        ({"symbol": "BTC USDT"}, "symbol"),
        ({"contracts": -1}, "contracts"),
        ({"side": "sideways"}, "side"),
        ({"entryPrice": "x"}, "entry_price"),
        ({"leverage": float("nan")}, "leverage"),
    ],
)
async def test_bad_positions_raise_and_write_nothing(
    cache: Cache, change: dict[str, Any], field: str
) -> None:
    await cache.accounts.set_position("a", ccxt_position())
    before = await snapshot(cache)
    bad = {**ccxt_position("ETH/USDT:USDT"), **change}
    with pytest.raises(ValidationError) as info:
        await cache.accounts.set_position("a", bad)
    assert info.value.field == field
    with pytest.raises(ValidationError) as info:
        await cache.accounts.set_positions("a", [ccxt_position(), bad], replace=True)
    assert info.value.field == f"[1].{field}"
    assert await snapshot(cache) == before


async def test_duplicate_symbols_and_non_positions_are_rejected(cache: Cache) -> None:
    before = await snapshot(cache)
    with pytest.raises(ValidationError) as info:
        await cache.accounts.set_positions("a", [ccxt_position(), ccxt_position()])
    assert info.value.field == "[1].symbol"
    with pytest.raises(ValidationError) as info:
        await cache.accounts.set_position("a", "BTC")  # type: ignore[arg-type]
    assert info.value.field == "position"
    for call in (
        cache.accounts.get_position("a", "B TC"),
        cache.accounts.delete_position("a", "B*"),
    ):
        with pytest.raises(ValidationError) as info:
            await call
        assert info.value.field == "symbol"
    assert await snapshot(cache) == before
    assert repr(cache.accounts).startswith("<AccountCache namespace=")
