"""Testing your code on real Redis with tradecache's pytest plugin.

Run it: ``python -m tradecache.examples.pytest_plugin [URL]``.

Installing tradecache registers the plugin (entry point ``pytest11``). A test
that takes the ``cache`` fixture gets an isolated :class:`~tradecache.Cache`
(its own namespace, cleaned up after the test) and runs twice: on a standalone
server and on a 3-master Redis Cluster, both started by the plugin (one server
per xdist worker, one Cluster per run). :data:`TESTS` below is a test module
to copy; :func:`main` writes it with :data:`PYTEST_INI` to a temporary
directory and runs pytest on it:

* with no URL, the plugin starts its own servers (standalone and Cluster);
* with a URL, the tests lease a database of that server (never DB 0, never
  one another run holds) and clean up by prefix, never with ``FLUSHALL``; the
  Cluster is off (``--redis-cluster-url`` would name one).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

from tradecache.examples import run

TESTS = """\
import pytest

from tradecache.errors import Claimed


async def test_ticker_roundtrip(cache):  # runs on standalone and on Cluster
    await cache.tickers.set({"symbol": "BTC/USDT", "last": 60000.0}, exchange="binance")
    ticker = await cache.tickers.get("binance", "BTC/USDT")
    assert ticker is not None and ticker.last == 60000.0


async def test_each_test_has_its_own_namespace(cache):
    assert await cache.tickers.get("binance", "BTC/USDT") is None


async def test_two_processes_share_claims(cache, cache_factory):
    other = await cache_factory()  # another Cache on the same backend and namespace
    async with cache.bots.claim("binance", "BTC/USDT", "bot-1"):
        with pytest.raises(Claimed):
            await other.bots.claim("binance", "BTC/USDT", "bot-2")
"""

PYTEST_INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
addopts = -p no:cacheprovider
"""


def write_project(directory: Path) -> None:
    """Write :data:`PYTEST_INI` and :data:`TESTS` into ``directory``."""
    (directory / "pytest.ini").write_text(PYTEST_INI)
    (directory / "test_with_tradecache.py").write_text(TESTS)


async def main(url: str | None = None, namespace: str = "example") -> int:
    """Run :data:`TESTS` with pytest (``-n 2`` works too); return pytest's exit code.

    ``namespace`` is not used: the plugin gives each test a namespace of its own.

    Example: ``assert await main() == 0``
    """
    with tempfile.TemporaryDirectory(prefix="tradecache-example-") as tmp:
        write_project(Path(tmp))
        args = [sys.executable, "-m", "pytest", "-q", "-rs", "test_with_tradecache.py"]
        env = dict(os.environ)
        if url is None:  # no shared server from the environment: the plugin starts its own
            env.pop("REDIS_URL", None)
            env.pop("REDIS_CLUSTER_URL", None)
        else:
            args += ["--redis-url", url, "--redis-cluster=off"]
        print("$", " ".join(args[2:]))
        proc = await asyncio.create_subprocess_exec(
            *args,
            cwd=tmp,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await proc.communicate()
        print(output.decode().rstrip())
        return proc.returncode or 0


if __name__ == "__main__":
    run(main)
