"""Latest tickers per exchange: stored and published in one round trip, watched by push.

``cache.tickers`` is a :class:`TickCache`::

    await cache.tickers.set(ccxt_ticker, exchange="binance")     # store + publish
    await cache.tickers.set_many(await ex.watch_tickers(), exchange="binance")
    ticker = await cache.tickers.get("binance", "BTC/USDT")      # Ticker | None
    fresh = await cache.tickers.get("binance", "BTC/USDT", max_age=5)
    price = await cache.tickers.price("BTC/USDT", exchanges=["binance", "okx"])
    async for ticker in cache.tickers.watch("binance", ["BTC/USDT"]):
        ...
    update = await cache.tickers.next("binance", "BTC/USDT", timeout=5)

Layout (see ``keys.py``): one hash per exchange, field = symbol. The value is
the JSON envelope the update was published in (``{"v":1,"type":"ticker",
"topic":<exchange>,"seq":N,"time":<server ms>,"source":...,"payload":<ticker>}``),
so storing and publishing are one HSET and one PUBLISH of the same bytes inside
one Lua script, and a reader always knows which sequence number the stored
value carries. Tickers are JSON whatever the ``codec`` setting: the envelope is
JSON, and one encoding serves both the store and the channel.

Staleness: every stored ticker carries the exchange's ``timestamp`` and its
``received`` time (stamped by :meth:`TickCache.set` when absent).
``get(..., max_age=s)`` and ``get_all(..., max_age=s)`` treat a ticker older
than ``s`` seconds (by ``received``) as a miss and return ``None`` / leave it
out: stale data is not an error and never raised, but it is never mistaken for
fresh data either. ``max_age=None`` (the default) returns what is stored;
:meth:`TickCache.is_stale` applies the ``stale_after`` setting to a ticker.

Validation: a ticker with a NaN or infinite number, a negative price, a symbol
that is not key-safe, or a bid above its ask by more than the
``ticker_cross_tolerance`` setting raises
:class:`~tradecache.errors.ValidationError` naming the field, and nothing is
written (``set_many`` validates every ticker before it writes any).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Final

import msgspec

from .._tasks import cancel_and_wait
from ..context import Context
from ..coordination.events import default_source
from ..coordination.subscription import Event, Subscription, publish_command, use_sharded
from ..envelope import Envelope, decode_envelope
from ..errors import (
    TradecacheError,
    ValidationError,
    WaitTimeout,
    redis_errors,
    translate,
    translate_redis_errors,
)
from ..keys import validate_exchange, validate_symbol
from ..local_cache import MISS
from ..metrics import instrumented
from ..models import Ticker, convert, dec_hook, enc_hook, translate_msgspec_error
from ..scripts import Script, ScriptBatch
from .ticker_writer import TickerWriter

__all__ = ["TickCache"]

_SET: Final = Script("ticker_set", include=("envelope",))
_DELETE_EXCHANGE: Final = Script("ticker_delete_exchange")
_POSITION: Final = Script("seq_position")

logger = logging.getLogger(__name__)

# Tickers per script call in set_many: bounds how long one script holds the server
# (about 5 µs per ticker) while keeping the per-call overhead negligible.
BATCH_SIZE: Final = 200
# Validated exchange names remembered per store; cleared when full (a safety valve for
# callers that pass ever-new strings, not a limit on the number of exchanges).
_MAX_REMEMBERED: Final = 4096

_encode: Final = msgspec.json.Encoder(enc_hook=enc_hook).encode


class _Stored(msgspec.Struct, frozen=True, gc=False):
    """The stored form of a ticker: the envelope it was published in (other keys ignored)."""

    seq: int
    payload: Ticker


_decode_stored: Final = msgspec.json.Decoder(_Stored, dec_hook=dec_hook).decode
_decode_ticker: Final = msgspec.json.Decoder(Ticker, dec_hook=dec_hook).decode


def _corrupt(exc: msgspec.ValidationError, model: Any, what: str) -> ValidationError:
    """A stored or published ticker that does not validate, named ``ticker.<field>``."""
    error = translate_msgspec_error(exc, model)
    return ValidationError(what if error.field == "$" else f"{what}.{error.field}", error.reason)


def _decode(data: bytes) -> _Stored:
    try:
        return _decode_stored(data)
    except msgspec.ValidationError as exc:
        raise _corrupt(exc, None, "ticker") from None
    except msgspec.DecodeError as exc:
        raise ValidationError("ticker", f"malformed stored ticker: {exc}") from None


def _ticker_of(data: bytes | None) -> Ticker | None:
    """The ticker in a stored envelope (HGET's reply), or None."""
    return None if data is None else _decode(data).payload


def _tickers_of(stored: dict[bytes, bytes]) -> dict[str, Ticker]:
    """Every ticker of an exchange hash (HGETALL's reply), by symbol."""
    return {symbol.decode(): _decode(data).payload for symbol, data in stored.items()}


def _seconds(value: float | timedelta, field: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        raise ValidationError(field, f"must be a number of seconds >= 0, got {value!r}")
    return float(seconds)


class _Exchange:
    """Validated name and keys of one exchange; ``indexed`` once this store added it."""

    __slots__ = ("channel", "hash", "indexed", "name", "seq")

    def __init__(self, ctx: Context, name: str) -> None:
        self.name = name
        self.hash = ctx.keys.ticker_hash(name)
        self.seq = ctx.keys.ticker_seq(name)
        self.channel = ctx.keys.ticker_channel(name)
        self.indexed = False


class TickCache:
    """Latest ticker per (exchange, symbol), with push updates.

    Build it from a :class:`~tradecache.context.Context` (the facade does:
    ``cache.tickers``). Every method that touches Redis raises
    :class:`~tradecache.errors.ConnectionLost` when Redis is unreachable.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.metrics = ctx.metrics
        self._client: Any = ctx.client  # redis-py types replies as bytes | str | ...
        self._index = ctx.keys.ticker_exchanges()
        # Sharded pub/sub keeps a channel's traffic on the shard that owns its slot.
        self.sharded = use_sharded(ctx)
        self._publish = publish_command(ctx)
        self._source = ctx.settings.client_name or default_source()
        self._tolerance = ctx.settings.ticker_cross_tolerance
        self._stale_after = ctx.settings.stale_after
        self._exchanges: dict[object, _Exchange] = {}
        self._hubs: dict[str, _Hub] = {}
        self._writers: set[TickerWriter] = set()  # open ones: close() flushes them
        self._local = ctx.local_cache  # reads served from memory (local_cache.py), or None

    def __repr__(self) -> str:
        return f"<TickCache namespace={self.ctx.keys.namespace!r}>"

    # --- validation ------------------------------------------------------------------------

    def _exchange(self, value: object) -> _Exchange:
        try:
            return self._exchanges[value]
        except (KeyError, TypeError):
            pass
        name = validate_exchange(value)
        if len(self._exchanges) >= _MAX_REMEMBERED:
            self._exchanges.clear()
        known = self._exchanges.get(name)
        if known is None:
            known = self._exchanges[name] = _Exchange(self.ctx, name)
        self._exchanges[value] = known
        return known

    def _ticker(self, data: object, exchange: str | None) -> tuple[Ticker, _Exchange]:
        """Validate one input into the Ticker to store and its exchange."""
        if isinstance(data, Ticker):
            given = data.exchange
        elif isinstance(data, Mapping):
            given = data.get("exchange")
        else:
            raise ValidationError(
                "ticker", f"expected a Ticker or a ccxt ticker dict, got {type(data).__name__}"
            )
        if exchange is None and given is None:
            raise ValidationError("exchange", "required: pass exchange= or a ticker with one")
        ex = self._exchange(exchange if exchange is not None else given)
        if given is not None and given != ex.name:
            if exchange is not None and self._exchange(given) is not ex:
                raise ValidationError("exchange", f"conflicting values {given!r} and {exchange!r}")
            data = (
                data.replace(exchange=ex.name)
                if isinstance(data, Ticker)
                else {**data, "exchange": ex.name}
            )
        ticker = convert(data, Ticker, exchange=ex.name)
        validate_symbol(ticker.symbol)
        bid, ask = ticker.bid, ticker.ask
        if bid is not None and ask is not None and bid - ask > ask * self._tolerance:
            raise ValidationError(
                "bid",
                f"{bid} is above ask {ask} by more than the tolerance "
                f"({self._tolerance:g} of the ask)",
            )
        return ticker, ex

    # --- writes ----------------------------------------------------------------------------

    @instrumented("tickers.set")
    async def set(self, ticker: Ticker | Mapping[str, Any], exchange: str | None = None) -> Ticker:
        """Store ``ticker`` and publish it to watchers, atomically, in one round trip.

        ``ticker`` is a :class:`~tradecache.models.Ticker` or a ccxt ticker dict
        (as ``watch_ticker`` returns it). ``exchange`` is required unless the
        ticker names one. Returns the ticker as stored (exchange lower-cased,
        ``received`` stamped when absent). Raises ``ValidationError`` (nothing
        written) for bad data.

        Example::

            await cache.tickers.set(await ex.watch_ticker("BTC/USDT"), exchange="binance")
        """
        stored, ex = self._ticker(ticker, exchange)
        args = (ex.channel, self._publish, ex.name, self._source, stored.symbol, _encode(stored))
        if ex.indexed:
            await _SET(self._client, (ex.hash, ex.seq), args)
        else:
            await self._write_indexing([(ex, args)])
        return stored

    @instrumented("tickers.set_many")
    async def set_many(
        self, tickers: Iterable[Ticker | Mapping[str, Any]], exchange: str | None = None
    ) -> int:
        """Store and publish many tickers in one pipelined round trip; return how many.

        Accepts a list of tickers or a ``{symbol: ticker}`` dict as
        ``watch_tickers`` returns it, for one or several exchanges. Every ticker
        is validated before any is written. Each exchange's tickers are written
        by scripts of up to :data:`BATCH_SIZE` tickers, all in one pipeline.

        Example::

            n = await cache.tickers.set_many(await ex.watch_tickers(), exchange="binance")
        """
        items = tickers.values() if isinstance(tickers, Mapping) else tickers
        if isinstance(items, str | bytes) or not isinstance(items, Iterable):
            raise ValidationError(
                "tickers", f"expected an iterable of tickers, got {type(tickers).__name__}"
            )
        grouped: dict[str, tuple[_Exchange, list[bytes | str]]] = {}
        count = 0
        for index, item in enumerate(items):
            try:
                stored, ex = self._ticker(item, exchange)
            except ValidationError as exc:
                field = "" if exc.field == "ticker" else f".{exc.field}"
                raise ValidationError(f"tickers[{index}]{field}", exc.reason) from None
            group = grouped.get(ex.name)
            if group is None:
                group = grouped[ex.name] = (ex, [])
            group[1].extend((stored.symbol, _encode(stored)))
            count += 1
        if count:
            await self._write_pairs(grouped.values())
        return count

    def writer(self, flush_interval_ms: float = 50, max_batch: int = 1000) -> TickerWriter:
        """A :class:`~tradecache.stores.ticker_writer.TickerWriter`: batched, coalescing writes.

        For feeds faster than one round trip per ticker: ``set`` queues (the
        latest ticker per symbol wins) and a background task writes the queue
        every ``flush_interval_ms``, or as soon as ``max_batch`` symbols are
        pending, through the :meth:`set_many` path (watchers get every written
        ticker pushed). Bad ``flush_interval_ms``/``max_batch`` raise ``ValidationError``.

        Example::

            async with cache.tickers.writer(flush_interval_ms=50, max_batch=500) as w:
                async for ticker in feed():
                    await w.set(ticker, exchange="binance")
        """
        writer = TickerWriter(self, flush_interval_ms, max_batch)
        self._writers.add(writer)
        return writer

    def _encoded(self, data: object, exchange: str | None) -> tuple[Ticker, _Exchange, bytes]:
        """Validate one input (as :meth:`set` does) and encode it as it is stored."""
        stored, ex = self._ticker(data, exchange)
        return stored, ex, _encode(stored)

    async def _write_pairs(self, groups: Iterable[tuple[_Exchange, Sequence[bytes | str]]]) -> None:
        """Write each exchange's flat ``symbol, encoded, ...`` pairs in one pipeline,
        by scripts of up to :data:`BATCH_SIZE` tickers (``set_many``, the writer)."""
        calls = []
        for ex, pairs in groups:
            head = (ex.channel, self._publish, ex.name, self._source)
            for start in range(0, len(pairs), 2 * BATCH_SIZE):
                calls.append((ex, (*head, *pairs[start : start + 2 * BATCH_SIZE])))
        await self._write_indexing(calls)

    @redis_errors
    async def _write_indexing(self, calls: Sequence[tuple[_Exchange, Sequence[Any]]]) -> None:
        """Run ticker scripts in one pipeline, adding exchanges not yet indexed here."""
        batch = ScriptBatch(self._client)
        new = {ex.name: ex for ex, _ in calls if not ex.indexed}
        for ex, args in calls:
            batch.call(_SET, (ex.hash, ex.seq), args)
        if new:
            batch.pipe.sadd(self._index, *new)
        await batch.execute()
        # The index only grows (exchanges() hides exchanges without tickers), so
        # remembering what this store added is safe: nobody removes it.
        for ex in new.values():
            ex.indexed = True

    @instrumented("tickers.delete")
    @redis_errors
    async def delete(self, exchange: str, symbol: str) -> bool:
        """Delete one ticker; True when there was one.

        Example::

            await cache.tickers.delete("binance", "LUNA/USDT")
        """
        ex = self._exchange(exchange)
        return bool(await self._client.hdel(ex.hash, validate_symbol(symbol)))

    def queue_delete(self, pipe: Any, exchange: str, symbol: str) -> None:
        """Queue the deletion of one ticker on ``pipe`` (a redis-py pipeline).

        For stores that delete a ticker together with their own keys in one round trip
        (deleting a symbol also removes its ticker)::

            pipe = client.pipeline(transaction=False)
            pipe.delete(symbol_key)
            cache.tickers.queue_delete(pipe, "binance", "LUNA/USDT")
            await pipe.execute()
        """
        pipe.hdel(self._exchange(exchange).hash, validate_symbol(symbol))

    @instrumented("tickers.delete_exchange")
    async def delete_exchange(self, exchange: str) -> int:
        """Delete every ticker of ``exchange``; return how many there were.

        Example::

            removed = await cache.tickers.delete_exchange("ftx")
        """
        ex = self._exchange(exchange)
        return int(await _DELETE_EXCHANGE(self._client, (ex.hash,)))

    # --- reads -----------------------------------------------------------------------------

    @instrumented("tickers.get")
    @redis_errors
    async def get(
        self, exchange: str, symbol: str, max_age: float | timedelta | None = None
    ) -> Ticker | None:
        """The latest ticker of ``symbol`` on ``exchange``, or None.

        With ``max_age`` (seconds or a timedelta), a ticker received longer ago
        than that is treated as a miss: None. Without it the stored ticker is
        returned however old (check :meth:`is_stale`).

        Example::

            ticker = await cache.tickers.get("binance", "BTC/USDT", max_age=5)
            if ticker is None:
                ...  # no ticker, or none in the last 5 s: do not trade on it
        """
        ex = self._exchange(exchange)
        limit = None if max_age is None else _seconds(max_age, "max_age")
        symbol = validate_symbol(symbol)
        local = self._local
        if local is None:
            ticker = _ticker_of(await self._client.hget(ex.hash, symbol))
        else:
            ticker = local.get(ex.hash, symbol)
            if ticker is MISS:
                read = self._client.hget(ex.hash, symbol)
                ticker = await local.fill(ex.hash, symbol, read, _ticker_of)
        if ticker is None:
            return None
        if limit is not None and ticker.is_stale(limit):
            return None
        return ticker

    @instrumented("tickers.get_all")
    @redis_errors
    async def get_all(
        self, exchange: str, max_age: float | timedelta | None = None
    ) -> dict[str, Ticker]:
        """Every ticker of ``exchange`` by symbol (one HGETALL); ``{}`` when there are none.

        ``max_age`` leaves out tickers received longer ago than that, as in :meth:`get`.

        Example::

            for symbol, ticker in (await cache.tickers.get_all("okx")).items():
                print(symbol, ticker.price)
        """
        ex = self._exchange(exchange)
        limit = None if max_age is None else _seconds(max_age, "max_age")
        local = self._local
        if local is None:
            tickers = _tickers_of(await self._client.hgetall(ex.hash))
        else:
            tickers = local.get(ex.hash)  # the whole hash: field None
            if tickers is MISS:
                tickers = await local.fill(
                    ex.hash, None, self._client.hgetall(ex.hash), _tickers_of
                )
            tickers = dict(tickers)  # the cached dict is shared: never hand it out
        if limit is None:
            return tickers
        return {s: ticker for s, ticker in tickers.items() if not ticker.is_stale(limit)}

    @instrumented("tickers.exchanges")
    @redis_errors
    async def exchanges(self) -> list[str]:
        """The exchanges that have tickers, sorted; read from an index, never a fixed list.

        Example::

            for exchange in await cache.tickers.exchanges():
                print(exchange, len(await cache.tickers.get_all(exchange)))
        """
        names = sorted(name.decode() for name in await self._client.smembers(self._index))
        if not names:
            return []
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.exists(self._exchange(name).hash)
        found = await pipe.execute()
        return [name for name, exists in zip(names, found, strict=True) if exists]

    @instrumented("tickers.price")
    @redis_errors
    async def price(
        self,
        symbol: str,
        exchanges: Sequence[str] | None = None,
        max_age: float | timedelta | None = None,
    ) -> float | None:
        """The price of ``symbol`` from the first exchange, in preference order, that has one.

        ``exchanges`` is the preference order; by default every exchange with
        tickers, alphabetically. A ticker's price is its ``last`` (else
        ``close``), else the mid of bid and ask. With ``max_age``, stale tickers
        are skipped. None when no exchange has a price.

        Example::

            price = await cache.tickers.price("BTC/USDT", exchanges=["binance", "okx"])
        """
        validate_symbol(symbol)
        limit = None if max_age is None else _seconds(max_age, "max_age")
        if exchanges is None:
            raw = await self._client.smembers(self._index)
            order = [self._exchange(name.decode()) for name in sorted(raw)]
        elif isinstance(exchanges, str):
            raise ValidationError("exchanges", "expected a list of exchange ids, got a str")
        else:
            order = [self._exchange(name) for name in exchanges]
        if not order:
            return None
        pipe = self._client.pipeline(transaction=False)
        for ex in order:
            pipe.hget(ex.hash, symbol)
        for data in await pipe.execute():
            if data is None:
                continue
            ticker = _decode(data).payload
            if limit is not None and ticker.is_stale(limit):
                continue
            price = ticker.price
            if price is not None:
                return price
        return None

    def is_stale(self, ticker: Ticker, max_age: float | timedelta | None = None) -> bool:
        """True when ``ticker`` is older than ``max_age`` (default: the ``stale_after`` setting).

        Example::

            ticker = await cache.tickers.get("binance", "BTC/USDT")
            if ticker is None or cache.tickers.is_stale(ticker):
                ...
        """
        limit = self._stale_after if max_age is None else _seconds(max_age, "max_age")
        return ticker.is_stale(limit)

    # --- push: watch and next --------------------------------------------------------------

    async def watch(
        self, exchange: str, symbols: Iterable[str] | None = None, *, initial: bool = False
    ) -> AsyncIterator[Ticker]:
        """Yield the tickers of ``exchange`` (only ``symbols`` if given) as they are set.

        Fed by push. The subscription is made when iteration starts and
        survives reconnects: after a lost connection it resubscribes and
        re-reads the tickers updated meanwhile (by sequence number), so a
        watcher always ends up with every symbol's newest ticker. A watcher
        that falls behind skips intermediate ticks of a symbol, never its newest
        one. With ``initial=True`` the stored tickers come first (read after
        subscribing, so nothing falls in between). All watchers and waiters of
        one exchange in a store share one subscription connection.

        Example::

            async for ticker in cache.tickers.watch("binance", ["BTC/USDT", "ETH/USDT"]):
                print(ticker.symbol, ticker.price)
        """
        ex = self._exchange(exchange)
        wanted = None if symbols is None else _symbols(symbols)
        mailbox = _Mailbox(wanted)
        hub = self._hub(ex)
        hub.mailboxes.add(mailbox)
        try:
            await hub.start()
            if initial:
                with translate_redis_errors():
                    stored = await hub.read(wanted)
                for envelope in stored:
                    mailbox.put(envelope.seq, _payload(envelope))
            while True:
                yield await mailbox.get()
        finally:
            hub.mailboxes.discard(mailbox)
            await hub.release()

    @instrumented("tickers.next")
    async def next(
        self,
        exchange: str,
        symbol: str,
        timeout: float | timedelta | None,  # noqa: ASYNC109 - the contract's name
    ) -> Ticker:
        """Wait for the next update of ``symbol`` after this call; never the stored value.

        The waiter is subscribed before the exchange's sequence is read (one
        round trip), so an update set after the call cannot slip through, and
        one stored before it is never returned, even if it reaches this
        process only later. ``timeout`` (seconds; ``None``
        waits forever) covers the whole call: at the timeout it raises
        :class:`~tradecache.errors.WaitTimeout` (a ``TimeoutError``).

        Example::

            try:
                ticker = await cache.tickers.next("binance", "BTC/USDT", timeout=5)
            except TimeoutError:
                ...  # no update in 5 s: the feed may be down
        """
        ex = self._exchange(exchange)
        symbol = validate_symbol(symbol)
        limit = None if timeout is None else _seconds(timeout, "timeout")
        hub = self._hub(ex)
        waiter = hub.wait_for(symbol)
        try:
            async with asyncio.timeout(limit):
                await hub.start()
                # The exchange's sequence now: an update stored before this call is never
                # "the next", even when it reaches this process's reader only later.
                await hub.settle(waiter)
                return await waiter.future
        except TimeoutError:
            raise WaitTimeout(f"no ticker for {symbol} on {ex.name} within {limit}s") from None
        finally:
            hub.forget(waiter)
            await hub.release()

    def subscribers(self, exchange: str) -> int:
        """How many ``watch`` iterators and ``next`` calls of this store are subscribed.

        Counts only listeners whose subscription the server acknowledged, so an
        update set after this count included a listener reaches it.

        Example::

            await wait_until(lambda: cache.tickers.subscribers("binance") == 10)
        """
        hub = self._hubs.get(self._exchange(exchange).name)
        return 0 if hub is None or not hub.started else hub.listeners

    async def close(self) -> None:
        """Flush and close the open writers, then close every subscription of this store.

        Watchers and waiters stop. A writer whose final flush fails (Redis
        unreachable) is logged as a warning with the number of tickers it
        could not write; close goes on, so the rest of the shutdown still runs.

        Example: ``await cache.tickers.close()``
        """
        writers, self._writers = list(self._writers), set()
        flushes = await asyncio.gather(*(w.close() for w in writers), return_exceptions=True)
        for failure in flushes:
            if isinstance(failure, Exception):
                notes = "; ".join(getattr(failure, "__notes__", ()))
                logger.warning(
                    "tickers: an open writer's final flush failed: %s (%s)",
                    failure,
                    notes,
                    extra={"error": type(failure).__name__},
                )
        hubs, self._hubs = list(self._hubs.values()), {}
        for hub in hubs:
            await hub.close(TradecacheError("the ticker store was closed"))

    def _hub(self, ex: _Exchange) -> _Hub:
        hub = self._hubs.get(ex.name)
        if hub is None:
            hub = self._hubs[ex.name] = _Hub(self, ex)
        hub.users += 1
        return hub


def _symbols(symbols: Iterable[str]) -> frozenset[str]:
    if isinstance(symbols, str) or not isinstance(symbols, Iterable):
        raise ValidationError("symbols", "expected a list of symbols")
    wanted = frozenset(validate_symbol(symbol, "symbols") for symbol in symbols)
    if not wanted:
        raise ValidationError("symbols", "empty: pass None to watch every symbol")
    return wanted


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a shared future's exception as seen: its waiters may all have given up."""
    with contextlib.suppress(asyncio.CancelledError):
        future.exception()


