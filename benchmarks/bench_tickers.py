"""Ticker store: tradecache against raw redis-py and the reference library's approach.

* ``set`` (one Lua call: HSET + INCRBY + PUBLISH) vs a pipelined HSET + PUBLISH of the
  same pre-encoded JSON, and vs the reference approach: three sequential commands per
  ticker (HSET, SET ticker_time, PUBLISH; its PINGs left out, in its favour). Goal >= 0.85x raw.
* ``set_many(1000)`` vs one raw pipeline of 1000 x (HSET + PUBLISH), and vs the reference
  approach (no batch call: one ticker at a time). Goal >= 5x the reference.
* ``get`` (HGET, decode + validate into a ``Ticker``) vs raw HGET + msgspec decode into
  the same model, and vs the reference (PING + HGET + ``json.loads``). Goal >= 0.85x raw.

Run: ``python benchmarks/bench_tickers.py [--url URL] [--quick] [--rounds N] [--out STEM]``
(default: an embedded server from ``tradecache.server``). It is ``tradecache bench
--markdown --only tickers``: the suite lives in ``tradecache.bench.suites``, measured by
``tradecache.bench.harness`` (interleaved slices, ratios, p50/p99, goals). Pin with
``taskset -c 0`` for figures of record (the embedded server inherits the affinity).
"""

from tradecache.cli.bench import run_script

if __name__ == "__main__":
    run_script(["tickers"])
