"""Order flow: tradecache against raw redis-py on the same server.

* ``orders.submit`` + ``consume`` + ``ack`` of a batch of 100 vs XADD + XREADGROUP + XACK;
* ``orders.submit`` alone (the idempotency check rides in the same Lua call) vs XADD;
* ``orders.update`` (atomic Lua merge of one field) vs HSET of one field;
* ``accounts.set_position`` (a ``Position``, and a ccxt dict) vs HSET of pre-encoded bytes;
* ``trades.push_many`` of 100 trades vs a pipeline of 100 XADD.

Run: ``python benchmarks/bench_orders.py [--url URL] [--quick] [--rounds N] [--out STEM]``
(default: an embedded server from ``tradecache.server``). It is ``tradecache bench
--markdown --only orders``: the suite lives in ``tradecache.bench.suites``, measured by
``tradecache.bench.harness`` (interleaved slices, ratios, p50/p99, goals). Pin with
``taskset -c 0`` for figures of record (the embedded server inherits the affinity).
"""

from tradecache.cli.bench import run_script

if __name__ == "__main__":
    run_script(["orders"])
