"""``tradecache bench``: every benchmark suite, ours vs raw redis-py (and others), as ratios.

Runs the suites of :mod:`tradecache.bench` against a given server or an
embedded one (TCP on 127.0.0.1; the ``cluster`` suite starts an embedded
3-master Cluster unless ``--cluster-url`` is given), with a progress bar, and
prints one row per case: throughputs, the median ratio ours/baseline with its
p10..p90 spread, p50/p99 latencies, then every goal as met or missed::

    tradecache bench                          # every suite, a few minutes
    tradecache bench --quick                  # a smoke run of seconds: figures mean nothing
    tradecache bench --only tickers --only lock --url redis://10.0.0.5:6379/0
    tradecache bench --skip cluster --out bench-run   # writes bench-run.md and bench-run.json
    tradecache bench --markdown               # the markdown section on stdout
    tradecache bench --json > bench.json

``benchmarks/bench_<suite>.py`` and ``benchmarks/run_all.py`` are this
command (:func:`run_script`) with ``--markdown``.

For figures of record, pin the process and the server to one core
(``taskset -c 0 tradecache bench --skip cluster``; the embedded server inherits
it) and run the ``cluster`` suite unpinned: its point is using more cores.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..bench import SUITES, Report, Row, run_report, select
from ..connection import redact_url
from ..errors import TradecacheError
from .common import embedded_server, make_console

__all__ = ["bench", "render_goals", "render_rows", "run_script"]


def _latency(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f}ms" if value >= 1000 else f"{value:.0f}µs"


def render_rows(rows: list[Row], title: str) -> Table:
    """The rows as a rich table (ratio > 1: faster than the baseline).

    Example: ``Console().print(render_rows(report.rows, "bench"))``
    """
    table = Table(title=escape(title), title_justify="left")
    table.add_column("case", overflow="fold", min_width=24)
    table.add_column("ours /s", justify="right")
    table.add_column("baseline /s", justify="right")
    table.add_column("ours/base", justify="right", no_wrap=True)
    table.add_column("p10..p90", justify="right", no_wrap=True)
    table.add_column("p50/p99 ours", justify="right", no_wrap=True)
    table.add_column("p50/p99 base", justify="right", no_wrap=True)
    table.add_column("goal", overflow="fold")
    suite = None
    for row in rows:
        if row.suite != suite:
            suite = row.suite
            table.add_row(f"[bold]{escape(suite)}[/]", end_section=False)
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        style = (
            "green" if (row.ratio or 0) >= 0.9 else "yellow" if (row.ratio or 0) >= 0.5 else "red"
        )
        spread = "-" if row.low is None or row.high is None else f"{row.low:.2f}..{row.high:.2f}"
        table.add_row(
            "  " + escape(row.case) + (f" [dim]({escape(row.note)})[/]" if row.note else ""),
            "-" if row.ours is None else f"{row.ours:,.0f}",
            "-" if row.raw is None else f"{row.raw:,.0f}",
            f"[{style}]{ratio}[/]",
            spread,
            f"{_latency(row.ours_p50_us)}/{_latency(row.ours_p99_us)}",
            f"{_latency(row.raw_p50_us)}/{_latency(row.raw_p99_us)}",
            _goal(row),
        )
    return table


def _goal(row: Row) -> str:
    if row.goal is None:
        return ""
    verdict = {True: "[green]met[/]", False: "[red]missed[/]", None: "[dim]not measured[/]"}
    return f"{escape(row.goal)}: {verdict[row.met]}"


def render_goals(rows: list[Row]) -> Table:
    """The goals of ``rows``, met or missed, as a rich table.

    Example: ``Console().print(render_goals(report.rows))``
    """
    table = Table(title="goals", title_justify="left")
    table.add_column("goal", overflow="fold")
    table.add_column("case", overflow="fold")
    table.add_column("verdict")
    for row in rows:
        if row.goal is not None:
            table.add_row(escape(row.goal), escape(f"{row.suite}: {row.case}"), _goal(row))
    return table


def _run(
    url: str,
    only: list[str],
    skip: list[str],
    options: tuple[int, float, int, bool],
    cluster_url: str | None,
    err: Console,
) -> Report:
    rounds, slice_s, warmup, quick = options
    suites = select(only, skip)
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
            run_report(
                url,
                suites,
                rounds=rounds,
                slice_s=slice_s,
                warmup=warmup,
                quick=quick,
                cluster_url=cluster_url,
                on_case=on_case,
                tick=tick,
            )
        )


def bench(
    url: Annotated[
        str | None, typer.Option("--url", help="Redis URL (default: an embedded server).")
    ] = None,
    cluster_url: Annotated[
        str | None,
        typer.Option(
            "--cluster-url", help="Cluster for the cluster suite (default: an embedded one)."
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="A smoke run of seconds: figures mean nothing.")
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help=f"Run only this suite (repeatable): {', '.join(SUITES)}."),
    ] = None,
    skip: Annotated[
        list[str] | None, typer.Option("--skip", help="Leave this suite out (repeatable).")
    ] = None,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Rounds per case.")] = 10,
    slice_s: Annotated[float, typer.Option("--slice", min=0.001, help="Seconds per slice.")] = 0.2,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the report as a markdown section.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Also write OUT.md and OUT.json (for BENCHMARKS.md)."),
    ] = None,
) -> None:
    """This library against raw redis-py on the same server, as ratios, with its goals."""
    console, err = make_console(), make_console(stderr=True)
    warmup = 20
    if quick:
        rounds, slice_s, warmup = 2, 0.02, 3
    with ExitStack() as stack:
        target = url or stack.enter_context(embedded_server("bench", tcp=True))
        try:
            options = (rounds, slice_s, warmup, quick)
            report = _run(target, only or [], skip or [], options, cluster_url, err)
        except TradecacheError as exc:
            err.print(f"[red]tradecache bench:[/] {escape(str(exc))}")
            raise typer.Exit(1) from None
    if out is not None:
        md, js = Path(f"{out}.md"), Path(f"{out}.json")
        md.write_text(report.markdown())
        js.write_text(report.to_json())
        err.print(f"wrote {md} and {js}")
    if json_output:
        console.file.write(report.to_json())
    elif markdown:
        console.file.write(report.markdown())
    else:
        title = f"tradecache vs baselines on {redact_url(target)} ({rounds} rounds x {slice_s}s)"
        console.print(render_rows(report.rows, title))
        console.print(render_goals(report.rows))


def run_script(suites: Sequence[str] = (), argv: Sequence[str] | None = None) -> None:
    """What ``benchmarks/bench_<suite>.py`` runs: ``tradecache bench --markdown --only ...``.

    ``argv`` (default ``sys.argv[1:]``) adds options (``--url``, ``--quick`` ...);
    no ``suites``: all of them. Exits the process like the command line.

    Example: ``run_script(["tickers"], ["--quick"])``
    """
    from .app import main

    extra = sys.argv[1:] if argv is None else list(argv)
    main(["bench", "--markdown", *[f"--only={name}" for name in suites], *extra])
