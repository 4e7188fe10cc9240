"""What every process of the demo shares: its configuration, markets, ids and fill arithmetic.

The parent hands each child one :class:`DemoConfig` as JSON on its command
line; everything else (markets, order ids, how a fill changes a position) is
derived from it here, so the children and the final checks agree::

    config = DemoConfig(url="unix:///tmp/tradecache-x/redis.sock", namespace="demo")
    market = config.markets()[0]                  # Market(0, 'binance', 'BTC/USDT', ...)
    oid = order_id("bot1", market.index, fence=17, n=3)      # 'bot1-0-17-3'
    parse_order_id(oid)                            # OrderRef('bot1', 0, 17, 3)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

import msgspec

from ..models import Balance, OrderSide, Position, PositionSide

__all__ = [
    "BREAKER",
    "LEDGER_GROUP",
    "ORDER_GROUP",
    "OUTAGE",
    "QUOTE",
    "TOPIC",
    "DemoConfig",
    "Market",
    "OrderRef",
    "apply_fill",
    "balances_for",
    "connect",
    "lot",
    "order_id",
    "parse_order_id",
    "price_of",
    "signed_size",
]

QUOTE = "USDT"
TOPIC = "demo"  # event-bus topic of the demo's own events (claims, stale processes ...)
ORDER_GROUP = "executors"  # consumer group of the order queue
LEDGER_GROUP = "ledger"  # consumer group of the user trade streams
OUTAGE = "demo-outage"  # shared state: the simulated exchange is down while it is true
BREAKER = "demo-exchange"  # circuit breaker guarding the simulated exchange

EXCHANGES = ("binance", "okx", "kraken")
# Each coin trades on one exchange only, so an account's positions (keyed by symbol) and
# its balances (keyed by currency) never mix two markets.
COINS = (
    ("BTC", 60_000.0), ("ETH", 3_000.0), ("SOL", 150.0), ("BNB", 550.0), ("XRP", 0.55),
    ("ADA", 0.45), ("DOGE", 0.12), ("AVAX", 35.0), ("DOT", 7.0), ("LINK", 15.0),
    ("LTC", 80.0), ("TRX", 0.12), ("ATOM", 9.0), ("UNI", 8.0), ("XLM", 0.11),
    ("NEAR", 6.0), ("APT", 9.0), ("ARB", 1.1), ("OP", 2.5), ("FIL", 5.5),
    ("ETC", 25.0), ("BCH", 450.0), ("INJ", 25.0), ("SUI", 1.2),
)  # fmt: skip
MAX_SYMBOLS = len(COINS)


@dataclass(frozen=True, slots=True)
class Market:
    """One (exchange, symbol) of the simulation; ``index`` is its position in the list."""

    index: int
    exchange: str
    symbol: str
    base: str
    start_price: float


class DemoConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a demo process needs; sent to children as JSON.

    Example: ``DemoConfig.decode(DemoConfig(url=u, namespace="demo").encode())``
    """

    url: str
    namespace: str
    symbols: int = 20
    rate: float = 50.0  # ticker updates per second, all markets together
    bots: int = 4
    executors: int = 2
    claim_ttl: float = 3.0  # seconds; a dead bot's claims move after this
    tick: float = 0.25  # a bot's decision period
    cooldown: float = 1.0  # a bot waits this long between two orders on one market
    hold: tuple[float, float] = (4.0, 10.0)  # a bot hands a market back after this long
    notional: str = "100"  # order size in USDT
    max_lots: int = 3  # position limit per market, in orders
    threshold: float = 0.0004  # price move (fraction) that makes a bot trade
    initial_cash: str = "10000"
    in_flight_ttl: float = 3.0  # executors: idempotency lease and reclaim idle time
    heartbeat: float = 0.5
    stale_after: float = 2.0  # the monitor reports a process silent for this long
    socket_timeout: float = 2.0
    seed: int | None = None

    def encode(self) -> str:
        """This config as a JSON string.

        Example: ``DemoConfig.decode(config.encode()) == config``
        """
        return msgspec.json.encode(self).decode()

    @classmethod
    def decode(cls, text: str | bytes) -> DemoConfig:
        """The config encoded by :meth:`encode`.

        Example: ``config = DemoConfig.decode(sys.argv[3])``
        """
        return msgspec.json.decode(text, type=cls)

    def markets(self) -> list[Market]:
        """The ``symbols`` markets, coins spread over the exchanges in turn.

        Example: ``[m.symbol for m in config.markets()]   # ['BTC/USDT', 'ETH/USDT', ...]``
        """
        return [
            Market(i, EXCHANGES[i % len(EXCHANGES)], f"{coin}/{QUOTE}", coin, price)
            for i, (coin, price) in enumerate(COINS[: self.symbols])
        ]

    def settings(self) -> dict[str, Any]:
        """Keyword arguments for ``Cache.connect`` shared by every process of the demo.

        Example: ``Cache.connect(config.url, **config.settings())``
        """
        return {
            "namespace": self.namespace,
            "socket_timeout": self.socket_timeout,
            # The final checks read the whole order queue: keep every entry.
            "stream_maxlen": 10_000_000,
            "event_backlog": 100_000,
        }


