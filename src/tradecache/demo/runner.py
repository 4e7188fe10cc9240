"""``tradecache demo``: run the simulated trading system, show it live, check its invariants.

:func:`run_demo` is the whole command::

    code = run_demo(DemoOptions(duration=20, ui=False, json=True))   # 0 when every check holds

The order of things:

1. an embedded Redis (standalone, or a 3-master Cluster) unless a URL is
   given (then a fresh namespace ``demo-<hex>``, deleted at the end);
2. the parent subscribes to the demo topic, then starts the children (feed,
   monitor, executors, bots) and waits until each one registered;
3. the dashboard (or a status line per second) runs for ``duration`` seconds or
   until Ctrl-C; with ``chaos`` a bot or an executor is paused or killed (and
   replaced), or the simulated exchange goes down, every ``chaos_every`` s;
4. shutdown: the bots stop (handing their claims back), the executors and the
   ledger drain what is left, then everything stops;
5. the invariants are checked from Redis (:mod:`tradecache.demo.summary`)
   and printed (as JSON with ``json``); the exit code is 1 if one is violated.

Whatever happens (an error, a second Ctrl-C), every child is killed and the
embedded server stopped before this returns; children also die with the
parent (``PR_SET_PDEATHSIG``) if it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import ResponseError
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from ..errors import ConnectionLost, TradecacheError
from ..server import (
    RedisClusterServer,
    RedisServer,
    RedisServerError,
    find_redis_server,
    reap_stale,
)
from .common import LEDGER_GROUP, ORDER_GROUP, OUTAGE, DemoConfig, connect
from .dashboard import line, render
from .observe import Observer, queue_state
from .summary import (
    Summary,
    check_accounts,
    check_claims,
    check_orders,
    check_processes,
    check_trades,
    gather,
)
from .summary import render as render_summary
from .supervisor import Supervisor

__all__ = ["DemoError", "DemoOptions", "run_demo"]


class DemoError(TradecacheError):
    """The demo could not run (children did not start, Redis went away ...)."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """The options of ``tradecache demo`` (see ``tradecache demo --help``)."""

    url: str | None = None
    cluster: bool = False
    duration: float | None = None
    bots: int = 4
    executors: int = 2
    rate: float = 50.0
    symbols: int = 20
    chaos: bool = False
    chaos_every: float = 2.0
    ui: bool = True
    json: bool = False
    refresh: float = 0.25
    startup_timeout: float = 90.0
    drain_timeout: float = 45.0
    seed: int | None = None


def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo to its end; return the exit code (0 ok, 1 violated or failed, 2 usage, 130).

    By default the dashboard and the summary table go to stdout (stderr with
    ``json``: stdout is then the JSON summary alone) and messages and
    ``--no-ui`` status lines to stderr; a given ``console`` receives all of them.

    Example: ``sys.exit(run_demo(DemoOptions(duration=20)))``
    """
    log = console or Console(stderr=True, highlight=False)
    if console is None:
        console = Console(stderr=options.json, highlight=False)
    return asyncio.run(Demo(options, console, log).main())


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), max(seconds, 0.0))


