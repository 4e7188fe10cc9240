"""The parent's view of the running demo: events, claim records, tickers, latency, snapshots.

The :class:`Observer` subscribes to the demo topic *before* any child starts
(claim records, stale processes, errors), watches every exchange's tickers
(their delivery latency and rate), follows the shared breaker, measures a
pub/sub round trip and a lock acquisition on each refresh, and assembles the
dashboard's :class:`~tradecache.demo.dashboard.Snapshot`::

    observer = Observer(cache, config)
    await observer.start()
    await observer.probe()
    snapshot = await observer.snapshot(elapsed, accounts=["bot1", "bot2"])
    await observer.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..coordination.subscription import Event, Gap
from ..errors import TradecacheError
from ..metrics import Histogram
from ..models import Ticker
from .common import BREAKER, TOPIC, DemoConfig, signed_size
from .dashboard import BotRow, ProcessRow, Snapshot, TickerRow
from .executor import breaker_options

__all__ = ["ClaimRecord", "Observer", "queue_state"]

PROBE = "demo-probe"  # topic of the dashboard's own pub/sub round trips


@dataclass(slots=True)
class ClaimRecord:
    """One grant of a market to a bot, as the bot reported it (times are verified-held)."""

    market: int
    fence: int
    bot: str
    start: float
    end: float
    lost: bool = False
    started: bool = False  # a claim_start record arrived


async def queue_state(cache: Any) -> tuple[int, int, int]:
    """``(entries, delivered but not acked, not delivered yet)`` of the order queue.

    Example: ``entries, pending, undelivered = await queue_state(cache)``
    """
    key = cache.keys.order_queue()
    length = int(await cache.client.xlen(key))
    groups = await cache.client.xinfo_groups(key) if length else []
    if not groups:
        return length, 0, length
    group = groups[0]
    last = group["last-delivered-id"]
    last = last.decode() if isinstance(last, bytes) else str(last)
    later = await cache.client.xrange(key, min=f"({last}", max="+", count=100_000)
    return length, int(group["pending"]), len(later)


class Observer:
    """Collects what the dashboard and the final checks need, from the parent's cache."""

    def __init__(self, cache: Any, config: DemoConfig) -> None:
        self.cache = cache
        self.config = config
        self.markets = config.markets()
        self.recent: deque[str] = deque(maxlen=10)
        self.claims: dict[tuple[int, int], ClaimRecord] = {}
        self.gaps = 0
        self.events = 0
        self.tickers: dict[str, Ticker] = {}
        self.ticks = 0
        self.latency = {
            name: Histogram() for name in ("pub/sub round trip", "ticker push", "lock acquire")
        }
        self.params: dict[str, dict[str, Any]] = {}  # last heartbeat params per component
        self.ids: dict[str, str] = {}  # process id per component
        self.on_note: Any = None  # called with each note too (the --no-ui printer)
        self.breaker = cache.breaker(BREAKER, **breaker_options())
        self.started = time.monotonic()  # event times count from here (the runner resets it)
        self._tasks: list[asyncio.Task[None]] = []
        self._probe_seq = itertools.count(1)
        self._probe: tuple[int, asyncio.Future[None]] | None = None
        self._rates: deque[tuple[float, int, int]] = deque(maxlen=12)
        self._sub: Any = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe (returns once subscribed) and start watching.

        Example: ``await observer.start()``
        """
        self._sub = await self.cache.events.subscribe(TOPIC, PROBE)
        self._tasks.append(asyncio.create_task(self._read()))
        for exchange in sorted({m.exchange for m in self.markets}):
            self._tasks.append(asyncio.create_task(self._watch(exchange)))
        self.breaker.on_change(self._on_breaker)
        await self.breaker.sync()

    async def close(self) -> None:
        """Stop watching; safe to call twice.

        Example: ``await observer.close()``
        """
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._sub is not None:
            await self._sub.close()
            self._sub = None
        await self.cache.tickers.close()

    def note(self, text: str) -> None:
        """Add a line (rich markup) to the recent events.

        Example: ``observer.note("chaos: killed bot2")``
        """
        self.recent.append(f"[dim]{time.monotonic() - self.started:6.1f}s[/] {text}")
        if self.on_note is not None:
            self.on_note(text)

    # --- feeds ---------------------------------------------------------------------------------

    async def _read(self) -> None:
        async for item in self._sub:
            if isinstance(item, Gap):
                if item.topic == TOPIC:
                    self.gaps += item.count or 1
                    self.note(f"[red]missed demo events {item.first_seq}..{item.last_seq}[/]")
                continue
            assert isinstance(item, Event)
            if item.topic == PROBE:
                probe = self._probe
                if probe is not None and item.payload == probe[0] and not probe[1].done():
                    probe[1].set_result(None)
                continue
            self.events += 1
            self.on_event(item.payload)

    def on_event(self, payload: dict[str, Any]) -> None:
        """Apply one demo event (claim records, stale processes, errors).

        Example: ``observer.on_event({"kind": "stale", "process": "bot2"})``
        """
        kind = payload.get("kind")
        if kind in ("claim_start", "claim_end"):
            key = (int(payload["market"]), int(payload["fence"]))
            t = float(payload["t"])
            record = self.claims.get(key)
            if record is None:
                record = self.claims[key] = ClaimRecord(key[0], key[1], payload["bot"], t, t)
            if kind == "claim_start":
                record.start, record.started = t, True
            else:
                record.end = max(record.end, t)
                record.lost = bool(payload.get("lost"))
                if record.lost:
                    self.note(
                        f"[red]claim lost[/] {payload['symbol']} by {payload['bot']} "
                        f"(fence …{str(payload['fence'])[-6:]}): {payload.get('reason')}"
                    )
        elif kind == "stale":
            self.note(f"[yellow]no heartbeat[/] from {payload['process']}")
        elif kind == "error":
            self.note(f"[red]error[/] in {payload['process']}: {payload['message']}")

    async def _watch(self, exchange: str) -> None:
        async for ticker in self.cache.tickers.watch(exchange):
            self.ticks += 1
            self.tickers[ticker.symbol] = ticker
            now = time.time()  # the store stamps `received` when it writes the ticker
            sent = ticker.received.timestamp() if ticker.received else now
            self.latency["ticker push"].record(max(now - sent, 0.0))

    def _on_breaker(self, transition: Any) -> None:
        self.note(
            f"[bold red]breaker[/] {transition.name}: {transition.previous} -> {transition.state}"
        )

    # --- measurements --------------------------------------------------------------------------

    async def probe(self) -> None:
        """One pub/sub round trip and one lock acquisition, timed into the latency panel.

        Example: ``await observer.probe()``
        """
        seq = next(self._probe_seq)
        done = asyncio.get_running_loop().create_future()
        self._probe = (seq, done)
        started = time.perf_counter()
        with contextlib.suppress(TradecacheError, TimeoutError):
            await self.cache.events.publish(PROBE, seq)
            await asyncio.wait_for(done, 2.0)
            self.latency["pub/sub round trip"].record(time.perf_counter() - started)
        started = time.perf_counter()
        with contextlib.suppress(TradecacheError):
            lease = await self.cache.lock("demo-probe", ttl=2.0, wait=1.0).acquire()
            self.latency["lock acquire"].record(time.perf_counter() - started)
            await lease.release()

    def percentiles(self) -> dict[str, tuple[float, float]]:
        """``{label: (p50 ms, p99 ms)}``: the parent's probes and what the children reported.

        Example: ``observer.percentiles()["lock acquire"]   # (0.4, 1.9)``
        """
        result = {
            name: (h.percentile(50), h.percentile(99))
            for name, h in self.latency.items()
            if h.count
        }
        reported = (
            ("claim (bots)", "bot", "bots.claim"),
            ("submit (bots)", "bot", "orders.submit"),
            ("fill (executors)", "exec", "demo.fill"),
            ("account lock", "exec", "lock.acquire"),
        )
        for label, prefix, op in reported:
            values = [
                params["latency"][op]
                for name, params in self.params.items()
                if name.startswith(prefix) and op in params.get("latency", {})
            ]
            if values:
                result[label] = (max(v[0] for v in values), max(v[1] for v in values))
        return result

    # --- snapshot ------------------------------------------------------------------------------

    async def snapshot(
        self,
        elapsed: float,
        accounts: list[str],
        *,
        duration: float | None = None,
        stage: str = "running",
        chaos: bool = False,
    ) -> Snapshot:
        """Read the system's state (about 10 round trips) into a dashboard snapshot.

        Example: ``snapshot = await observer.snapshot(12.5, ["bot1", "bot2"])``
        """
        cache = self.cache
        claims, processes, queue, trades, books = await asyncio.gather(
            cache.bots.claims(),
            cache.processes.list(),
            queue_state(cache),
            self.trades_pushed(accounts),
            asyncio.gather(*(self._book(account) for account in accounts)),
        )
        now = time.time()
        rows = []
        for info in processes:
            self.params[info.component] = info.params
            self.ids[info.component] = info.id
            age = now - info.updated.timestamp() if info.updated else 0.0
            rows.append(ProcessRow(info.kind, info.component, info.pid, info.status, max(age, 0.0)))
        rows.sort(key=lambda r: ("feed monitor executor bot".find(r.kind), r.name))
        live = {r.name for r in rows if r.age_s <= self.config.stale_after}
        holders = {(c.exchange, c.symbol): c for c in claims}
        tickers = []
        for market in self.markets:
            t = self.tickers.get(market.symbol)
            if t is None or t.last is None:
                continue
            claim = holders.get((market.exchange, market.symbol))
            age = now - t.received.timestamp() if t.received else 0.0
            tickers.append(
                TickerRow(
                    market.exchange,
                    market.symbol,
                    t.last,
                    t.percentage or 0.0,
                    max(age, 0.0),
                    claim.bot_id if claim else None,
                    claim.fence if claim else None,
                )
            )
        held = {name: sum(1 for c in claims if c.bot_id == name) for name in accounts}
        bots = []
        for account, (cash, sizes) in zip(accounts, books, strict=True):
            params = self.params.get(account, {})
            value = sum(
                (size * Decimal(str(self.tickers[s].last or 0)) for s, size in sizes.items()
                 if s in self.tickers),
                start=cash,
            )  # fmt: skip
            bots.append(
                BotRow(
                    account,
                    account in live,
                    held[account],
                    int(params.get("orders", 0)),
                    int(params.get("pending", 0)),
                    float(value - Decimal(self.config.initial_cash)),
                    int(params.get("lost", 0)),
                )
            )
        length, pending, queued = queue
        mono = time.monotonic()
        self._rates.append((mono, length, self.ticks))
        first = self._rates[0]
        span = max(mono - first[0], 1e-9)
        flow = {
            "submitted": float(length),
            "executed": float(length - pending - queued),
            "queued": float(queued),
            "pending": float(pending),
            "trades": float(trades),
            "consumed": float(self.params.get("monitor", {}).get("consumed", 0)),
            "orders_per_s": (length - first[1]) / span if len(self._rates) > 1 else 0.0,
            "ticks_per_s": (self.ticks - first[2]) / span if len(self._rates) > 1 else 0.0,
        }
        return Snapshot(
            elapsed=elapsed,
            duration=duration,
            mode=cache.mode,
            version=".".join(map(str, cache.server_version)),
            namespace=cache.keys.namespace,
            chaos=chaos,
            stage=stage,
            tickers=tickers,
            bots=bots,
            flow=flow,
            latency=self.percentiles(),
            processes=rows,
            events=list(self.recent),
            breaker=str(self.breaker.state.value),
        )

    async def final_params(self) -> dict[str, dict[str, Any]]:
        """The last params of every process seen, stopped ones included (re-read from Redis).

        Example: ``(await observer.final_params())["feed"]["updates"]``
        """
        infos = await asyncio.gather(*(self.cache.processes.get(i) for i in self.ids.values()))
        for info in infos:
            if info is not None:
                self.params[info.component] = info.params
        return self.params

    async def trades_pushed(self, accounts: list[str]) -> int:
        """How many trades the accounts' user-trade streams hold.

        Example: ``await observer.trades_pushed(["bot1", "bot2"])``
        """
        if not accounts:
            return 0
        lengths = await asyncio.gather(
            *(self.cache.client.xlen(self.cache.keys.user_trades(a)) for a in accounts)
        )
        return sum(int(n) for n in lengths)

    async def _book(self, account: str) -> tuple[Decimal, dict[str, Decimal]]:
        positions, balances = await asyncio.gather(
            self.cache.accounts.positions(account), self.cache.accounts.get_balances(account)
        )
        usdt = balances.get("USDT")
        cash = usdt.total if usdt is not None and usdt.total is not None else None
        if cash is None:
            cash = Decimal(self.config.initial_cash)
        return cash, {p.symbol: signed_size(p) for p in positions}
