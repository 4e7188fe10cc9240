"""Every example runs against real Redis and does what it prints.

Each example's ``main(url, namespace)`` runs twice on the test's backend
(standalone and Cluster, through the ``cache`` fixture's endpoint and
namespace, which the fixture cleans up), so the examples are also re-runnable.
One runs on its own embedded server (``url=None``) and one as
``python -m tradecache.examples.<name> URL``.
"""

from __future__ import annotations

import importlib
import runpy
import subprocess
import sys
import warnings
from decimal import Decimal
from typing import Any

import pytest

import tradecache.examples
from tradecache import Cache
from tradecache.examples import (
    EXAMPLES,
    basic_usage,
    bot_coordination,
    circuit_breaker,
    idempotent_orders,
    performance,
    pubsub,
    pytest_plugin,
    queues,
    redis_url,
    run,
)
from tradecache.testing.plugin import Endpoint


def test_every_example_module_is_listed() -> None:
    package = tradecache.examples.__path__[0]
    modules = {
        path.stem
        for path in __import__("pathlib").Path(package).glob("*.py")
        if not path.stem.startswith("_")
    }
    assert modules == set(EXAMPLES)
    for name in EXAMPLES:
        main = importlib.import_module(f"tradecache.examples.{name}").main
        assert main.__doc__ and "Example" in main.__doc__


async def test_basic_usage(cache: Cache, redis_endpoint: Endpoint, capsys: Any) -> None:
    for _ in range(2):
        result = await basic_usage.main(redis_endpoint.url, namespace=cache.settings.namespace)
        assert result["ticker"].symbol == "BTC/USDT"
        assert result["ticker"].last == 60000.0
        assert result["ticker"].mid == 60000.0
        assert result["price"] == 60000.0
        assert result["missing"] is None
        assert result["rejected"] == "last"
        assert [c.close for c in result["candles"]] == [60000.0, 60080.0, 60110.0]
        assert result["usdt"].free == Decimal("900.5")
        assert result["limits"] == {"max_notional": "25000", "halted": True}
        assert result["health"].mode == redis_endpoint.topology
    out = capsys.readouterr().out
    assert "ticker: BTC/USDT last=60000.0" in out
    assert "rejected, nothing written: last" in out
    # What the example wrote is really there, for any other client of the namespace.
    assert await cache.ohlcv.count("binance", "BTC/USDT", "1m") == 3
    assert await cache.tickers.get("binance", "ETH/USDT") is None


async def test_basic_usage_on_its_own_embedded_server(capsys: Any) -> None:
    result = await basic_usage.main()
    assert result["price"] == 60000.0
    out = capsys.readouterr().out
    assert "started an embedded redis-server" in out
    assert "unix://" in out
    assert out.rstrip().endswith("stopped the embedded redis-server")


async def test_pubsub(cache: Cache, redis_endpoint: Endpoint, capsys: Any) -> None:
    for run_number in range(2):
        result = await pubsub.main(redis_endpoint.url, namespace=cache.settings.namespace)
        # Five fills published into a queue of two: each is delivered or inside a Gap.
        delivered = [int(fill["order"].removeprefix("o-")) for fill in result["fills"]]
        missed = sum(last - first + 1 for first, last, _ in result["gaps"])
        assert len(delivered) + missed == 5
        assert delivered == list(range(6 - len(delivered), 6))  # the newest survive, in order
        assert all(reason == "overflow" for _, _, reason in result["gaps"])
        assert result["backlog"] == min(10, 5 * (run_number + 1))
        assert result["prices"] == [3000.0, 3001.5, 3003.0]
    out = capsys.readouterr().out
    assert "received fills #" in out
    assert "watch: ETH/USDT 3003.0" in out


async def test_queues(cache: Cache, redis_endpoint: Endpoint, capsys: Any) -> None:
    for _ in range(2):
        result = await queues.main(redis_endpoint.url, namespace=cache.settings.namespace)
        assert result["submitted"] == 3
        assert result["retry_same_entry"] is True
        assert result["pending_after_crash"] == 1
        assert len(result["closed"]) == 3
        assert result["trades_consumed"] == 4
        assert result["tape"] == [Decimal(60000 + n) for n in range(4)]
        assert sorted(result["fills"]) == result["closed"]
    assert await cache.orders.pending("executors") == 0
    assert "executor-2 places" in capsys.readouterr().out


