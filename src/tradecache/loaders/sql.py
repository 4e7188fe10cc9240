"""Exchange and market metadata in SQL (SQLAlchemy 2 async): the loader of the metadata caches.

Needs the ``sql`` extra (``pip install 'tradecache[sql]'``: SQLAlchemy,
aiosqlite, asyncpg). SQLite is the embedded default, PostgreSQL the
production database; the same code runs on both::

    from tradecache.loaders.sql import SqlLoader

    async with SqlLoader("sqlite+aiosqlite:///metadata.db") as sql:   # or postgresql+asyncpg://
        await sql.create_schema()                                     # idempotent
        await sql.save_exchange({"id": "binance", "name": "Binance"})
        await sql.import_markets("binance", await exchange.load_markets())

        sql.attach(cache)            # cache.exchanges / cache.symbols now read through SQL
        market = await cache.symbols.get("binance", "BTC/USDT")

``sqlite:///`` and ``postgresql://`` URLs get the async driver added
(``+aiosqlite``, ``+asyncpg``). An ``AsyncEngine`` can be handed in instead
of a URL (it is then not disposed by :meth:`SqlLoader.close`).

Schema (created by :meth:`SqlLoader.create_schema`, names prefixed
``tradecache_``):

* ``tradecache_exchanges``: ``id`` (ccxt id, primary key), ``name``,
  ``enabled``, ``has`` (JSON), ``params`` (JSON), ``updated`` (epoch ms);
* ``tradecache_markets``: primary key ``(exchange, symbol)``; the ccxt market
  fields people filter on as columns (``market_id``, ``base``, ``quote``,
  ``settle``, ``type``, ``active``, ``spot`` ... ``contract_size``, ``taker``,
  ``maker``); ``precision`` and ``limits`` as JSON; ``extra`` (JSON) keeps
  every other field of the market (``baseId``, ``expiry``, ``feeSide`` ...)
  and the ccxt keys tradecache does not model (except the raw ``info``);
  ``updated`` (epoch ms).

Writes are upserts (``INSERT ... ON CONFLICT DO UPDATE``), so concurrent
importers never fail on each other; every write method validates all of its
input first (:class:`~tradecache.errors.ValidationError` naming the field)
and then writes in one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from types import TracebackType
from typing import Any, Final

try:
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
except ImportError as exc:  # the extra is not installed
    raise ImportError(
        "tradecache.loaders.sql needs SQLAlchemy: pip install 'tradecache[sql]'"
    ) from exc

from ..errors import ValidationError
from ..keys import validate_exchange, validate_symbol
from ..models import Exchange, Market
from ..stores.exchanges import to_exchange
from ..stores.symbols import to_market

__all__ = ["SqlLoader", "exchanges_table", "markets_table", "metadata"]

#: The tables of the loader's own schema (``SqlLoader.create_schema`` creates them).
metadata: Final = sa.MetaData()

exchanges_table: Final = sa.Table(
    "tradecache_exchanges",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200)),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("has", sa.JSON, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("updated", sa.BigInteger, nullable=False),
)

# Market fields stored as columns: (model attribute, column, type).
_MARKET_COLUMNS: Final = (
    ("id", "market_id", sa.String(200)),
    ("base", "base", sa.String(64)),
    ("quote", "quote", sa.String(64)),
    ("settle", "settle", sa.String(64)),
    ("type", "type", sa.String(16)),
    ("sub_type", "sub_type", sa.String(16)),
    ("active", "active", sa.Boolean),
    ("spot", "spot", sa.Boolean),
    ("margin", "margin", sa.Boolean),
    ("swap", "swap", sa.Boolean),
    ("future", "future", sa.Boolean),
    ("option", "option", sa.Boolean),
    ("contract", "contract", sa.Boolean),
    ("linear", "linear", sa.Boolean),
    ("inverse", "inverse", sa.Boolean),
    ("contract_size", "contract_size", sa.Float),
    ("taker", "taker", sa.Float),
    ("maker", "maker", sa.Float),
)

markets_table: Final = sa.Table(
    "tradecache_markets",
    metadata,
    sa.Column("exchange", sa.String(64), primary_key=True),
    sa.Column("symbol", sa.String(100), primary_key=True),
    *(sa.Column(column, type_) for _, column, type_ in _MARKET_COLUMNS),
    sa.Column("precision", sa.JSON, nullable=False),
    sa.Column("limits", sa.JSON, nullable=False),
    sa.Column("extra", sa.JSON, nullable=False),
    sa.Column("updated", sa.BigInteger, nullable=False),
)

_INSERTS: Final[dict[str, Any]] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
_DRIVERS: Final = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
_MARKET_WIRE: Final = dict(
    zip(Market.__struct_fields__, Market.__struct_encode_fields__, strict=True)
)
# Wire (camelCase) names of what the columns hold: everything else goes to `extra`.
_COLUMN_WIRE: Final = frozenset(
    {_MARKET_WIRE[attr] for attr, _, _ in _MARKET_COLUMNS}
    | {"symbol", "exchange", "precision", "limits"}
)
_KNOWN_CCXT: Final = frozenset(_MARKET_WIRE) | frozenset(_MARKET_WIRE.values()) | {"info"}
_CHUNK: Final = 500


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _async_url(url: object) -> sa.URL:
    if not isinstance(url, str | sa.URL):
        raise ValidationError("url", f"expected a database URL, got {type(url).__name__}")
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValidationError("url", str(exc)) from None
    backend = parsed.get_backend_name()
    if backend not in _DRIVERS:
        raise ValidationError("url", f"unsupported database {backend!r}: use sqlite or postgresql")
    if "+" not in parsed.drivername:
        parsed = parsed.set(drivername=f"{backend}+{_DRIVERS[backend]}")
    return parsed


def _market_row(exchange: str, market: Market, source: object, now: int) -> dict[str, Any]:
    wire = market.to_dict()
    row: dict[str, Any] = {"exchange": exchange, "symbol": market.symbol, "updated": now}
    for attr, column, _ in _MARKET_COLUMNS:
        value = getattr(market, attr)
        row[column] = value.value if isinstance(value, Enum) else value
    row["precision"] = wire.get("precision", {})
    row["limits"] = wire.get("limits", {})
    extra = {key: value for key, value in wire.items() if key not in _COLUMN_WIRE}
    if isinstance(source, Mapping):
        extra.update(
            (key, value)
            for key, value in source.items()
            if isinstance(key, str) and key not in _KNOWN_CCXT
        )
    row["extra"] = extra
    return row


def _row_market(row: Any) -> Market:
    data = {key: value for key, value in row.extra.items() if key in _KNOWN_CCXT}
    for attr, column, _ in _MARKET_COLUMNS:
        data[_MARKET_WIRE[attr]] = getattr(row, column)
    data.update(
        symbol=row.symbol, exchange=row.exchange, precision=row.precision, limits=row.limits
    )
    return Market.from_ccxt(data)


def _exchange_row(exchange: Exchange, now: int) -> dict[str, Any]:
    return {
        "id": exchange.id,
        "name": exchange.name,
        "enabled": exchange.enabled,
        "has": exchange.has,
        "params": exchange.params,
        "updated": now,
    }


def _row_exchange(row: Any) -> Exchange:
    return Exchange(id=row.id, name=row.name, enabled=row.enabled, has=row.has, params=row.params)


class SqlLoader:
    """Exchange and market metadata in SQLite or PostgreSQL, shaped as cache loaders.

    ``load_exchange``, ``load_exchanges``, ``load_symbol`` and
    ``load_symbols`` have the signatures ``cache.exchanges`` and
    ``cache.symbols`` expect; :meth:`attach` plugs all four in.

    Example::

        sql = SqlLoader("sqlite+aiosqlite:///metadata.db")
        await sql.create_schema()
        sql.attach(cache)
    """

    def __init__(self, url: str | sa.URL | AsyncEngine, *, echo: bool = False) -> None:
        if isinstance(url, AsyncEngine):
            self.engine = url
            self._owns_engine = False
        else:
            try:
                self.engine = create_async_engine(_async_url(url), echo=echo)
            except ImportError as exc:  # the async driver is missing
                raise ImportError(
                    f"{exc}: the database driver comes with the extra: "
                    "pip install 'tradecache[sql]'"
                ) from exc
            self._owns_engine = True
        self._insert = _INSERTS[_async_url(self.engine.url).get_backend_name()]

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"SqlLoader({url!r})"

    async def __aenter__(self) -> SqlLoader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Dispose of the engine (unless it was handed in). Safe to call twice.

        Example: ``await sql.close()``
        """
        if self._owns_engine:
            await self.engine.dispose()

    # --- schema --------------------------------------------------------------------------------

    async def create_schema(self) -> None:
        """Create the loader's tables if they do not exist (idempotent).

        Example: ``await SqlLoader("sqlite+aiosqlite:///meta.db").create_schema()``
        """
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def drop_schema(self) -> None:
        """Drop the loader's tables and everything in them.

        Example: ``await sql.drop_schema()``
        """
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)

    def attach(self, cache: Any) -> None:
        """Use this loader for ``cache.exchanges`` and ``cache.symbols`` (all four loaders).

        Example::

            SqlLoader(url).attach(cache)
            await cache.symbols.get("binance", "BTC/USDT")   # SQL on a miss
        """
        cache.exchanges.loader = self.load_exchange
        cache.exchanges.list_loader = self.load_exchanges
        cache.symbols.loader = self.load_symbol
        cache.symbols.list_loader = self.load_symbols

    # --- writes --------------------------------------------------------------------------------

    async def _upsert(
        self, conn: AsyncConnection, table: sa.Table, keys: Sequence[str], rows: list[Any]
    ) -> None:
        stmt = self._insert(table)
        update = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        await conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=update), rows)

    async def save_exchange(self, exchange: Exchange | Mapping[str, Any]) -> Exchange:
        """Insert or update an exchange record; returns it validated.

        Example::

            await sql.save_exchange({"id": "okx", "name": "OKX", "has": {"watchTicker": True}})
        """
        record = to_exchange(exchange, "$")
        async with self.engine.begin() as conn:
            await self._upsert(conn, exchanges_table, ["id"], [_exchange_row(record, _now_ms())])
        return record

    async def import_markets(
        self,
        exchange: str,
        markets: Mapping[str, Any] | Iterable[Any],
        *,
        prune: bool = False,
    ) -> int:
        """Upsert ccxt ``load_markets()`` output (a dict or a list) for ``exchange``.

        Every market is validated before anything is written (errors name
        ``markets[i].<field>``); then, in one transaction, the exchange row is
        created if missing and the markets are upserted. With ``prune=True``
        markets of the exchange absent from ``markets`` are deleted
        (delisted). Returns the number of markets imported.

        Example::

            n = await sql.import_markets("binance", await ex.load_markets(), prune=True)
        """
        name = validate_exchange(exchange)
        values = list(markets.values()) if isinstance(markets, Mapping) else markets
        if isinstance(values, str | bytes) or not isinstance(values, Iterable):
            raise ValidationError("markets", f"expected ccxt markets, got {markets!r}")
        now = _now_ms()
        rows: dict[str, dict[str, Any]] = {}
        for index, item in enumerate(values):
            try:
                market = to_market(item, name, "$")
            except ValidationError as exc:
                inner = "" if exc.field == "$" else f".{exc.field}"
                raise ValidationError(f"markets[{index}]{inner}", exc.reason) from None
            rows[market.symbol] = _market_row(name, market, item, now)
        async with self.engine.begin() as conn:
            stmt = self._insert(exchanges_table).on_conflict_do_nothing(index_elements=["id"])
            await conn.execute(stmt, [_exchange_row(Exchange(id=name), now)])
            if rows:
                await self._upsert(conn, markets_table, ["exchange", "symbol"], list(rows.values()))
            if prune:
                table = markets_table
                result = await conn.execute(
                    sa.select(table.c.symbol).where(table.c.exchange == name)
                )
                stale = sorted(set(result.scalars()) - rows.keys())
                for start in range(0, len(stale), _CHUNK):
                    chunk = stale[start : start + _CHUNK]
                    await conn.execute(
                        sa.delete(table).where(table.c.exchange == name, table.c.symbol.in_(chunk))
                    )
        return len(rows)

    async def delete_market(self, exchange: str, symbol: str) -> bool:
        """Delete one market; True when it existed. Then ``cache.symbols.delete(...)``.

        Example::

            await sql.delete_market("binance", "LUNA/USDT")
            await cache.symbols.delete("binance", "LUNA/USDT")
        """
        name, member = validate_exchange(exchange), validate_symbol(symbol)
        table = markets_table
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.delete(table).where(table.c.exchange == name, table.c.symbol == member)
            )
        return bool(result.rowcount)

    # --- loaders -------------------------------------------------------------------------------

    async def load_exchange(self, exchange: str) -> Exchange | None:
        """The exchange record, or None: the loader of ``cache.exchanges``.

        Example: ``await sql.load_exchange("binance")``
        """
        name = validate_exchange(exchange)
        table = exchanges_table
        async with self.engine.connect() as conn:
            result = await conn.execute(sa.select(table).where(table.c.id == name))
            row = result.first()
        return None if row is None else _row_exchange(row)

    async def load_exchanges(self) -> list[Exchange]:
        """Every exchange, sorted by id: the list loader of ``cache.exchanges``.

        Example: ``[e.id for e in await sql.load_exchanges()]``
        """
        table = exchanges_table
        async with self.engine.connect() as conn:
            result = await conn.execute(sa.select(table).order_by(table.c.id))
            return [_row_exchange(row) for row in result]

    async def load_symbol(self, exchange: str, symbol: str) -> Market | None:
        """One market, or None: the loader of ``cache.symbols``.

        Example: ``await sql.load_symbol("binance", "BTC/USDT")``
        """
        name, member = validate_exchange(exchange), validate_symbol(symbol)
        table = markets_table
        async with self.engine.connect() as conn:
            result = await conn.execute(
                sa.select(table).where(table.c.exchange == name, table.c.symbol == member)
            )
            row = result.first()
        return None if row is None else _row_market(row)

    async def load_symbols(self, exchange: str) -> list[Market]:
        """Every market of ``exchange``, sorted by symbol: the list loader of ``cache.symbols``.

        Example: ``len(await sql.load_symbols("binance"))``
        """
        name = validate_exchange(exchange)
        table = markets_table
        async with self.engine.connect() as conn:
            result = await conn.execute(
                sa.select(table).where(table.c.exchange == name).order_by(table.c.symbol)
            )
            return [_row_market(row) for row in result]
