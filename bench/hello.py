"""Hello-world latency and throughput through the sandbox, against a bare interpreter timed in the same run.

    .venv/bin/python bench/hello.py [--n 200] [--concurrency 1 2 4] [--language python]
                                    [--backends nsjail docker] [--docker-host URL] [--pace-ms MS]
                                    [--target HOST:PORT] [--json [PATH]]

Without --target the benchmark starts its own server in this process (sandbox_server.testing.server_in_thread;
needs what the server needs: root, cgroups). For every concurrency C it runs N executions of a hello-world
program with C threads in two modes, each after a short unmeasured warm-up:

  bare        subprocess.run([interpreter, "-c", code]) on the host: the floor any sandbox is compared against
  nsjail      SandboxClient.execute(code, language=...) through gRPC, one cold jail per execution (warm_python
              off: bench/warm.py measures the warm path)
  docker      the same through a server on the Docker backend (fresh container per execution, warm pool)
  docker-run  a plain `docker run --rm --network none IMAGE interpreter -c code` of the same image

(--target measures one running server instead, as mode "sandbox".) Without --docker-host, the Docker modes
start the test suite's own dockerd (--bridge=none) and build the images offline (cached).

and prints p50/p99 latency, executions per second, and the sandbox's ratios to bare at the same C. With
--pace-ms each caller pauses that long after each call (an agent between steps; every mode alike): the Docker
backend's pool is then refilled between calls, as it is at an agent's pace, and only latency means anything.
See bench/README.md for how to read the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sandbox_client import SandboxClient

EXPECTED_STDOUT = "hello\n"
IMAGES = {"python": "python", "javascript": "node", "bash": "bash"}

# language -> (code sent to the sandbox, the bare command that runs the same program on the host)
PROGRAMS: dict[str, tuple[str, list[str]]] = {
    "python": ('print("hello")', ["/usr/bin/python3", "-c", 'print("hello")']),
    "javascript": ('console.log("hello")', ["/usr/bin/node", "-e", 'console.log("hello")']),
    "bash": ("echo hello", ["/bin/bash", "-c", "echo hello"]),
}


@dataclass(frozen=True)
class Row:
    mode: str
    concurrency: int
    n: int
    p50_ms: float
    p99_ms: float
    wall_s: float
    executions_per_s: float
    p50_ratio: float | None = None  # sandbox p50 / bare p50 at the same concurrency (x times slower)
    throughput_ratio: float | None = None  # sandbox executions/s / bare executions/s (fraction of bare)


def percentile(samples: list[float], pct: float) -> float:
    """Linear-interpolated percentile (the same as numpy's default), pct in [0, 100]."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * pct / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def measure(mode: str, one: Callable[[], None], n: int, concurrency: int, warmup: int, pause_s: float = 0.0) -> Row:
    """Run ``one`` n times on ``concurrency`` threads (after ``warmup`` unmeasured runs); time each call. With
    ``pause_s``, each thread waits that long after each call (an agent thinking between calls), untimed."""

    def timed(_: int) -> float:
        start = time.perf_counter()
        one()
        elapsed = time.perf_counter() - start
        if pause_s:
            time.sleep(pause_s)
        return elapsed

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"bench-{mode}") as pool:
        list(pool.map(timed, range(warmup)))
        start = time.perf_counter()
        latencies = list(pool.map(timed, range(n)))
        wall = time.perf_counter() - start
    return Row(
        mode=mode,
        concurrency=concurrency,
        n=n,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        wall_s=wall,
        executions_per_s=n / wall,
    )


def bare_runner(command: list[str]) -> Callable[[], None]:
    def one() -> None:
        proc = subprocess.run(command, capture_output=True, check=False)
        if proc.returncode != 0 or proc.stdout.decode() != EXPECTED_STDOUT:
            raise RuntimeError(
                f"bare run failed: exit {proc.returncode}, stdout {proc.stdout!r}, "
                f"stderr {proc.stderr[-500:]!r}"
            )

    return one


def sandbox_runner(client: SandboxClient, code: str, language: str) -> Callable[[], None]:
    def one() -> None:
        result = client.execute(code, language=language)
        if result.status != "OK" or result.stdout != EXPECTED_STDOUT:
            raise RuntimeError(
                f"sandbox run failed: status {result.status!r}, stdout {result.stdout!r}, "
                f"stderr {result.stderr[-500:]!r}, message {result.message!r}"
            )

    return one


@contextlib.contextmanager
def server_target(args: argparse.Namespace, max_concurrency: int, backend: str,
                  docker_host: str | None) -> Iterator[str]:
    if args.target:
        yield args.target
        return
    from sandbox_server.testing import server_in_thread  # only needed when we run our own server

    max_running = args.max_running or max_concurrency
    max_queued = args.max_queued if args.max_queued is not None else max_concurrency
    extra: dict[str, Any] = {"warm_python": False, "warm_javascript": False}  # cold; bench/warm.py: warm
    if backend == "docker":
        extra = {"docker_host": docker_host, "docker_pool_size": max(2, max_concurrency)}
    with server_in_thread(backend=backend, max_running=max_running, max_queued=max_queued, **extra) as srv:
        if backend == "docker":
            _wait_for_pool(srv, max(2, max_concurrency))
        yield srv.target


