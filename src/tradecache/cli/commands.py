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
    RedisServer,
    RedisServerError,
    find_redis_server,
    reap_stale,
)

__all__ = ["app"]

app = typer.Typer(
    name="tradecache",
    help="tradecache: shared trading state on Redis. Operator tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
        int, typer.Option("--replicas", min=0, help="Cluster replicas per master.")
    ] = 0,
) -> None:
    """Run an embedded, ephemeral Redis and print its URL until Ctrl-C."""
    out, err = _console(), _console(stderr=True)
    reap_stale()
    try:
        binary = find_redis_server()
    except RedisServerError as exc:
        err.print(f"[red]tradecache server:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    instance: RedisServer | RedisClusterServer
    if cluster:
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


def _not_yet(command: str) -> NoReturn:
    _console(stderr=True).print(f"tradecache {command}: not implemented yet")
    raise typer.Exit(2)


@app.command()
def demo() -> None:
    """A simulated trading system on one Redis, with a live dashboard (not yet)."""
    _not_yet("demo")


@app.command()
def check(
    url: Annotated[str | None, typer.Argument(help="Redis URL (default: embedded).")] = None,
    json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
) -> None:
    """Run the self-check suite against a server (not yet)."""
    _not_yet("check")


@app.command()
def bench() -> None:
    """This library against raw redis-py on the same server, as ratios (not yet)."""
    _not_yet("bench")


@app.command()
def top(
    url: Annotated[str | None, typer.Argument(help="Redis URL (default: $REDIS_URL).")] = None,
) -> None:
    """A live view of a deployment (not yet)."""
    _not_yet("top")
