"""The warm path against a bare interpreter and the cold jail path, in one process and one run.

    .venv/bin/python bench/warm.py [--n 300] [--hello-n 300] [--concurrency 1 2] [--json [PATH]]

Four modes, each after an unmeasured warm-up, at every concurrency C (C threads), on two workloads:

  bare   subprocess.run(["/usr/bin/python3", "-c", program]) on the host: unisolated, a cold interpreter each
  cold   SandboxClient.execute(program) through a full server (the whole interceptor chain, audit, ...) whose
         Python executions each start a fresh nsjail jail and interpreter (warm_python off)
  fresh  the same server with the warm path's "fresh" mode: a sandbox set up ahead of its request, its
         interpreter exec'd and started ahead too (its own address-space layout)
  fork   the warm path's default mode: a fork of a clean warm interpreter per execution, in fresh namespaces,
         cgroup, scratch and seccomp filter (every sandbox shares the zygote's layout: docs/security.md)

  hello     print("hello"), --hello-n times
  workload  --n distinct small programs with test assertions (bench/workload.py), each printing "ok"
  paced     print("hello") at C=1 with --pace-ms between calls (an agent's pace: the server is idle between
            them), --hello-n / 2 times; its exec/s counts the pauses, so only its latency means anything
  node      console.log("hello") at C=1, back to back and paced (>= 100 ms), --js-n times each: bare `node -e`, the cold
            jail and the warm path's node started ahead (the fresh server; fork is Python's alone)

It prints p50/p99 latency and executions per second per mode, with ratios against bare at the same C
(p50 ratio < 1 and throughput ratio > 1: faster than bare). Needs root (the server's jails).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hello import PROGRAMS, Row, bare_runner, format_table, measure, sandbox_runner, with_ratios
from workload import EXPECTED_STDOUT as WORKLOAD_STDOUT
from workload import programs

from sandbox_client import SandboxClient
from sandbox_server.testing import server_in_thread

HELLO = 'print("hello")'
HELLO_STDOUT = "hello\n"
WARMUP = 20


class _Cycle:
    """Hands out the workload's programs in turn to the measuring threads."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> tuple[str, str]:
        with self._lock:
            item = self._items[self._next % len(self._items)]
            self._next += 1
            return item


def bare(cycle: _Cycle, expected: str) -> Callable[[], None]:
    def one() -> None:
        name, code = cycle.take()
        proc = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, check=False)
        if proc.returncode != 0 or proc.stdout.decode() != expected:
            raise RuntimeError(f"bare {name}: exit {proc.returncode}, stderr {proc.stderr[-300:]!r}")

    return one


def sandboxed(client: SandboxClient, cycle: _Cycle, expected: str) -> Callable[[], None]:
    def one() -> None:
        name, code = cycle.take()
        result = client.execute(code)
        if result.status != "OK" or result.stdout != expected:
            raise RuntimeError(f"sandbox {name}: {result.status} {result.message!r} {result.stderr[-300:]!r}")

    return one


@contextlib.contextmanager
def server(mode: str, max_running: int) -> Iterator[str]:
    warm = ({"warm_python": False, "warm_javascript": False} if mode == "cold"
            else {"warm_python": True, "warm_javascript": True, "warm_python_mode": mode})
    with server_in_thread(max_running=max_running, max_queued=64, incidents={"enabled": False}, **warm) as srv:
        yield srv.target


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    workloads = {
        "hello": ([("hello", HELLO)] * args.hello_n, HELLO_STDOUT, args.hello_n),
        "workload": (programs(args.n), WORKLOAD_STDOUT, args.n),
    }
    rows: list[dict[str, object]] = []
    top = max(args.concurrency)
    with server("cold", top) as cold_target, server("fresh", top) as fresh_target, \
            server("fork", top) as fork_target, SandboxClient(cold_target) as cold, \
            SandboxClient(fresh_target) as fresh, SandboxClient(fork_target) as fork:
        for workload, (items, expected, n) in workloads.items():
            for c in args.concurrency:
                base = measure("bare", bare(_Cycle(items), expected), n, c, WARMUP)
                measured: list[Row] = [base]
                for mode, client in (("cold", cold), ("fresh", fresh), ("fork", fork)):
                    measured.append(with_ratios(measure(mode, sandboxed(client, _Cycle(items), expected), n, c,
                                                        WARMUP), base))
                print(f"\n{workload} (C={c})", file=sys.stderr)
                print(format_table(measured), file=sys.stderr)
                rows.extend({"workload": workload, **asdict(r)} for r in measured)
        hello, pause = [("hello", HELLO)], args.pace_ms / 1000
        n = max(2, args.hello_n // 2)
        base = measure("bare", bare(_Cycle(hello), HELLO_STDOUT), n, 1, WARMUP, pause)
        measured = [base] + [with_ratios(measure(mode, sandboxed(client, _Cycle(hello), HELLO_STDOUT), n, 1,
                                                 WARMUP, pause), base)
                             for mode, client in (("cold", cold), ("fresh", fresh), ("fork", fork))]
        print(f"\npaced (C=1, {args.pace_ms:g} ms between calls)", file=sys.stderr)
        print(format_table(measured), file=sys.stderr)
        rows.extend({"workload": "paced", **asdict(r)} for r in measured)
        node_code, node_command = PROGRAMS["javascript"]
        # node takes ~40 ms of CPU to start: paced, a call comes at least 100 ms after the last
        for name, node_pause in (("node", 0.0), ("node paced", max(pause, 0.1))):
            base = measure("bare", bare_runner(node_command), args.js_n, 1, WARMUP, node_pause)
            measured = [base] + [with_ratios(measure(mode, sandbox_runner(client, node_code, "javascript"), args.js_n,
                                                     1, WARMUP, node_pause), base)
                                 for mode, client in (("cold", cold), ("warm", fresh))]
            print(f"\n{name} (C=1)", file=sys.stderr)
            print(format_table(measured), file=sys.stderr)
            rows.extend({"workload": name, **asdict(r)} for r in measured)
    return rows



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=300, help="workload programs per mode and concurrency")
    parser.add_argument("--hello-n", type=int, default=300, help="hello-world runs per mode and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pace-ms", type=float, default=50.0, help="pause between the paced workload's calls")
    parser.add_argument("--js-n", type=int, default=100, help="node hello-world runs per mode, back to back and paced")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="write JSON to PATH (or stdout)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root: the server creates namespaces, cgroups and mounts")
    print(f"warm path benchmark: cpus={os.cpu_count()}, python={platform.python_version()}, "
          f"kernel={platform.release()}", file=sys.stderr)
    rows = run(args)
    if args.json == "-":
        print(json.dumps(rows, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
