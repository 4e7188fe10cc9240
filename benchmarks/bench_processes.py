"""Process heartbeats and metadata reads: tradecache against raw redis-py.

* ``processes.heartbeat`` (one Lua call: record, params merge, three liveness ZSETs) vs a
  raw HSET + ZADD pipeline (the minimum), vs the same work as a raw pipeline (HSET x2,
  ZADD x3), and vs the reference approach (GET JSON, modify, SET, HSET: sequential round
  trips that lose concurrent updates); round trips per call are counted.
* Metadata hits: ``symbols.get`` / ``exchanges.get`` on a cached entry vs GET + decode.

Run: ``python benchmarks/bench_processes.py [--url URL] [--quick] [--rounds N] [--out STEM]``
(default: an embedded server from ``tradecache.server``). It is ``tradecache bench
--markdown --only processes``: the suite lives in ``tradecache.bench.suites``, measured by
``tradecache.bench.harness`` (interleaved slices, ratios, p50/p99, goals). Pin with
``taskset -c 0`` for figures of record (the embedded server inherits the affinity).
"""

from tradecache.cli.bench import run_script

if __name__ == "__main__":
    run_script(["processes"])
