"""Hot keys on Redis Cluster: does one slot per exchange limit ticker throughput?

tradecache keeps all tickers of an exchange in one hash, tagged ``{<exchange>}``
(keys.py), so a busy exchange's writes all land on one master. This measures
what spreading them would buy: P client processes (default 1, 2, 4) each write
the same S symbols (default 500) of one exchange with ``tickers.set_many`` as
fast as they can, for ``--duration`` seconds, in these layouts:

* ``one-slot``: today's layout, one exchange = one hash, one sequence, one slot;
* ``buckets=N``: the symbols spread over N buckets (by CRC32 of the symbol),
  each bucket its own hash + sequence + channel in its own slot, written
  exactly as bucketing would write them (one ``ticker_set.lua`` call per
  bucket chunk, all in one pipeline). Bucket names are picked so the buckets
  spread evenly over the masters (for N=3: one per master, the best case).

Reported per run: tickers/s over all processes, its ratio to ``one-slot`` with
as many processes, the CPU use of the busiest master (``INFO cpu`` delta / wall
time: near 100 % means the hot slot is the limit) and client CPU per ticker.
Then ``get_all`` of the S tickers: one HGETALL vs a pipeline of N HGETALLs.

Run: ``python benchmarks/bench_hot_keys.py [--url redis+cluster://...] [--procs 1,2,4]
[--buckets 3,16] [--symbols 500] [--duration 3] [--rounds 1]`` (default: an
embedded 3-master cluster from ``tradecache.server``).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
import zlib
from typing import Any

import redis
from redis.crc import key_slot

from tradecache import Cache
from tradecache.keys import Keys
from tradecache.models import Ticker, utc_now
from tradecache.server import RedisClusterServer

SPAWN = multiprocessing.get_context("spawn")
NAMESPACE = "hotkeys"
EXCHANGE = "busy"


def bucket_names(buckets: int, slot_owner: dict[int, int], masters: int) -> list[str]:
    """``buckets`` exchange names whose hashes spread evenly over the masters."""
    keys = Keys(NAMESPACE)
    names: list[str] = []
    load = [0] * masters
    candidate = 0
    while len(names) < buckets:
        name = f"{EXCHANGE}.n{buckets}b{candidate}"
        candidate += 1
        owner = slot_owner[key_slot(keys.ticker_hash(name).encode())]
        if load[owner] == min(load):
            load[owner] += 1
            names.append(name)
    return names


def make_tickers(symbols: int, names: list[str] | None, worker: int) -> list[Ticker]:
    now = utc_now()
    out = []
    for i in range(symbols):
        symbol = f"S{i}/USDT"
        exchange = EXCHANGE if names is None else names[zlib.crc32(symbol.encode()) % len(names)]
        price = 100.0 + i + worker / 10
        out.append(
            Ticker(
                symbol=symbol,
                exchange=exchange,
                timestamp=now,
                received=now,
                bid=price - 0.5,
                ask=price + 0.5,
                last=price,
                base_volume=1234.5,
            )
        )
    return out


def _worker(
    url: str,
    names: list[str] | None,
    symbols: int,
    duration: float,
    index: int,
    barrier: Any,
    results: Any,
) -> None:
    async def main() -> tuple[int, float, float]:
        async with Cache.connect(url, namespace=NAMESPACE) as cache:
            batch = make_tickers(symbols, names, index)
            await cache.tickers.set_many(batch)  # scripts loaded, slots mapped, exchanges indexed
            await asyncio.to_thread(barrier.wait)
            done, cpu, started = 0, time.process_time(), time.perf_counter()
            while time.perf_counter() - started < duration:
                done += await cache.tickers.set_many(batch)
            return done, time.perf_counter() - started, time.process_time() - cpu

    results.put(asyncio.run(main()))


def master_cpu(clients: list[redis.Redis]) -> list[float]:
    out = []
    for client in clients:
        info: Any = client.info("cpu")
        out.append(float(info["used_cpu_sys"]) + float(info["used_cpu_user"]))
    return out


def run_once(
    url: str,
    masters: list[redis.Redis],
    names: list[str] | None,
    procs: int,
    symbols: int,
    duration: float,
) -> tuple[float, float, float, float]:
    """(tickers/s, busiest master CPU %, its ceiling in tickers/s, client CPU µs/ticker)."""
    barrier = SPAWN.Barrier(procs + 1)
    results = SPAWN.Queue()
    workers = [
        SPAWN.Process(
            target=_worker, args=(url, names, symbols, duration, i, barrier, results), daemon=True
        )
        for i in range(procs)
    ]
    for worker in workers:
        worker.start()
    try:
        barrier.wait(timeout=120)
        before, wall = master_cpu(masters), time.perf_counter()
        outcomes = [results.get(timeout=duration + 120) for _ in workers]
        after, wall = master_cpu(masters), time.perf_counter() - wall
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join()
    done = sum(n for n, _, _ in outcomes)
    rate = sum(n / elapsed for n, elapsed, _ in outcomes)
    busiest = max(b - a for a, b in zip(before, after, strict=True))
    client_cpu = sum(cpu for _, _, cpu in outcomes) / done * 1e6
    # The busiest master's CPU seconds per ticker bound what it can take: its ceiling.
    return rate, busiest / wall * 100, done / busiest, client_cpu


async def get_all_latency(url: str, names: list[str] | None, symbols: int, n: int) -> float:
    """µs per read of every ticker of the exchange (raw HGETALLs, no decoding)."""
    async with Cache.connect(url, namespace=NAMESPACE) as cache:
        client: Any = cache.client
        hashes = [
            cache.keys.ticker_hash(EXCHANGE if names is None else name)
            for name in names or [EXCHANGE]
        ]
        started = time.perf_counter()
        for _ in range(n):
            if len(hashes) == 1:
                found = len(await client.hgetall(hashes[0]))
            else:
                pipe = client.pipeline(transaction=False)
                for key in hashes:
                    pipe.hgetall(key)
                found = sum(map(len, await pipe.execute()))
            assert found == symbols, (found, symbols)
        return (time.perf_counter() - started) / n * 1e6


def run(
    url: str, procs: list[int], buckets: list[int], symbols: int, duration: float, rounds: int
) -> None:
    host, port = url.removeprefix("redis+cluster://").rsplit(":", 1)
    seed = redis.Redis(host=host, port=int(port))
    master_ports: list[int] = []
    slot_owner: dict[int, int] = {}
    for start, end, primary, *_ in seed.execute_command("CLUSTER SLOTS"):
        node_port = int(primary[1])
        if node_port not in master_ports:
            master_ports.append(node_port)
        for slot in range(start, end + 1):
            slot_owner[slot] = master_ports.index(node_port)
    masters = [redis.Redis(host=host, port=p) for p in master_ports]
    layouts: dict[str, list[str] | None] = {"one-slot": None}
    for n in buckets:
        layouts[f"buckets={n}"] = bucket_names(n, slot_owner, len(masters))
    figures: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
    for _ in range(rounds):
        for p in procs:
            for name, names in layouts.items():  # interleaved: layouts side by side
                figures.setdefault((name, p), []).append(
                    run_once(url, masters, names, p, symbols, duration)
                )
    print(
        f"\nOne busy exchange ({symbols} symbols) on a {len(masters)}-master cluster, "
        f"set_many of all {symbols} per call, {duration}s runs x {rounds}\n"
    )
    print(
        "| layout | processes | tickers/s | vs one-slot | busiest master CPU "
        "| its ceiling (tickers/s) | client CPU/ticker |"
    )
    print("|---|---|---|---|---|---|---|")
    for p in procs:
        base = statistics.median(run[0] for run in figures[("one-slot", p)])
        for name in layouts:
            runs = figures[(name, p)]
            rate, busiest, ceiling, cpu = (
                statistics.median(run[i] for run in runs) for i in range(4)
            )
            print(
                f"| {name} | {p} | {rate:,.0f} | {rate / base:.2f}x | {busiest:.0f} % "
                f"| {ceiling:,.0f} | {cpu:.1f} µs |"
            )
    print(f"\n| get_all of {symbols} tickers (raw, no decode) | µs per call |")
    print("|---|---|")
    for name, names in layouts.items():
        print(f"| {name} | {asyncio.run(get_all_latency(url, names, symbols, 200)):,.0f} |")
    for client in [seed, *masters]:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", help="redis+cluster:// URL (default: an embedded 3-master cluster)"
    )
    parser.add_argument("--procs", default="1,2,4", help="client process counts")
    parser.add_argument("--buckets", default="3,16", help="bucket counts to compare")
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    procs = [int(p) for p in args.procs.split(",")]
    buckets = [int(b) for b in args.buckets.split(",") if b]
    if args.url:
        run(args.url, procs, buckets, args.symbols, args.duration, args.rounds)
        return
    with RedisClusterServer(masters=3) as cluster:
        run(cluster.url, procs, buckets, args.symbols, args.duration, args.rounds)


if __name__ == "__main__":
    main()
