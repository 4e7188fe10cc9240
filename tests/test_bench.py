"""The benchmark suite: harness, suites, worker processes, ``tradecache bench`` and the scripts.

Speed is never asserted (the machine is shared): these tests check that every
suite runs and reports its rows, goals and baselines, and that nothing is left
behind (keys, processes, servers).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import queue
import runpy
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from tradecache.bench import (
    SUITES,
    Case,
    Goal,
    Probe,
    Report,
    Row,
    at_least,
    at_most,
    measure_case,
    run_report,
    select,
    suite,
)
from tradecache.bench.harness import count_round_trips, percentile
from tradecache.bench.suites import skipped
from tradecache.bench.workers import (
    Pool,
    WorkerError,
    handoff_stats,
    pass_token,
    resp,
    serve,
)
from tradecache.cli import commands
from tradecache.cli.bench import run_script
from tradecache.errors import ValidationError
from tradecache.testing import wait_until
from tradecache.testing.plugin import Endpoint

runner = CliRunner()
CLOSED = "redis://127.0.0.1:1/0"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tmp_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="tcb", dir="/tmp"))
    monkeypatch.setenv("TRADECACHE_TMPDIR", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


# --- the smoke run: every suite, embedded servers ---------------------------------------------


@pytest.mark.slow
def test_quick_run_reports_every_suite_on_embedded_servers(tmp_root: Path, tmp_path: Path) -> None:
    stem = tmp_path / "run"
    args = ["bench", "--quick", "--out", str(stem)]
    result = runner.invoke(commands.app, args, env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    report = json.loads(Path(f"{stem}.json").read_text())
    assert report["quick"] is True and "redis" in report["environment"]
    rows = report["rows"]
    assert {row["suite"] for row in rows} == set(SUITES)
    by_case = {(row["suite"], row["case"]): row for row in rows}
    for name in ("tickers", "orders", "processes", "events", "breaker", "idempotency"):
        measured = [row for row in rows if row["suite"] == name and row["ratio"] is not None]
        assert measured and all(row["ours"] > 0 and row["raw"] > 0 for row in measured)
    tickers = {case for suite_name, case in by_case if suite_name == "tickers"}
    assert any("vs reference" in case for case in tickers) and len(tickers) == 6
    assert by_case["tickers", "set_many(100) vs reference"]["goal"] == "ours >= 5x reference"
    assert by_case["tickers", "set vs reference"]["raw_trips"] == 3
    handoff, floor = [row for row in rows if row["suite"] == "lock" and "handoff" in row["case"]]
    assert handoff["baseline"] == "redis-py Lock" and handoff["met"] in (True, False)
    assert handoff["extra"]["overlapping grants"] == 0 and handoff["ours_p99_us"] > 0
    # the floor, next to it: the same handoff against a bare PUBLISH ring of the processes
    assert floor["case"].startswith("handoff vs the floor, 4 processes x 3 grants")
    assert floor["baseline"] == "floor: bare PUBLISH ring, raw sockets" and floor["goal"] is None
    assert floor["ours"] == handoff["ours"] and floor["ours_p99_us"] == handoff["ours_p99_us"]
    assert floor["raw"] > 0 and 0 < floor["raw_p50_us"] <= floor["raw_p99_us"]
    assert floor["ratio"] == pytest.approx(floor["ours"] / floor["raw"])
    assert floor["extra"]["cpu ms/grant floor"] > 0 and floor["extra"]["overlapping grants"] == 0
    assert floor["extra"]["gap p99 ms over the floor"] == pytest.approx(
        (floor["ours_p99_us"] - floor["raw_p99_us"]) / 1000
    )
    scaling = [row for row in rows if row["suite"] == "cluster"]
    assert [row["extra"]["processes"] for row in scaling] == [1, 2, 4] * 3
    assert all(row["ours"] > 0 and row["raw"] > 0 for row in scaling)
    assert scaling[0]["extra"]["ours scaling vs 1 process"] == 1.0
    markdown = Path(f"{stem}.md").read_text()
    assert markdown.startswith("## Benchmark run") and "**Quick smoke run" in markdown
    assert "### Goals" in markdown and "| ours >= 0.85x raw redis-py |" in markdown
    assert "Cluster scaling curve reported" in markdown
    assert "### cluster: scaling with client processes" in markdown
    assert "| tickers.set | 1 |" in markdown and "| lock | 4 |" in markdown
    for name in SUITES:
        assert f"### {name}" in markdown and name in result.stdout
    assert "goals" in result.stdout and "Traceback" not in result.output
    assert not list(tmp_root.iterdir())  # the embedded server and Cluster are gone


# --- the command line -------------------------------------------------------------------------


def test_json_of_one_suite(redis_url: str) -> None:
    args = ["bench", "--quick", "--json", "--only", "events", "--url", redis_url]
    result = runner.invoke(commands.app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    [throughput, round_trip] = report["rows"]
    assert throughput["case"] == "publish vs PUBLISH (1 subscriber)"
    assert round_trip["case"] == "publish -> receive vs redis-py PubSub"
    for row in report["rows"]:
        assert row["ours"] > 0 and row["raw"] > 0 and row["ratio"] > 0 and row["rounds"] == 2
        assert row["ours_p50_us"] <= row["ours_p99_us"] and row["trips"] == 1
    assert redis.Redis.from_url(redis_url).dbsize() == 0  # its namespace is gone


def test_markdown_with_explicit_rounds_and_skip(redis_url: str) -> None:
    args = ["bench", "--rounds", "1", "--slice", "0.001", "--markdown", "--url", redis_url]
    skip = [arg for name in SUITES if name != "idempotency" for arg in ("--skip", name)]
    result = runner.invoke(commands.app, [*args, *skip])
    assert result.exit_code == 0, result.output
    assert "### idempotency" in result.stdout and "### tickers" not in result.stdout
    assert "| run(key) replay vs GET |" in result.stdout and "Quick" not in result.stdout


def test_table_and_files_of_one_suite(redis_url: str, tmp_path: Path) -> None:
    stem = tmp_path / "one.run"  # a dot in the stem stays
    args = ["bench", "--quick", "--only", "idempotency", "--url", redis_url, "--out", str(stem)]
    result = runner.invoke(commands.app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "tradecache vs baselines on redis://127.0.0.1:" in result.stdout
    assert "run(key) replay vs GET" in result.stdout and "goals" in result.stdout
    assert f"wrote {stem}.md and {stem}.json" in result.stderr
    assert "### idempotency" in Path(f"{stem}.md").read_text()
    assert json.loads(Path(f"{stem}.json").read_text())["rows"][0]["suite"] == "idempotency"


def test_errors_are_messages(redis_cluster: Endpoint) -> None:
    result = runner.invoke(commands.app, ["bench", "--quick", "--only", "nope", "--url", CLOSED])
    assert result.exit_code == 1
    assert result.stderr.startswith("tradecache bench: only: no suite nope (one of: tickers")
    result = runner.invoke(commands.app, ["bench", "--quick", "--skip", "nope", "--url", CLOSED])
    assert result.exit_code == 1 and "no suite nope" in result.stderr
    result = runner.invoke(commands.app, ["bench", "--quick", "--url", CLOSED])
    assert result.exit_code == 1 and "unreachable" in result.stderr
    result = runner.invoke(commands.app, ["bench", "--quick", "--url", redis_cluster.url])
    assert result.exit_code == 1
    assert "benchmarks need a standalone server, not a Cluster" in result.stderr


def test_run_script_is_the_command_with_markdown(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_script(["idempotency"], ["--quick", "--url", redis_url])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("## Benchmark run") and "### idempotency" in out
    # a benchmarks/ script: the same, with sys.argv
    monkeypatch.setattr(sys, "argv", ["bench_breaker.py", "--quick", "--url", redis_url])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "benchmarks" / "bench_breaker.py"), run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "### breaker" in out
    if importlib.util.find_spec("pybreaker"):
        assert "pybreaker + CircuitRedisStorage" in out
    else:  # the README's install has no dev extra: the row says how to get the comparison
        assert "pip install pybreaker" in out
    assert "| trip/reset -> listener in another cache |" in out
    assert "### tickers" not in out


def test_every_benchmark_script_wraps_the_suites() -> None:
    # bench_hot_keys.py (on main) is the one-off experiment that chose the key layout
    # (bucketed hashes that the library does not have), not a suite of library calls.
    standalone = {"bench_hot_keys.py"}
    scripts = sorted(
        p for p in (ROOT / "benchmarks").glob("bench_*.py") if p.name not in standalone
    )
    named = {path.stem.removeprefix("bench_") for path in scripts}
    assert named >= {"tickers", "writer", "orders", "processes", "events", "lock", "cluster"}
    assert named <= set(SUITES)  # each runs a registered suite
    for path in [*scripts, ROOT / "benchmarks" / "run_all.py"]:
        text = path.read_text()
        assert "from tradecache.cli.bench import run_script" in text
        assert len(text.splitlines()) < 30, f"{path.name} is no thin wrapper"


# --- suites that need a hand ------------------------------------------------------------------


async def test_cluster_suite_on_a_given_cluster(redis_url: str, redis_cluster: Endpoint) -> None:
    report = await run_report(
        redis_url,
        select(["cluster"]),
        rounds=1,
        slice_s=0.01,
        warmup=0,
        quick=True,
        cluster_url=redis_cluster.url,
    )
    assert [row.case for row in report.rows][:3] == [
        "tickers.set, 1 process",
        "tickers.set, 2 processes",
        "tickers.set, 4 processes",
    ]
    assert report.rows[2].met is True and report.rows[2].goal is not None
    client = redis.RedisCluster.from_url(redis_cluster.url.replace("redis+cluster", "redis"))
    try:
        assert not list(client.scan_iter(match="tcbench-*", target_nodes=client.ALL_NODES))
    finally:
        client.close()


async def test_local_cache_suite_measures_hits(redis_url: str) -> None:
    report = await run_report(redis_url, select(["local_cache"]), rounds=1, slice_s=0.001)
    [row] = report.rows
    assert (
        row.case == "get (local cache) vs HGET + decode"
        and row.goal == "ours >= 20x raw HGET + decode"
    )
    assert row.ours is not None and row.ours > 0 and row.trips == 0  # served from memory


async def test_writer_suite(redis_url: str) -> None:
    report = await run_report(redis_url, select(["writer"]), rounds=1, slice_s=0.001, warmup=1)
    rows = report.rows
    assert [row.case for row in rows] == [
        "tickers.writer(100) vs reference 3 commands/ticker",
        "tickers.set_many(100) vs reference 3 commands/ticker",
        "tickers.writer(100) vs HSET+PUBLISH pipeline",
    ]
    assert all(row.ours and row.raw and row.unit == "tickers" for row in rows)
    assert [row.goal for row in rows] == ["ours >= 5x reference"] * 2 + [None]


# --- harness ----------------------------------------------------------------------------------


async def test_measure_case_alternates_settles_and_counts_trips(redis_url: str) -> None:
    calls: list[str] = []
    ticks: list[int] = []
    client = redis.asyncio.Redis.from_url(redis_url)

    async def ours() -> int:
        calls.append("ours")
        await client.get("x")
        return 2

    async def raw() -> int:
        calls.append("raw")
        await asyncio.sleep(0)
        return 1

    async def settle() -> None:
        calls.append("settle")

    case = Case("c", ours, raw, "things", "nothing", at_least(0.5, "nothing"), settle)
    try:
        await client.ping()  # connected: the handshake is no round trip of ours
        calls.clear()
        row = await measure_case("s", case, 3, 0.001, lambda: ticks.append(1), trips=2)
    finally:
        await client.aclose()
    assert row.suite == "s" and row.case == "c" and row.unit == "things" and row.rounds == 3
    assert row.baseline == "nothing" and row.trips == 1 and row.raw_trips == 0
    assert row.ours is not None and row.raw is not None and row.ours > 0 and row.raw > 0
    assert row.low is not None and row.high is not None and row.ratio is not None
    assert row.low <= row.ratio <= row.high and row.goal == "ours >= 0.5x nothing"
    assert row.met is (row.ratio >= 0.5) and row.goal_metric == "ratio"
    assert calls[:5] == ["ours", "ours", "raw", "raw", "settle"] and len(ticks) == 3
    assert calls.count("settle") == 7  # then one after each slice
    assert row.to_dict()["case"] == "c"


async def test_count_round_trips_restores_the_connections(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    sync = redis.Redis.from_url(redis_url)
    original = redis.asyncio.connection.AbstractConnection.send_packed_command

    async def both() -> int:
        await client.set("a", 1)
        sync.get("a")
        pipe = client.pipeline(transaction=False)
        pipe.get("a").get("a")
        await pipe.execute()
        return 1

    try:
        await both()  # connected: handshakes are not counted below
        assert await count_round_trips(both, 3) == 3.0
    finally:
        await client.aclose()
        sync.close()
    assert redis.asyncio.connection.AbstractConnection.send_packed_command is original


async def test_run_report_arguments_progress_and_probes(redis_url: str) -> None:
    assert [s.name for s in select()] == list(SUITES)
    assert [s.name for s in select(["lock"])] == ["lock"]
    assert "cluster" not in [s.name for s in select(skip=["cluster"])]
    for bad in ({"rounds": 0}, {"slice_s": 0}, {"warmup": -1}):
        with pytest.raises(ValidationError):
            await run_report(redis_url, select(), **bad)
    seen: list[tuple[str, str, int]] = []
    ticks: list[int] = []
    report = await run_report(
        redis_url,
        select(["breaker"]),
        rounds=2,
        slice_s=0.001,
        warmup=0,
        on_case=lambda *args: seen.append(args),
        tick=lambda: ticks.append(1),
    )
    names = [case for _, case, _ in seen]
    assert names[-1] == "propagation" and len(names) == len(report.rows)
    assert all(count == len(names) for _, _, count in seen) and len(ticks) == 2 * len(names)
    propagation = report.rows[-1]
    assert propagation.suite == "breaker" and propagation.raw is None
    assert propagation.ours_p99_us is not None and propagation.ours_p99_us > 0
    assert report.to_dict()["rows"][0]["suite"] == "breaker"
    assert json.loads(report.to_json())["quick"] is False


def test_goals_and_markdown() -> None:
    row = Row(suite="s", case="c", unit="ops", ours=10.0, raw=5.0, ratio=2.0, low=1.5, high=2.5)
    assert Goal("x", "ratio", minimum=2, maximum=3).check(row) is True
    assert Goal("x", "ratio", maximum=1.5).check(row) is False
    assert Goal("x", "ratio", minimum=2.5).check(row) is False
    assert at_most("ours_p99_us", 5000, "p99").check(row) is None  # not measured
    assert row.judged(None) is row
    latency = Row(
        suite="s",
        case="slow",
        unit="grants",
        ours=100.0,
        ours_p50_us=800.0,
        ours_p99_us=7200.0,
        extra={"processes": 16},
        note="gap",
    ).judged(at_most("ours_p99_us", 5000, "p99 <= 5 ms"))
    reported = Row(suite="t", case="n", unit="x", ours=3.0, extra={"processes": 1})
    reported = reported.judged(Goal("seen", "ours", minimum=0))
    skipped = Row(suite="t", case="off", unit="-", ours=None, note="skipped: no").judged(
        at_least(20, "GET")
    )
    report = Report([row.judged(at_least(1.5)), latency, reported, skipped], {"redis": "7.0"})
    text = report.markdown()
    assert "- redis: 7.0" in text and "Quick" not in text
    assert "| c | 10 ops | raw redis-py | 5 ops | **2.00x** [1.50..2.50] |" in text
    assert "| 800 µs / 7.20 ms |" in text and "gap; processes 16 |" in text
    assert "### s: scaling with client processes" in text
    assert "| slow | 16 | 100 | 0.00x | - | 0.00x | - |" in text
    assert "### t: scaling with client processes" in text and "| n | 1 | 3 |" in text
    assert "| ours >= 1.5x the baseline | s: c | 2.00x | met |" in text
    assert "| p99 <= 5 ms | s: slow | 7.20 ms | **missed** |" in text
    assert "| seen | t: n | 3 x/s | met |" in text
    assert "| ours >= 20x GET | t: off | - | not measured |" in text
    assert "| - | - | - |" in text  # the skipped row's empty cells
    assert percentile([], 50) is None and percentile([3.0, 1.0, 2.0], 50) == 2.0


async def test_a_skipped_probe_says_why() -> None:
    probe = skipped("breaker vs pybreaker", "pip install pybreaker", at_least(2, "pybreaker"))
    [row] = await probe.run()
    assert probe.name == row.case == "breaker vs pybreaker" and row.ours is None
    assert row.note == "skipped: pip install pybreaker" and row.goal == "ours >= 2x pybreaker"
    assert row.met is None  # not measured


def test_a_new_suite_is_one_decorated_function(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tradecache.bench.harness.SUITES", dict(SUITES))
    from tradecache.bench import harness

    @suite("extra", "a suite added by someone else")
    async def extra(bench: Any) -> list[Case | Probe]:
        return []

    assert harness.SUITES["extra"].build is extra
    assert "extra" not in SUITES


# --- worker processes ---------------------------------------------------------------------


def test_handoff_stats() -> None:
    one = [(1, 0.0, 0.0, 0.010), (1, 0.020, 0.030, 0.040)]
    two = [(2, 0.0, 0.012, 0.020)]
    stats = handoff_stats([(one, 0.002), (two, 0.001)])
    assert stats["throughput"] == pytest.approx(3 / 0.040)
    assert stats["gap_p50"] == pytest.approx(2.0) and stats["gap_p99"] == pytest.approx(10.0)
    assert stats["wait_max"] == pytest.approx(12.0) and stats["overlaps"] == 0
    assert stats["cpu_per_grant"] == pytest.approx(1.0)
    overlapping = handoff_stats([([(1, 0.0, 0.0, 0.010)], 0.0), ([(2, 0.0, 0.005, 0.02)], 0.0)])
    assert overlapping["overlaps"] == 1


def test_worker_loop_in_a_thread(redis_url: str) -> None:
    inbox: queue.Queue[Any] = queue.Queue()
    outbox: queue.Queue[Any] = queue.Queue()
    thread = threading.Thread(
        target=asyncio.run, args=(serve(redis_url, "tcbench-w", 0, inbox, outbox),)
    )
    thread.start()
    try:
        assert outbox.get(timeout=60) == ("ready", 0)
        for op in ("tickers.set", "tickers.get", "lock"):
            inbox.put(("ops", op, "raw", time.monotonic(), 0.01))
            status, (count, latencies) = outbox.get(timeout=60)
            assert status == "ok" and count == len(latencies) >= 1
        inbox.put(("lock", "redis-py", "l", 2, 0.0, 0.0, time.monotonic()))
        status, (grants, cpu) = outbox.get(timeout=60)
        assert status == "ok" and len(grants) == 2 and cpu >= 0
        # a ring of one: the worker passes the token to itself, the last grant ends it
        inbox.put(("ring", 1, "r", 3, 0.0, 0.0, time.monotonic()))
        status, (grants, cpu) = outbox.get(timeout=60)
        assert status == "ok" and len(grants) == 3 and cpu >= 0
        assert all(pid == os.getpid() and req <= got <= rel for pid, req, got, rel in grants)
        assert [got for _, _, got, _ in grants] == sorted(got for _, _, got, _ in grants)
        channel = "tcbench-w:ch:bench-raw:{r}:0"  # its raw connections are closed
        client = redis.Redis.from_url(redis_url)
        asyncio.run(wait_until(lambda: client.pubsub_numsub(channel) == [(channel.encode(), 0)]))
        client.close()
        inbox.put(("ops", "nope", "ours", time.monotonic(), 0.01))
        status, text = outbox.get(timeout=60)
        assert status == "error" and "worker 0" in text and "nope" in text
    finally:
        inbox.put(None)
        thread.join(60)
    assert not thread.is_alive()


async def test_the_ring_waits_for_a_late_subscriber() -> None:
    sent: list[bytes] = []

    class Writer:
        def write(self, data: bytes) -> None:
            sent.append(data)

    reader = asyncio.StreamReader()
    reader.feed_data(b":0\r\n:0\r\n:1\r\n")  # nobody listens yet, twice, then one does
    publish = resp(b"PUBLISH", b"ch", b"go")
    await pass_token(reader, Writer(), publish)
    assert sent == [publish] * 3 and publish == b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$2\r\ngo\r\n"


@pytest.mark.slow
def test_pool_reports_failures_and_always_stops_its_workers(redis_url: str) -> None:
    with Pool(2, redis_url, "tcbench-p") as pool:
        [(done, _)] = pool.run(1, ("ops", "tickers.get", "ours", time.monotonic() + 0.05, 0.05))
        assert done >= 1
        with pytest.raises(WorkerError, match="nope"):
            pool.run(1, ("ops", "nope", "ours", 0.0, 0.0))
        processes = list(pool._processes)
        os.kill(processes[1].pid or 0, signal.SIGKILL)
        with pytest.raises(WorkerError, match="workers exited"):
            pool.run(2, ("ops", "tickers.get", "ours", time.monotonic(), 0.01))
    assert not any(process.is_alive() for process in processes)
    Pool(1, redis_url, "tcbench-p").close()  # never started: nothing to stop
    pool = Pool(1, CLOSED, "tcbench-p")
    with pytest.raises(WorkerError, match="worker 0"), pool:
        pass  # pragma: no cover - the worker cannot connect
    assert not pool._processes[0].is_alive()
    pool = Pool(1, redis_url, "tcbench-p", timeout=0)
    with pytest.raises(WorkerError, match="no reply"), pool:
        pass  # pragma: no cover - no worker is ready at once
    assert not pool._processes[0].is_alive()


async def test_client_suite_compares_with_a_stock_client(redis_url: str) -> None:
    report = await run_report(redis_url, select(["client"]), rounds=1, slice_s=0.001)
    rows = {row.case: row for row in report.rows}
    assert set(rows) == {
        "GET vs stock client",
        "SET vs stock client",
        "GET vs stock client with a blocking pool",
    }
    assert all(row.ours and row.raw and row.ratio for row in rows.values())
    assert rows["GET vs stock client"].baseline == "stock redis-py client"


async def test_client_suite_on_sentinel_is_skipped(redis_sentinel_factory: Any) -> None:
    sentinel = redis_sentinel_factory()
    report = await run_report(sentinel.url, select(["client"]), rounds=1, slice_s=0.001)
    [row] = report.rows
    assert row.ours is None and "unix://" in (row.note or "")