async def test_bot_coordination(cache: Cache, redis_endpoint: Endpoint, capsys: Any) -> None:
    for _ in range(2):
        result = await bot_coordination.main(redis_endpoint.url, namespace=cache.settings.namespace)
        assert result["refused"] is None
        assert result["first_fence"] < result["later_fence"]
        assert isinstance(result["other_symbol_fence"], int)
        assert result["claims"] == [("BTC/USDT", "grid-1")]
        assert result["plan_fence"] == result["lease_fence"]
        assert result["status"] == "trading"
    assert await cache.bots.holder("binance", "BTC/USDT") is None
    assert "grid-2 skips BTC/USDT: claimed by grid-1" in capsys.readouterr().out


async def test_idempotent_orders(cache: Cache, redis_endpoint: Endpoint, capsys: Any) -> None:
    for _ in range(2):
        ns = cache.settings.namespace
        result = await idempotent_orders.main(redis_endpoint.url, namespace=ns)
        assert result["orders_received"] == 1
        assert result["results"] == [result["replay"]] * 3
        assert result["replay"]["id"] == "ex-1"
        assert result["reuse_rejected"] is True
        assert result["status"] == "completed"
    assert "the exchange received 1 order(s)" in capsys.readouterr().out


async def test_circuit_breaker(cache: Cache, redis_endpoint: Endpoint, capsys: Any) -> None:
    for _ in range(2):  # the second run finds the breaker closed again
        result = await circuit_breaker.main(redis_endpoint.url, namespace=cache.settings.namespace)
        outcomes = result["outcomes"]
        assert outcomes[:4] == ["failed", "failed", "failed", "refused"]
        assert outcomes[-1] == "ok"
        assert result["exchange_calls"] == 3 + outcomes.count("ok")
        assert result["transitions"][0] == "closed->open"
        assert result["transitions"][-1] == "half_open->closed"
        assert result["state"] == "closed"
    assert "not called, the breaker is open" in capsys.readouterr().out


async def test_performance(cache: Cache, redis_endpoint: Endpoint, capsys: Any) -> None:
    rates = await performance.main(redis_endpoint.url, namespace=cache.settings.namespace)
    assert set(rates) == {
        "set one by one",
        "set_many",
        "get one by one",
        "get with gather",
        "get_all (tickers/s)",
    }
    assert all(rate > 0 for rate in rates.values())
    assert len(await cache.tickers.get_all("binance")) == performance.SYMBOLS
    out = capsys.readouterr().out
    assert "tickers.set_many" in out
    assert "p99 ms" in out


@pytest.mark.slow  # a pytest run in a subprocess
async def test_pytest_plugin_on_a_given_server(redis_url: str, capsys: Any) -> None:
    assert await pytest_plugin.main(redis_url) == 0
    out = capsys.readouterr().out
    assert "--redis-url" in out
    assert "3 passed" in out  # the Cluster half is skipped: --redis-cluster=off


@pytest.mark.slow
async def test_pytest_plugin_with_its_own_servers(capsys: Any) -> None:
    assert await pytest_plugin.main() == 0
    out = capsys.readouterr().out
    assert "--redis-url" not in out
    assert "6 passed" in out  # standalone and Cluster


@pytest.mark.slow
async def test_pytest_plugin_reports_failures(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setattr(pytest_plugin, "TESTS", "def test_fails():\n    assert False\n")
    assert await pytest_plugin.main(redis_url) == 1
    assert "1 failed" in capsys.readouterr().out


async def test_redis_url_passes_a_given_url_through() -> None:
    async with redis_url("redis://example.invalid:6379/0") as address:
        assert address == "redis://example.invalid:6379/0"


@pytest.mark.parametrize("name", EXAMPLES)
def test_python_dash_m_runs_main(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(tradecache.examples, "run", calls.append)
    with warnings.catch_warnings():  # runpy: "found in sys.modules": it was imported above
        warnings.simplefilter("ignore", RuntimeWarning)
        # run_path, not run_module: pytest rewrites the modules of a distribution that
        # registers a pytest11 plugin, and its loader has no get_code(), which run_module needs.
        module = importlib.import_module(f"tradecache.examples.{name}")
        assert module.__file__ is not None
        namespace = runpy.run_path(module.__file__, run_name="__main__")
    assert calls == [namespace["main"]]


def test_run_takes_the_url_from_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []

    async def main(url: str | None) -> None:
        seen.append(url)

    monkeypatch.setattr(sys, "argv", ["basic_usage", "redis://h:1/0"])
    run(main)
    monkeypatch.setattr(sys, "argv", ["basic_usage"])
    run(main)
    assert seen == ["redis://h:1/0", None]


def test_as_a_script(redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tradecache.examples.basic_usage", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ticker: BTC/USDT last=60000.0" in done.stdout
    assert "embedded" not in done.stdout
