"""Scaling on a 3-master Redis Cluster: 1, 2 and 4 client processes.

Ticker set, ticker get and a lock cycle, each process on its own symbol / lock, ours vs
the raw redis-py ``RedisCluster`` client doing the same commands; absolute throughput of
all processes together and the scaling factor against one process. Uses ``--cluster-url``
or an embedded Cluster (``tradecache.server.RedisClusterServer``). Run it unpinned: the
point is using more cores.

Run: ``python benchmarks/bench_cluster.py [--url URL] [--quick] [--rounds N] [--out STEM]``
(default: an embedded server from ``tradecache.server``). It is ``tradecache bench
--markdown --only cluster``: the suite lives in ``tradecache.bench.suites``, measured by
``tradecache.bench.harness`` (interleaved slices, ratios, p50/p99, goals). Pin with
``taskset -c 0`` for figures of record (the embedded server inherits the affinity).
"""

from tradecache.cli.bench import run_script

if __name__ == "__main__":
    run_script(["cluster"])
