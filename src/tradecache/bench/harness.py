"""The benchmark harness: interleaved slices of ours and a baseline, as ratios and latencies.

This module is the only measuring code of the project: ``tradecache bench``,
``benchmarks/bench_*.py`` and ``benchmarks/run_all.py`` all run suites through it.

* A :class:`Case` pairs one of our calls with a baseline doing the same Redis
  work (raw redis-py, the reference library's approach, redis-py's ``Lock``,
  pybreaker ...). The two run in short alternating time slices, the side that
  goes first swapping every round, so load and CPU-frequency drift hit both
  (research/perf_baseline.md §5-6). A row's ``ratio`` is the median over rounds
  of ``ours / raw`` throughput (1.0: as fast; 0.5: half as fast), ``low`` ..
  ``high`` the p10..p90 of the per-round ratios; p50/p99 are per-call latencies
  over every slice; round trips per call are counted at the connection.
* A :class:`Probe` measures what slices cannot (several processes, a Cluster)
  and returns its rows itself.
* A :class:`Goal` (on a case or a probe's row) is checked on every row: the
  report says met or missed.

Adding a suite is one decorated function, anywhere imported by
:mod:`tradecache.bench` (``suites.py`` holds the project's)::

    @suite("hotkeys", "tickers of one busy exchange spread over slots")
    async def hotkeys(bench: Bench) -> list[Case | Probe]:
        key = bench.key("hot")
        async def ours() -> int:
            await bench.cache.tickers.set(TICKER)
            return 1
        async def raw() -> int:
            await bench.client.hset(key, "BTC/USDT", PAYLOAD)
            return 1
        return [Case("tickers.set vs HSET", ours, raw, "tickers", goal=at_least(0.85))]

Example::

    from tradecache.bench import run_report, select

    report = await run_report(url, select(["tickers"]), rounds=10, slice_s=0.2)
    print(report.markdown())
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import redis
from redis.asyncio.connection import AbstractConnection as _AsyncConnection
from redis.connection import AbstractConnection as _SyncConnection

from ..cache import Cache
from ..errors import ValidationError
from ..testing.selfcheck import unlink_prefix

__all__ = [
    "SUITES",
    "Bench",
    "Case",
    "Goal",
    "Op",
    "Probe",
    "Report",
    "Row",
    "Suite",
    "at_least",
    "at_most",
    "count_round_trips",
    "environment",
    "measure_case",
    "percentile",
    "run_report",
    "suite",
]

Op = Callable[[], Awaitable[int]]
"""Does some work and returns how many operations it did (1, or a batch size)."""


@dataclass(frozen=True, slots=True)
class Goal:
    """A target for one metric of a row: ``metric`` >= ``minimum`` and/or <= ``maximum``.

    ``metric`` names a :class:`Row` field (``"ratio"``, ``"ours_p99_us"`` ...).

    Example: ``Goal(">= 0.85x raw redis-py", "ratio", minimum=0.85).check(row)``
    """

    label: str
    metric: str = "ratio"
    minimum: float | None = None
    maximum: float | None = None

    def check(self, row: Row) -> bool | None:
        """True when met, False when missed, None when the row lacks the metric.

        Example: ``at_least(5).check(row)``
        """
        value = getattr(row, self.metric)
        if value is None:
            return None
        low_ok = self.minimum is None or value >= self.minimum
        return low_ok and (self.maximum is None or value <= self.maximum)


def at_least(ratio: float, baseline: str = "the baseline") -> Goal:
    """A goal on the throughput ratio: ours >= ``ratio`` x the baseline.

    Example: ``Case("get", ours, raw, goal=at_least(0.85, "raw redis-py"))``
    """
    return Goal(f"ours >= {ratio:g}x {baseline}", "ratio", minimum=ratio)


def at_most(metric: str, limit: float, label: str) -> Goal:
    """A goal of an upper bound on ``metric`` (a latency in µs, say).

    Example: ``at_most("ours_p99_us", 5000, "handoff p99 <= 5 ms")``
    """
    return Goal(label, metric, maximum=limit)


@dataclass(frozen=True, slots=True)
class Case:
    """One comparison: ``ours`` and ``raw`` (the baseline) do the same work.

    ``unit`` names an operation; ``baseline`` names what ``raw`` is;
    ``settle`` (optional) runs after every slice, untimed (drain a queue ...).

    Example: ``Case("tickers.get vs HGET", ours, raw, "reads", goal=at_least(0.85))``
    """

    name: str
    ours: Op
    raw: Op
    unit: str = "ops"
    baseline: str = "raw redis-py"
    goal: Goal | None = None
    settle: Callable[[], Awaitable[None]] | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """The result of one case or probe; throughputs in ``unit`` per second.

    ``raw`` is the baseline's throughput, ``ratio`` = ours / raw (median of the
    rounds), ``low``..``high`` its p10..p90; latencies in µs per call; ``trips``
    round trips per call; ``extra`` holds a probe's other figures; ``goal`` and
    ``met`` the goal's label and verdict.

    Example: ``json.dumps(row.to_dict())``
    """

    suite: str
    case: str
    unit: str
    ours: float | None
    raw: float | None = None
    ratio: float | None = None
    low: float | None = None
    high: float | None = None
    rounds: int = 0
    baseline: str = "raw redis-py"
    ours_p50_us: float | None = None
    ours_p99_us: float | None = None
    raw_p50_us: float | None = None
    raw_p99_us: float | None = None
    trips: float | None = None
    raw_trips: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
    goal: str | None = None
    goal_metric: str | None = None
    met: bool | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict. Example: ``json.dumps([row.to_dict() for row in rows])``"""
        return asdict(self)

    def judged(self, goal: Goal | None) -> Row:
        """This row with ``goal`` checked (unchanged without a goal).

        Example: ``row = row.judged(at_least(0.85))``
        """
        if goal is None:
            return self
        return dataclasses.replace(
            self, goal=goal.label, goal_metric=goal.metric, met=goal.check(self)
        )


