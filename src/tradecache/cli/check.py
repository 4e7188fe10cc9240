"""``tradecache check [URL] [--json]``: the self-check suite as a command.

Runs :func:`tradecache.testing.selfcheck.run` and prints a table (or, with
``--json``, the report as JSON on stdout). The exit code is 0 when every check
passed, 1 when one failed (an unreachable server included: a clear message,
no traceback), 2 when no embedded server could be started::

    tradecache check                              # against an embedded server
    tradecache check redis://10.0.0.5:6379/0
    tradecache check redis+cluster://10.0.0.5:7000 --json | jq .success_rate
"""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from typing import Annotated

import typer
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..testing.selfcheck import Report, run
from .common import embedded_server, make_console

__all__ = ["check", "render_report"]


def render_report(report: Report) -> RenderableType:
    """The report as a rich table, its warnings and a summary line.

    Example: ``Console().print(render_report(await selfcheck.run(url)))``
    """
    table = Table(title=f"tradecache check: {escape(report.url)}", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("time", justify="right")
    table.add_column("detail", overflow="fold")
    for check in report.checks:
        if check.skipped:
            result = "[dim]skipped[/]"
        elif check.ok:
            result = "[green]ok[/]"
        else:
            result = "[bold red]FAILED[/]"
        table.add_row(check.name, result, f"{check.duration * 1000:.1f} ms", escape(check.detail))
    parts: list[RenderableType] = [table]
    for warning in report.warnings:
        parts.append(Text(f"warning: {warning}", style="yellow"))
    passed = sum(check.ok for check in report.counted)
    style = "green" if report.ok else "bold red"
    summary = (
        f"{passed}/{len(report.counted)} checks passed ({report.success_rate:.0%}) "
        f"in {report.duration:.2f} s"
    )
    ran = {check.name: check.ok for check in report.checks}
    if ran.get("cleanup"):
        summary += f"; namespace {report.namespace} removed"
    elif ran.get("namespace") is False:
        summary += f"; namespace {report.namespace} left untouched"
    parts.append(Text(summary, style=style))
    return Group(*parts)


def check(
    url: Annotated[str | None, typer.Argument(help="Redis URL (default: embedded).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.01, help="Seconds allowed per check.")
    ] = 5.0,
    load: Annotated[
        int, typer.Option("--load", min=1, help="SET/GET calls of the latency check.")
    ] = 500,
) -> None:
    """Run the self-check suite against a server (default: an embedded one)."""
    out, err = make_console(), make_console(stderr=True)
    with ExitStack() as stack:
        target = url if url is not None else stack.enter_context(embedded_server("check"))
        report = asyncio.run(run(target, timeout=timeout, load=load))
    if json_output:
        out.file.write(report.to_json() + "\n")
    else:
        out.print(render_report(report))
    connection = report.checks[0]
    if not connection.ok:
        err.print(
            f"[red]tradecache check:[/] cannot connect to {escape(report.url)}: "
            f"{escape(connection.detail)}"
        )
    elif not report.ok:
        names = ", ".join(check.name for check in report.failures)
        err.print(f"[red]tradecache check:[/] failed: {escape(names)}")
    raise typer.Exit(0 if report.ok else 1)
