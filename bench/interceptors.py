"""What the interceptor chain costs per request: the full production chain against no chain, in one run.

    .venv/bin/python bench/interceptors.py [--n 500] [--warmup 50] [--concurrency 1 4] [--round-size 50]
                                           [--sandbox-n 30] [--no-sandbox] [--data-dir DIR]
                                           [--logs json|text|off] [--json [PATH]]

Two gRPC servers run in this process, both in front of the same SandboxServicer on the same trivial backend
(InstantBackend: a canned OK result at once, so no sandbox time is in the numbers):

  full   the production composition root (sandbox_server.app.App) with the whole chain (interceptors.CHAIN_ORDER):
         telemetry (span, call metrics, a log line), errors, auth (a real API key from the SQLite key store),
         mitigations, rate limits, guardrails (static validation, output secret redaction), cost (a priced policy
         with budgets: reserve, then settle) and audit (a record written durably to SQLite)
  empty  the same servicer behind build_server(..., interceptors=[])

An asyncio client (sandbox_client.AsyncSandboxClient, the same API key and session id on both) sends N Execute
calls of a small Python program to each, after an unmeasured warm-up, alternating between the servers in rounds
(empty-full, full-empty, ...) so that drift hits both alike; C workers share each round (--concurrency C).
For context it then times a real nsjail start+run of print(1) through sandbox_server.testing.running_server at
the same concurrency (needs root; --no-sandbox skips it).

Prints p50/p90/p99/mean per server, what the chain adds (full - empty) and that p50 as a fraction of the nsjail
p50. See bench/README.md for how to read the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from sandbox_client import AsyncSandboxClient, ExecutionResult
from sandbox_server.admin.servicer import AdminServicer
from sandbox_server.app import App
from sandbox_server.backends.base import Backend
from sandbox_server.context import Principal, current_principal
from sandbox_server.execution import spec as sp
from sandbox_server.logs import configure_logging
from sandbox_server.server import build_server
from sandbox_server.settings import AuthMode, LogFormat, load_settings
from sandbox_server.testing import running_server

TENANT = "bench"
SESSION_ID = "bench-session"
CALL_TIMEOUT_S = 60.0

# What an agent typically sends: a few lines, an import, some arithmetic. The guardrails parse and check it.
PROGRAM = """\
import statistics

values = [3, 1, 4, 1, 5, 9, 2, 6]
print(statistics.mean(values), max(values))
"""
PROGRAM_STDOUT = "3.875 9\n"  # what InstantBackend answers (it runs nothing); the output guardrail scans it
SANDBOX_PROGRAM = "print(1)"
SANDBOX_STDOUT = "1\n"
SANDBOX_WARMUP = 3

# Priced, budgeted and rate limited, so that every link does its full work, but generous enough that nothing is
# ever refused (a refused call stops the benchmark).
BENCH_POLICY = f"""\
version: 1
tenants:
  {TENANT}:
    description: interceptor benchmark (priced, budgeted, rate limited; nothing is refused)
    languages: [python]
    static_validation: {{enabled: true}}
    guardrails: {{output_secrets: redact}}
    rate:
      requests_per_second: 10000
      requests_per_minute: 600000
      concurrent_executions: 64
      session_requests_per_minute: 600000
    budget:
      per_session: 1000.0
      per_day: 100000.0
      per_month: 1000000.0
    pricing:
      per_execution: 0.0001
      cpu_second: 0.00005
"""


class InstantBackend(Backend):
    """A measurement harness for this benchmark only, never used outside bench/: ``run`` starts no sandbox
    and returns, at once, an OK result with PROGRAM_STDOUT as its output and a small made-up usage (so the cost
    link has something to price). It isolates the server's per-request work from sandbox time."""

    name = "instant"

    async def run(self, spec: sp.ExecutionSpec, on_output: sp.OutputCallback | None = None) -> sp.ExecutionResult:
        stdout = PROGRAM_STDOUT.encode()
        if on_output is not None:
            await on_output(sp.StreamName.STDOUT, stdout)
        return sp.ExecutionResult(
            execution_id=spec.execution_id,
            status=sp.Status.OK,
            exit_code=0,
            signal=0,
            stdout=stdout,
            stdout_truncated=False,
            stderr=b"",
            stderr_truncated=False,
            files=(),
            files_truncated=False,
            usage=sp.Usage(wall_time_s=0.02, cpu_time_s=0.015, peak_memory_bytes=9 * 1024 * 1024),
            message="",
            limits=spec.limits,
            language=spec.runtime.language,
            backend=self.name,
        )

    async def aclose(self) -> None:
        pass


