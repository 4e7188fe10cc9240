"""``tradecache top [URL] [--namespace NS] [--once]``: a live, read-only view of a deployment.

Shows, for one namespace: the server (version, mode, latency, memory), tickers
and their age, bot claims and statuses, process health, queue depths and
pending entries (order queue, trade streams), circuit-breaker states and the
recent events of every event-bus topic::

    tradecache top redis://10.0.0.5:6379/0 --namespace prod     # refreshes until Ctrl-C
    tradecache top --once                                        # one frame ($REDIS_URL)

**Read-only.** ``top`` never writes: it uses the stores' read methods where
they only read (``tickers.get_all``, ``bots.all_status``, ``processes.health``
and ``list``, ``events.recent``) and plain read commands otherwise (the claim
index is read with ``ZRANGE`` + ``HMGET``/``PTTL`` because ``bots.claims()``
prunes expired index entries; breaker states with ``HMGET`` because
``breaker.sync()`` creates a missing breaker). Breakers and event topics have no
index: they are found with ``SCAN`` on every primary.

The data is collected by :func:`snapshot` and drawn by :func:`render`, so
both can be used on their own (tests render into a recording console)::

    async with Cache.connect(url, namespace="prod") as cache:
        Console().print(render(await snapshot(cache)))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import typer
from redis.exceptions import ResponseError
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..cache import Cache, Health
from ..config import Settings
from ..connection import redact_url
from ..coordination.events import Event
from ..errors import TradecacheError
from ..models import BotStatus, ProcessInfo, ProcessStatus, utc_now
from ..stores.processes import SystemHealth
from ..testing.selfcheck import iter_keys
from .common import make_console

__all__ = [
    "BreakerRow",
    "ClaimRow",
    "GroupRow",
    "QueueRow",
    "Snapshot",
    "TickerRow",
    "frame",
    "render",
    "snapshot",
    "top",
]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)

PANELS = ("Server", "Tickers", "Claims", "Bots", "Processes", "Queues", "Breakers", "Events")


@dataclass(frozen=True, slots=True)
class TickerRow:
    """One ticker: prices, age in seconds (None: unknown) and whether it is stale."""

    exchange: str
    symbol: str
    last: float | None
    bid: float | None
    ask: float | None
    age: float | None
    stale: bool


@dataclass(frozen=True, slots=True)
class ClaimRow:
    """A live bot claim (``ttl`` in seconds)."""

    exchange: str
    symbol: str
    bot_id: str
    fence: int
    ttl: float


@dataclass(frozen=True, slots=True)
class GroupRow:
    """A consumer group of a stream: pending = delivered and not acknowledged yet."""

    name: str
    consumers: int
    pending: int
    lag: int | None


@dataclass(frozen=True, slots=True)
class QueueRow:
    """A stream (order queue, trade stream ...), its length and its consumer groups."""

    name: str
    length: int
    groups: tuple[GroupRow, ...]


@dataclass(frozen=True, slots=True)
class BreakerRow:
    """A circuit breaker's shared state; ``retry_in``: seconds until a probe (open)."""

    name: str
    state: str
    seq: int
    retry_in: float | None


@dataclass(slots=True)
class Snapshot:
    """Everything one frame of ``top`` shows; ``*_total`` count rows before truncation."""

    namespace: str
    url: str
    health: Health
    processes: SystemHealth
    taken: datetime = field(default_factory=utc_now)
    tickers: list[TickerRow] = field(default_factory=list)
    tickers_total: int = 0
    claims: list[ClaimRow] = field(default_factory=list)
    bots: dict[str, BotStatus] = field(default_factory=dict)
    process_rows: list[ProcessInfo] = field(default_factory=list)
    queues: list[QueueRow] = field(default_factory=list)
    breakers: list[BreakerRow] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _tag(key: str) -> str:
    """The ``{hash tag}`` of a key: ``_tag("ns:events:{fills}") == "fills"``."""
    return key[key.index("{") + 1 : key.index("}")]


async def _tickers(cache: Cache, limit: int) -> tuple[list[TickerRow], int]:
    rows = []
    for exchange in await cache.tickers.exchanges():
        for symbol, ticker in sorted((await cache.tickers.get_all(exchange)).items()):
            rows.append(
                TickerRow(
                    exchange,
                    symbol,
                    ticker.last,
                    ticker.bid,
                    ticker.ask,
                    ticker.age(),
                    cache.tickers.is_stale(ticker),
                )
            )
    return rows[:limit], len(rows)


