"""Batched ticker writes for high-rate feeds: ``cache.tickers.writer(...)``.

A :class:`TickerWriter` queues tickers and writes them in the background, many
per round trip, through the same path as :meth:`TickCache.set_many
<tradecache.stores.tickers.TickCache.set_many>` (``ticker_set.lua`` in one
pipeline), so watchers still get every written ticker pushed, with its
sequence number::

    async with cache.tickers.writer(flush_interval_ms=50, max_batch=500) as w:
        async for ticker in feed():               # thousands of updates per second
            await w.set(ticker, exchange="binance")
    # leaving the block flushed what was pending

* **Coalescing.** Until it is written, a queued ticker is replaced by a newer
  one of the same (exchange, symbol): the latest wins, the older one is never
  written (nor published), and ``stats().coalesced`` counts it.
* **When it writes.** ``flush_interval_ms`` after the first pending ticker,
  or as soon as ``max_batch`` distinct symbols are pending, or on
  :meth:`TickerWriter.flush` / :meth:`TickerWriter.close`. One flush at a time,
  in order: a symbol's tickers reach Redis in the order they were set.
* **Backpressure.** At most ``max_batch`` tickers are pending and at most one
  flush (another ``max_batch``) is in flight: a :meth:`TickerWriter.set` of a
  new symbol waits while both are full, so memory stays bounded when Redis is
  slower than the feed.
* **Validation** happens in :meth:`TickerWriter.set`: bad input raises
  :class:`~tradecache.errors.ValidationError` naming the field, and nothing is
  queued.
* **Failures are reported, never swallowed.** When a background flush fails
  (Redis unreachable: :class:`~tradecache.errors.ConnectionLost`), its
  tickers are not retried (newer ones follow in a live feed); the next
  ``set``, ``flush`` or ``close`` raises that error (once), with a note saying
  how many tickers it did not write, and ``stats().dropped`` counts them. The
  writer keeps working afterwards.
* **Metrics.** Each flush is timed as ``tickers.writer.flush`` in
  ``cache.stats()``; :meth:`TickerWriter.stats` gives the counters.

Closing the cache closes (and so flushes) the writers still open; a final
flush that fails there is logged, not raised. Close a writer yourself
(``async with`` does) to see that error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from .._tasks import cancel_and_wait
from ..errors import TradecacheError, ValidationError
from ..models import Ticker

if TYPE_CHECKING:
    from .tickers import TickCache, _Exchange

__all__ = ["TickerWriter", "WriterStats"]

FLUSH_METRIC: Final = "tickers.writer.flush"


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters of one :class:`TickerWriter` (a snapshot).

    ``queued``: tickers accepted by ``set``; ``coalesced``: queued tickers
    replaced by a newer one of their symbol before they were written;
    ``flushes``/``written``: successful flushes and the tickers they wrote;
    ``failures``/``dropped``: failed flushes and their tickers; ``largest_flush``:
    the most tickers one flush wrote; ``pending``: queued, not written yet;
    ``waiting``: ``set`` calls held back by backpressure right now.
    """

    queued: int
    coalesced: int
    flushes: int
    written: int
    failures: int
    dropped: int
    largest_flush: int
    pending: int
    waiting: int


def _positive(value: object, field: str, kind: type[int] | type[float]) -> None:
    if isinstance(value, bool) or not isinstance(value, kind | int) or not value > 0:
        raise ValidationError(field, f"must be a {kind.__name__} > 0, got {value!r}")


