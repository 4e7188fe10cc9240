"""Market (symbol) metadata, read through from a loader (``cache.symbols``).

``cache.symbols.get(exchange, symbol)`` returns a :class:`~tradecache.models.Market`
from Redis, or on a miss from the *loader*, a plain async callable you set
(your ORM, an exchange's REST API, or :class:`tradecache.loaders.sql.SqlLoader`)::

    async def load_symbol(exchange: str, symbol: str) -> Market | dict | None: ...
    async def load_symbols(exchange: str) -> list[Market | dict] | dict[str, Market | dict]: ...

    cache.symbols.loader = load_symbol           # used by get() on a miss
    cache.symbols.list_loader = load_symbols     # used by list() when no list is cached

    sql = SqlLoader("sqlite+aiosqlite:///meta.db")
    sql.attach(cache)                            # sets all four exchange/symbol loaders

    market = await cache.symbols.get("binance", "BTC/USDT")
    markets = await cache.symbols.list("binance")

A loader may return a Market, a ccxt market dict (``load_markets()`` values)
or None (no such symbol: cached as a negative entry for
``settings.negative_ttl``). A loaded market is cached for
``settings.metadata_ttl`` (24 h by default). A miss calls the loader once per
key, however many tasks and processes ask at the same time (see
:mod:`tradecache.stores.metadata`). Without a loader the store is a plain
cache that writers fill with :meth:`SymbolCache.put`.

Writers keep the cache in step with their database with :meth:`put`,
:meth:`put_many`, :meth:`delete` (which also removes the symbol's ticker) and
:meth:`invalidate`.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from functools import lru_cache
from typing import Any, TypeAlias

from ..context import Context
from ..errors import ValidationError
from ..keys import Keys, validate_exchange, validate_symbol
from ..metrics import instrumented
from ..models import Market
from .metadata import ReadThrough, Space, ttl_seconds
from .tickers import TickCache

__all__ = ["ListLoader", "MarketLike", "SymbolCache", "SymbolLoader"]

MarketLike: TypeAlias = Market | Mapping[str, Any]
SymbolLoader: TypeAlias = Callable[[str, str], Awaitable[MarketLike | None]]
ListLoader: TypeAlias = Callable[[str], Awaitable[Iterable[MarketLike] | Mapping[str, MarketLike]]]


def to_market(value: object, exchange: str, field: str = "market") -> Market:
    """A validated Market of ``exchange`` from a Market or a ccxt market dict.

    The market's exchange is set to ``exchange`` when missing (ids compare
    case-insensitively); a different exchange raises ValidationError.

    Example::

        >>> to_market({"id": "BTCUSDT", "symbol": "BTC/USDT", "base": "BTC",
        ...            "quote": "USDT"}, "binance").exchange
        'binance'
    """
    if isinstance(value, Market):
        market = value
    elif isinstance(value, Mapping):
        market = Market.from_ccxt(value)
    else:
        raise ValidationError(field, f"expected a Market or a ccxt market dict, got {value!r}")
    validate_symbol(market.symbol)
    if market.exchange is None or market.exchange.lower() == exchange:
        return market if market.exchange == exchange else market.replace(exchange=exchange)
    raise ValidationError("exchange", f"market of {market.exchange!r} given for {exchange!r}")


class SymbolCache:
    """Read-through cache of :class:`~tradecache.models.Market` records per exchange.

    Built by the facade as ``cache.symbols``; by hand:
    ``SymbolCache(ctx, loader=fn, list_loader=fn)``. ``loader`` and
    ``list_loader`` are plain attributes: set or replace them at any time.
    """

    def __init__(
        self,
        ctx: Context,
        loader: SymbolLoader | None = None,
        list_loader: ListLoader | None = None,
    ) -> None:
        self.loader = loader
        self.list_loader = list_loader
        self.keys = ctx.keys
        self.metrics = ctx.metrics
        self.settings = ctx.settings
        self._store: ReadThrough[Market] = ReadThrough(ctx, Market)
        self._tickers = TickCache(ctx)

    def __repr__(self) -> str:
        return (
            f"SymbolCache(namespace={self.keys.namespace!r}, loader={self.loader!r}, "
            f"list_loader={self.list_loader!r})"
        )

    def _space(self, exchange: object) -> tuple[str, Space]:
        """``(canonical exchange id, its Space)``, cached per spelling (the hit path)."""
        try:
            return _space(self.keys, exchange)
        except TypeError:  # unhashable: not an exchange id; raise its ValidationError
            return _space.__wrapped__(self.keys, exchange)

    def _symbol(self, symbol: object) -> str:
        """A validated symbol (cached: the hit path validates each spelling once)."""
        try:
            return _symbol(symbol)
        except TypeError:  # unhashable: not a symbol; raise its ValidationError
            return validate_symbol(symbol)

    # --- reads ---------------------------------------------------------------------------------

    @instrumented("symbols.get")
    async def get(self, exchange: str, symbol: str) -> Market | None:
        """The market ``symbol`` of ``exchange``: cached, else loaded once, else None.

        Example::

            market = await cache.symbols.get("binance", "BTC/USDT")
            market.precision.price if market else None
        """
        name, space = self._space(exchange)
        member = self._symbol(symbol)
        loader = self.loader
        if loader is None:
            return await self._store.get(space, member, None)

        async def load() -> Market | None:
            value = await loader(name, member)
            if value is None:
                return None
            market = to_market(value, name, "loader")
            if market.symbol != member:
                raise ValidationError("symbol", f"loader returned {market.symbol!r} for {member!r}")
            return market

        return await self._store.get(space, member, load)

    async def exists(self, exchange: str, symbol: str) -> bool:
        """True when :meth:`get` finds the symbol (cached or loaded).

        Example::

            if not await cache.symbols.exists("binance", "LUNA/USDT"): ...
        """
        return await self.get(exchange, symbol) is not None

    @instrumented("symbols.list")
    async def list(self, exchange: str) -> builtins.list[Market]:
        """Every market of ``exchange``, sorted by symbol.

        With a ``list_loader``: the cached complete list, else the loader's
        (called once, cached for ``metadata_ttl``). Without one: the markets
        currently cached for the exchange.

        Example::

            spot = [m for m in await cache.symbols.list("binance") if m.spot]
        """
        name, space = self._space(exchange)
        list_loader = self.list_loader
        if list_loader is None:
            return await self._store.load_list(space, None)

        async def load() -> builtins.list[tuple[str, Market]]:
            return _markets(await list_loader(name), name, "loader")

        return await self._store.load_list(space, load)

    async def symbols(self, exchange: str) -> builtins.list[str]:
        """The symbol names of :meth:`list`.

        Example::

            names = await cache.symbols.symbols("kraken")   # ['BTC/USD', 'ETH/USD', ...]
        """
        return [market.symbol for market in await self.list(exchange)]

    # --- writes --------------------------------------------------------------------------------

    @instrumented("symbols.put")
    async def put(
        self,
        market: MarketLike,
        exchange: str | None = None,
        *,
        ttl: float | timedelta | None = None,
    ) -> Market:
        """Store a market (a Market or a ccxt market dict) for ``ttl`` (default metadata_ttl).

        Validated first: a bad market raises ValidationError and nothing is
        written. A load of the same symbol in flight does not overwrite it; a
        cached complete list of the exchange gains it. Returns the stored Market.

        Example::

            await cache.symbols.put(ccxt_markets["BTC/USDT"], exchange="binance")
        """
        seconds = self.settings.metadata_ttl if ttl is None else ttl_seconds(ttl)
        name = _exchange_of([market], exchange)
        stored = to_market(market, name, "$")
        await self._store.put(self._space(name)[1], [(stored.symbol, stored)], seconds)
        return stored

    @instrumented("symbols.put_many")
    async def put_many(
        self,
        markets: Iterable[MarketLike] | Mapping[str, MarketLike],
        exchange: str | None = None,
        *,
        ttl: float | timedelta | None = None,
        complete: bool = False,
    ) -> builtins.list[Market]:
        """Store many markets of one exchange in one atomic script.

        ``markets`` may be ccxt's ``load_markets()`` dict. With
        ``complete=True`` they also become the exchange's cached complete list
        (what :meth:`list` returns until it expires), replacing any previous one.
        ``exchange`` defaults to the markets' own. Returns the stored markets.

        Example::

            await cache.symbols.put_many(await ex.load_markets(), "binance", complete=True)
        """
        seconds = self.settings.metadata_ttl if ttl is None else ttl_seconds(ttl)
        name = _exchange_of(markets, exchange)
        items = _markets(markets, name, "markets")
        space = self._space(name)[1]
        if complete:
            await self._store.store_list(space, items, "", seconds)
        elif items:
            await self._store.put(space, items, seconds)
        return [market for _, market in items]

    @instrumented("symbols.delete")
    async def delete(self, exchange: str, symbol: str) -> bool:
        """Forget a symbol and delete its ticker, atomically (one MULTI, one slot).

        Delete the record from your database first: a later :meth:`get` asks
        the loader again. Returns True when the symbol was cached.

        Example::

            await cache.symbols.delete("binance", "LUNA/USDT")   # delisted
        """
        name, space = self._space(exchange)
        member = validate_symbol(symbol)

        def ticker(pipe: Any) -> None:
            self._tickers.queue_delete(pipe, name, member)

        return await self._store.delete(space, member, ticker)

    @instrumented("symbols.invalidate")
    async def invalidate(self, exchange: str, symbol: str | None = None) -> int:
        """Drop cached entries so the next read asks the loader again.

        With ``symbol``: that symbol and the exchange's cached list. Without:
        every symbol and the list of the exchange. Loads in flight are not
        stored. Returns how many entries were dropped.

        Example::

            await cache.symbols.invalidate("binance")          # after a markets refresh
        """
        space = self._space(exchange)[1]
        member = None if symbol is None else validate_symbol(symbol)
        return await self._store.invalidate(space, member)


@lru_cache(maxsize=65_536)
def _symbol(symbol: str) -> str:
    return validate_symbol(symbol)


@lru_cache(maxsize=1024)
def _space(keys: Keys, exchange: str) -> tuple[str, Space]:
    name = validate_exchange(exchange)
    entry, lock = keys.symbol_meta_prefixes(name)
    space = Space(
        entry_prefix=entry,
        lock_prefix=lock,
        index=keys.symbol_meta_index(name),
        all=keys.symbol_meta_all(name),
        all_lock=keys.symbol_meta_all_lock(name),
    )
    return name, space


def _exchange_of(markets: object, exchange: str | None) -> str:
    if exchange is not None:
        return validate_exchange(exchange)
    values = markets.values() if isinstance(markets, Mapping) else markets
    for market in values if isinstance(values, Iterable) else ():
        found = market.exchange if isinstance(market, Market) else None
        if isinstance(market, Mapping):
            found = market.get("exchange")
        if found is not None:
            return validate_exchange(found)
    raise ValidationError("exchange", "required: the markets do not name their exchange")


def _item_field(field: str, index: int, inner: str) -> str:
    """``markets[3]`` for the whole item, ``markets[3].symbol`` for one of its fields."""
    return f"{field}[{index}]" if inner == "$" else f"{field}[{index}].{inner}"


def _markets(value: object, exchange: str, field: str) -> builtins.list[tuple[str, Market]]:
    """``[(symbol, Market)]`` from a list of markets or a ``{symbol: market}`` dict."""
    if isinstance(value, Mapping):
        value = builtins.list(value.values())
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValidationError(field, f"expected markets (a list or a dict), got {value!r}")
    items: dict[str, Market] = {}
    for index, item in enumerate(value):
        try:
            market = to_market(item, exchange, "$")
        except ValidationError as exc:
            raise ValidationError(_item_field(field, index, exc.field), exc.reason) from None
        items[market.symbol] = market
    return builtins.list(items.items())