@dataclass(frozen=True)
class Stats:
    """Per-call latency as the client sees it, in milliseconds; calls_per_s = calls / time spent on them."""

    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    calls_per_s: float

    @classmethod
    def of(cls, latencies_s: Sequence[float], busy_s: float) -> Stats:
        """Percentiles interpolate linearly (numpy's default). Needs at least 2 samples."""
        cuts = statistics.quantiles(latencies_s, n=100, method="inclusive")
        return cls(
            n=len(latencies_s),
            p50_ms=cuts[49] * 1000,
            p90_ms=cuts[89] * 1000,
            p99_ms=cuts[98] * 1000,
            mean_ms=statistics.fmean(latencies_s) * 1000,
            calls_per_s=len(latencies_s) / busy_s,
        )


@dataclass(frozen=True)
class StackResult:
    """Both servers at one concurrency, and the nsjail reference when it was measured."""

    concurrency: int
    empty: Stats
    full: Stats
    sandbox: Stats | None = None

    @property
    def added_p50_ms(self) -> float:
        return self.full.p50_ms - self.empty.p50_ms

    @property
    def added_p99_ms(self) -> float:
        return self.full.p99_ms - self.empty.p99_ms

    @property
    def added_p50_vs_sandbox(self) -> float | None:
        """The chain's added p50 as a fraction of a real sandbox's p50."""
        return self.added_p50_ms / self.sandbox.p50_ms if self.sandbox is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "added_p50_ms": self.added_p50_ms,
            "added_p99_ms": self.added_p99_ms,
            "added_p50_vs_sandbox": self.added_p50_vs_sandbox,
        }


@dataclass(frozen=True)
class Targets:
    full: str
    empty: str
    api_key: str


@contextlib.asynccontextmanager
async def stack_servers(workdir: Path, max_running: int) -> AsyncIterator[Targets]:
    """The full-chain and the empty-chain server, on loopback ephemeral ports, with their state in ``workdir``."""
    policies = workdir / "policies"
    policies.mkdir()
    (policies / "bench.yaml").write_text(BENCH_POLICY, encoding="utf-8")
    settings = load_settings(
        host="127.0.0.1", port=0, auth=AuthMode.API_KEYS, state_dir=workdir / "state", data_dir=workdir / "data",
        policies_dir=policies, max_running=max_running, max_queued=max_running,
    )
    app = App(settings, backend=InstantBackend())
    await app.start()
    try:
        assert app.stores is not None
        assert app.policies is not None
        record, api_key = app.stores.keys.create(TENANT, "tenant", "interceptor benchmark")
        caller = Principal(tenant=TENANT, role="tenant", key_id=record.key_id)
        empty, port = await serve_without_chain(app, caller)
        try:
            yield Targets(full=f"127.0.0.1:{app.port}", empty=f"127.0.0.1:{port}", api_key=api_key)
        finally:
            await empty.stop(None)
    finally:
        await app.stop(grace_s=5.0)


async def serve_without_chain(app: App, caller: Principal) -> tuple[grpc.aio.Server, int]:
    """``app``'s own servicer behind a second server built as App._start_serving builds its own, but with
    ``interceptors=[]``. Returns the started server and its port."""
    assert app.stores is not None
    assert app.policies is not None
    admin = AdminServicer(app.policies, app.stores.keys, app.stores.versions)  # never called here
    server, _health = build_server(app.settings, app.servicer, admin, interceptors=[])
    port = server.add_insecure_port("127.0.0.1:0")
    # The servicer fails closed without a caller identity, which only the auth link provides. grpc.aio runs each
    # call in a task that copies the context the server was started in, so the identity is set there, once: the
    # calls pay nothing for it, and the benchmark's own context never sees it.
    context = contextvars.copy_context()
    context.run(current_principal.set, caller)
    await asyncio.create_task(server.start(), context=context)
    return server, port


def _check(result: ExecutionResult, stdout: str) -> None:
    if result.status != "OK" or result.stdout != stdout:
        raise RuntimeError(
            f"execution failed: status {result.status!r}, stdout {result.stdout!r}, "
            f"stderr {result.stderr[-500:]!r}, message {result.message!r}"
        )