def connect(config: DemoConfig) -> Any:
    """``Cache.connect`` for a demo process (await it or ``async with`` it).

    Example: ``async with connect(config) as cache: ...``
    """
    from ..cache import Cache

    return Cache.connect(config.url, **config.settings())


class OrderRef(NamedTuple):
    """What an order id says: the bot (account), market, claim fence and the order's number."""

    bot: str
    market: int
    fence: int
    n: int


def order_id(bot: str, market: int, fence: int, n: int) -> str:
    """The id (and client order id) of a bot's ``n``-th order under the claim ``fence``.

    >>> order_id("bot1", 4, 123, 2)
    'bot1-4-123-2'
    """
    return f"{bot}-{market}-{fence}-{n}"


def parse_order_id(text: str) -> OrderRef:
    """The parts of an :func:`order_id`; ``ValueError`` if it is not one.

    >>> parse_order_id("bot1r2-4-123-2")
    OrderRef(bot='bot1r2', market=4, fence=123, n=2)
    """
    bot, market, fence, n = text.split("-")
    return OrderRef(bot, int(market), int(fence), int(n))


def price_of(value: float) -> Decimal:
    """A market price as an exact Decimal with 6 significant digits (so sums stay exact).

    >>> price_of(60123.456789), price_of(0.123456789)
    (Decimal('60123.5'), Decimal('0.123457'))
    """
    digits = max(0, 5 - math.floor(math.log10(value)))
    return Decimal(f"{value:.{digits}f}")


def lot(notional: Decimal, price: Decimal) -> Decimal:
    """The order amount worth about ``notional`` at ``price`` (6 decimals, at least 1e-6).

    >>> lot(Decimal(100), Decimal(60000))
    Decimal('0.001667')
    """
    return max((notional / price).quantize(Decimal("0.000001")), Decimal("0.000001"))


def signed_size(position: Position | None) -> Decimal:
    """Contracts held, negative when short; 0 without a position.

    Example: ``signed_size(Position(symbol="X", side="short", contracts=Decimal(2)))  # -2``
    """
    if position is None or not position.contracts:
        return Decimal(0)
    return -position.contracts if position.side is PositionSide.SHORT else position.contracts


_ENTRY = Decimal("1e-10")


def apply_fill(
    position: Position | None,
    *,
    symbol: str,
    exchange: str,
    side: OrderSide,
    amount: Decimal,
    price: Decimal,
    fill_id: str,
) -> Position:
    """The position after a fill: average entry price, realized PnL, ``id`` = ``fill_id``.

    The executors compare ``id`` before applying a fill, which makes applying
    the same fill twice a no-op (a bot has at most one open order per market).

    Example::

        p = apply_fill(None, symbol="BTC/USDT", exchange="binance", side=OrderSide.BUY,
                       amount=Decimal(1), price=Decimal(100), fill_id="bot1-0-1-1")
        p.side, p.contracts, p.entry_price    # (long, Decimal('1'), Decimal('100'))
    """
    size = signed_size(position)
    entry = (position.entry_price if position else None) or Decimal(0)
    realized = (position.realized_pnl if position else None) or Decimal(0)
    delta = amount if side is OrderSide.BUY else -amount
    new = size + delta
    if size == 0 or (size > 0) == (delta > 0):  # opening or adding: a new average
        new_entry = ((abs(size) * entry + amount * price) / abs(new)).quantize(_ENTRY)
    elif amount > abs(size):  # flipping: the rest opens at the fill price
        new_entry = price
    else:  # reducing or closing
        new_entry = entry if new else Decimal(0)
    # Realized PnL as exact bookkeeping: cash = initial + sum(realized - size * entry)
    # holds to the last digit (the rounding of an average entry lands in realized).
    realized += new * new_entry - size * entry - delta * price
    side_now = None if new == 0 else PositionSide.LONG if new > 0 else PositionSide.SHORT
    return Position(
        symbol=symbol,
        id=fill_id,
        exchange=exchange,
        side=side_now,
        contracts=abs(new),
        entry_price=new_entry if new else None,
        last_price=price,
        realized_pnl=realized,
    )


def balances_for(
    positions: Iterable[Position], initial_cash: Decimal, bases: dict[str, str]
) -> dict[str, Balance]:
    """An account's balances derived from its positions (so re-deriving is idempotent).

    Cash is ``initial + realized - cost of the open positions``; each coin's
    balance is the signed size held. ``bases`` maps symbol to coin.

    Example: ``balances_for(await cache.accounts.positions("bot1"), Decimal(10000), bases)``
    """
    cash = initial_cash
    result = {}
    for position in positions:
        size = signed_size(position)
        cash += (position.realized_pnl or 0) - size * (position.entry_price or 0)
        coin = bases[position.symbol]
        result[coin] = Balance(currency=coin, free=size, total=size)
    result[QUOTE] = Balance(currency=QUOTE, free=cash, total=cash)
    return result