def _payload(envelope: Envelope) -> Ticker:
    try:
        return _decode_ticker(envelope.payload)
    except msgspec.ValidationError as exc:
        raise _corrupt(exc, None, "ticker") from None


class _Mailbox:
    """A watcher's queue: the newest pending ticker per symbol, in arrival order."""

    __slots__ = ("failure", "items", "symbols", "wakeup")

    def __init__(self, symbols: frozenset[str] | None) -> None:
        self.symbols = symbols
        self.items: dict[str, tuple[int, Ticker]] = {}
        self.wakeup = asyncio.Event()
        self.failure: BaseException | None = None

    def put(self, seq: int, ticker: Ticker) -> None:
        if self.symbols is not None and ticker.symbol not in self.symbols:
            return
        pending = self.items.get(ticker.symbol)
        if pending is None or pending[0] < seq:
            self.items[ticker.symbol] = (seq, ticker)
            self.wakeup.set()

    async def get(self) -> Ticker:
        while not self.items:
            if self.failure is not None:
                raise self.failure
            self.wakeup.clear()
            await self.wakeup.wait()
        symbol = next(iter(self.items))
        return self.items.pop(symbol)[1]

    def fail(self, exc: BaseException) -> None:
        self.failure = exc
        self.wakeup.set()


class _Waiter:
    """One ``next`` call: the first ticker of ``symbol`` with a sequence >= ``after``.

    Until :meth:`settle` learns the exchange's sequence at the call, updates are
    only collected: one set before the call may still be on its way to the reader.
    """

    __slots__ = ("after", "early", "future", "symbol")

    def __init__(self, symbol: str, after: int) -> None:
        self.symbol = symbol
        self.after = after
        self.early: list[tuple[int, Ticker]] | None = []
        self.future: asyncio.Future[Ticker] = asyncio.get_running_loop().create_future()

    def offer(self, seq: int, ticker: Ticker) -> bool:
        """Take ``ticker`` if it is the awaited one; True once the waiter is done."""
        if self.early is not None:
            self.early.append((seq, ticker))
            return False
        if seq < self.after:
            return False
        with contextlib.suppress(asyncio.InvalidStateError):  # timed out meanwhile
            self.future.set_result(ticker)
        return True

    def settle(self, current: int) -> None:
        """From now on only updates after sequence ``current`` count, collected ones too."""
        self.after = max(self.after, current + 1)
        early, self.early = self.early or [], None
        for seq, ticker in early:
            if self.offer(seq, ticker):
                return


