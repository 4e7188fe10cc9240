"""Exchange metadata, read through from a loader (``cache.exchanges``).

``cache.exchanges.get("binance")`` returns an :class:`~tradecache.models.Exchange`
from Redis, or on a miss from the *loader*, a plain async callable::

    async def load_exchange(exchange_id: str) -> Exchange | dict | None: ...
    async def load_exchanges() -> list[Exchange | dict]: ...

    cache.exchanges.loader = load_exchange         # used by get() on a miss
    cache.exchanges.list_loader = load_exchanges   # used by list() when no list is cached
    SqlLoader(url).attach(cache)                   # or: all loaders from SQL

A loaded exchange is cached for ``settings.metadata_ttl``; a loader miss
(None) for ``settings.negative_ttl``. A miss calls the loader once per key
across every task and process (see :mod:`tradecache.stores.metadata`).
Without a loader the store is a plain cache that writers fill with
:meth:`ExchangeCache.put`. Exchange ids are ccxt ids and case-insensitive
(``"Binance"`` is ``"binance"``).
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from functools import lru_cache
from typing import Any, Final, TypeAlias

from ..context import Context
from ..errors import ValidationError
from ..keys import validate_exchange
from ..metrics import instrumented
from ..models import Exchange
from .metadata import ReadThrough, Space, ttl_seconds

__all__ = ["ExchangeCache", "ExchangeLike", "ExchangeListLoader", "ExchangeLoader"]

ExchangeLike: TypeAlias = Exchange | Mapping[str, Any]
ExchangeLoader: TypeAlias = Callable[[str], Awaitable[ExchangeLike | None]]
ExchangeListLoader: TypeAlias = Callable[[], Awaitable[Iterable[ExchangeLike]]]


def to_exchange(value: object, field: str = "exchange") -> Exchange:
    """A validated Exchange (id canonical: lower case) from an Exchange or a dict.

    Example::

        >>> to_exchange({"id": "Kraken", "name": "Kraken"}).id
        'kraken'
    """
    if isinstance(value, Exchange):
        exchange = value
    elif isinstance(value, Mapping):
        exchange = Exchange.from_ccxt(value)
    else:
        raise ValidationError(field, f"expected an Exchange or a dict, got {value!r}")
    canonical = validate_exchange(exchange.id, "id")
    return exchange if exchange.id == canonical else exchange.replace(id=canonical)


_canonical: Final = lru_cache(maxsize=1024)(validate_exchange)


def _exchanges(value: object, field: str) -> list[tuple[str, Exchange]]:
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValidationError(field, f"expected exchanges (a list), got {value!r}")
    items: dict[str, Exchange] = {}
    for index, item in enumerate(value):
        try:
            exchange = to_exchange(item, "$")
        except ValidationError as exc:
            inner = "" if exc.field == "$" else f".{exc.field}"
            raise ValidationError(f"{field}[{index}]{inner}", exc.reason) from None
        items[exchange.id] = exchange
    return list(items.items())


class ExchangeCache:
    """Read-through cache of :class:`~tradecache.models.Exchange` records.

    Built by the facade as ``cache.exchanges``; by hand:
    ``ExchangeCache(ctx, loader=fn, list_loader=fn)``. ``loader`` and
    ``list_loader`` are plain attributes: set or replace them at any time.
    """

    def __init__(
        self,
        ctx: Context,
        loader: ExchangeLoader | None = None,
        list_loader: ExchangeListLoader | None = None,
    ) -> None:
        self.loader = loader
        self.list_loader = list_loader
        self.keys = ctx.keys
        self.metrics = ctx.metrics
        self.settings = ctx.settings
        self._store: ReadThrough[Exchange] = ReadThrough(ctx, Exchange)
        entry, lock = ctx.keys.exchange_meta_prefixes()
        self._space = Space(
            entry_prefix=entry,
            lock_prefix=lock,
            index=ctx.keys.exchange_meta_index(),
            all=ctx.keys.exchange_meta_all(),
            all_lock=ctx.keys.exchange_meta_all_lock(),
        )

    def __repr__(self) -> str:
        return (
            f"ExchangeCache(namespace={self.keys.namespace!r}, loader={self.loader!r}, "
            f"list_loader={self.list_loader!r})"
        )

    @instrumented("exchanges.get")
    async def get(self, exchange: str) -> Exchange | None:
        """The exchange record: cached, else loaded once, else None.

        Example::

            binance = await cache.exchanges.get("binance")
            binance.enabled if binance else False
        """
        try:
            name = _canonical(exchange)  # validated once per spelling: the hit path
        except TypeError:  # unhashable: not an exchange id; raise its ValidationError
            name = validate_exchange(exchange)
        loader = self.loader
        if loader is None:
            return await self._store.get(self._space, name, None)

        async def load() -> Exchange | None:
            value = await loader(name)
            if value is None:
                return None
            record = to_exchange(value, "loader")
            if record.id != name:
                raise ValidationError("id", f"loader returned {record.id!r} for {name!r}")
            return record

        return await self._store.get(self._space, name, load)

    async def exists(self, exchange: str) -> bool:
        """True when :meth:`get` finds the exchange.

        Example::

            await cache.exchanges.exists("okx")
        """
        return await self.get(exchange) is not None

    @instrumented("exchanges.put")
    async def put(
        self, exchange: ExchangeLike, *, ttl: float | timedelta | None = None
    ) -> Exchange:
        """Store an exchange record for ``ttl`` (default metadata_ttl); returns it validated.

        A load of the same exchange in flight does not overwrite it; a cached
        complete list gains it. Bad input raises ValidationError, nothing written.

        Example::

            await cache.exchanges.put({"id": "okx", "name": "OKX", "has": {"ws": True}})
        """
        seconds = self.settings.metadata_ttl if ttl is None else ttl_seconds(ttl)
        stored = to_exchange(exchange, "$")
        await self._store.put(self._space, [(stored.id, stored)], seconds)
        return stored

    @instrumented("exchanges.put_many")
    async def put_many(
        self,
        exchanges: Iterable[ExchangeLike],
        *,
        ttl: float | timedelta | None = None,
        complete: bool = False,
    ) -> builtins.list[Exchange]:
        """Store many exchange records in one atomic script.

        With ``complete=True`` they also become the cached complete list that
        :meth:`list` returns, replacing any previous one.

        Example::

            await cache.exchanges.put_many([{"id": "binance"}, {"id": "kraken"}], complete=True)
        """
        seconds = self.settings.metadata_ttl if ttl is None else ttl_seconds(ttl)
        items = _exchanges(exchanges, "exchanges")
        if complete:
            await self._store.store_list(self._space, items, "", seconds)
        elif items:
            await self._store.put(self._space, items, seconds)
        return [record for _, record in items]

    @instrumented("exchanges.delete")
    async def delete(self, exchange: str) -> bool:
        """Forget an exchange record; True when it was cached.

        Delete it from your database first: a later :meth:`get` asks the
        loader again. Its symbols and tickers are left alone (use
        ``cache.symbols.invalidate(exchange)`` and ``cache.tickers.delete_exchange``).

        Example::

            await cache.exchanges.delete("ftx")
        """
        return await self._store.delete(self._space, validate_exchange(exchange))

    @instrumented("exchanges.invalidate")
    async def invalidate(self, exchange: str | None = None) -> int:
        """Drop cached records so the next read asks the loader again.

        With ``exchange``: that record and the cached list; without: every
        record and the list. Loads in flight are not stored. Returns how many
        records were dropped.

        Example::

            await cache.exchanges.invalidate()
        """
        member = None if exchange is None else validate_exchange(exchange)
        return await self._store.invalidate(self._space, member)

    @instrumented("exchanges.list")
    async def list(self) -> builtins.list[Exchange]:
        """Every exchange, sorted by id.

        With a ``list_loader``: the cached complete list, else the loader's
        (called once, cached for ``metadata_ttl``). Without one: the records
        currently cached.

        Example::

            enabled = [e.id for e in await cache.exchanges.list() if e.enabled]
        """
        list_loader = self.list_loader
        if list_loader is None:
            return await self._store.load_list(self._space, None)

        async def load() -> builtins.list[tuple[str, Exchange]]:
            return _exchanges(await list_loader(), "loader")

        return await self._store.load_list(self._space, load)
