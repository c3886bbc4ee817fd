"""Sessions against a warm one-shot Execute and a bare interpreter, in one process and one run.

    .venv/bin/python bench/sessions.py [--n 200] [--steps 50] [--creates 30] [--idle 8] [--json [PATH]]

All on one in-process server (nsjail backend, the whole interceptor chain, a durable audit record per call),
after an unmeasured warm-up each, at C=1:

  call      a small Python statement three ways: ``bare`` (subprocess.run of /usr/bin/python3 -c), ``one-shot``
            (SandboxClient.execute on the warm path, the default) and ``session`` (Session.run in one session:
            the kernel is already there); --n each
  agent     a 50-step agent-like loop (--steps): load a CSV, derive columns, filter, aggregate, print a
            summary, each step using what the previous ones made; as one session's calls, and as the same
            steps as one-shot executions (each must recompute everything from the CSV, as an agent without
            sessions must); the whole loop's wall time
  create    CreateSession to READY, p50 and p99 over --creates sessions: started cold (no pool) and taken from
            the pool of kernels started ahead (session_pool_size)
  idle      memory per idle session: --idle sessions opened and idle, their sandboxes' memory as their
            cgroups count it (the agent, the kernel and an interpreter's start-up state)

Ratios are against the baseline measured in the same run (bare for a call, the one-shot loop for the agent
loop, the cold start for a pooled create). Needs root (the server's jails).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hello import Row, format_table, measure, percentile, with_ratios

from sandbox_client import SandboxClient, Session
from sandbox_server.testing import RunningServer, server_in_thread

CALL = "x = 6 * 7\nprint(x)"
CALL_STDOUT = "42\n"
WARMUP = 20
CSV = "day,region,units,price\n" + "".join(
    f"{d},{r},{(d * 7 + i) % 13 + 1},{(d * 3 + i) % 11 + 2}\n"
    for d in range(1, 31) for i, r in enumerate(("north", "south", "east", "west")))


def agent_steps(n: int) -> list[str]:
    """``n`` steps of an agent analysing a CSV: each builds on the state the previous ones left."""
    steps = ["import pandas as pd\ndf = pd.read_csv('sales.csv')\nprint(len(df))",
             "df['revenue'] = df['units'] * df['price']\nprint(df['revenue'].sum())"]
    kinds = [
        "top = df.groupby('region')['revenue'].sum().sort_values()\nprint(top.index[-1])",
        "week = df[df['day'] <= {k}]\nprint(round(week['revenue'].mean(), 2))",
        "df['cum_{k}'] = df['revenue'].cumsum()\nprint(int(df['cum_{k}'].iloc[-1]))",
        "pivot = df.pivot_table(index='day', columns='region', values='units', aggfunc='sum')\n"
        "print(pivot.shape)",
        "print(df[df['units'] > {m}].shape[0])",
    ]
    while len(steps) < n:
        k = len(steps)
        steps.append(kinds[k % len(kinds)].format(k=k % 30 + 1, m=k % 12 + 1))
    return steps[:n]


def oneshot_program(steps: list[str], upto: int) -> str:
    """What a one-shot execution must run to do step ``upto``: every step before it again, silently."""
    before = "\n".join(s.replace("print(", "_ = (") for s in steps[:upto])
    return before + "\n" + steps[upto]


@dataclass(frozen=True)
class Timing:
    name: str
    n: int
    p50_ms: float
    p99_ms: float
    total_s: float = 0.0
    ratio: float | None = None


def timed(samples: list[float], name: str) -> Timing:
    return Timing(name=name, n=len(samples), p50_ms=statistics.median(samples) * 1000,
                  p99_ms=percentile(samples, 99) * 1000, total_s=sum(samples))


def call_rows(client: SandboxClient, session: Session, n: int) -> list[Row]:
    def oneshot() -> None:
        r = client.execute(CALL)
        if r.stdout != CALL_STDOUT:
            raise RuntimeError(f"one-shot call failed: {r.status} {r.stderr[-300:]}")

    def in_session() -> None:
        r = session.run(CALL)
        if r.stdout != CALL_STDOUT:
            raise RuntimeError(f"session call failed: {r.status} {r.stderr[-300:]}")

    bare = measure("bare", _bare(), n, 1, WARMUP)
    rows = [bare]
    for name, one in (("one-shot", oneshot), ("session", in_session)):
        rows.append(with_ratios(measure(name, one, n, 1, WARMUP), bare))
    return rows


def _bare() -> Callable[[], None]:
    def one() -> None:
        proc = subprocess.run(["/usr/bin/python3", "-c", CALL], capture_output=True, check=False)
        if proc.stdout.decode() != CALL_STDOUT:
            raise RuntimeError(f"bare run failed: {proc.returncode} {proc.stderr[-300:]!r}")

    return one


def agent_loop(client: SandboxClient, steps: list[str]) -> tuple[Timing, Timing]:
    with client.session() as s:
        s.files.upload("sales.csv", CSV)
        samples = []
        for code in steps:
            start = time.perf_counter()
            r = s.run(code)
            samples.append(time.perf_counter() - start)
            if not r.ok:
                raise RuntimeError(f"session step failed: {r.status} {r.stderr[-300:]}")
    session = timed(samples, "session loop")
    samples = []
    for i in range(len(steps)):
        start = time.perf_counter()
        r = client.execute(oneshot_program(steps, i), files={"sales.csv": CSV})
        samples.append(time.perf_counter() - start)
        if not r.ok:
            raise RuntimeError(f"one-shot step failed: {r.status} {r.stderr[-300:]}")
    oneshot = timed(samples, "one-shot loop")
    return Timing(**{**asdict(session), "ratio": session.total_s / oneshot.total_s}), oneshot


def creates(srv: RunningServer, n: int, pooled: bool) -> Timing:
    samples = []
    pool = srv.app.sessions.pool if srv.app.sessions is not None else None
    with SandboxClient(srv.target, timeout=120) as client:
        for _ in range(n):
            if pooled and pool is not None:
                deadline = time.monotonic() + 60
                while pool.ready < 1 and time.monotonic() < deadline:
                    time.sleep(0.05)  # an agent's pace: the pool refills between its sessions
            start = time.perf_counter()
            s = client.session()
            samples.append(time.perf_counter() - start)
            s.close()
    return timed(samples, "create (pooled)" if pooled else "create (cold)")


def idle_memory(client: SandboxClient, count: int) -> dict[str, float]:
    opened = [client.session() for _ in range(count)]
    try:
        time.sleep(2)
        sizes = [s.refresh().usage.memory_bytes for s in opened]
    finally:
        for s in opened:
            s.close()
    return {"sessions": count, "mean_mib": statistics.mean(sizes) / 2**20, "max_mib": max(sizes) / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--creates", type=int, default=30)
    parser.add_argument("--idle", type=int, default=8)
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH")
    args = parser.parse_args(argv)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    out: dict[str, object] = {"meta": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                       "kernel": platform.release()}}
    with server_in_thread(max_running=4, session_pool_size=0) as srv, SandboxClient(srv.target) as client:
        progress("bench: calls ...")
        with client.session() as session:
            rows = call_rows(client, session, args.n)
        progress("bench: the agent loop ...")
        session_loop, oneshot_loop = agent_loop(client, agent_steps(args.steps))
        progress("bench: cold creates ...")
        cold = creates(srv, args.creates, pooled=False)
        progress("bench: idle memory ...")
        idle = idle_memory(client, args.idle)
    with server_in_thread(max_running=4, session_pool_size=1) as srv:
        progress("bench: pooled creates ...")
        pooled = creates(srv, args.creates, pooled=True)
    pooled = Timing(**{**asdict(pooled), "ratio": pooled.p50_ms / cold.p50_ms})
    out.update({"calls": [asdict(r) for r in rows], "agent": [asdict(session_loop), asdict(oneshot_loop)],
                "create": [asdict(cold), asdict(pooled)], "idle": idle})
    if args.json is not None:
        doc = json.dumps(out, indent=2)
        if args.json == "-":
            print(doc)
            return 0
        Path(args.json).write_text(doc + "\n")
    print(f"sessions, cpus={os.cpu_count()}, kernel={platform.release()}")
    print(format_table(rows))
    print()
    for t in (session_loop, oneshot_loop):
        ratio = f"  {t.ratio:.2f}x the one-shot loop" if t.ratio is not None else ""
        print(f"{t.name:<16} {t.n} steps in {t.total_s:.2f} s (step p50 {t.p50_ms:.1f} ms, p99 {t.p99_ms:.1f} ms)"
              f"{ratio}")
    for t in (cold, pooled):
        ratio = f"  {t.ratio:.3f}x cold" if t.ratio is not None else ""
        print(f"{t.name:<16} p50 {t.p50_ms:.1f} ms, p99 {t.p99_ms:.1f} ms over {t.n}{ratio}")
    print(f"idle session     {idle['mean_mib']:.1f} MiB mean, {idle['max_mib']:.1f} MiB max "
          f"over {idle['sessions']} sessions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
