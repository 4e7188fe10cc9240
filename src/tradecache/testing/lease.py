"""Lease a logical database of a *shared* Redis server for one test process.

Used by the pytest plugin when tests run against an external server
(``--redis-url`` / ``REDIS_URL``) instead of servers of their own. A lease is
one key, ``__tradecache_test_lease__``, written with ``SET NX PX`` in the DB it
claims, so:

* two processes never hold the same DB (``SET NX`` is atomic);
* DB 0, where real data lives, is never leased;
* a DB holding foreign data (keys but no ``__tradecache_test_db__`` marker) is
  skipped, so nothing of anyone else's is touched;
* a heartbeat thread renews the lease; if the test run crashes, the lease
  expires after ``ttl`` seconds and the DB is free again.

Example::

    lease = DbLease.acquire("redis://ci-redis:6379/0", owner="run1:gw0", ttl=30)
    print(lease.db)          # e.g. 3
    lease.release()
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

import redis

from ..connection import redact_url
from ..errors import TradecacheError

__all__ = ["LEASE_KEY", "MARKER_KEY", "DbLease", "LeaseError"]

LEASE_KEY = "__tradecache_test_lease__"
MARKER_KEY = "__tradecache_test_db__"

_REFRESH = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class LeaseError(TradecacheError):
    """No database could be leased, or a held lease was lost."""


def _database_count(client: redis.Redis) -> int:
    try:
        reply = client.config_get("databases")
    except redis.ResponseError:  # CONFIG is often disabled on managed servers
        return 16
    return int(reply.get("databases") or 16)


class DbLease:
    """A leased DB number on a shared server; see the module docs.

    ``client`` is a synchronous client (``decode_responses=True``) on that DB.
    ``lost`` turns true if the heartbeat finds the lease gone (it expired
    while the process was stalled, for instance); ``last_error`` keeps the
    last connection error the heartbeat met (it keeps trying).
    """

    def __init__(self, client: redis.Redis, db: int, owner: str, ttl_ms: int) -> None:
        self.client = client
        self.db = db
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.lost = False
        self.last_error: redis.RedisError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<DbLease db={self.db} owner={self.owner!r} lost={self.lost}>"

    @classmethod
    def acquire(
        cls,
        url: str,
        owner: str,
        *,
        ttl: float = 30.0,
        dbs: Iterable[int] | None = None,
        heartbeat: bool = True,
    ) -> DbLease:
        """Lease the first free DB of ``dbs`` (default 1 .. ``databases`` - 1).

        Raises :class:`LeaseError` listing the holders when every DB is taken,
        and ``ValueError`` if ``dbs`` contains 0.
        """
        base = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5.0)
        pool = base.connection_pool
        try:
            candidates = list(range(1, _database_count(base)) if dbs is None else dbs)
        finally:
            base.close()
        if 0 in candidates:
            raise ValueError("DB 0 is never leased: it is where real data lives")
        ttl_ms = max(1, int(ttl * 1000))
        held: list[str] = []
        for db in candidates:
            options: dict[str, Any] = {**pool.connection_kwargs, "db": db}
            client = redis.Redis(
                connection_pool=redis.ConnectionPool(
                    connection_class=pool.connection_class, **options
                )
            )
            pipe = client.pipeline(transaction=True)
            pipe.set(LEASE_KEY, owner, nx=True, px=ttl_ms)
            pipe.dbsize()
            pipe.exists(MARKER_KEY)
            taken, size, marked = pipe.execute()
            if taken and (size == 1 or marked):
                client.set(MARKER_KEY, "1")
                lease = cls(client, db, owner, ttl_ms)
                if heartbeat:
                    lease.start_heartbeat()
                return lease
            if taken:  # keys that are not ours: leave this DB alone
                client.eval(_RELEASE, 1, LEASE_KEY, owner)
                held.append(f"db{db}: foreign data")
            else:
                held.append(f"db{db}: {client.get(LEASE_KEY)!s}")
            client.close()
        raise LeaseError(f"no free test database on {redact_url(url)} ({', '.join(held)})")

    def refresh(self) -> bool:
        """Extend the lease by ``ttl``; False (and ``lost``) if it is not ours any more."""
        alive = bool(self.client.eval(_REFRESH, 1, LEASE_KEY, self.owner, self.ttl_ms))
        self.lost = self.lost or not alive
        return alive

    def start_heartbeat(self) -> None:
        """Refresh the lease every ``ttl / 3`` from a daemon thread until :meth:`release`."""
        self._thread = threading.Thread(
            target=self._beat, name=f"tradecache-lease-db{self.db}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        interval = self.ttl_ms / 3000
        while not self._stop.wait(interval):
            try:
                if not self.refresh():
                    return
            except redis.RedisError as exc:  # the server is away: tests will say so; retry
                self.last_error = exc

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self.client.eval(_RELEASE, 1, LEASE_KEY, self.owner)
        finally:
            self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
