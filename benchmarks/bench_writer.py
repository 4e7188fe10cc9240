"""Batched ticker writes: ``tickers.writer`` and ``set_many`` against the reference approach.

* ``tickers.writer`` (100 tickers queued, then written by one flush) and ``set_many(100)``
  vs the reference library's approach (three sequential commands per ticker: HSET, SET of
  its time, PUBLISH; pre-encoded, in its favour). Goal >= 5x the reference.
* the writer vs one raw pipeline of 100 x (HSET + PUBLISH).

Run: ``python benchmarks/bench_writer.py [--url URL] [--quick] [--rounds N] [--out STEM]``
(default: an embedded server from ``tradecache.server``). It is ``tradecache bench
--markdown --only writer``: the suite lives in ``tradecache.bench.suites``, measured by
``tradecache.bench.harness`` (interleaved slices, ratios, p50/p99, goals). Pin with
``taskset -c 0`` for figures of record (the embedded server inherits the affinity).
"""

from tradecache.cli.bench import run_script

if __name__ == "__main__":
    run_script(["writer"])
