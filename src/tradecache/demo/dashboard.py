"""The demo's live dashboard: a :class:`Snapshot` of the system, rendered with rich.

Rendering is a pure function of the snapshot, so it can be tested (and
screenshotted) without a running demo::

    from rich.console import Console
    console = Console(record=True, width=160)
    console.print(render(snapshot))
    text = console.export_text()      # "Tickers", "Bots", "Order flow", ...

:func:`line` gives the one-line form printed by ``tradecache demo --no-ui``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = ["BotRow", "ProcessRow", "Snapshot", "TickerRow", "line", "render"]


@dataclass(frozen=True, slots=True)
class TickerRow:
    """A market: its last price, change since the open, age, and who claims it."""

    exchange: str
    symbol: str
    last: float
    change_pct: float
    age_s: float
    holder: str | None = None
    fence: int | None = None


@dataclass(frozen=True, slots=True)
class BotRow:
    """A bot (account): markets held, orders, PnL in USDT."""

    name: str
    alive: bool
    markets: int
    orders: int
    open_orders: int
    pnl: float
    lost: int = 0


@dataclass(frozen=True, slots=True)
class ProcessRow:
    """A registered process and the age of its last heartbeat."""

    kind: str
    name: str
    pid: int | None
    status: str
    age_s: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the dashboard shows at one instant."""

    elapsed: float
    duration: float | None
    mode: str
    version: str
    namespace: str
    chaos: bool = False
    stage: str = "running"
    tickers: list[TickerRow] = field(default_factory=list)
    bots: list[BotRow] = field(default_factory=list)
    flow: dict[str, float] = field(default_factory=dict)
    latency: dict[str, tuple[float, float]] = field(default_factory=dict)
    processes: list[ProcessRow] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    breaker: str = "closed"


def _price(value: float) -> str:
    return f"{value:,.2f}" if value >= 100 else f"{value:.4f}"


def _age(seconds: float, stale: float) -> Text:
    return Text(f"{seconds:.1f}s", style="red" if seconds > stale else "dim")


def _header(s: Snapshot) -> Text:
    total = f"/{s.duration:.0f}s" if s.duration else ""
    chaos = "  [bold red]CHAOS[/]" if s.chaos else ""
    return Text.from_markup(
        f"[bold]tradecache demo[/]  {escape(s.mode)} redis {escape(s.version)}  "
        f"namespace [cyan]{escape(s.namespace)}[/]  {s.elapsed:.0f}s{total}  "
        f"[yellow]{escape(s.stage)}[/]{chaos}"
    )


def _tickers(s: Snapshot) -> Panel:
    table = Table(expand=True, box=None, padding=(0, 1))
    for name, justify in (("exchange", "left"), ("symbol", "left"), ("last", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("chg %", justify="right")
    table.add_column("age", justify="right")
    table.add_column("claimed by")
    table.add_column("fence", justify="right", style="dim")
    for t in s.tickers:
        style = "green" if t.change_pct >= 0 else "red"
        table.add_row(
            t.exchange,
            t.symbol,
            _price(t.last),
            Text(f"{t.change_pct:+.2f}", style=style),
            _age(t.age_s, 5.0),
            t.holder or Text("-", style="dim"),
            "" if t.fence is None else str(t.fence)[-6:],
        )
    return Panel(table, title="Tickers and claims", border_style="blue")


def _bots(s: Snapshot) -> Panel:
    table = Table(expand=True, box=None, padding=(0, 1))
    table.add_column("bot")
    for name in ("markets", "orders", "open", "lost", "PnL USDT"):
        table.add_column(name, justify="right")
    for b in s.bots:
        bot = Text(b.name, style="bold" if b.alive else "dim strike")
        pnl = Text(f"{b.pnl:+,.2f}", style="green" if b.pnl >= 0 else "red")
        table.add_row(bot, str(b.markets), str(b.orders), str(b.open_orders), str(b.lost), pnl)
    return Panel(table, title="Bots and positions", border_style="green")


_FLOW = (
    ("submitted", "orders submitted"),
    ("executed", "orders executed"),
    ("queued", "orders queued (not delivered)"),
    ("pending", "orders delivered, not acked"),
    ("trades", "trades pushed"),
    ("consumed", "trades consumed"),
    ("orders_per_s", "orders/s"),
    ("ticks_per_s", "ticker updates/s"),
)


def _flow(s: Snapshot) -> Panel:
    table = Table.grid(expand=True, padding=(0, 1))
    table.add_column()
    table.add_column(justify="right")
    for key, label in _FLOW:
        value = s.flow.get(key, 0.0)
        table.add_row(label, f"{value:.1f}" if key.endswith("_per_s") else f"{value:.0f}")
    breaker_style = "green" if s.breaker == "closed" else "bold red"
    table.add_row("breaker demo-exchange", Text(s.breaker, style=breaker_style))
    return Panel(table, title="Order flow", border_style="magenta")


def _latency(s: Snapshot) -> Panel:
    table = Table(expand=True, box=None, padding=(0, 1))
    table.add_column("latency")
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    for label, (p50, p99) in s.latency.items():
        table.add_row(label, f"{p50:.2f}", f"{p99:.2f}")
    return Panel(table, title="Latency", border_style="cyan")


def _processes(s: Snapshot) -> Panel:
    table = Table(expand=True, box=None, padding=(0, 1))
    for name in ("kind", "process", "pid", "status"):
        table.add_column(name)
    table.add_column("heartbeat", justify="right")
    for p in s.processes:
        status = Text(p.status, style="green" if p.status == "running" else "yellow")
        table.add_row(p.kind, p.name, str(p.pid or "-"), status, _age(p.age_s, 2.0))
    return Panel(table, title="Processes", border_style="yellow")


def _events(s: Snapshot) -> Panel:
    body = Text.from_markup("\n".join(s.events)) if s.events else Text("none yet", style="dim")
    return Panel(body, title="Recent events", border_style="red")


def render(snapshot: Snapshot) -> RenderableType:
    """The whole dashboard for ``snapshot`` (a rich renderable).

    Example: ``Console().print(render(snapshot))``
    """
    grid = Table.grid(expand=True, padding=(0, 1))
    grid.add_column(ratio=3)
    grid.add_column(ratio=2)
    right = Group(_bots(snapshot), _flow(snapshot), _latency(snapshot))
    grid.add_row(_tickers(snapshot), right)
    grid.add_row(_processes(snapshot), _events(snapshot))
    return Group(_header(snapshot), grid)


def line(s: Snapshot) -> str:
    """One plain status line (``--no-ui``).

    Example: ``print(line(snapshot))``
    """
    f = s.flow
    p99 = " ".join(f"{label.split(' ')[0]}={p99:.1f}ms" for label, (_, p99) in s.latency.items())
    held = sum(1 for t in s.tickers if t.holder)
    alive = sum(1 for p in s.processes if p.age_s <= 2.0)
    return (
        f"{s.elapsed:5.1f}s {s.stage}: ticks {f.get('ticks_per_s', 0):.0f}/s, "
        f"orders {f.get('submitted', 0):.0f} submitted {f.get('executed', 0):.0f} executed "
        f"({f.get('orders_per_s', 0):.1f}/s), trades {f.get('trades', 0):.0f} pushed "
        f"{f.get('consumed', 0):.0f} consumed, claims {held}/{len(s.tickers)}, "
        f"processes {alive}/{len(s.processes)} live, breaker {s.breaker}, p99 {p99}"
    )