async def timed_calls(
    client: AsyncSandboxClient, count: int, concurrency: int, latencies: list[float], *,
    code: str = PROGRAM, stdout: str = PROGRAM_STDOUT, session_id: str = SESSION_ID,
) -> float:
    """``count`` Execute calls on ``concurrency`` workers, each call's latency (seconds) appended to
    ``latencies``; returns the wall time of the batch. Raises RuntimeError (or the client's SandboxError) at the
    first call that does not end OK with the expected output."""
    pending = iter(range(count))  # shared: each worker takes the next call until none is left

    async def worker() -> None:
        for _ in pending:
            start = time.perf_counter()
            result = await client.execute(code, language="python", session_id=session_id)
            elapsed = time.perf_counter() - start
            _check(result, stdout)
            latencies.append(elapsed)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, count)):
            group.create_task(worker())
    return time.perf_counter() - start


async def check_chains(full: AsyncSandboxClient, empty: AsyncSandboxClient) -> None:
    """Raise RuntimeError unless the full server's reply shows the chain at work (a trace id from telemetry,
    a settled cost) and the empty server's shows none: a comparison of two look-alike servers is worthless."""
    with_chain = await full.execute(PROGRAM, language="python", session_id=SESSION_ID)
    without = await empty.execute(PROGRAM, language="python", session_id=SESSION_ID)
    if not with_chain.trace_id or with_chain.cost <= 0:
        raise RuntimeError(f"the full server ran without its chain: trace id {with_chain.trace_id!r}, "
                           f"cost {with_chain.cost}")
    if without.trace_id or without.cost:
        raise RuntimeError(f"the empty server ran a chain: trace id {without.trace_id!r}, cost {without.cost}")


async def measure_stack(
    n: int, warmup: int, concurrency: int, round_size: int, data_dir: Path | None = None,
) -> StackResult:
    """Time ``n`` calls per server (after ``warmup`` each), alternating servers every ``round_size`` calls.
    The full server's SQLite stores go in a fresh temporary directory under ``data_dir`` (default: the system's).
    """
    samples: dict[str, list[float]] = {"empty": [], "full": []}
    busy = {"empty": 0.0, "full": 0.0}
    with tempfile.TemporaryDirectory(prefix="bench-interceptors-", dir=data_dir) as tmp:
        async with (
            stack_servers(Path(tmp), max_running=max(concurrency, 2)) as targets,
            AsyncSandboxClient(targets.full, api_key=targets.api_key, timeout=CALL_TIMEOUT_S) as full,
            # The same key on the empty server: both receive identical requests; only the chain differs.
            AsyncSandboxClient(targets.empty, api_key=targets.api_key, timeout=CALL_TIMEOUT_S) as empty,
        ):
            clients = {"empty": empty, "full": full}
            for client in clients.values():
                await timed_calls(client, warmup, concurrency, [])
            await check_chains(full, empty)
            done = 0
            order = ["empty", "full"]
            while done < n:
                size = min(round_size, n - done)
                for name in order:
                    busy[name] += await timed_calls(clients[name], size, concurrency, samples[name])
                order.reverse()
                done += size
    return StackResult(
        concurrency=concurrency,
        empty=Stats.of(samples["empty"], busy["empty"]),
        full=Stats.of(samples["full"], busy["full"]),
    )


