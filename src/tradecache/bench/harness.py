"""The benchmark harness: interleaved slices of ours and raw redis-py, as ratios.

Every :class:`Case` pairs one of our calls with the raw redis-py commands that
do the same job (same server, same process, same payload, pre-encoded on the
raw side). The two run in short alternating time slices, the side that goes
first swapping every round, so load and CPU-frequency drift hit both
(research/perf_baseline.md §5-6). A row's ``ratio`` is the median over rounds
of ``ours / raw`` throughput (1.0: as fast as raw redis-py; 0.5: half as
fast), ``low``..``high`` the p10..p90 of the per-round ratios.

Example::

    from tradecache.bench import run_benchmarks, select

    rows = await run_benchmarks(url, select(["tickers"]), rounds=10, slice_s=0.2)
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..cache import Cache
from ..errors import ValidationError
from ..testing.selfcheck import unlink_prefix

__all__ = ["Case", "Op", "Row", "Suite", "measure_case", "run_benchmarks"]

Op = Callable[[], Awaitable[int]]
"""Does some work and returns how many operations it did (1, or a batch size)."""


@dataclass(frozen=True, slots=True)
class Case:
    """One comparison: ``ours`` and ``raw`` do the same work; ``unit`` names an operation."""

    name: str
    ours: Op
    raw: Op
    unit: str = "ops"


@dataclass(frozen=True, slots=True)
class Suite:
    """A named group of cases; ``build(cache)`` prepares them in the bench namespace."""

    name: str
    description: str
    build: Callable[[Cache], Awaitable[list[Case]]]


@dataclass(frozen=True, slots=True)
class Row:
    """The result of one case: medians in operations per second, ``ratio`` = ours / raw."""

    suite: str
    case: str
    unit: str
    ours: float
    raw: float
    ratio: float
    low: float
    high: float
    rounds: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict. Example: ``json.dumps([row.to_dict() for row in rows])``"""
        return asdict(self)


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(len(ordered) * q / 100) - 1))]


async def _rate(op: Op, slice_s: float) -> float:
    """Operations per second of ``op`` over one slice (at least one call)."""
    done, started = 0, time.perf_counter()
    elapsed = 0.0
    while elapsed < slice_s:
        done += await op()
        elapsed = time.perf_counter() - started
    return done / elapsed


def _nothing() -> None:
    return None


async def measure_case(
    suite: str,
    case: Case,
    rounds: int,
    slice_s: float,
    tick: Callable[[], None] = _nothing,
) -> Row:
    """Interleave ``rounds`` slices of each side of ``case``; ``tick()`` after each round.

    Example: ``row = await measure_case("tickers", case, rounds=10, slice_s=0.2)``
    """
    ours: list[float] = []
    raw: list[float] = []
    for index in range(rounds):
        if index % 2:
            raw.append(await _rate(case.raw, slice_s))
            ours.append(await _rate(case.ours, slice_s))
        else:
            ours.append(await _rate(case.ours, slice_s))
            raw.append(await _rate(case.raw, slice_s))
        tick()
    ratios = [a / b for a, b in zip(ours, raw, strict=True)]
    return Row(
        suite=suite,
        case=case.name,
        unit=case.unit,
        ours=statistics.median(ours),
        raw=statistics.median(raw),
        ratio=statistics.median(ratios),
        low=_pct(ratios, 10),
        high=_pct(ratios, 90),
        rounds=rounds,
    )


async def run_benchmarks(
    url: str,
    suites: Sequence[Suite],
    *,
    rounds: int = 10,
    slice_s: float = 0.2,
    warmup: int = 20,
    on_case: Callable[[str, str, int], None] | None = None,
    tick: Callable[[], None] = _nothing,
) -> list[Row]:
    """Run ``suites`` against ``url``; one :class:`Row` per case, in order.

    ``on_case(suite, case, cases)`` is called before a case runs (``cases``:
    how many the suite has) and ``tick()`` after each of its rounds (for
    progress bars). Each side of a case is called
    ``warmup`` times first (scripts loaded, connections open). Everything is
    written under a fresh namespace ``tcbench-<random>``, removed at the end.
    The server must be standalone (the raw baselines are single-node
    pipelines): a Cluster URL raises ``ValidationError``.

    Example::

        rows = await run_benchmarks(url, select(["events"]), rounds=3, slice_s=0.05)
    """
    if rounds < 1 or not slice_s > 0 or warmup < 0:
        raise ValidationError("rounds", "rounds must be >= 1, slice_s > 0 and warmup >= 0")
    rows = []
    async with Cache.connect(url, namespace=f"tcbench-{secrets.token_hex(6)}") as cache:
        if cache.is_cluster:
            # The raw baselines are single-node pipelines (HSET + PUBLISH ...), which a
            # Cluster client refuses; the comparison would not be like for like anyway.
            raise ValidationError("url", "benchmarks need a standalone server, not a Cluster")
        try:
            for suite in suites:
                cases = await suite.build(cache)
                for case in cases:
                    if on_case is not None:
                        on_case(suite.name, case.name, len(cases))
                    for _ in range(warmup):
                        await case.ours()
                        await case.raw()
                    rows.append(await measure_case(suite.name, case, rounds, slice_s, tick))
        finally:
            await unlink_prefix(cache.client, cache.keys.prefix)
    return rows