async def _claims(cache: Cache) -> list[ClaimRow]:
    """Live claims from the claim index, without pruning it (``bots.claims()`` would)."""
    client: Any = cache.client
    members = [_text(m) for m in await client.zrange(cache.keys.bot_claims(), 0, -1)]
    if not members:
        return []
    prefix = cache.keys.bot_claim_prefix()
    pipe = client.pipeline(transaction=False)
    for member in members:
        pipe.hmget(prefix + member, "owner", "fence")
        pipe.pttl(prefix + member)
    replies = await pipe.execute()
    rows = []
    for index, member in enumerate(members):
        (owner, fence), pttl = replies[2 * index], replies[2 * index + 1]
        if owner is not None and pttl > 0:  # else: expired, not pruned from the index yet
            exchange, _, symbol = member.partition(":")
            rows.append(ClaimRow(exchange, symbol, _text(owner), int(fence), pttl / 1000))
    return rows


async def _streams(cache: Cache, limit: int) -> list[tuple[str, str]]:
    """(label, key) of the order queue, the trade streams and the user-trade streams."""
    client: Any = cache.client
    keys = cache.keys
    found = [("orders", keys.order_queue())]
    for exchange in sorted(_text(e) for e in await client.smembers(keys.trade_exchanges())):
        symbols = await client.smembers(keys.trade_symbols(exchange))
        for symbol in sorted(_text(s) for s in symbols):
            found.append((f"trades {exchange} {symbol}", keys.trades(exchange, symbol)))
    for account in sorted(_text(a) for a in await client.smembers(keys.user_trade_accounts())):
        found.append((f"user trades {account}", keys.user_trades(account)))
    return found[:limit]


async def _queues(cache: Cache, limit: int) -> list[QueueRow]:
    client: Any = cache.client
    streams = await _streams(cache, limit)
    pipe = client.pipeline(transaction=False)
    for _, key in streams:
        pipe.xlen(key)
        pipe.xinfo_groups(key)
    replies = await pipe.execute(raise_on_error=False)
    rows = []
    for index, (label, _) in enumerate(streams):
        length, groups = replies[2 * index], replies[2 * index + 1]
        # An error reply: no such stream yet (no group either), or not a stream at all.
        if isinstance(groups, ResponseError):
            groups = []
        rows.append(
            QueueRow(
                label,
                0 if isinstance(length, ResponseError) else int(length),
                tuple(
                    GroupRow(
                        _text(group["name"]),
                        int(group["consumers"]),
                        int(group["pending"]),
                        None if group.get("lag") is None else int(group["lag"]),
                    )
                    for group in groups
                ),
            )
        )
    return rows


async def _tagged(cache: Cache, kind: str, limit: int) -> list[str]:
    """Names (hash tags) of the keys ``<ns>:<kind>:{name}`` (no suffix), by SCAN."""
    names = set()
    async for raw in iter_keys(cache.client, cache.keys.pattern(kind)):
        key = _text(raw)
        if key.endswith("}"):
            names.add(_tag(key))
    return sorted(names)[:limit]


async def _breakers(cache: Cache, limit: int) -> list[BreakerRow]:
    client: Any = cache.client
    names = await _tagged(cache, "breaker", limit)
    if not names:
        return []
    seconds, micros = await client.time()
    now_ms = seconds * 1000 + micros // 1000
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hmget(cache.keys.breaker(name), "state", "seq", "until")
    rows = []
    for name, (raw_state, seq, until) in zip(names, await pipe.execute(), strict=True):
        state = _text(raw_state or b"unknown")
        retry_in = max(0.0, (int(until or 0) - now_ms) / 1000) if state == "open" else None
        rows.append(BreakerRow(name, state, int(seq or 0), retry_in))
    return rows


async def _events(cache: Cache, limit: int) -> list[Event]:
    recent: list[Event] = []
    for topic in await _tagged(cache, "events", 50):
        recent.extend(await cache.events.recent(topic, limit))
    recent.sort(key=lambda event: (event.time_ms, event.topic, event.seq))
    return recent[-limit:]


