"""Event bus: tradecache against raw redis-py pub/sub on the same server.

* publish throughput with one subscriber reading: ``events.publish`` (sequence number,
  capped backlog, PUBLISH in one Lua call) vs a raw PUBLISH of the same JSON bytes;
* publish -> receive round trip, one message in flight: ours (``Subscription``: reader
  task, envelope decode, sequence check) vs redis-py ``PubSub.listen()`` feeding an
  ``asyncio.Queue``; p50/p99 are the publish -> receive latencies.

Run: ``python benchmarks/bench_events.py [--url URL] [--quick] [--rounds N] [--out STEM]``
(default: an embedded server from ``tradecache.server``). It is ``tradecache bench
--markdown --only events``: the suite lives in ``tradecache.bench.suites``, measured by
``tradecache.bench.harness`` (interleaved slices, ratios, p50/p99, goals). Pin with
``taskset -c 0`` for figures of record (the embedded server inherits the affinity).
"""

from tradecache.cli.bench import run_script

if __name__ == "__main__":
    run_script(["events"])
