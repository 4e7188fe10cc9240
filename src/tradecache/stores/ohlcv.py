"""Candle (OHLCV) series per exchange, symbol and timeframe, upserted by open time.

``cache.ohlcv`` is an :class:`OHLCVCache`::

    bars = await ex.watch_ohlcv("BTC/USDT", "1m")          # ccxt.pro's rolling window
    await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", bars)
    last_100 = await cache.ohlcv.latest("binance", "BTC/USDT", "1m", 100)   # ascending
    day = await cache.ohlcv.range("binance", "BTC/USDT", "1m", start, end)
    async for candle in cache.ohlcv.watch("binance", "BTC/USDT", "1m"):
        ...

A series is a sorted set scored by open time (epoch ms) whose members are the
candles' JSON arrays ``[ts, o, h, l, c, v]``. :meth:`OHLCVCache.upsert` runs one
Lua script: a candle with a stored open time replaces the stored one (re-sending
ccxt.pro's window, whose last bar keeps changing, never duplicates a bar), the
series is capped at the ``max_candles`` setting (default 10 000) keeping the
newest, and the candles that were added or changed are published in one
envelope (``type: "candles"``) to watchers. Candles are JSON whatever the
``codec`` setting, since the members are published as they are stored.

Timeframes are ccxt's strings (:data:`TIMEFRAMES`); anything else raises
:class:`~tradecache.errors.ValidationError`, as do bad candles (NaN, negative
values, high below open/close ...), naming the field, with nothing written.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import msgspec

from ..context import Context
from ..coordination.events import default_source
from ..coordination.subscription import Event, Subscription, publish_command, use_sharded
from ..envelope import Envelope
from ..errors import ValidationError, redis_errors, translate_redis_errors
from ..keys import validate_exchange, validate_symbol
from ..metrics import instrumented
from ..models import Candle, convert, dec_hook, enc_hook, to_ms, translate_msgspec_error
from ..scripts import Script

__all__ = ["TIMEFRAMES", "OHLCVCache"]

#: The timeframes a series may have (ccxt's unified strings; ``1M`` is a month).
TIMEFRAMES: Final = (
    "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h",
    "1d", "3d", "1w", "1M",
)  # fmt: skip
_TIMEFRAMES: Final = frozenset(TIMEFRAMES)

_UPSERT: Final = Script("ohlcv_upsert", include=("envelope",))
_SINCE: Final = Script("ohlcv_since")
_POSITION: Final = Script("seq_position")

logger = logging.getLogger(__name__)

_encode: Final = msgspec.json.Encoder(enc_hook=enc_hook).encode
_decode_candle: Final = msgspec.json.Decoder(Candle, dec_hook=dec_hook).decode
_decode_candles: Final = msgspec.json.Decoder(list[Candle], dec_hook=dec_hook).decode


def _corrupt(exc: msgspec.ValidationError, model: Any, what: str) -> ValidationError:
    """A stored or published candle that does not validate, named ``candle.<field>``."""
    error = translate_msgspec_error(exc, model)
    return ValidationError(what if error.field == "$" else f"{what}.{error.field}", error.reason)


def _decode(data: bytes) -> Candle:
    try:
        return _decode_candle(data)
    except msgspec.ValidationError as exc:
        raise _corrupt(exc, Candle, "candle") from None
    except msgspec.DecodeError as exc:
        raise ValidationError("candle", f"malformed stored candle: {exc}") from None


def validate_timeframe(value: object) -> str:
    """Return ``value`` if it is one of :data:`TIMEFRAMES`, else raise ``ValidationError``.

    >>> validate_timeframe("15m")
    '15m'
    """
    if not isinstance(value, str):
        raise ValidationError("timeframe", f"must be a str, not {type(value).__name__}")
    if value not in _TIMEFRAMES:
        raise ValidationError(
            "timeframe", f"{value!r} is not a timeframe (one of: {' '.join(TIMEFRAMES)})"
        )
    return value


def _epoch_ms(value: object, field: str) -> int:
    """A bound of :meth:`OHLCVCache.range`: epoch milliseconds or an aware datetime."""
    if isinstance(value, datetime):
        try:
            return to_ms(value)
        except ValidationError as exc:
            raise ValidationError(field, exc.reason) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(
            field, f"expected epoch milliseconds or a datetime, got {type(value).__name__}"
        )
    if value < 0:
        raise ValidationError(field, f"must be >= 0, got {value}")
    return value


class _Series:
    """Validated identity and keys of one candle series."""

    __slots__ = ("channel", "key", "seq", "topic")

    def __init__(self, ctx: Context, exchange: object, symbol: object, timeframe: object) -> None:
        name = validate_exchange(exchange)
        symbol = validate_symbol(symbol)
        timeframe = validate_timeframe(timeframe)
        self.key = ctx.keys.ohlcv(name, symbol, timeframe)
        self.seq = ctx.keys.ohlcv_seq(name, symbol, timeframe)
        self.channel = ctx.keys.ohlcv_channel(name, symbol, timeframe)
        self.topic = f"{name}:{symbol}:{timeframe}"


class OHLCVCache:
    """Candle series per (exchange, symbol, timeframe), capped at ``max_candles``.

    Build it from a :class:`~tradecache.context.Context` (the facade does:
    ``cache.ohlcv``). Every method that touches Redis raises
    :class:`~tradecache.errors.ConnectionLost` when Redis is unreachable.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.metrics = ctx.metrics
        self._client: Any = ctx.client  # redis-py types replies as bytes | str | ...
        self.max_candles = ctx.settings.max_candles
        self.sharded = use_sharded(ctx)
        self._publish = publish_command(ctx)
        self._source = ctx.settings.client_name or default_source()

    def __repr__(self) -> str:
        return f"<OHLCVCache namespace={self.ctx.keys.namespace!r}>"

    def _series(self, exchange: str, symbol: str, timeframe: str) -> _Series:
        return _Series(self.ctx, exchange, symbol, timeframe)

    @instrumented("ohlcv.upsert")
    @redis_errors
    async def upsert(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        candles: Iterable[Candle | Iterable[Any] | Mapping[str, Any]],
    ) -> int:
        """Insert or replace candles by open time, in one round trip; return how many changed.

        ``candles`` are :class:`~tradecache.models.Candle` objects or ccxt rows
        ``[ts, open, high, low, close, volume]`` in any order; a candle whose
        open time is stored replaces it, so re-sending ccxt.pro's rolling window
        never duplicates a bar. Within one call the last candle of a timestamp
        wins. Returns the number of candles added or changed (identical re-sent
        bars and bars older than the capped series count 0). Every candle is
        validated before anything is written.

        Example::

            bars = await ex.watch_ohlcv("BTC/USDT", "1m")
            await cache.ohlcv.upsert("binance", "BTC/USDT", "1m", bars)
        """
        series = self._series(exchange, symbol, timeframe)
        if isinstance(candles, str | bytes | Mapping) or not isinstance(candles, Iterable):
            raise ValidationError(
                "candles", f"expected a list of candles, got {type(candles).__name__}"
            )
        by_time: dict[int, bytes] = {}
        for index, row in enumerate(candles):
            if isinstance(row, str | bytes):
                raise ValidationError(f"candles[{index}]", "expected a candle, got a string")
            try:
                candle = convert(row, Candle)
            except ValidationError as exc:
                field = f"candles[{index}]" + ("" if exc.field == "$" else f".{exc.field}")
                raise ValidationError(field, exc.reason) from None
            by_time[to_ms(candle.timestamp)] = _encode(candle)
        if not by_time:
            return 0
        # Only the newest max_candles of the call can survive the cap: send no more.
        times = sorted(by_time)[-self.max_candles :]
        args: list[Any] = [
            series.channel,
            self._publish,
            series.topic,
            self._source,
            self.max_candles,
        ]
        for ts in times:
            args += (ts, by_time[ts])
        return int(await _UPSERT(self._client, (series.key, series.seq), args))

    @instrumented("ohlcv.latest")
    @redis_errors
    async def latest(self, exchange: str, symbol: str, timeframe: str, n: int) -> list[Candle]:
        """The newest ``n`` candles, oldest first; fewer when the series is shorter.

        ``n`` must be a positive int (``n <= 0`` is a ValidationError, never "everything").

        Example::

            closes = [c.close for c in await cache.ohlcv.latest("binance", "BTC/USDT", "1h", 24)]
        """
        series = self._series(exchange, symbol, timeframe)
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValidationError("n", f"must be an int, not {type(n).__name__}")
        if n <= 0:
            raise ValidationError("n", f"must be > 0, got {n}")
        members = await self._client.zrange(series.key, -n, -1)
        return [_decode(member) for member in members]

    @instrumented("ohlcv.range")
    @redis_errors
    async def range(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start: datetime | int,
        end: datetime | int,
    ) -> list[Candle]:
        """Candles whose open time is in ``[start, end]`` (both inclusive), oldest first.

        Bounds are aware datetimes or epoch milliseconds; ``end`` before
        ``start`` is a ValidationError.

        Example::

            since = datetime.now(UTC) - timedelta(hours=1)
            bars = await cache.ohlcv.range("binance", "BTC/USDT", "1m", since, utc_now())
        """
        series = self._series(exchange, symbol, timeframe)
        low, high = _epoch_ms(start, "start"), _epoch_ms(end, "end")
        if high < low:
            raise ValidationError("end", f"{end!r} is before start {start!r}")
        members = await self._client.zrangebyscore(series.key, low, high)
        return [_decode(member) for member in members]

    @instrumented("ohlcv.count")
    @redis_errors
    async def count(self, exchange: str, symbol: str, timeframe: str) -> int:
        """How many candles the series holds.

        Example::

            n = await cache.ohlcv.count("binance", "BTC/USDT", "1m")
        """
        return int(await self._client.zcard(self._series(exchange, symbol, timeframe).key))

    @instrumented("ohlcv.delete")
    @redis_errors
    async def delete(self, exchange: str, symbol: str, timeframe: str) -> bool:
        """Delete a whole series; True when it existed.

        Its sequence counter is kept, so watchers never see numbers go back.

        Example::

            await cache.ohlcv.delete("binance", "LUNA/USDT", "1m")
        """
        series = self._series(exchange, symbol, timeframe)
        return bool(await self._client.unlink(series.key))

    async def watch(self, exchange: str, symbol: str, timeframe: str) -> AsyncIterator[Candle]:
        """Yield each candle added or changed by an upsert of the series, as it happens.

        Fed by push, on its own subscription, made when iteration starts (what
        is upserted after that is delivered). It survives reconnects: after a
        lost connection or message, the candles from the newest one delivered
        onwards are re-read and yielded again, so a watcher may see a candle
        twice (with the same or newer values) but never misses the newest bars.

        Example::

            async for candle in cache.ohlcv.watch("binance", "BTC/USDT", "1m"):
                print(candle.timestamp, candle.close)
        """
        series = self._series(exchange, symbol, timeframe)
        client = self._client
        with translate_redis_errors():
            newest = await client.zrange(series.key, -1, -1, withscores=True)
        since = [int(newest[0][1]) if newest else 0]

        # An outage inside a hook (ConnectionLost is an OSError) makes the subscription
        # reconnect and call it again.
        async def positions(topics: Sequence[str]) -> dict[str, tuple[int, int]]:
            seq, time_ms = await _POSITION(client, (series.seq,))
            return {series.topic: (int(seq), int(time_ms))}

        async def backfill(topic: str, first: int, last: int | None) -> list[Envelope]:
            time_ms, *members = await _SINCE(client, (series.key,), (since[0],))
            if not members:
                return []
            # One envelope standing for the whole gap: the series' current candles.
            payload = msgspec.Raw(b"[" + b",".join(members) + b"]")
            seq = first if last is None else last
            return [
                Envelope(v=1, type="candles", topic=topic, seq=seq, time=time_ms, payload=payload)
            ]

        subscription = Subscription(
            self.ctx,
            {series.channel: series.topic},
            sharded=self.sharded,
            positions=positions,
            backfill=backfill,
            name=f"ohlcv:{series.topic}",
        )
        async with subscription:
            async for item in subscription:
                if not isinstance(item, Event):
                    continue  # a gap the backfill could not cover: nothing newer was lost
                try:
                    candles = _decode_candles(item.envelope.payload)
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    logger.warning(
                        "ohlcv:%s: bad candles in seq %d: %s",
                        series.topic,
                        item.seq,
                        exc,
                        extra={"topic": series.topic, "seq": item.seq},
                    )
                    continue
                for candle in candles:
                    since[0] = max(since[0], to_ms(candle.timestamp))
                    yield candle
