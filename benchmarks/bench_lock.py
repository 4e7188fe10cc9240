"""Locks and bot claims: tradecache against redis-py on the same server.

* Handoff under contention: 16 processes each take one lock 30 times, hold 2 ms, think
  5 ms, in rounds alternating ours / redis-py's asyncio ``Lock`` (polling): grants/s, the
  handoff gap (one process's release to another's grant) p50/p99, wait p99/max, client
  CPU per grant. Goal: handoff p99 <= 5 ms.
* Uncontended acquire + release: ours vs raw ``SET NX PX`` + Lua release and vs
  redis-py's ``Lock``; ``bots.claim`` vs the raw pair; round trips per call counted.

Run: ``python benchmarks/bench_lock.py [--url URL] [--quick] [--rounds N] [--out STEM]``
(default: an embedded server from ``tradecache.server``). It is ``tradecache bench
--markdown --only lock``: the suite lives in ``tradecache.bench.suites``, measured by
``tradecache.bench.harness`` (interleaved slices, ratios, p50/p99, goals). Pin with
``taskset -c 0`` for figures of record (the embedded server inherits the affinity).
"""

from tradecache.cli.bench import run_script

if __name__ == "__main__":
    run_script(["lock"])
