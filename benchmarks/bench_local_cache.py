"""Client-side cache: ticker reads with ``local_cache=True`` against raw HGET + decode.

Goal >= 20x. Reports the suite as skipped while ``Cache.connect`` has no ``local_cache``.

Run: ``python benchmarks/bench_local_cache.py [--url URL] [--quick] [--rounds N] [--out STEM]``
(default: an embedded server from ``tradecache.server``). It is ``tradecache bench
--markdown --only local_cache``: the suite lives in ``tradecache.bench.suites``, measured by
``tradecache.bench.harness`` (interleaved slices, ratios, p50/p99, goals). Pin with
``taskset -c 0`` for figures of record (the embedded server inherits the affinity).
"""

from tradecache.cli.bench import run_script

if __name__ == "__main__":
    run_script(["local_cache"])
