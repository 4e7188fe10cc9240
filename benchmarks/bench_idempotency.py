"""Idempotency: tradecache's ``idem.run`` against the raw commands doing the same.

* first call with a key, and with a payload dict hashed into the key (claim + store) vs
  raw ``SET NX PX`` + ``SET PX``;
* a replay of the stored result vs a raw GET.

Run: ``python benchmarks/bench_idempotency.py [--url URL] [--quick] [--rounds N] [--out STEM]``
(default: an embedded server from ``tradecache.server``). It is ``tradecache bench
--markdown --only idempotency``: the suite lives in ``tradecache.bench.suites``, measured by
``tradecache.bench.harness`` (interleaved slices, ratios, p50/p99, goals). Pin with
``taskset -c 0`` for figures of record (the embedded server inherits the affinity).
"""

from tradecache.cli.bench import run_script

if __name__ == "__main__":
    run_script(["idempotency"])