class _Hub:
    """The one subscription to an exchange's ticker channel shared by a store's listeners.

    Sequence numbers count per exchange, so a reconnect or a jump is detected
    even for symbols this process never saw. On one, the backfill hook returns
    the stored envelopes (the newest ticker of each symbol) in the missing
    range; the intermediate ticks it cannot return are superseded, not lost.
    """

    def __init__(self, store: TickCache, ex: _Exchange) -> None:
        self.store = store
        self.ex = ex
        self.users = 0
        self.mailboxes: set[_Mailbox] = set()
        self.waiters: dict[str, set[_Waiter]] = {}
        self.started = False
        self.gaps = 0
        self.closed: BaseException | None = None
        self._starting: asyncio.Future[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._unsettled: list[_Waiter] = []
        self._settling: asyncio.Future[None] | None = None
        self.sub = Subscription(
            store.ctx,
            {ex.channel: ex.name},
            sharded=store.sharded,
            backfill=self._backfill,
            positions=self._positions,
            name=f"tickers:{ex.name}",
        )

    @property
    def listeners(self) -> int:
        settled = sum(w.early is None for waiting in self.waiters.values() for w in waiting)
        return len(self.mailboxes) + settled

    async def settle(self, waiter: _Waiter) -> None:
        """Tell ``waiter`` the exchange's sequence at its call.

        One read serves every waiter registered before it was sent (1000
        concurrent ``next`` calls cost a round trip or two, not 1000); a waiter
        registered while a read is on the wire needs the next one.
        """
        self._unsettled.append(waiter)
        while waiter.early is not None:
            if self._settling is None or self._settling.done():
                self._settling = asyncio.ensure_future(self._settle_batch())
                self._settling.add_done_callback(_retrieve)
            await asyncio.shield(self._settling)

    async def _settle_batch(self) -> None:
        batch, self._unsettled = self._unsettled, []
        current, _ = await _POSITION(self.store._client, (self.ex.seq,))
        for waiter in batch:
            waiter.settle(int(current))

    async def start(self) -> None:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
            self._starting.add_done_callback(_retrieve)
        try:
            # shield: one caller giving up (timeout, cancel) must not stop it for the others
            await asyncio.shield(self._starting)
        except asyncio.CancelledError:
            if self.closed is not None and self._starting.cancelled():
                raise self.closed from None  # close() stopped the start, not our caller
            raise

    async def _start(self) -> None:
        try:
            await self.sub.start()
        except BaseException:
            self._detach()
            raise
        self.started = True
        self._pump = asyncio.create_task(self._run(), name=f"tradecache tickers:{self.ex.name}")

    def wait_for(self, symbol: str) -> _Waiter:
        # Only sequence numbers the reader has not seen yet count as "after the call".
        waiter = _Waiter(symbol, (self.sub.cursor(self.ex.name) or 0) + 1)
        self.waiters.setdefault(symbol, set()).add(waiter)
        return waiter

    def forget(self, waiter: _Waiter) -> None:
        waiting = self.waiters.get(waiter.symbol)
        if waiting is not None:
            waiting.discard(waiter)
            if not waiting:
                del self.waiters[waiter.symbol]

    async def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self._detach()
            await self.close(None)

    def _detach(self) -> None:
        if self.store._hubs.get(self.ex.name) is self:
            del self.store._hubs[self.ex.name]

    async def close(self, failure: BaseException | None) -> None:
        self.closed = failure or TradecacheError(f"tickers:{self.ex.name}: closed")
        if failure is not None:
            self._fail(failure)
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        await cancel_and_wait(self._pump)
        await self.sub.close()

    async def _run(self) -> None:
        try:
            # The subscription ends only when closed, by close(), which cancels this first.
            async for item in self.sub:  # pragma: no branch
                if isinstance(item, Event):
                    self._dispatch(item.envelope)
                else:
                    self.gaps += 1  # superseded ticks: the newest one was delivered
        except Exception as exc:  # the subscription gave up: tell every listener
            self._fail(translate(exc))
        self._detach()

    def _dispatch(self, envelope: Envelope) -> None:
        try:
            ticker = _payload(envelope)
        except ValidationError as exc:
            logger.warning(
                "tickers:%s: bad ticker in seq %d: %s",
                self.ex.name,
                envelope.seq,
                exc,
                extra={"exchange": self.ex.name, "seq": envelope.seq},
            )
            return
        seq = envelope.seq
        for mailbox in self.mailboxes:
            mailbox.put(seq, ticker)
        waiting = self.waiters.get(ticker.symbol)
        if waiting:
            for waiter in [w for w in waiting if w.offer(seq, ticker)]:
                waiting.discard(waiter)

    def _fail(self, exc: BaseException) -> None:
        for mailbox in self.mailboxes:
            mailbox.fail(exc)
        for waiting in self.waiters.values():
            for waiter in waiting:
                with contextlib.suppress(asyncio.InvalidStateError):  # resolved already
                    waiter.future.set_exception(exc)

    # Subscription hooks: an outage (ConnectionLost is an OSError, like redis-py's own
    # errors) makes the subscription reconnect and call them again; anything else ends it.

    async def _positions(self, topics: Sequence[str]) -> dict[str, tuple[int, int]]:
        seq, time_ms = await _POSITION(self.store._client, (self.ex.seq,))
        return {self.ex.name: (int(seq), int(time_ms))}

    async def read(self, symbols: frozenset[str] | None) -> list[Envelope]:
        """The stored envelopes of ``symbols`` (every symbol when None)."""
        client = self.store._client
        if symbols is None:
            found = list((await client.hgetall(self.ex.hash)).values())
        else:
            found = await client.hmget(self.ex.hash, list(symbols))
        return [decode_envelope(data) for data in found if data is not None]

    async def _backfill(self, topic: str, first: int, last: int | None) -> list[Envelope]:
        # Rare (a reconnect, a lost message): one HGETALL serves every listener.
        envelopes = await self.read(None)
        # Newer envelopes than `last` also arrive live: returning them now would make
        # the live copies of the numbers in between look like duplicates.
        return [e for e in envelopes if first <= e.seq and (last is None or e.seq <= last)]