@dataclass(frozen=True, slots=True)
class Probe:
    """A measurement of its own (processes, a Cluster): ``run()`` returns finished rows.

    The harness fills in the suite name; ``name`` shows in progress bars.

    Example: ``Probe("lock handoff, 16 processes", handoff)``
    """

    name: str
    run: Callable[[], Awaitable[list[Row]]]


class Bench:
    """What a suite gets: the cache, its client, options and cleanup.

    * ``cache``: a :class:`~tradecache.cache.Cache` in a fresh ``tcbench-*``
      namespace (removed at the end); ``client`` its redis-py client;
    * ``quick``: a smoke run (make probes small); ``rounds``, ``slice_s``;
    * ``stack``: an ``AsyncExitStack`` closed after the suite's cases ran;
    * :meth:`key`, :meth:`connect`, :meth:`cluster_url`.

    Example::

        other = await bench.connect()          # a second cache, same namespace
        bench.stack.push_async_callback(sub.close)
    """

    def __init__(
        self,
        cache: Cache,
        url: str,
        stack: AsyncExitStack,
        *,
        quick: bool,
        rounds: int,
        slice_s: float,
        cluster_url: str | None,
    ) -> None:
        self.cache = cache
        self.client: Any = cache.client
        self.url = url
        self.stack = stack
        self.quick = quick
        self.rounds = rounds
        self.slice_s = slice_s
        self._cluster_url = cluster_url
        self._cluster: Any = None

    @property
    def namespace(self) -> str:
        """The namespace of the run (``tcbench-<hex>``). Example: ``bench.namespace``"""
        return self.cache.settings.namespace

    def key(self, *parts: str) -> str:
        """A key for a raw baseline, inside the run's namespace (so it is cleaned up).

        Example: ``bench.key("orders", "queue")``
        """
        return self.cache.keys.key("bench-raw", *parts)

    async def connect(self, **overrides: Any) -> Cache:
        """Another cache on the same server and namespace, closed at the end of the suite.

        Example: ``reader = await bench.connect(socket_timeout=2.0)``
        """
        other = await Cache.connect(self.url, namespace=self.namespace, **overrides)
        self.stack.push_async_callback(other.close)
        return other

    async def cluster_url(self) -> str:
        """The Cluster to measure: the one given, or an embedded 3-master one (started once).

        Example: ``url = await bench.cluster_url()``
        """
        if self._cluster_url is None:
            from ..server import RedisClusterServer

            self._cluster = RedisClusterServer(masters=3)
            await asyncio.to_thread(self._cluster.start)
            self._cluster_url = self._cluster.url
        return self._cluster_url

    def close(self) -> None:
        """Stop the embedded Cluster, if one was started. Example: ``bench.close()``"""
        if self._cluster is not None:
            self._cluster.stop()
            self._cluster = None
            self._cluster_url = None


