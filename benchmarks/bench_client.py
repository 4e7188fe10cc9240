"""The client tradecache builds against a stock redis-py client: GET and SET, same server.

No goal: it shows what the way ``create_client`` builds a client costs or saves per command
(a blocking pool, a bounded retry, writes under ``asyncio.timeout``, which keeps cancellations,
where redis-py uses ``asyncio.wait_for``).

Run: ``python benchmarks/bench_client.py [--url URL] [--quick] [--rounds N] [--out STEM]``
(default: an embedded server from ``tradecache.server``). It is ``tradecache bench
--markdown --only client``: the suite lives in ``tradecache.bench.suites``, measured by
``tradecache.bench.harness`` (interleaved slices, ratios, p50/p99, goals). Pin with
``taskset -c 0`` for figures of record (the embedded server inherits the affinity).
"""

from tradecache.cli.bench import run_script

if __name__ == "__main__":
    run_script(["client"])
