"""Every benchmark suite in one run: ``tradecache bench --markdown`` (see BENCHMARKS.md).

Run: ``python benchmarks/run_all.py [--url URL] [--cluster-url URL] [--quick]
[--only SUITE] [--skip SUITE] [--out STEM]`` (default: an embedded server, and an
embedded 3-master Cluster for the ``cluster`` suite). ``--quick`` is the smoke run CI
does (seconds; figures mean nothing). ``--out STEM`` also writes STEM.md and STEM.json.
"""

from tradecache.cli.bench import run_script

if __name__ == "__main__":
    run_script()