async def snapshot(cache: Cache, *, rows: int = 20, events: int = 10) -> Snapshot:
    """Read everything a ``top`` frame shows (read-only); at most ``rows`` per table.

    Example::

        snap = await snapshot(cache)
        print(snap.tickers_total, [c.bot_id for c in snap.claims])
    """
    health = await cache.health()
    tickers, total = await _tickers(cache, rows)
    return Snapshot(
        namespace=cache.keys.namespace,
        url=redact_url(cache.settings.url),
        health=health,
        processes=await cache.processes.health(),
        tickers=tickers,
        tickers_total=total,
        claims=(await _claims(cache))[:rows],
        bots=await cache.bots.all_status(),
        process_rows=(await cache.processes.list())[:rows],
        queues=await _queues(cache, rows),
        breakers=await _breakers(cache, rows),
        events=await _events(cache, events),
    )


# --- rendering -------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.8g}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def _table(*columns: str) -> Table:
    table = Table(expand=True, box=None, pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _panel(title: str, body: RenderableType, empty: bool, note: str = "none") -> Panel:
    content: RenderableType = Text(note, style="dim") if empty else body
    return Panel(content, title=f"[bold]{title}[/]", title_align="left")


def _server(snap: Snapshot) -> Panel:
    h = snap.health
    memory = f"{h.used_memory / 2**20:.1f} MiB"
    if h.maxmemory:
        memory += f" of {h.maxmemory / 2**20:.1f} MiB"
    line = (
        f"namespace [bold]{escape(snap.namespace)}[/] on {escape(snap.url)}  |  "
        f"Redis {h.version} {h.mode}, {h.nodes} node(s)  |  ping {h.latency_ms:.2f} ms  |  "
        f"memory {memory}, {h.maxmemory_policy}  |  {snap.taken:%H:%M:%S} UTC"
    )
    parts: list[RenderableType] = [Text.from_markup(line)]
    parts.extend(Text(f"warning: {w}", style="yellow") for w in h.warnings)
    return _panel("Server", Group(*parts), False)


def _tickers_panel(snap: Snapshot) -> Panel:
    table = _table("exchange", "symbol", "last", "bid", "ask", "age")
    for t in snap.tickers:
        style = "yellow" if t.stale else ""
        table.add_row(
            t.exchange, t.symbol, _num(t.last), _num(t.bid), _num(t.ask), _age(t.age), style=style
        )
    title = f"Tickers ({snap.tickers_total})"
    if snap.tickers_total > len(snap.tickers):
        title += f", first {len(snap.tickers)}"
    return _panel(title, table, not snap.tickers)


def _claims_panel(snap: Snapshot) -> Panel:
    table = _table("exchange", "symbol", "bot", "fence", "ttl")
    for c in snap.claims:
        table.add_row(c.exchange, c.symbol, c.bot_id, str(c.fence), f"{c.ttl:.1f}s")
    return _panel(f"Claims ({len(snap.claims)})", table, not snap.claims)


def _bots_panel(snap: Snapshot) -> Panel:
    table = _table("bot", "status", "market", "message", "updated")
    now = snap.taken
    for bot_id, s in sorted(snap.bots.items()):
        market = " ".join(part for part in (s.exchange, s.symbol) if part)
        age = None if s.updated is None else (now - s.updated).total_seconds()
        table.add_row(bot_id, s.status or "-", market or "-", s.message or "", _age(age))
    return _panel(f"Bots ({len(snap.bots)})", table, not snap.bots)


def _processes_panel(snap: Snapshot) -> Panel:
    health = snap.processes
    verdict = "[green]healthy[/]" if health.healthy else "[bold red]unhealthy[/]"
    statuses = ", ".join(f"{status} {count}" for status, count in health.by_status.items())
    summary = Text.from_markup(
        f"{health.total} process(es), {verdict}: {statuses or 'none'}; "
        f"{len(health.stale)} stale (> {health.stale_after:g}s), {len(health.errored)} in error"
    )
    table = _table("process", "kind", "component", "status", "heartbeat", "message")
    stale = {p.id for p in health.stale}
    for p in snap.process_rows:
        age = None if p.updated is None else (health.checked - p.updated).total_seconds()
        style = "red" if p.status is ProcessStatus.ERROR else "yellow" if p.id in stale else ""
        table.add_row(
            p.id, p.kind, p.component, p.status.value, _age(age), p.message or "", style=style
        )
    body = Group(summary, table) if snap.process_rows else summary
    return _panel("Processes", body, False)


def _queues_panel(snap: Snapshot) -> Panel:
    table = _table("stream", "length", "group", "consumers", "pending", "lag")
    for q in snap.queues:
        if not q.groups:
            table.add_row(q.name, str(q.length), "-", "", "", "")
        for g in q.groups:
            lag = "?" if g.lag is None else str(g.lag)
            style = "yellow" if g.pending else ""
            table.add_row(
                q.name, str(q.length), g.name, str(g.consumers), str(g.pending), lag, style=style
            )
    return _panel("Queues", table, not snap.queues)


_STATE_STYLE = {"closed": "green", "open": "bold red", "half_open": "yellow"}


def _breakers_panel(snap: Snapshot) -> Panel:
    table = _table("breaker", "state", "transitions", "probe in")
    for b in snap.breakers:
        state = Text(b.state, style=_STATE_STYLE.get(b.state, ""))
        probe = "" if b.retry_in is None else f"{b.retry_in:.1f}s"
        table.add_row(b.name, state, str(b.seq), probe)
    return _panel(f"Breakers ({len(snap.breakers)})", table, not snap.breakers)


def _events_panel(snap: Snapshot) -> Panel:
    table = _table("time", "topic", "seq", "type", "source", "payload")
    for e in snap.events:
        payload = json.dumps(e.payload, separators=(",", ":"), default=str)
        if len(payload) > 80:
            payload = payload[:77] + "..."
        table.add_row(f"{e.time:%H:%M:%S}", e.topic, str(e.seq), e.type, e.source, payload)
    return _panel(f"Events (last {len(snap.events)})", table, not snap.events)


def render(snap: Snapshot) -> RenderableType:
    """One frame: a panel per section (see ``PANELS``), top to bottom.

    Example: ``Console().print(render(await snapshot(cache)))``
    """
    return Group(
        _server(snap),
        _tickers_panel(snap),
        _claims_panel(snap),
        _bots_panel(snap),
        _processes_panel(snap),
        _queues_panel(snap),
        _breakers_panel(snap),
        _events_panel(snap),
    )


async def frame(cache: Cache, *, rows: int = 20, events: int = 10) -> RenderableType:
    """:func:`render` of a fresh :func:`snapshot`, or an error panel when Redis fails.

    Example: ``live.update(await frame(cache))``
    """
    try:
        return render(await snapshot(cache, rows=rows, events=events))
    except TradecacheError as exc:
        message = f"{type(exc).__name__}: {exc}"
        return Panel(Text(message, style="bold red"), title="[bold red]Redis error[/]")


async def watch(
    url: str | None,
    namespace: str | None,
    *,
    console: Console,
    once: bool = False,
    interval: float = 1.0,
    frames: int | None = None,
    rows: int = 20,
) -> None:
    """Show frames on ``console`` every ``interval`` s until SIGINT/SIGTERM (or ``frames``).

    The signals set an event the loop waits on (``loop.add_signal_handler``):
    it works even where SIGINT was ignored on start (a background job), and
    never depends on cancelling a task that may be in the middle of a command.

    Example: ``await watch(url, "prod", console=Console(), once=True)``
    """
    async with Cache.connect(url, namespace=namespace) as cache:
        first = await frame(cache, rows=rows)
        if once:
            console.print(first)
            return
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        try:
            with Live(first, console=console, refresh_per_second=4, redirect_stderr=False) as live:
                shown = 1
                while frames is None or shown < frames:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(interval):
                            await stop.wait()
                    if stop.is_set():
                        break
                    live.update(await frame(cache, rows=rows))
                    shown += 1
        finally:
            for sig in _SIGNALS:
                loop.remove_signal_handler(sig)


def top(
    url: Annotated[str | None, typer.Argument(help="Redis URL (default: $REDIS_URL).")] = None,
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="Namespace (default: $TRADECACHE_NAMESPACE)."),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between frames.")
    ] = 1.0,
    rows: Annotated[int, typer.Option("--rows", min=1, help="Rows per table at most.")] = 20,
) -> None:
    """A live, read-only view of a deployment (tickers, claims, queues ...)."""
    err = make_console(stderr=True)
    shown = redact_url(url) if url else "$REDIS_URL"
    try:
        if url is None:
            shown = redact_url(Settings().url)
        asyncio.run(
            watch(url, namespace, console=make_console(), once=once, interval=interval, rows=rows)
        )
    except TradecacheError as exc:
        err.print(f"[red]tradecache top:[/] {escape(shown)}: {escape(str(exc))}")
        raise typer.Exit(1) from None
