"""Throughput with 1, 2 and 3 replicas behind HAProxy, in one run, on one host.

    .venv/bin/python bench/replicas.py                      # defaults: --replicas 1 2 3 --concurrency 6 --seconds 15
    .venv/bin/python bench/replicas.py --json results.json

For each replica count N it starts what a deployment runs, every part real and on loopback: one PostgreSQL and
one Redis (Debian's packages, throwaway, shared by the replicas), N ``sandbox-server serve`` processes on them,
and HAProxy in front (gRPC over h2c, each call balanced round robin). Then C client threads send executions
through HAProxy for the given seconds, after a warm-up; every result is checked. The table gives executions per
second, latency percentiles, and the throughput relative to one replica measured in the same run.

On one host the replicas share its cores: the work is CPU-bound (each execution is a Python program), so N
replicas cannot do more than the host's cores allow. What the ratio shows here is what the shared state costs
(PostgreSQL for every audit record and charge, Redis for every rate window, lease and idempotency key); on a
host per replica the sandboxes' CPU is N times larger, and the shared parts then bound throughput instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

# The tests' launchers for PostgreSQL, Redis, HAProxy and replica processes: one copy, used by both.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from haproxy_server import running_haproxy
from postgres_server import Postgres, running_postgres
from redis_server import Redis, running_redis
from replica_processes import running_replicas

from sandbox_client import SandboxClient

# A small CPU-bound program with a checkable answer: what an agent's one-shot step typically is.
PROGRAM = "print(sum(i * i for i in range(200_000)))"
EXPECTED = f"{sum(i * i for i in range(200_000))}\n"


def run(target: str, concurrency: int, seconds: float, warmup: int) -> tuple[int, list[float]]:
    """Executions completed in ``seconds`` by ``concurrency`` threads, and their latencies (ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    errors: list[str] = []

    def worker() -> None:
        with SandboxClient(target, timeout=120) as sbx:
            for _ in range(warmup):
                sbx.execute(PROGRAM)
            barrier.wait()
            while time.monotonic() < stop:
                started = time.perf_counter()
                result = sbx.execute(PROGRAM)
                took = (time.perf_counter() - started) * 1000
                if result.status != "OK" or result.stdout != EXPECTED:
                    errors.append(f"{result.status}: {result.stdout!r} {result.stderr[:200]!r}")
                    return
                with lock:
                    latencies.append(took)

    barrier = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    stop = time.monotonic() + seconds  # measured from the end of every warm-up
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"bench: a wrong result: {errors[0]}")
    return len(latencies), latencies


@contextlib.contextmanager
def topology(root: Path, n: int, postgres: Postgres, redis: Redis) -> Iterator[str]:
    redis.flush()
    with running_replicas(root / f"n{n}", n, postgres.create_database(), redis.url) as replicas, \
            running_haproxy([r.port for r in replicas]) as balancer:
        balancer.wait_until_up(n)
        yield balancer.target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--concurrency", type=int, default=6, help="client threads, the same for every N")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per replica count")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured executions per thread first")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="JSON on stdout, or into a file")
    args = parser.parse_args()
    rows: list[dict[str, float]] = []
    with running_postgres() as postgres, running_redis() as redis, \
            tempfile.TemporaryDirectory(prefix="bench-replicas-") as directory:
        for n in args.replicas:
            print(f"bench: {n} replica(s) behind HAProxy, {args.concurrency} clients, {args.seconds:g} s",
                  file=sys.stderr)
            with topology(Path(directory), n, postgres, redis) as target:
                done, latencies = run(target, args.concurrency, args.seconds, args.warmup)
            quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
            rows.append({"replicas": n, "executions": done, "per_s": done / args.seconds,
                         "p50_ms": quantiles[49], "p99_ms": quantiles[98]})
    base = rows[0]["per_s"] or 1.0
    for row in rows:
        row["vs_first"] = row["per_s"] / base
    if args.json == "-":
        print(json.dumps(rows, indent=2))
        return
    first = f"vs {rows[0]['replicas']}"
    print(f"{'replicas':>8} {'exec':>6} {'exec/s':>8} {'p50 ms':>8} {'p99 ms':>8} {first:>6}")
    for row in rows:
        print(f"{row['replicas']:>8} {row['executions']:>6} {row['per_s']:>8.1f} {row['p50_ms']:>8.1f} "
              f"{row['p99_ms']:>8.1f} {row['vs_first']:>5.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
