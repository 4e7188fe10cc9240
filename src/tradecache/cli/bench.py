"""``tradecache bench [--url URL] [--quick] [--only NAME]``: ours vs raw redis-py, as ratios.

Runs the suites of :mod:`tradecache.bench` (the compact, installed versions of
the repository's ``benchmarks/bench_*.py``) against a given server or an
embedded one (TCP on 127.0.0.1), with a progress bar, and prints one row per
case: our throughput, raw redis-py's, and the median ratio ours/raw with its
p10..p90 spread::

    tradecache bench                          # every suite, ~1 minute
    tradecache bench --quick                  # a few seconds; figures are rough
    tradecache bench --only tickers --only lock --url redis://10.0.0.5:6379/0
    tradecache bench --quick --json > bench.json

For figures of record, pin the process and the server to one core
(``taskset -c 0 tradecache bench``): the embedded server inherits it.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..bench import SUITES, Row, run_benchmarks, select
from ..connection import redact_url
from ..errors import TradecacheError
from .common import embedded_server, make_console

__all__ = ["bench", "render_rows"]


def render_rows(rows: list[Row], title: str) -> Table:
    """The rows as a rich table (ratio > 1: faster than raw redis-py).

    Example: ``Console().print(render_rows(rows, "bench"))``
    """
    table = Table(title=escape(title), title_justify="left")
    table.add_column("case", overflow="fold")
    table.add_column("unit")
    table.add_column("ours /s", justify="right")
    table.add_column("raw /s", justify="right")
    table.add_column("ours/raw", justify="right", no_wrap=True)
    table.add_column("p10..p90", justify="right", no_wrap=True)
    suite = None
    for row in rows:
        if row.suite != suite:
            suite = row.suite
            table.add_row(f"[bold]{escape(suite)}[/]", end_section=False)
        style = "green" if row.ratio >= 0.9 else "yellow" if row.ratio >= 0.5 else "red"
        table.add_row(
            "  " + escape(row.case),
            row.unit,
            f"{row.ours:,.0f}",
            f"{row.raw:,.0f}",
            f"[{style}]{row.ratio:.2f}x[/]",
            f"{row.low:.2f}..{row.high:.2f}",
        )
    return table


def _run(
    url: str, only: list[str], rounds: int, slice_s: float, warmup: int, err: Console
) -> list[Row]:
    suites = select(only)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    task = progress.add_task("starting", total=len(suites))
    step = 0.0

    def on_case(suite: str, case: str, cases: int) -> None:
        nonlocal step
        step = 1 / (cases * rounds)
        progress.update(task, description=f"{suite}: {case}")

    def tick() -> None:
        progress.advance(task, step)

    with progress:
        return asyncio.run(
            run_benchmarks(
                url,
                suites,
                rounds=rounds,
                slice_s=slice_s,
                warmup=warmup,
                on_case=on_case,
                tick=tick,
            )
        )


def bench(
    url: Annotated[
        str | None, typer.Option("--url", help="Redis URL (default: an embedded server).")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="2 short rounds per case: a smoke run.")
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help=f"Run only this suite (repeatable): {', '.join(SUITES)}."),
    ] = None,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Rounds per case.")] = 10,
    slice_s: Annotated[float, typer.Option("--slice", min=0.001, help="Seconds per slice.")] = 0.2,
    json_output: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """This library against raw redis-py on the same server, as ratios."""
    out, err = make_console(), make_console(stderr=True)
    warmup = 20
    if quick:
        rounds, slice_s, warmup = 2, 0.02, 3
    with ExitStack() as stack:
        target = url or stack.enter_context(embedded_server("bench", tcp=True))
        try:
            rows = _run(target, only or [], rounds, slice_s, warmup, err)
        except TradecacheError as exc:
            err.print(f"[red]tradecache bench:[/] {escape(str(exc))}")
            raise typer.Exit(1) from None
    if json_output:
        out.file.write(json.dumps([row.to_dict() for row in rows], indent=2) + "\n")
        return
    title = f"tradecache vs raw redis-py on {redact_url(target)} ({rounds} rounds x {slice_s}s)"
    out.print(render_rows(rows, title))