def _wait_for_pool(srv: object, size: int, timeout_s: float = 120.0) -> None:
    backend = srv.app.backend  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    while sum(len(q) for q in backend._pool.values()) < size * 3 and time.monotonic() < deadline:
        time.sleep(0.1)


@contextlib.contextmanager
def docker_daemon(args: argparse.Namespace) -> Iterator[str | None]:
    """The dockerd to use: --docker-host, or the test suite's own (started and stopped here)."""
    if "docker" not in args.backends or args.target:
        yield None
        return
    if args.docker_host:
        yield args.docker_host
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from docker_daemon import build_images, running_dockerd

    with running_dockerd() as daemon:
        build_images(daemon.host)
        yield daemon.host


def docker_run_runner(docker_host: str, image: str, command: list[str]) -> Callable[[], None]:
    """A plain `docker run` of the same image and program: the cold-container baseline."""
    argv = ["docker", "--host", docker_host, "run", "--rm", "--network", "none", "--user", "65534:65534",
            "--read-only", "--log-driver", "none", image, *command]
    return bare_runner(argv)


def with_ratios(sandbox: Row, bare: Row) -> Row:
    return Row(
        **{
            **asdict(sandbox),
            "p50_ratio": sandbox.p50_ms / bare.p50_ms,
            "throughput_ratio": sandbox.executions_per_s / bare.executions_per_s,
        }
    )


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'mode':<10} {'conc':>4} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'exec/s':>8} "
        f"{'p50 vs bare':>12} {'exec/s vs bare':>15}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        p50_ratio = f"{r.p50_ratio:.2f}x" if r.p50_ratio is not None else "-"
        tput_ratio = f"{r.throughput_ratio:.3f}x" if r.throughput_ratio is not None else "-"
        lines.append(
            f"{r.mode:<10} {r.concurrency:>4} {r.n:>5} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} "
            f"{r.executions_per_s:>8.1f} {p50_ratio:>12} {tput_ratio:>15}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200, help="measured executions per mode and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4], help="thread counts to try")
    parser.add_argument("--language", choices=sorted(PROGRAMS), default="python")
    parser.add_argument("--target", help="HOST:PORT of a running server (default: start one in-process)")
    parser.add_argument("--backends", nargs="+", choices=["nsjail", "docker"], default=["nsjail"],
                        help="backends to measure with in-process servers (default: nsjail)")
    parser.add_argument("--docker-host", help="dockerd for the Docker modes (default: start the tests' own)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="unmeasured executions before each measurement (default 2*C)"
    )
    parser.add_argument("--pace-ms", type=float, default=0.0,
                        help="each caller's pause after each call, untimed (default 0: back to back)")
    parser.add_argument("--max-running", type=int, default=None, help="in-process server (default: max C)")
    parser.add_argument("--max-queued", type=int, default=None, help="in-process server (default: max C)")
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write the results as JSON to PATH, or to stdout instead of the table when no PATH is given",
    )
    args = parser.parse_args(argv)
    if args.n < 1 or any(c < 1 for c in args.concurrency):
        parser.error("--n and --concurrency must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code, bare_command = PROGRAMS[args.language]
    concurrencies = list(dict.fromkeys(args.concurrency))
    rows: list[Row] = []

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with docker_daemon(args) as docker_host, contextlib.ExitStack() as stack:
        modes: list[tuple[str, Callable[[], None]]] = []
        for backend in ["sandbox"] if args.target else args.backends:
            target = stack.enter_context(server_target(args, max(concurrencies), backend, docker_host))
            client = stack.enter_context(SandboxClient(target))
            modes.append((backend, sandbox_runner(client, code, args.language)))
        if docker_host is not None:
            image = f"sandbox-runtime-{IMAGES[args.language]}:bookworm"
            modes.append(("docker-run", docker_run_runner(docker_host, image, bare_command)))
        bare_one = bare_runner(bare_command)
        for c in concurrencies:
            warmup = args.warmup if args.warmup is not None else 2 * c
            progress(f"bench: C={c}: bare x{args.n} ...")
            pause = args.pace_ms / 1000
            bare = measure("bare", bare_one, args.n, c, warmup, pause)
            rows.append(bare)
            for mode, one in modes:
                progress(f"bench: C={c}: {mode} x{args.n} ...")
                rows.append(with_ratios(measure(mode, one, args.n, c, warmup, pause), bare))

    meta = {
        "language": args.language,
        "pace_ms": args.pace_ms,
        "target": args.target or "in-process server",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "bare_command": bare_command,
    }
    if args.json is not None:
        doc = json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2)
        if args.json == "-":
            print(doc)
            return 0
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(doc + "\n")
    print(
        f"hello-world, language={meta['language']}, pace={args.pace_ms:g} ms, target={meta['target']}, "
        f"cpus={meta['cpus']}, kernel={meta['kernel']}"
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