@contextlib.contextmanager
def _sigint_blocked() -> Any:
    """Servers started here inherit a blocked SIGINT: a Ctrl-C in the terminal (sent to
    the whole foreground group) must not stop Redis before the demo checked its state."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Demo:
    """One run of the demo (see the module documentation)."""

    _task: asyncio.Task[Any]  # the main task, cancelled by a second Ctrl-C

    def __init__(self, options: DemoOptions, console: Console, log: Console) -> None:
        self.options = options
        self.console = console
        self.log = log
        self.ui = options.ui and console.is_terminal
        self.stop = asyncio.Event()
        self.interrupts = 0
        self.live: Live | None = None
        self.keep_logs = False
        self._last_line = 0.0

    def say(self, text: str) -> None:
        """Print a message (rich markup): above the dashboard, or as a log line.

        Example: ``demo.say("[red]chaos[/]: killed bot2")``
        """
        (self.console if self.live is not None else self.log).print(
            text, highlight=False, soft_wrap=True
        )

    # --- the whole run -------------------------------------------------------------------------

    async def main(self) -> int:
        """Run, clean up, return the exit code.

        Example: ``code = asyncio.run(Demo(options, console, log).main())``
        """
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()  # type: ignore[assignment]  # always in a task
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._interrupt)
        try:
            return await self._run()
        except asyncio.CancelledError:
            self.say("[red]tradecache demo: aborted[/]")
            return 130
        except (RedisServerError, ConnectionLost, DemoError) as exc:
            self.say(f"[red]tradecache demo:[/] {escape(str(exc))}")
            return 2 if isinstance(exc, RedisServerError) else 1
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _interrupt(self) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            self.stop.set()
            self.say("[yellow]stopping: draining and checking (Ctrl-C again to abort)[/]")
        else:
            self._task.cancel()

    async def _run(self) -> int:
        async with contextlib.AsyncExitStack() as stack:
            url, namespace = await self._server(stack)
            o = self.options
            config = DemoConfig(
                url=url,
                namespace=namespace,
                symbols=o.symbols,
                rate=o.rate,
                bots=o.bots,
                executors=o.executors,
                seed=o.seed,
            )
            cache = await stack.enter_async_context(connect(config))
            if o.url is not None:
                stack.push_async_callback(_delete_namespace, cache)
            observer = Observer(cache, config)
            await observer.start()
            stack.push_async_callback(observer.close)
            if not self.ui:
                observer.on_note = self.say
            log_dir = Path(tempfile.mkdtemp(prefix="tradecache-demo-"))
            stack.callback(self._remove_logs, log_dir)
            supervisor = Supervisor(config, log_dir, observer.note)
            stack.callback(supervisor.kill_all)
            if self.ui:
                self.live = Live(console=self.console, auto_refresh=False, transient=False)
                self.live.start()
                stack.callback(self.live.stop)
            run = _Run(self, cache, config, observer, supervisor)
            summary = await run.execute()
            self.keep_logs = not summary.ok
            if self.live is not None:
                self.live.stop()
            if self.keep_logs:
                self.say(f"child logs kept in {log_dir}")
            if o.json:
                sys.stdout.write(summary.to_json() + "\n")
                sys.stdout.flush()
            else:
                self.console.print(render_summary(summary))
            return 0 if summary.ok else 1
        raise AssertionError("unreachable")  # pragma: no cover - the stack returns above

    async def _server(self, stack: contextlib.AsyncExitStack) -> tuple[str, str]:
        """The URL to use and the namespace: a given URL, or a server started here."""
        if self.options.url is not None:
            return self.options.url, f"demo-{secrets.token_hex(3)}"
        reap_stale()
        binary = find_redis_server()
        with _sigint_blocked():
            if self.options.cluster:
                cluster = RedisClusterServer(binary, masters=3)
                stack.callback(cluster.stop)
                cluster.start(wait=False)
            else:
                server = RedisServer(binary)
                stack.callback(server.stop)
                server.start()
        if self.options.cluster:
            await cluster.wait_ready_async()
            return cluster.url, "demo"
        return server.url, "demo"

    def _remove_logs(self, log_dir: Path) -> None:
        if not self.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)

    def show(self, snapshot: Any) -> None:
        """Show a snapshot: redraw the dashboard, or print a line (at most once a second).

        Example: ``demo.show(await observer.snapshot(elapsed, accounts))``
        """
        if self.live is not None:
            self.live.update(render(snapshot), refresh=True)
            return
        now = time.monotonic()
        if now - self._last_line >= 1.0:
            self._last_line = now
            self.say(escape(line(snapshot)))


async def _delete_namespace(cache: Any) -> None:
    """Delete every key of the demo's namespace (on a server the demo does not own)."""
    keys = [key async for key in _scan(cache)]
    for offset in range(0, len(keys), 500):
        pipe = cache.client.pipeline(transaction=False)
        for key in keys[offset : offset + 500]:
            pipe.unlink(key)
        await pipe.execute()


async def _scan(cache: Any) -> AsyncIterator[Any]:
    async for key in cache.client.scan_iter(match=cache.keys.all_pattern(), count=1000):
        yield key