@dataclass(frozen=True, slots=True)
class Suite:
    """A named group of cases; ``build(bench)`` prepares them (see :class:`Bench`).

    Example: ``Suite("tickers", "ticker store", build)``
    """

    name: str
    description: str
    build: Callable[[Bench], Awaitable[Sequence[Case | Probe]]]


SUITES: Final[dict[str, Suite]] = {}
"""Every registered suite by name, in registration order."""


def suite(
    name: str, description: str
) -> Callable[
    [Callable[[Bench], Awaitable[Sequence[Case | Probe]]]],
    Callable[[Bench], Awaitable[Sequence[Case | Probe]]],
]:
    """Register the decorated ``async def build(bench) -> [Case | Probe, ...]`` as a suite.

    Example::

        @suite("hotkeys", "tickers of one exchange over several slots")
        async def hotkeys(bench: Bench) -> list[Case | Probe]: ...
    """

    def register(
        build: Callable[[Bench], Awaitable[Sequence[Case | Probe]]],
    ) -> Callable[[Bench], Awaitable[Sequence[Case | Probe]]]:
        SUITES[name] = Suite(name, description, build)
        return build

    return register


# --- measuring --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of ``values``; None when empty.

    Example: ``percentile([1.0, 2.0, 3.0], 50) == 2.0``
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(len(ordered) * q / 100) - 1))]


class _Sent:
    count = 0


@contextmanager
def _counting() -> Iterator[type[_Sent]]:
    """Count every command or pipeline written by any redis-py connection (async or sync)."""
    originals = [(cls, cls.send_packed_command) for cls in (_AsyncConnection, _SyncConnection)]
    _Sent.count = 0
    for cls, original in originals:

        def counting(self: Any, *args: Any, _original: Any = original, **kw: Any) -> Any:
            _Sent.count += 1
            return _original(self, *args, **kw)

        cls.send_packed_command = counting  # type: ignore[method-assign]
    try:
        yield _Sent
    finally:
        for cls, original in originals:
            cls.send_packed_command = original  # type: ignore[method-assign]


async def count_round_trips(op: Op, calls: int) -> float:
    """Round trips (commands or pipelines sent) per call of ``op`` over ``calls`` calls.

    Example: ``await count_round_trips(lambda: ours_set(), 10)  # 1.0``
    """
    with _counting() as sent:
        for _ in range(calls):
            await op()
        return sent.count / calls


async def _slice(op: Op, slice_s: float, samples: list[float]) -> float:
    """Operations per second of ``op`` over one slice (at least one call); µs per call kept."""
    done, started = 0, time.perf_counter()
    now = started
    while now - started < slice_s:
        done += await op()
        end = time.perf_counter()
        samples.append((end - now) * 1e6)
        now = end
    return done / (now - started)


def _nothing() -> None:
    return None


async def measure_case(
    suite: str,
    case: Case,
    rounds: int,
    slice_s: float,
    tick: Callable[[], None] = _nothing,
    trips: int = 0,
) -> Row:
    """Interleave ``rounds`` slices of each side of ``case``; ``tick()`` after each round.

    With ``trips`` > 0, round trips per call are counted over that many calls
    of each side first.

    Example: ``row = await measure_case("tickers", case, rounds=10, slice_s=0.2)``
    """
    ours_trips = await count_round_trips(case.ours, trips) if trips else None
    raw_trips = await count_round_trips(case.raw, trips) if trips else None
    if case.settle is not None:
        await case.settle()
    ours: list[float] = []
    raw: list[float] = []
    ours_us: list[float] = []
    raw_us: list[float] = []
    sides = [(case.ours, ours, ours_us), (case.raw, raw, raw_us)]
    for index in range(rounds):
        for op, rates, samples in sides if index % 2 == 0 else sides[::-1]:
            rates.append(await _slice(op, slice_s, samples))
            if case.settle is not None:
                await case.settle()
        tick()
    ratios = [a / b for a, b in zip(ours, raw, strict=True)]
    row = Row(
        suite=suite,
        case=case.name,
        unit=case.unit,
        ours=statistics.median(ours),
        raw=statistics.median(raw),
        ratio=statistics.median(ratios),
        low=percentile(ratios, 10),
        high=percentile(ratios, 90),
        rounds=rounds,
        baseline=case.baseline,
        ours_p50_us=percentile(ours_us, 50),
        ours_p99_us=percentile(ours_us, 99),
        raw_p50_us=percentile(raw_us, 50),
        raw_p99_us=percentile(raw_us, 99),
        trips=ours_trips,
        raw_trips=raw_trips,
    )
    return row.judged(case.goal)


