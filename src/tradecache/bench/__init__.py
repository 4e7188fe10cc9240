"""Benchmarks of tradecache against raw redis-py (and others), importable from an installed package.

``tradecache bench``, ``python benchmarks/run_all.py`` and every
``benchmarks/bench_<name>.py`` run these suites; code can too::

    from tradecache.bench import run_report, select

    report = await run_report("redis://localhost:6379/0", select(["tickers"]), rounds=5)
    print(report.markdown())

* :mod:`tradecache.bench.harness`: the one measuring implementation
  (interleaved slices, throughput, p50/p99, round trips, ratios, goals,
  markdown and JSON);
* :mod:`tradecache.bench.suites`: the project's suites, one decorated
  function each (``@suite(name, description)``);
* :mod:`tradecache.bench.workers`: worker processes for the multi-process
  probes (lock handoff, Cluster scaling).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ValidationError
from . import suites as _suites  # noqa: F401  (registers the project's suites)
from .harness import (
    SUITES,
    Bench,
    Case,
    Goal,
    Op,
    Probe,
    Report,
    Row,
    Suite,
    at_least,
    at_most,
    measure_case,
    run_report,
    suite,
)

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
    "measure_case",
    "run_report",
    "select",
    "suite",
]


def select(only: Sequence[str] = (), skip: Sequence[str] = ()) -> list[Suite]:
    """The suites named in ``only`` (all when empty), minus ``skip``; unknown names raise.

    Raises ``ValidationError`` for a name that is no suite.

    Example: ``select(["tickers", "lock"])``, ``select(skip=["cluster"])``
    """
    unknown = [name for name in [*only, *skip] if name not in SUITES]
    if unknown:
        names = ", ".join(SUITES)
        raise ValidationError("only", f"no suite {', '.join(unknown)} (one of: {names})")
    chosen = only or list(SUITES)
    return [SUITES[name] for name in chosen if name not in skip]
