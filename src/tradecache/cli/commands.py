"""The ``tradecache`` commands (typer + rich); imported by :func:`tradecache.cli.app.main`.

Each command works on an embedded Redis when no URL is given::

    tradecache server                   # unix socket, ephemeral
    tradecache server --port 0          # TCP on a free port
    tradecache server --cluster --replicas 1
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from ..server import (
    RedisClusterServer,
    RedisSentinelServer,
    RedisServer,
    RedisServerError,
    find_redis_server,
    reap_stale,
)
from .bench import bench
from .check import check
from .common import LogLevel, configure_logging
from .top import top

__all__ = ["app"]

app = typer.Typer(
    name="tradecache",
    help="tradecache: shared trading state on Redis. Operator tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(
    ctx: typer.Context,
    log_level: Annotated[
        LogLevel,
        typer.Option(
            "--log-level",
            envvar="TRADECACHE_LOG_LEVEL",
            case_sensitive=False,
            help="Show tradecache's log records from this level on (rich, on stderr).",
        ),
    ] = LogLevel.WARNING,
) -> None:
    """tradecache: shared trading state on Redis. Operator tools."""
    ctx.call_on_close(configure_logging(log_level))


def _console(stderr: bool = False) -> Console:
    # soft_wrap: a URL must stay on one line, whatever the terminal width.
    return Console(stderr=stderr, soft_wrap=True, highlight=False)


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


@app.command()
def server(
    cluster: Annotated[bool, typer.Option("--cluster", help="Run a Redis Cluster.")] = False,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            help="TCP port (0: any free port; cluster: the first node's, then +1 ...). "
            "Default: a unix socket only (a cluster: free ports).",
        ),
    ] = None,
    masters: Annotated[int, typer.Option("--masters", min=1, help="Cluster masters.")] = 3,
    replicas: Annotated[
        int | None,
        typer.Option(
            "--replicas",
            min=0,
            help="Replicas: per master of a cluster (default 0), of a Sentinel master (default 1).",
        ),
    ] = None,
    sentinel: Annotated[
        bool,
        typer.Option(
            "--sentinel",
            help="Run a Sentinel topology: a master, its replicas and 3 sentinels (free ports).",
        ),
    ] = False,
) -> None:
    """Run an embedded, ephemeral Redis and print its URL until Ctrl-C."""
    out, err = _console(), _console(stderr=True)
    if sentinel and (cluster or port is not None):
        err.print("[red]tradecache server:[/] --sentinel takes neither --cluster nor --port")
        raise typer.Exit(2)
    reap_stale()
    try:
        binary = find_redis_server()
    except RedisServerError as exc:
        err.print(f"[red]tradecache server:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    instance: RedisServer | RedisClusterServer | RedisSentinelServer
    if sentinel:
        replicas = 1 if replicas is None else replicas
        instance = RedisSentinelServer(binary, replicas=replicas)
        kind = f"Sentinel: 1 master, {replicas} replica(s), 3 sentinels"
    elif cluster:
        replicas = replicas or 0
        instance = RedisClusterServer(binary, masters=masters, replicas=replicas, port=port or 0)
        kind = f"cluster of {masters} masters, {replicas} replica(s) each"
    else:
        instance = RedisServer(binary, port=port)
        kind = "standalone"
    # Explicit handlers: a shell starts background jobs with SIGINT ignored.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with instance:
            out.print(f"[bold]{escape(str(binary))}[/], {kind}")
            out.print(f"REDIS_URL={instance.url}")
            out.print("Ephemeral: the data goes when it stops. Press Ctrl-C to stop.")
            out.file.flush()
            while True:
                signal.pause()
    except KeyboardInterrupt:
        err.print("tradecache server: stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command()
def demo(
    url: Annotated[
        str | None,
        typer.Option("--url", help="Use this Redis (a fresh namespace, deleted at the end)."),
    ] = None,
    cluster: Annotated[
        bool, typer.Option("--cluster", help="Embedded Redis Cluster of 3 masters.")
    ] = False,
    duration: Annotated[
        float | None,
        typer.Option("--duration", min=0.1, help="Seconds to run (default: until Ctrl-C)."),
    ] = None,
    bots: Annotated[int, typer.Option("--bots", min=1, max=50, help="Trading bots.")] = 4,
    executors: Annotated[
        int, typer.Option("--executors", min=1, max=20, help="Order executors.")
    ] = 2,
    rate: Annotated[
        float, typer.Option("--rate", min=0.1, max=5000, help="Ticker updates per second.")
    ] = 50.0,
    symbols: Annotated[
        int, typer.Option("--symbols", min=1, max=24, help="Markets (spread over 3 exchanges).")
    ] = 20,
    chaos: Annotated[
        bool,
        typer.Option("--chaos", help="Pause or kill bots and executors, take the exchange down."),
    ] = False,
    chaos_every: Annotated[
        float, typer.Option("--chaos-every", min=0.2, help="Seconds between chaos actions.")
    ] = 2.0,
    no_ui: Annotated[bool, typer.Option("--no-ui", help="Plain log lines, no dashboard.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the price walks.")] = None,
) -> None:
    """A simulated trading system on one Redis, with a live dashboard and checked invariants."""
    from ..demo.runner import DemoOptions, run_demo

    options = DemoOptions(
        url=url,
        cluster=cluster,
        duration=duration,
        bots=bots,
        executors=executors,
        rate=rate,
        symbols=symbols,
        chaos=chaos,
        chaos_every=chaos_every,
        ui=not no_ui,
        json=json,
        seed=seed,
    )
    raise typer.Exit(run_demo(options))


# check, bench and top live in their own modules (cli/check.py, cli/bench.py, cli/top.py).
app.command()(check)
app.command()(bench)
app.command()(top)
