"""The demo's final checks: its invariants are verified from what Redis holds, not assumed.

* **orders executed exactly once**: the order queue holds each client order id
  once; every queued order's status record is ``closed`` and fully filled; each
  has exactly one trade in its account's trade stream, and no trade lacks an order;
* **positions match fills**: every account's cash, coin balances and position
  sizes equal what its fills add up to (a fill applied twice, or lost, shows);
* **trades pushed = consumed**: the ledger consumed and acknowledged every
  trade in the streams;
* **claims exclusive**: per market, the claim records (fence, verified start
  and end, extended by the verified time of every order sent under the claim)
  never overlap and their fences grow with time; every order was sent under
  a recorded claim of its own bot;
* **processes**: no child crashed or had to be killed at shutdown.

The checks are pure functions of gathered facts (:func:`gather`), so they are
testable with hand-made facts::

    facts = await gather(cache, config, accounts)
    checks = [check_orders(facts), check_accounts(facts, config), ...]
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..models import Balance, Order, OrderSide, OrderStatus, Position, Trade
from ..stores.streams import FIELD
from .common import QUOTE, DemoConfig, parse_order_id, signed_size
from .observe import ClaimRecord

__all__ = [
    "Check",
    "Facts",
    "Summary",
    "check_accounts",
    "check_claims",
    "check_orders",
    "check_processes",
    "check_trades",
    "gather",
    "render",
]

_SHOWN = 3  # problems listed per check
_PAGE = 5_000  # queue entries read per round trip


@dataclass(frozen=True, slots=True)
class Check:
    """One invariant: its name, whether it holds, and what was found."""

    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class Facts:
    """What the checks look at, read from Redis after the demo drained."""

    queued: list[Order] = field(default_factory=list)
    records: dict[str, Order | None] = field(default_factory=dict)
    trades: dict[str, list[Trade]] = field(default_factory=dict)
    positions: dict[str, list[Position]] = field(default_factory=dict)
    balances: dict[str, dict[str, Balance]] = field(default_factory=dict)


async def gather(cache: Any, accounts: Iterable[str]) -> Facts:
    """Read the order queue, every queued order's record, and each account's trades and book.

    Example: ``facts = await gather(cache, ["bot1", "bot2"])``
    """
    facts = Facts()
    key = cache.keys.order_queue()
    start = "-"
    while True:
        batch = await cache.client.xrange(key, min=start, max="+", count=_PAGE)
        for _, fields in batch:
            facts.queued.append(cache.codec.decode(fields[FIELD.encode()], Order))
        if len(batch) < _PAGE:
            break
        last = batch[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
    for offset in range(0, len(facts.queued), 200):
        chunk = facts.queued[offset : offset + 200]
        found = await asyncio.gather(*(cache.orders.get(o.exchange, o.id) for o in chunk))
        facts.records.update(zip((o.id for o in chunk), found, strict=True))
    for account in accounts:
        count = int(await cache.client.xlen(cache.keys.user_trades(account)))
        trades = await cache.trades.recent_user_trades(account, count) if count else []
        facts.trades[account] = trades
        facts.positions[account] = await cache.accounts.positions(account)
        facts.balances[account] = await cache.accounts.get_balances(account)
    return facts


def _problems(found: list[str], total: int) -> str:
    shown = "; ".join(found[:_SHOWN])
    more = f" (+{len(found) - _SHOWN} more)" if len(found) > _SHOWN else ""
    return f"{len(found)} of {total} wrong: {shown}{more}"


def _n(value: Decimal | None) -> str:
    """A Decimal without its trailing zeros (``60.0000000000`` -> ``60``)."""
    return "None" if value is None else f"{value.normalize():f}"


def check_orders(facts: Facts) -> Check:
    """Each queued order once in the queue, closed, fully filled, with exactly one trade.

    Example: ``check_orders(facts).ok``
    """
    name = "orders_executed_exactly_once"
    ids = Counter(o.client_order_id or o.id for o in facts.queued)
    trades = Counter(t.order for ts in facts.trades.values() for t in ts)
    found = [f"{cid} queued {n} times" for cid, n in ids.items() if n > 1]
    for order in facts.queued:
        record = facts.records.get(order.id)
        if record is None:
            found.append(f"{order.id} has no status record")
        elif record.status is not OrderStatus.CLOSED or record.filled != order.amount:
            found.append(f"{order.id} is {record.status.value}, filled {record.filled}")
        if trades[order.id] != 1:
            found.append(f"{order.id} has {trades[order.id]} trades")
    found += [f"trade of unknown order {oid}" for oid in trades if oid not in ids]
    if found:
        return Check(name, False, _problems(found, len(facts.queued)))
    return Check(
        name,
        True,
        f"{len(facts.queued)} orders submitted, {len(facts.queued)} executed once, "
        f"{sum(trades.values())} trades",
    )


def check_accounts(facts: Facts, config: DemoConfig) -> Check:
    """Every account's cash, coins and positions equal the sum of its fills.

    Example: ``check_accounts(facts, config).detail``
    """
    name = "positions_match_fills"
    bases = {m.symbol: m.base for m in config.markets()}
    cash: dict[str, Decimal] = defaultdict(lambda: Decimal(config.initial_cash))
    sizes: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for order in facts.queued:
        record = facts.records.get(order.id)
        if record is None or record.average is None:
            continue  # reported by check_orders
        account = parse_order_id(order.id).bot
        delta = order.amount if order.side is OrderSide.BUY else -order.amount
        cash[account] -= delta * record.average
        sizes[account][order.symbol] += delta
    found = []
    for account in sorted(set(facts.balances) | set(cash)):
        balances = facts.balances.get(account, {})
        held = {p.symbol: signed_size(p) for p in facts.positions.get(account, [])}
        usdt = balances.get(QUOTE)
        have = usdt.total if usdt is not None else Decimal(config.initial_cash)
        if have != cash[account]:
            found.append(f"{account} holds {_n(have)} {QUOTE}, its fills say {_n(cash[account])}")
        for symbol in sorted(set(held) | set(sizes[account])):
            want = sizes[account][symbol]
            coin = balances.get(bases[symbol])
            size, total = held.get(symbol, Decimal(0)), coin.total if coin else None
            if size != want or (total or 0) != want:
                found.append(
                    f"{account} {symbol}: position {_n(size)}, {bases[symbol]} balance "
                    f"{_n(total or Decimal(0))}, fills say {_n(want)}"
                )
    if found:
        return Check(name, False, _problems(found, len(cash)))
    return Check(name, True, f"{len(cash)} accounts: cash, coins and positions match their fills")


def check_trades(pushed: int, consumed: int, pending: int) -> Check:
    """The ledger consumed (and acknowledged) every trade pushed.

    Example: ``check_trades(pushed=40, consumed=40, pending=0).ok   # True``
    """
    ok = pushed == consumed and pending == 0
    detail = f"{pushed} pushed, {consumed} consumed, {pending} unacknowledged"
    return Check("trades_pushed_equal_consumed", ok, detail)


def check_claims(claims: Mapping[tuple[int, int], ClaimRecord], facts: Facts, gaps: int) -> Check:
    """No two bots held a market at the same time; every order was sent under its bot's claim.

    Example: ``check_claims(observer.claims, facts, observer.gaps)``
    """
    name = "claims_exclusive"
    if gaps:
        return Check(name, False, f"{gaps} claim records were missed: cannot verify")
    found = []
    records = {key: dataclasses.replace(r) for key, r in claims.items()}
    for order in facts.queued:
        ref = parse_order_id(order.id)
        record = records.get((ref.market, ref.fence))
        if record is None or not record.started or record.bot != ref.bot:
            found.append(f"order {order.id} was sent without a recorded claim")
            continue
        assert order.timestamp is not None  # bots always stamp their orders
        record.end = max(record.end, order.timestamp.timestamp())
    by_market: dict[int, list[ClaimRecord]] = defaultdict(list)
    for record in records.values():
        if record.started:
            by_market[record.market].append(record)
    moves = 0
    for market, grants in by_market.items():
        grants.sort(key=lambda r: r.start)
        for before, after in itertools.pairwise(grants):
            moves += before.bot != after.bot
            if after.fence <= before.fence:
                found.append(f"market {market}: fence {after.fence} after {before.fence}")
            if before.end >= after.start:
                found.append(
                    f"market {market}: {before.bot} held it until {before.end:.3f}, "
                    f"{after.bot} from {after.start:.3f}"
                )
    total = sum(len(g) for g in by_market.values())
    if found:
        return Check(name, False, _problems(found, total))
    return Check(
        name,
        True,
        f"{total} claims on {len(by_market)} markets, {moves} moved between bots, no overlap",
    )


def check_processes(crashes: list[str]) -> Check:
    """No child exited on its own, and every one stopped when asked.

    Example: ``check_processes(supervisor.crashes)``
    """
    if crashes:
        return Check("processes_clean", False, _problems(crashes, len(crashes)))
    return Check("processes_clean", True, "no crash; every process stopped when asked")


@dataclass(slots=True)
class Summary:
    """The end of a demo run: the invariants and the figures."""

    checks: list[Check]
    counts: dict[str, Any]
    latency: dict[str, tuple[float, float]]
    info: dict[str, Any]

    @property
    def ok(self) -> bool:
        """True when every invariant holds.

        Example: ``sys.exit(0 if summary.ok else 1)``
        """
        return all(check.ok for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``tradecache demo --json``).

        Example: ``summary.to_dict()["invariants"]["claims_exclusive"]["ok"]``
        """
        return {
            "ok": self.ok,
            **self.info,
            "invariants": {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks},
            "counts": self.counts,
            "latency_ms": {
                name: {"p50": round(p50, 3), "p99": round(p99, 3)}
                for name, (p50, p99) in self.latency.items()
            },
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON.

        Example: ``print(summary.to_json())``
        """
        return json.dumps(self.to_dict(), indent=2, default=str)


def render(summary: Summary) -> RenderableType:
    """The summary for humans: a verdict, the invariants, the figures and latencies.

    Example: ``Console().print(render(summary))``
    """
    verdict = (
        "[bold green]all invariants hold[/]" if summary.ok else "[bold red]INVARIANT VIOLATED[/]"
    )
    table = Table(show_header=True, header_style="bold", expand=False)
    table.add_column("invariant")
    table.add_column("", justify="center")
    table.add_column("detail", overflow="fold")
    for check in summary.checks:
        mark = Text("ok", style="green") if check.ok else Text("FAIL", style="bold red")
        table.add_row(check.name, mark, check.detail)
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.counts.items())
    latency = ", ".join(
        f"{name} {p50:.2f}/{p99:.2f}" for name, (p50, p99) in summary.latency.items()
    )
    return Group(
        Text.from_markup(f"tradecache demo: {verdict}"),
        table,
        Text(counts),
        Text(f"latency p50/p99 ms: {latency}" if latency else "", style="dim"),
    )