async def measure_sandbox(n: int, concurrency: int) -> Stats:
    """A real nsjail start+run of print(1) per call (development-mode server, the default policy). Needs root."""
    latencies: list[float] = []
    max_running = max(concurrency, 2)
    async with (
        running_server(max_running=max_running, max_queued=max_running) as srv,
        AsyncSandboxClient(srv.target, timeout=CALL_TIMEOUT_S) as client,
    ):
        await timed_calls(client, SANDBOX_WARMUP, concurrency, [], code=SANDBOX_PROGRAM, stdout=SANDBOX_STDOUT,
                          session_id="")
        busy = await timed_calls(client, n, concurrency, latencies, code=SANDBOX_PROGRAM, stdout=SANDBOX_STDOUT,
                                 session_id="")
    return Stats.of(latencies, busy)


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (fsync costs differ a lot between ext4 and tmpfs)."""
    path = path.resolve()
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            mount = fields[1]
            inside = path == Path(mount) or Path(mount) in path.parents
            if inside and len(mount) > len(best):
                best, kind = mount, fields[2]
    return kind


def format_table(results: list[StackResult]) -> str:
    header = (f"{'conc':>4} {'server':<7} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8} "
              f"{'calls/s':>8}")
    lines = [header, "-" * len(header)]
    for r in results:
        rows = [("empty", r.empty), ("full", r.full)] + ([("nsjail", r.sandbox)] if r.sandbox else [])
        for name, s in rows:
            lines.append(f"{r.concurrency:>4} {name:<7} {s.n:>5} {s.p50_ms:>8.3f} {s.p90_ms:>8.3f} "
                         f"{s.p99_ms:>8.3f} {s.mean_ms:>8.3f} {s.calls_per_s:>8.1f}")
    lines.append("")
    for r in results:
        line = (f"C={r.concurrency}: the chain adds p50 {r.added_p50_ms:+.3f} ms "
                f"({r.full.p50_ms / r.empty.p50_ms:.2f}x empty), p99 {r.added_p99_ms:+.3f} ms")
        ratio = r.added_p50_vs_sandbox
        if ratio is not None:
            line += f"; added p50 / nsjail p50 = {ratio:.3f} ({ratio * 100:.1f}%)"
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=500, help="measured calls per server and concurrency")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured calls per server first")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1], help="workers sending calls at once")
    parser.add_argument("--round-size", type=int, default=50, help="calls to one server before switching")
    parser.add_argument("--sandbox-n", type=int, default=30, help="nsjail print(1) calls for the reference")
    parser.add_argument("--no-sandbox", action="store_true", help="skip the nsjail reference (no root needed)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="parent of the temporary SQLite state dir (default: the system temp dir); "
                             "e.g. /dev/shm to take fsync out")
    parser.add_argument("--logs", choices=["json", "text", "off"], default="json",
                        help="server log lines (one per call) go to /dev/null in this format; off: not formatted")
    parser.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="PATH",
        help="write the results as JSON to PATH, or to stdout instead of the table when no PATH is given",
    )
    args = parser.parse_args(argv)
    if args.n < 2 or args.warmup < 0 or args.round_size < 1 or any(c < 1 for c in args.concurrency):
        parser.error("--n must be >= 2, --round-size and --concurrency positive, --warmup not negative")
    if not args.no_sandbox and args.sandbox_n < 2:
        parser.error("--sandbox-n must be >= 2 (or pass --no-sandbox)")
    return args


async def run(args: argparse.Namespace) -> list[StackResult]:
    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results: list[StackResult] = []
    for c in dict.fromkeys(args.concurrency):
        progress(f"bench: C={c}: empty and full chain, {args.warmup} + {args.n} calls each ...")
        result = await measure_stack(args.n, args.warmup, c, args.round_size, args.data_dir)
        if not args.no_sandbox:
            progress(f"bench: C={c}: nsjail print(1) x{args.sandbox_n} ...")
            result = StackResult(c, result.empty, result.full, await measure_sandbox(args.sandbox_n, c))
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.no_sandbox and os.geteuid() != 0:
        print("bench: the nsjail reference needs root: run as root, or pass --no-sandbox", file=sys.stderr)
        return 2
    with open(os.devnull, "w", encoding="utf-8") as sink:
        if args.logs != "off":
            configure_logging(load_settings(log_format=LogFormat(args.logs), log_level="INFO"), stream=sink)
        results = asyncio.run(run(args))
    data_parent = args.data_dir or Path(tempfile.gettempdir())
    meta = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "kernel": platform.release(),
        "data_dir": str(data_parent),
        "data_dir_filesystem": filesystem_of(data_parent),
        "logs": args.logs,
        "round_size": args.round_size,
        "warmup": args.warmup,
    }
    for r in results:
        for s in (r.empty, r.full, r.sandbox):
            if s is not None and not all(math.isfinite(v) for v in asdict(s).values()):
                raise RuntimeError(f"non-finite result: {s}")
    if args.json is not None:
        doc = json.dumps({"meta": meta, "results": [r.to_json() for r in results]}, indent=2)
        if args.json == "-":
            print(doc)
            return 0
        Path(args.json).write_text(doc + "\n", encoding="utf-8")
    print(f"interceptor chain cost: cpus={meta['cpus']}, python={meta['python']}, grpc={meta['grpc']}, "
          f"kernel={meta['kernel']}, SQLite on {meta['data_dir_filesystem']} ({meta['data_dir']}), "
          f"logs={meta['logs']}")
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