class _Run:
    """The phases of one run, between setup and cleanup."""

    def __init__(
        self,
        demo: Demo,
        cache: Any,
        config: DemoConfig,
        observer: Observer,
        supervisor: Supervisor,
    ) -> None:
        self.demo = demo
        self.options = demo.options
        self.cache = cache
        self.config = config
        self.observer = observer
        self.supervisor = supervisor
        self.started = time.monotonic()
        self.stage = "starting"

    @property
    def stop(self) -> asyncio.Event:
        return self.demo.stop

    def accounts(self) -> list[str]:
        return self.supervisor.names("bot")

    async def refresh(self) -> None:
        """Probe latencies, take a snapshot, show it."""
        await self.observer.probe()
        snapshot = await self.observer.snapshot(
            time.monotonic() - self.started,
            self.accounts(),
            duration=self.options.duration,
            stage=self.stage,
            chaos=self.options.chaos,
        )
        self.demo.show(snapshot)

    async def execute(self) -> Summary:
        self.supervisor.start_all()
        await self._wait_ready()
        self.started = self.observer.started = time.monotonic()
        self.stage = "running"
        await self._trade()
        self.stage = "stopping bots"
        await self.refresh()
        await self.supervisor.stop(("bot",))
        self.stage = "draining"
        pushed, consumed, unacked = await self._drain()
        self.stage = "stopping"
        await self.supervisor.stop(("executor", "feed", "monitor"))
        return await self._summary(pushed, consumed, unacked)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.startup_timeout
        while not self.stop.is_set():
            self.supervisor.poll()
            registered = {p.component for p in await self.cache.processes.list()}
            if {c.name for c in self.supervisor.current.values()} <= registered:
                return
            if time.monotonic() > deadline:
                tails = "; ".join(c.tail(2) for c in self.supervisor.alive())
                raise DemoError(f"the demo processes did not start in time: {tails}")
            await self.refresh()
            await _wait(self.stop, self.options.refresh)

    async def _trade(self) -> None:
        duration = self.options.duration
        deadline = None if duration is None else self.started + duration
        chaos_due = self.started + self.options.chaos_every
        while not self.stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            await self._postpone_kills()
            self.supervisor.poll()
            if self.options.chaos and now >= chaos_due:
                chaos_due = now + self.options.chaos_every
                if await self.supervisor.chaos() == "outage":
                    await self.cache.state(OUTAGE, ttl=1.5).set(True)
                    self.observer.note("chaos: the exchange is down for 1.5s")
            await self.refresh()
            await _wait(self.stop, self.options.refresh)

    async def _postpone_kills(self) -> None:
        """Kill a frozen executor only once it holds orders (up to its deadline), so that
        the others must reclaim them: the point of that chaos action."""
        key = self.cache.keys.order_queue()
        for child in self.supervisor.doomed():
            try:
                held = await self.cache.client.xpending_range(
                    key, ORDER_GROUP, "-", "+", 1, consumername=child.name
                )
            except ResponseError:  # NOGROUP: no executor has read the queue yet
                held = []
            if not held and time.monotonic() < child.kill_by:
                child.kill_at = time.monotonic() + 0.25

    async def _drain(self) -> tuple[int, int, int]:
        """Wait until every order is executed and every trade consumed (or the timeout)."""
        deadline = time.monotonic() + self.options.drain_timeout
        while True:
            self.supervisor.poll()
            _, pending, queued = await queue_state(self.cache)
            pushed = await self.observer.trades_pushed(self.accounts())
            unacked = await self.cache.trades.pending_user_trades(LEDGER_GROUP)
            monitors = await self.cache.processes.list(kind="monitor")
            consumed = int(monitors[0].params.get("consumed", -1)) if monitors else -1
            if pending == queued == unacked == 0 and consumed == pushed:
                return pushed, consumed, unacked
            if time.monotonic() > deadline:
                self.observer.note("[red]drain timed out[/]")
                return pushed, consumed, unacked + pending + queued
            await self.refresh()
            await asyncio.sleep(self.options.refresh)

    async def _summary(self, pushed: int, consumed: int, unacked: int) -> Summary:
        facts = await gather(self.cache, self.accounts())
        params = await self.observer.final_params()
        checks = [
            check_orders(facts),
            check_accounts(facts, self.config),
            check_trades(pushed, consumed, unacked),
            check_claims(self.observer.claims, facts, self.observer.gaps),
            check_processes(self.supervisor.crashes),
        ]

        def total(prefix: str, key: str) -> int:
            return sum(int(p.get(key, 0)) for n, p in params.items() if n.startswith(prefix))

        counts = {
            "orders_submitted": len(facts.queued),
            "trades_pushed": pushed,
            "trades_consumed": consumed,
            "ticker_updates": total("feed", "updates"),
            "ticker_updates_seen": self.observer.ticks,
            "claims": len(self.observer.claims),
            "claims_lost": sum(1 for c in self.observer.claims.values() if c.lost),
            "submits_deduplicated": total("bot", "deduplicated"),
            "fills_resumed": total("exec", "resumed"),
            "deliveries_replayed": total("exec", "replayed"),
            "orders_reclaimed": total("exec", "reclaimed"),
            "bots_started": len(self.supervisor.names("bot")),
            "executors_started": len(self.supervisor.names("executor")),
            "chaos": dict(sorted(self.supervisor.chaos_done.items())),
        }
        cache = self.cache
        info = {
            "duration_s": round(time.monotonic() - self.started, 2),
            "mode": cache.mode,
            "redis_version": ".".join(map(str, cache.server_version)),
            "namespace": cache.keys.namespace,
            "options": {
                "bots": self.config.bots,
                "executors": self.config.executors,
                "symbols": self.config.symbols,
                "rate": self.config.rate,
                "chaos": self.options.chaos,
            },
        }
        return Summary(checks, counts, self.observer.percentiles(), info)
