"""An idle server's memory across many executions: does anything grow with the number of executions served?

    sudo .venv/bin/python bench/memory.py [--n 10000] [--every 1000] [--concurrency 2] [--settle 2]
                                          [--json [PATH]]

Starts ``sandbox-server serve`` as its own process, as the README does (nsjail backend, SQLite stores, the
default warm path; its tenant an eval tenant, so that nothing is refused), then runs --n small executions from
this process in blocks of --every, C callers at once, and after each block lets the server go idle for
--settle seconds and reads its memory: RSS and USS of the server process, RSS of its zygotes (its children),
its open fds and threads. The programs vary (a hello world, a dict of a few thousand entries, an exception, a
few KiB of output), so that caches keyed by what a program does would show.

It prints one row per block and the growth from the first block (the server warmed up: its caches, pools and
gRPC buffers made) to the last, in total and per 1,000 executions. Two things hold memory by design for a
while: the idempotency table keeps every keyed response (the client keys every call) for
``idempotency_window_s`` (600 s), within ``idempotency_max_bytes``; the rate limiter's moving windows keep one
entry per request for a minute. So over a run shorter than the window, the table grows by about its responses'
size plus ~1 KiB per call, then stops; --idempotency-window-s shorter than a block shows the rest alone, which
should be flat (within what the allocator keeps between peaks). Needs root (the jails).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from humaneval import POLICY  # an eval tenant: no validation, nothing refused
from served import served

from sandbox_client import SandboxClient

PROGRAMS = (
    'print("hello")',
    "d = {str(i): i * i for i in range(5000)}\nprint(len(d), sum(d.values()) % 97)",
    "import json, re\nprint(json.dumps({'k': re.findall(r'\\d+', 'a1b22c333')}))",
    "raise ValueError('an error on purpose')",
    "import sys\nsys.stdout.write('x' * 4096 + '\\n')\nsys.stderr.write('y' * 1024)",
)


@dataclass(frozen=True)
class Sample:
    executions: int
    server_rss_mib: float
    server_uss_mib: float
    zygotes_rss_mib: float
    fds: int
    threads: int


def sample(server: psutil.Process, executions: int) -> Sample:
    info = server.memory_full_info()
    zygotes = 0
    for child in server.children(recursive=False):
        try:
            zygotes += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return Sample(executions, info.rss / 2**20, info.uss / 2**20, zygotes / 2**20, server.num_fds(),
                  server.num_threads())


def run(args: argparse.Namespace) -> dict[str, object]:
    env = {}
    if args.idempotency_window_s is not None:
        env["SANDBOX_IDEMPOTENCY_WINDOW_S"] = str(args.idempotency_window_s)
    server_args = ["--max-running", str(max(2, args.concurrency)), "--max-queued", str(4 * args.concurrency)]
    with served(POLICY, env=env, args=server_args) as srv, SandboxClient(srv.target) as client:
        server = psutil.Process(srv.proc.pid)
        samples: list[Sample] = []
        done = 0
        failures: list[str] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            program = PROGRAMS[i % len(PROGRAMS)]
            result = client.execute(program)
            if result.status != ("NONZERO_EXIT" if "raise" in program else "OK"):
                with lock:
                    failures.append(f"{i}: {result.status} {result.message}")

        with ThreadPoolExecutor(args.concurrency) as pool:
            while done < args.n:
                block = min(args.every, args.n - done)
                list(pool.map(one, range(done, done + block)))
                done += block
                time.sleep(args.settle)  # idle: the pool refilled, the teardowns and timers done
                samples.append(sample(server, done))
                s = samples[-1]
                print(f"bench: {s.executions:6d} executions: server RSS {s.server_rss_mib:7.1f} MiB, "
                      f"USS {s.server_uss_mib:7.1f} MiB, zygotes {s.zygotes_rss_mib:6.1f} MiB, "
                      f"fds {s.fds}, threads {s.threads}", file=sys.stderr, flush=True)
                if failures:
                    raise SystemExit(f"bench: executions failed: {failures[:5]}")
    first, last = samples[0], samples[-1]
    thousands = max(1e-9, (last.executions - first.executions) / 1000)
    return {
        "n": args.n,
        "every": args.every,
        "concurrency": args.concurrency,
        "samples": [asdict(s) for s in samples],
        "growth_rss_mib": last.server_rss_mib - first.server_rss_mib,
        "growth_uss_mib": last.server_uss_mib - first.server_uss_mib,
        "growth_rss_kib_per_1000": (last.server_rss_mib - first.server_rss_mib) * 1024 / thousands,
        "growth_uss_kib_per_1000": (last.server_uss_mib - first.server_uss_mib) * 1024 / thousands,
        "growth_fds": last.fds - first.fds,
        "growth_threads": last.threads - first.threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="executions in all")
    parser.add_argument("--every", type=int, default=1000, help="executions between two idle samples")
    parser.add_argument("--concurrency", type=int, default=2, help="callers at once")
    parser.add_argument("--settle", type=float, default=2.0, help="idle seconds before each sample")
    parser.add_argument("--idempotency-window-s", type=float, default=None,
                        help="the server's idempotency_window_s (default: its own, 600 s): kept responses, by design")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="write JSON to PATH (or stdout)")
    args = parser.parse_args()
    if args.n < 2 * args.every:
        parser.error("--n must cover at least two blocks of --every")
    out = run(args)
    window = "default" if args.idempotency_window_s is None else f"{args.idempotency_window_s:g} s"
    print(f"idle server memory over {out['n']} executions (C={out['concurrency']}, idempotency window {window}), "
          f"first block to last: "
          f"RSS {out['growth_rss_mib']:+.1f} MiB ({out['growth_rss_kib_per_1000']:+.0f} KiB per 1,000), "
          f"USS {out['growth_uss_mib']:+.1f} MiB ({out['growth_uss_kib_per_1000']:+.0f} KiB per 1,000), "
          f"fds {out['growth_fds']:+d}, threads {out['growth_threads']:+d}")
    if args.json is not None:
        text = json.dumps(out, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