class TickerWriter:
    """Coalescing, batching ticker writer; build it with ``cache.tickers.writer(...)``.

    Example::

        writer = cache.tickers.writer(flush_interval_ms=20, max_batch=1000)
        try:
            await writer.set(ccxt_ticker, exchange="binance")
        finally:
            await writer.close()
    """

    def __init__(self, store: TickCache, flush_interval_ms: float, max_batch: int) -> None:
        _positive(flush_interval_ms, "flush_interval_ms", float)
        _positive(max_batch, "max_batch", int)
        self._store = store
        self._interval = flush_interval_ms / 1000
        self._max_batch = max_batch
        # exchange name -> (exchange, {symbol: encoded ticker}); _size counts the symbols
        self._pending: dict[str, tuple[_Exchange, dict[str, bytes]]] = {}
        self._size = 0
        self._lock = asyncio.Lock()  # one flush at a time, so writes stay in order
        self._wakeup = asyncio.Event()  # something is pending
        self._full = asyncio.Event()  # max_batch symbols are pending: flush now
        self._flushed = asyncio.Event()  # set, then replaced, after every flush
        self._failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._queued = self._coalesced = self._flushes = self._written = 0
        self._failures = self._dropped = self._largest = self._waiting = 0

    def __repr__(self) -> str:
        return (
            f"<TickerWriter flush_interval_ms={self._interval * 1000:g} "
            f"max_batch={self._max_batch} pending={self._size}>"
        )

    async def __aenter__(self) -> TickerWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check(self) -> None:
        """Raise a background flush's failure (once), or the closed state."""
        failure = self._failure
        if failure is not None:
            self._failure = None
            raise failure
        if self._closed:
            raise TradecacheError("the ticker writer is closed")

    async def set(self, ticker: Ticker | Mapping[str, Any], exchange: str | None = None) -> Ticker:
        """Queue ``ticker`` to be stored and published; return it as it will be stored.

        Takes what :meth:`TickCache.set <tradecache.stores.tickers.TickCache.set>`
        takes and validates it the same way, now (``ValidationError``, nothing
        queued). Replaces a pending ticker of the same symbol. Waits while
        ``max_batch`` other symbols are pending and a flush is in flight.
        Raises the error of a failed background flush (``ConnectionLost``),
        once, without queuing this ticker.

        Example::

            async with cache.tickers.writer(flush_interval_ms=50, max_batch=500) as w:
                await w.set(await ex.watch_ticker("BTC/USDT"), exchange="binance")
        """
        self._check()
        stored, ex, data = self._store._encoded(ticker, exchange)
        symbol = stored.symbol
        group = self._pending.get(ex.name)
        while (group is None or symbol not in group[1]) and self._size >= self._max_batch:
            self._full.set()
            flushed = self._flushed
            self._waiting += 1
            try:
                await flushed.wait()
            finally:
                self._waiting -= 1
            self._check()
            group = self._pending.get(ex.name)
        if group is None:
            group = self._pending[ex.name] = (ex, {})
        symbols = group[1]
        self._queued += 1
        if symbol in symbols:
            self._coalesced += 1
        else:
            self._size += 1
        symbols[symbol] = data
        if self._size >= self._max_batch:
            self._full.set()
        self._wakeup.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tradecache tickers.writer")
        return stored

    async def flush(self) -> int:
        """Write every pending ticker now, in one pipeline; return how many were written.

        Waits for a background flush in flight first. Raises the error of a
        failed background flush (once), or this flush's own error (its tickers
        are counted in ``stats().dropped``).

        Example::

            await w.set(ticker, exchange="binance")
            await w.flush()   # stored and published when this returns
        """
        async with self._lock:
            self._check()
            return await self._write()

    async def close(self) -> None:
        """Stop the background flushes and write what is pending; idempotent.

        Raises the error of an earlier failed background flush not reported
        yet, else that of the final flush. A closed writer's ``set`` raises
        ``TradecacheError``.

        Example: ``await writer.close()`` (``async with`` calls it)
        """
        if self._closed:
            return
        self._closed = True
        self._store._writers.discard(self)
        async with self._lock:
            # Holding the lock: the task is idle or waiting for it, never mid-write.
            await cancel_and_wait(self._task)
            failure, self._failure = self._failure, None
            try:
                await self._write()
            except Exception as exc:
                failure = failure or exc  # the earlier, unreported failure comes first
            finally:
                self._wake_waiters()  # held-back set() calls see the writer closed
        if failure is not None:
            raise failure

    def stats(self) -> WriterStats:
        """A snapshot of this writer's counters.

        Example::

            s = w.stats()
            print(f"{s.coalesced} coalesced, {s.written / max(s.flushes, 1):.0f} per flush")
        """
        return WriterStats(
            queued=self._queued,
            coalesced=self._coalesced,
            flushes=self._flushes,
            written=self._written,
            failures=self._failures,
            dropped=self._dropped,
            largest_flush=self._largest,
            pending=self._size,
            waiting=self._waiting,
        )

    async def _run(self) -> None:
        """Flush ``flush_interval_ms`` after the first pending ticker, or when full."""
        while True:
            if not self._size:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._size < self._max_batch:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._full.wait()
            async with self._lock:
                try:
                    await self._write()
                except Exception as exc:  # reported by the next set/flush/close
                    self._failure = exc

    def _wake_waiters(self) -> None:
        flushed, self._flushed = self._flushed, asyncio.Event()
        flushed.set()

    async def _write(self) -> int:
        """Write the pending tickers (the caller holds the lock); return how many."""
        batch, size = self._pending, self._size
        if not size:
            return 0
        self._pending, self._size = {}, 0
        self._full.clear()
        store = self._store
        groups = [
            (ex, [part for pair in symbols.items() for part in pair])
            for ex, symbols in batch.values()
        ]
        started = time.perf_counter()
        error = True
        try:
            await store._write_pairs(groups)
            error = False
        except Exception as exc:
            self._failures += 1
            self._dropped += size
            exc.add_note(f"tradecache ticker writer: {size} tickers of a flush may not be written")
            raise
        finally:
            store.metrics.observe(FLUSH_METRIC, time.perf_counter() - started, error=error)
            self._wake_waiters()
        self._flushes += 1
        self._written += size
        self._largest = max(self._largest, size)
        return size