# --- running ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    """Rows of a run and where they were taken; renders markdown and JSON.

    Example::

        report = await run_report(url, select(), quick=True)
        Path("bench.md").write_text(report.markdown())
    """

    rows: list[Row]
    environment: dict[str, str]
    quick: bool = False

    def to_dict(self) -> dict[str, Any]:
        """``{"environment": ..., "quick": ..., "rows": [...]}``. Example: ``report.to_dict()``"""
        return {
            "environment": self.environment,
            "quick": self.quick,
            "rows": [row.to_dict() for row in self.rows],
        }

    def to_json(self) -> str:
        """The report as indented JSON. Example: ``Path("b.json").write_text(report.to_json())``"""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def markdown(self) -> str:
        """A markdown section: environment, one table per suite, then the goals.

        Example: ``print(report.markdown())``
        """
        env = self.environment
        lines = ["## Benchmark run", ""]
        if self.quick:
            lines += ["**Quick smoke run: these figures are not measurements.**", ""]
        lines += [f"- {key}: {value}" for key, value in env.items()]
        current = None
        for row in self.rows:
            if row.suite != current:
                current = row.suite
                lines += [
                    "",
                    f"### {current}",
                    "",
                    "| case | ours /s | baseline | baseline /s | ours/baseline [p10..p90] "
                    "| ours p50 / p99 | baseline p50 / p99 | round trips ours / baseline "
                    "| goal | notes |",
                    "|---|---|---|---|---|---|---|---|---|---|",
                ]
            lines.append(_markdown_row(row))
        lines += _scaling(self.rows)
        goals = [row for row in self.rows if row.goal is not None]
        if goals:
            lines += [
                "",
                "### Goals",
                "",
                "| goal | case | measured | verdict |",
                "|---|---|---|---|",
            ]
            for row in goals:
                lines.append(
                    f"| {row.goal} | {row.suite}: {row.case} | {_measured(row)} | {_verdict(row)} |"
                )
        return "\n".join(lines) + "\n"


def _scaling(rows: list[Row]) -> list[str]:
    """A table per suite whose rows come from several client processes (``extra["processes"]``)."""
    lines: list[str] = []
    scaled = [row for row in rows if "processes" in row.extra]
    for name in dict.fromkeys(row.suite for row in scaled):
        lines += [
            "",
            f"### {name}: scaling with client processes",
            "",
            "| operation | processes | ours /s | ours x vs 1 process | baseline /s "
            "| baseline x vs 1 process | ours/baseline |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in scaled:
            if row.suite == name:
                extra = row.extra
                lines.append(
                    f"| {row.case.partition(',')[0]} | {extra['processes']:.0f} "
                    f"| {_num(row.ours)} | {extra.get('ours scaling vs 1 process', 0):.2f}x "
                    f"| {_num(row.raw)} | {extra.get('raw scaling vs 1 process', 0):.2f}x "
                    f"| {_ratio(row)} |"
                )
    return lines


def _num(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}"


def _latency(value: float) -> str:
    return f"{value / 1000:.2f} ms" if value >= 1000 else f"{value:.0f} µs"


def _pair(first: float | None, second: float | None, fmt: Callable[[float], str]) -> str:
    return "-" if first is None or second is None else f"{fmt(first)} / {fmt(second)}"


def _trips(value: float) -> str:
    return f"{value:.2f}"


def _ratio(row: Row) -> str:
    if row.ratio is None:
        return "-"
    spread = "" if row.low is None or row.high is None else f" [{row.low:.2f}..{row.high:.2f}]"
    return f"**{row.ratio:.2f}x**{spread}"


def _verdict(row: Row) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[row.met]


def _measured(row: Row) -> str:
    metric = row.goal_metric or "ratio"
    value = getattr(row, metric)
    if value is None:
        return "-"
    if metric == "ratio":
        return f"{value:.2f}x"
    return _latency(value) if metric.endswith("_us") else f"{value:,.0f} {row.unit}/s"


def _markdown_row(row: Row) -> str:
    unit = f" {row.unit}"
    notes = [row.note] if row.note else []
    notes += [f"{key} {value:.3g}" for key, value in row.extra.items()]
    goal = "-" if row.goal is None else f"{row.goal}: {_verdict(row)}"
    return (
        f"| {row.case} | {_num(row.ours, unit)} | {row.baseline} | {_num(row.raw, unit)} "
        f"| {_ratio(row)} | {_pair(row.ours_p50_us, row.ours_p99_us, _latency)} "
        f"| {_pair(row.raw_p50_us, row.raw_p99_us, _latency)} "
        f"| {_pair(row.trips, row.raw_trips, _trips)} | {goal} | {'; '.join(notes)} |"
    )


def environment(server_version: Sequence[int], url: str) -> dict[str, str]:
    """Where a run happens: date, command, machine, Python, redis-py, Redis, CPU affinity, load.

    Example: ``environment((7, 0, 15), "redis://127.0.0.1:6379")["redis"]``
    """
    from ..connection import redact_url

    try:
        import hiredis  # noqa: F401

        parser = "hiredis"
    except ImportError:  # pragma: no cover - hiredis is a dependency of the dev install
        parser = "pure-Python parser"
    affinity = sorted(os.sched_getaffinity(0))
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "cpu affinity": ",".join(map(str, affinity)),
        "load average": load,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis-py": f"{redis.__version__} + {parser}",
        "redis": f"{'.'.join(map(str, server_version))} at {redact_url(url)}",
    }


async def run_report(
    url: str,
    suites: Sequence[Suite],
    *,
    rounds: int = 10,
    slice_s: float = 0.2,
    warmup: int = 20,
    quick: bool = False,
    cluster_url: str | None = None,
    on_case: Callable[[str, str, int], None] | None = None,
    tick: Callable[[], None] = _nothing,
) -> Report:
    """Run ``suites`` against ``url`` (a standalone server); a :class:`Report` of every row.

    ``on_case(suite, case, cases)`` is called before a case or probe runs
    (``cases``: how many the suite has) and ``tick()`` after each of its
    rounds (for progress bars). Each side of a case is called ``warmup``
    times first (scripts loaded, connections open), then round trips are
    counted. Everything is written under a fresh namespace
    ``tcbench-<random>``, removed at the end. Suites that measure a Cluster
    use ``cluster_url``, or an embedded 3-master Cluster started on demand.
    ``quick`` asks suites for small probes (a smoke run). A Cluster ``url``
    raises ``ValidationError``: the raw baselines are single-node.

    Example::

        report = await run_report(url, select(["events"]), rounds=3, slice_s=0.05)
    """
    if rounds < 1 or not slice_s > 0 or warmup < 0:
        raise ValidationError("rounds", "rounds must be >= 1, slice_s > 0 and warmup >= 0")
    rows: list[Row] = []
    async with Cache.connect(url, namespace=f"tcbench-{secrets.token_hex(6)}") as cache:
        if cache.is_cluster:
            # The raw baselines are single-node pipelines (HSET + PUBLISH ...), which a
            # Cluster client refuses; the comparison would not be like for like anyway.
            raise ValidationError("url", "benchmarks need a standalone server, not a Cluster")
        env = environment(cache.server_version, url)
        bench = Bench(
            cache,
            url,
            AsyncExitStack(),
            quick=quick,
            rounds=rounds,
            slice_s=slice_s,
            cluster_url=cluster_url,
        )
        try:
            for each in suites:
                async with AsyncExitStack() as bench.stack:
                    rows += await _run_suite(bench, each, warmup, on_case, tick)
        finally:
            await asyncio.to_thread(bench.close)
            await unlink_prefix(cache.client, cache.keys.prefix)
    return Report(rows, env, quick)


async def _run_suite(
    bench: Bench,
    each: Suite,
    warmup: int,
    on_case: Callable[[str, str, int], None] | None,
    tick: Callable[[], None],
) -> list[Row]:
    rows: list[Row] = []
    items = await each.build(bench)
    for item in items:
        if on_case is not None:
            on_case(each.name, item.name, len(items))
        if isinstance(item, Probe):
            rows += [dataclasses.replace(row, suite=each.name) for row in await item.run()]
            for _ in range(bench.rounds):
                tick()
            continue
        for _ in range(warmup):
            await item.ours()
            await item.raw()
        trips = min(10, warmup) or 1
        rows.append(await measure_case(each.name, item, bench.rounds, bench.slice_s, tick, trips))
    return rows
