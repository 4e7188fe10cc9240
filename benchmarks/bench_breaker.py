"""Circuit breaker: tradecache's overhead against unguarded calls and pybreaker.

* Closed: ``breaker.call(GET)``, ``async with breaker`` and the failure-rate policy vs the
  bare GET; ``breaker.call(no-op)`` vs the no-op (pure CPU overhead, p50/p99 in µs); the
  failure path vs an unguarded failing call.
* pybreaker with ``CircuitRedisStorage`` (sync; ``pip install -e .[dev]``): success and
  failure paths, round trips per call counted.
* Propagation: one cache trips/resets, another cache's ``on_change`` listener fires
  (p50/p99). Idempotency is ``bench_idempotency.py``.

Run: ``python benchmarks/bench_breaker.py [--url URL] [--quick] [--rounds N] [--out STEM]``
(default: an embedded server from ``tradecache.server``). It is ``tradecache bench
--markdown --only breaker``: the suite lives in ``tradecache.bench.suites``, measured by
``tradecache.bench.harness`` (interleaved slices, ratios, p50/p99, goals). Pin with
``taskset -c 0`` for figures of record (the embedded server inherits the affinity).
"""

from tradecache.cli.bench import run_script

if __name__ == "__main__":
    run_script(["breaker"])
