"""Benchmarks of tradecache against raw redis-py, importable from an installed package.

``tradecache bench`` runs these suites; code can too::

    from tradecache.bench import run_benchmarks, select

    rows = await run_benchmarks("redis://localhost:6379/0", select(["tickers"]), rounds=5)
    for row in rows:
        print(row.suite, row.case, f"{row.ratio:.2f}x")

**Where the benchmarks live.** ``benchmarks/bench_*.py`` in the repository
are the detailed, figures-of-record scripts (multi-process lock contention,
publish->receive latency distributions, the reference library's approach
...): they are not installed, and each keeps running standalone. This package
holds the harness (:mod:`tradecache.bench.harness`: interleaved slices,
ratios) and one compact suite per script (:mod:`tradecache.bench.suites`: the
same headline ours-vs-raw comparisons), so ``tradecache bench`` works from a
wheel with no repository around.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ValidationError
from .harness import Case, Op, Row, Suite, measure_case, run_benchmarks
from .suites import SUITES

__all__ = ["SUITES", "Case", "Op", "Row", "Suite", "measure_case", "run_benchmarks", "select"]


def select(only: Sequence[str] = ()) -> list[Suite]:
    """The suites named in ``only`` (all when empty); an unknown name raises ``ValidationError``.

    Example: ``select(["tickers", "lock"])``
    """
    if not only:
        return list(SUITES.values())
    unknown = [name for name in only if name not in SUITES]
    if unknown:
        names = ", ".join(SUITES)
        raise ValidationError("only", f"no suite {', '.join(unknown)} (one of: {names})")
    return [SUITES[name] for name in only]
