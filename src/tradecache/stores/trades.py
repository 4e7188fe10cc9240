"""``cache.trades``: public trades per (exchange, symbol) and user trades per account.

Both live on Redis Streams read through consumer groups (see
:mod:`tradecache.stores.streams`), so a trade is never lost between a reader
and a writer: consumers get at-least-once delivery with ``ack`` and
``reclaim``, and reading for display (``recent``) never consumes anything::

    await cache.trades.push_many(await exchange.watch_trades("BTC/USDT"), exchange="binance")

    async for delivery in cache.trades.consume("ohlcv", "w1", "binance", "BTC/USDT"):
        candles.add(delivery.item)
        await delivery.ack()

    last_20 = await cache.trades.recent("binance", "BTC/USDT", 20)   # oldest first

    await cache.trades.push_user_trade("main", fill)    # watch_my_trades()
    async for delivery in cache.trades.consume_user_trades("pnl", "w1", "main"):
        ...

``consume`` reads one stream (exchange and symbol), every symbol of an
exchange (exchange only) or every trade stream (neither); streams created
while it runs are picked up. Streams are capped at about
``settings.stream_maxlen`` entries without ever dropping an entry a consumer
group still needs.

Keys (every stream of one exchange shares the slot ``{exchange}``, so one
``XREADGROUP`` reads all its symbols; user trades are tagged by account)::

    <ns>:trades:{<exchange>}:<symbol>   stream of Trade
    <ns>:tradesyms:{<exchange>}         set of the exchange's symbols with a stream
    <ns>:tradexs:{index}                set of exchanges with a trade stream
    <ns>:usertrades:{<account>}         stream of the account's own trades
    <ns>:usertradeaccts:{index}         set of accounts with a user-trade stream
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import Any

from ..context import Context
from ..errors import ValidationError, redis_errors
from ..keys import validate_exchange, validate_part, validate_symbol
from ..metrics import instrumented
from ..models import Trade, from_ms
from ..replication import Call, check_replicas, run_replicated_many
from ..scripts import Arg, Script, ScriptBatch
from ._input import to_model
from .streams import Delivery, StreamGroups, decode_id

__all__ = ["TradesCache"]

_PUSH = Script("stream_push", include=("stream_trim",))

TradeInput = Trade | Mapping[str, Any]


def _trade(trade: object, exchange: str | None, *, required: bool) -> Trade:
    item = to_model(trade, Trade, exchange, required=required)
    validate_symbol(item.symbol)
    return item


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValidationError("n", f"must be an int >= 1, got {n!r}")
    return n


class TradesCache:
    """Trade streams: public trades per (exchange, symbol), user trades per account.

    Build it through the facade (``cache.trades``) or from a context:
    ``TradesCache(cache.context)``.
    """

    __slots__ = ("_public", "_user", "client", "codec", "keys", "metrics", "settings")

    def __init__(self, ctx: Context) -> None:
        self.client: Any = ctx.client  # redis-py types replies as bytes | str | ...
        self.keys = ctx.keys
        self.codec = ctx.codec
        self.settings = ctx.settings
        self.metrics = ctx.metrics
        self._public: StreamGroups[Trade] = StreamGroups(ctx, Trade, "trades")
        self._user: StreamGroups[Trade] = StreamGroups(ctx, Trade, "user_trades")

    def __repr__(self) -> str:
        return f"<TradesCache namespace={self.keys.namespace!r}>"

    # --- public trades: write ------------------------------------------------------------------

    @instrumented("trades.push")
    @redis_errors
    async def push(
        self, trade: TradeInput, exchange: str | None = None, *, wait_replicas: int = 0
    ) -> str:
        """Append one public trade to its (exchange, symbol) stream; return the entry id.

        ``wait_replicas=n`` returns only once ``n`` replicas have the trade
        (``WAIT``): a failover of the stream's master cannot lose it. Fewer in
        time raise :class:`~tradecache.errors.NotReplicated` with the trade
        appended on the master (``reply``: ``[its entry id]``, as
        :meth:`push_many` reports a stream); pushing it again would append it
        twice.

        Example::

            await cache.trades.push({"id": "1", "symbol": "BTC/USDT", "price": 60000,
                                     "amount": 0.01, "side": "buy",
                                     "timestamp": 1700000000000}, exchange="binance")
        """
        item = _trade(trade, exchange, required=True)
        assert item.exchange is not None
        payloads = [self.codec.encode(item)]
        if check_replicas(wait_replicas):
            stream = {(item.exchange, item.symbol): payloads}
            (entry,) = await self._push_replicated(stream, wait_replicas)
            return decode_id(entry)
        batch = ScriptBatch(self.client)
        self._queue_public(batch, item.exchange, item.symbol, payloads)
        return decode_id((await batch.execute())[0])

    @instrumented("trades.push_many")
    @redis_errors
    async def push_many(
        self, trades: Iterable[TradeInput], exchange: str | None = None, *, wait_replicas: int = 0
    ) -> int:
        """Append many public trades in one round trip; return how many were added.

        Every trade is validated first: one bad trade raises ``ValidationError``
        and nothing is written. Accepts ``watch_trades()`` / ``fetch_trades()``
        lists as they come.

        ``wait_replicas=n`` returns only once ``n`` replicas have every trade
        (one ``WAIT`` per exchange, the exchanges in parallel): a failover
        cannot lose them. Fewer in time raise
        :class:`~tradecache.errors.NotReplicated` with the trades appended on
        their master (``reply``: the last entry id of each stream of the
        exchange that fell short); pushing them again would append them
        twice. Every exchange is tried; the first one's failure
        (``NotReplicated``, ``ConnectionLost``) is raised.

        Example: ``await cache.trades.push_many(await ex.watch_trades("BTC/USDT"), "binance")``
        """
        replicas = check_replicas(wait_replicas)
        streams: dict[tuple[str, str], list[bytes]] = {}
        for index, trade in enumerate(trades):
            try:
                item = _trade(trade, exchange, required=True)
            except ValidationError as exc:
                raise ValidationError(f"[{index}].{exc.field}", exc.reason) from None
            assert item.exchange is not None
            streams.setdefault((item.exchange, item.symbol), []).append(self.codec.encode(item))
        if not streams:
            return 0
        if replicas:
            await self._push_replicated(streams, replicas)
        else:
            batch = ScriptBatch(self.client)
            for (ex, symbol), payloads in streams.items():
                self._queue_public(batch, ex, symbol, payloads)
            await batch.execute()
        return sum(len(payloads) for payloads in streams.values())

    async def _push_replicated(
        self, streams: dict[tuple[str, str], list[bytes]], replicas: int
    ) -> list[Any]:
        """Append to ``streams``, then WAIT, per exchange; the scripts' replies, in order."""
        calls: dict[str, list[Call]] = {}  # per exchange: its streams share one slot
        for (ex, symbol), payloads in streams.items():
            calls.setdefault(ex, []).append(self._push_call(ex, symbol, payloads))
        # The index of exchanges lives in another slot: written first, on its own.
        await self.client.sadd(self.keys.trade_exchanges(), *calls)
        timeout = self.settings.wait_replicas_timeout
        pushes = [  # routed by the exchange's index of symbols: the slot of its streams
            run_replicated_many(
                self.client, self.keys.trade_symbols(ex), group, replicas=replicas, timeout=timeout
            )
            for ex, group in calls.items()
        ]
        outcomes = await asyncio.gather(*pushes, return_exceptions=True)
        replies: list[Any] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            replies += outcome
        return replies

    def _push_call(self, exchange: str, symbol: str, payloads: list[bytes]) -> Call:
        """The script call appending ``payloads`` to a stream (and indexing its symbol)."""
        keys = [self.keys.trades(exchange, symbol), self.keys.trade_symbols(exchange)]
        args: list[Arg] = [self.settings.stream_maxlen, symbol, *payloads]
        return _PUSH, keys, args

    def _queue_public(
        self, batch: ScriptBatch, exchange: str, symbol: str, payloads: list[bytes]
    ) -> None:
        batch.call(*self._push_call(exchange, symbol, payloads))
        batch.pipe.sadd(self.keys.trade_exchanges(), exchange)

    # --- public trades: read -------------------------------------------------------------------

    def _public_resolver(self, exchange: str | None, symbol: str | None) -> Any:
        if exchange is None:
            if symbol is not None:
                raise ValidationError("exchange", "required when a symbol is given")
            return self._all_public
        exchange = validate_exchange(exchange)
        if symbol is not None:
            keys = [[self.keys.trades(exchange, validate_symbol(symbol))]]

            async def one() -> list[list[str]]:
                return keys

            return one

        async def of_exchange() -> list[list[str]]:
            return await self._exchange_streams([exchange])

        return of_exchange

    async def _exchange_streams(self, exchanges: list[str]) -> list[list[str]]:
        pipe = self.client.pipeline(transaction=False)
        for ex in exchanges:
            pipe.smembers(self.keys.trade_symbols(ex))
        slots = []
        for ex, symbols in zip(exchanges, await pipe.execute(), strict=True):
            keys = sorted(self.keys.trades(ex, s.decode()) for s in symbols)
            if keys:
                slots.append(keys)
        return slots

    async def _all_public(self) -> list[list[str]]:
        exchanges = sorted(
            m.decode() for m in await self.client.smembers(self.keys.trade_exchanges())
        )
        if not exchanges:
            return []
        return await self._exchange_streams(exchanges)

    def consume(
        self,
        group: str,
        consumer: str,
        exchange: str | None = None,
        symbol: str | None = None,
        *,
        count: int = 100,
        block: float | None = None,
    ) -> AsyncIterator[Delivery[Trade]]:
        """Iterate over public trades as ``Delivery[Trade]``, at least once; ``ack()`` each.

        One stream (``exchange`` and ``symbol``), every symbol of ``exchange``,
        or every trade stream (neither). The group is created on first use and
        starts at the oldest retained trade. ``block``: seconds to wait while
        nothing arrives before the iteration ends (``None``: forever).

        Example::

            async for d in cache.trades.consume("ohlcv", "w1", "binance", "BTC/USDT", block=1):
                bars.add(d.item)
                await d.ack()
        """
        resolve = self._public_resolver(exchange, symbol)
        return self._public.consume(resolve, group, consumer, count=count, block=block)

    @instrumented("trades.reclaim")
    @redis_errors
    async def reclaim(
        self,
        group: str,
        consumer: str,
        min_idle: float,
        exchange: str | None = None,
        symbol: str | None = None,
        *,
        count: int = 100,
    ) -> list[Delivery[Trade]]:
        """Take over public trades pending in ``group`` for at least ``min_idle`` seconds.

        Same stream selection as :meth:`consume`.

        Example::

            for d in await cache.trades.reclaim("ohlcv", "w2", 30, "binance", "BTC/USDT"):
                bars.add(d.item)
                await d.ack()
        """
        slots = await self._public_resolver(exchange, symbol)()
        streams = [key for keys in slots for key in keys]
        return await self._public.reclaim(streams, group, consumer, min_idle, count=count)

    @instrumented("trades.pending")
    @redis_errors
    async def pending(
        self, group: str, exchange: str | None = None, symbol: str | None = None
    ) -> int:
        """Public trades delivered to ``group`` and not acknowledged (same selection as consume).

        Example: ``await cache.trades.pending("ohlcv", "binance", "BTC/USDT")``
        """
        slots = await self._public_resolver(exchange, symbol)()
        return await self._public.pending([key for keys in slots for key in keys], group)

    @instrumented("trades.recent")
    @redis_errors
    async def recent(self, exchange: str, symbol: str, n: int = 100) -> list[Trade]:
        """The last ``n`` public trades of a symbol, oldest first; consumes nothing.

        Example: ``tape = await cache.trades.recent("binance", "BTC/USDT", 50)``
        """
        key = self.keys.trades(exchange, symbol)
        entries = await self.client.xrevrange(key, count=_check_n(n))
        return self._decode(entries)

    @instrumented("trades.last_update")
    @redis_errors
    async def last_update(self, exchange: str, symbol: str) -> datetime | None:
        """When the last trade of a symbol was pushed (server time), or ``None``.

        Example: ``stale = (now - await cache.trades.last_update("binance", "BTC/USDT"))``
        """
        entries = await self.client.xrevrange(self.keys.trades(exchange, symbol), count=1)
        if not entries:
            return None
        return from_ms(int(decode_id(entries[0][0]).split("-", 1)[0]))

    def _decode(self, entries: list[tuple[Any, Any]]) -> list[Trade]:
        payloads = [fields[b"d"] for _, fields in reversed(entries)]
        return self.codec.decode_many(payloads, Trade)

    # --- user trades -----------------------------------------------------------------------------

    @instrumented("trades.push_user_trade")
    @redis_errors
    async def push_user_trade(
        self, account: str, trade: TradeInput, exchange: str | None = None
    ) -> str:
        """Append one of ``account``'s own trades (a fill); return the entry id.

        Example::

            for fill in await exchange.watch_my_trades():
                await cache.trades.push_user_trade("main", fill, exchange="binance")
        """
        item = _trade(trade, exchange, required=False)
        batch = ScriptBatch(self.client)
        self._queue_user(batch, account, [self.codec.encode(item)])
        return decode_id((await batch.execute())[0])

    @instrumented("trades.push_user_trades")
    @redis_errors
    async def push_user_trades(
        self, account: str, trades: Iterable[TradeInput], exchange: str | None = None
    ) -> int:
        """Append many of ``account``'s trades in one round trip; return how many.

        All are validated first; one bad trade writes nothing.

        Example: ``await cache.trades.push_user_trades("main", await ex.fetch_my_trades())``
        """
        payloads = []
        for index, trade in enumerate(trades):
            try:
                item = _trade(trade, exchange, required=False)
            except ValidationError as exc:
                raise ValidationError(f"[{index}].{exc.field}", exc.reason) from None
            payloads.append(self.codec.encode(item))
        if not payloads:
            validate_part(account, "account")
            return 0
        batch = ScriptBatch(self.client)
        self._queue_user(batch, account, payloads)
        await batch.execute()
        return len(payloads)

    def _queue_user(self, batch: ScriptBatch, account: str, payloads: list[bytes]) -> None:
        batch.call(
            _PUSH,
            keys=[self.keys.user_trades(account)],
            args=[self.settings.stream_maxlen, account, *payloads],
        )
        batch.pipe.sadd(self.keys.user_trade_accounts(), account)

    def _user_resolver(self, account: str | None) -> Any:
        if account is not None:
            keys = [[self.keys.user_trades(account)]]

            async def one() -> list[list[str]]:
                return keys

            return one

        async def every() -> list[list[str]]:
            members = await self.client.smembers(self.keys.user_trade_accounts())
            return [[self.keys.user_trades(m.decode())] for m in sorted(members)]

        return every

    def consume_user_trades(
        self,
        group: str,
        consumer: str,
        account: str | None = None,
        *,
        count: int = 100,
        block: float | None = None,
    ) -> AsyncIterator[Delivery[Trade]]:
        """Iterate over user trades of ``account`` (or of every account), at least once.

        Example::

            async for d in cache.trades.consume_user_trades("positions", "w1", "main"):
                await apply_fill(d.item)
                await d.ack()
        """
        resolve = self._user_resolver(account)
        return self._user.consume(resolve, group, consumer, count=count, block=block)

    @instrumented("trades.reclaim_user_trades")
    @redis_errors
    async def reclaim_user_trades(
        self,
        group: str,
        consumer: str,
        min_idle: float,
        account: str | None = None,
        *,
        count: int = 100,
    ) -> list[Delivery[Trade]]:
        """Take over user trades pending in ``group`` for at least ``min_idle`` seconds.

        Example: ``for d in await cache.trades.reclaim_user_trades("positions", "w2", 30): ...``
        """
        slots = await self._user_resolver(account)()
        streams = [key for keys in slots for key in keys]
        return await self._user.reclaim(streams, group, consumer, min_idle, count=count)

    @instrumented("trades.pending_user_trades")
    @redis_errors
    async def pending_user_trades(self, group: str, account: str | None = None) -> int:
        """User trades delivered to ``group`` and not acknowledged yet.

        Example: ``await cache.trades.pending_user_trades("positions", "main")``
        """
        slots = await self._user_resolver(account)()
        return await self._user.pending([key for keys in slots for key in keys], group)

    @instrumented("trades.recent_user_trades")
    @redis_errors
    async def recent_user_trades(self, account: str, n: int = 100) -> list[Trade]:
        """The last ``n`` trades of ``account``, oldest first; consumes nothing.

        Example: ``fills = await cache.trades.recent_user_trades("main", 20)``
        """
        entries = await self.client.xrevrange(self.keys.user_trades(account), count=_check_n(n))
        return self._decode(entries)
