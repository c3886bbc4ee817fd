"""The egress proxy against the host: a sandbox's HTTP request through its proxy, the same request from the host.

    .venv/bin/python bench/egress.py [--n 200] [--bytes 67108864] [--repeats 5] [--oneshot-n 60] [--json [PATH]]

In one process and one run, on one in-process server (nsjail backend, the whole interceptor chain) whose
default tenant's allow-list names one upstream: a small HTTP server of this file's own, in a process of its own
(so it shares no GIL with the client or the proxy), on 127.0.0.2 and an ephemeral port.

  latency     --n small GETs (``/echo``: a JSON reply of about 70 bytes), each on a new connection (urllib's
              way): ``host`` from this process with no proxy, ``proxy`` inside ONE session through the sandbox's
              proxy (urllib reads HTTP_PROXY). Both run the same client code (``CLIENT``), timing each request
              with perf_counter inside the process that makes it, so the sandbox's start-up and the gRPC call
              are not in the numbers; p50/p90/p99 and proxy / host.
  throughput  --bytes downloaded --repeats times each way (alternating host, proxy), one download per session
              call, timed inside the downloading process; MB/s (decimal) and proxy / host.
  one-shot    the same trivial program as one-shot executions, --oneshot-n each: ``cold`` (no network, a cold
              jail: forced by setting PYTHONDONTWRITEBYTECODE, which the warm path leaves to cold jails) and
              ``network`` (the tenant's allow-list: a cold jail, as every sandbox with network is, plus its own
              proxy made in its namespace), alternating; network - cold is what attaching the proxy costs. Then
              ``warm`` (no network: the warm path, the default) in a block of its own, for what a sandbox with
              network gives up.

Every result is checked (status, bodies, lengths, what each sandbox sees of the proxy), so a fast number never
comes from failures. Progress goes to stderr, results to stdout. Needs root (the server's jails).
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
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hello import percentile

from sandbox_client import Network, SandboxClient, Session
from sandbox_server.testing import RunningServer, server_in_thread

UPSTREAM_HOST = "127.0.0.2"  # all of 127/8 is loopback: an address of its own, that policies must name
MB = 1_000_000
GIB = 2**30
BLOCK = bytes(range(256)) * 4096  # 1 MiB; byte i of a /bytes/N body is i % 256
LATENCY_WARMUP = 20
# One-shot program: says whether the sandbox has a proxy, so each mode is checked to be what it claims.
ONESHOT = 'import os\nprint(os.environ.get("HTTP_PROXY", "none"))'
PROXY_URL = "http://127.0.0.1:3128"
COLD_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}  # read at interpreter start: the warm path sends such requests cold

# The client code both sides run: defined in this process for the host, sent once to the session's kernel for
# the proxy. ``proxies`` None is urllib's own choice from HTTP_PROXY and co. (the sandbox's); {} is no proxy.
CLIENT = r'''
import json as _json
import time as _time
import urllib.request as _urlreq


def _opener(proxies):
    return _urlreq.build_opener(_urlreq.ProxyHandler(proxies))


def egress_latency(url, n, proxies=None):
    """n GETs of url, a new connection each; their times (s). Checked after the clock stops."""
    opener = _opener(proxies)
    times, bodies = [], []
    for _ in range(n):
        start = _time.perf_counter()
        with opener.open(url, timeout=30) as r:
            body = r.read()
            status = r.status
        times.append(_time.perf_counter() - start)
        bodies.append((status, body))
    for status, body in bodies:
        if status != 200 or _json.loads(body)["path"] != "/echo":
            raise ValueError(f"bad reply: {status} {body[:200]!r}")
    return times


def egress_download(url, size, proxies=None):
    """One GET of url, read into a reused 1 MiB buffer; its time (s). Each read's first and last bytes are
    checked against the pattern (byte i is i % 256) and the total length exactly."""
    opener = _opener(proxies)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    got = 0
    start = _time.perf_counter()
    with opener.open(url, timeout=60) as r:
        while True:
            k = r.readinto(view)
            if not k:
                break
            if buf[0] != got % 256 or buf[k - 1] != (got + k - 1) % 256:
                raise ValueError(f"wrong bytes at offset {got}")
            got += k
    elapsed = _time.perf_counter() - start
    if got != size:
        raise ValueError(f"got {got} bytes, expected {size}")
    return elapsed
'''


# ---- the upstream: run as a child process (``--serve-upstream``) -------------------------------------------
class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/echo":
            body = json.dumps({"path": self.path, "host": self.headers.get("Host", ""),
                               "client": self.client_address[0]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith("/bytes/"):
            n = int(self.path.removeprefix("/bytes/"))
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            view = memoryview(BLOCK)
            sent = 0
            while sent < n:
                piece = min(len(BLOCK), n - sent)
                self.wfile.write(view[:piece])
                sent += piece
        else:
            self.send_error(404)


def serve_upstream(host: str) -> None:
    """Serve until stdin closes (the parent ended); the port goes to stdout first."""
    server = ThreadingHTTPServer((host, 0), _Upstream)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()
    server.shutdown()


@contextlib.contextmanager
def upstream_process() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-upstream", UPSTREAM_HOST],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"the upstream did not start (exit {proc.poll()})")
        yield int(line)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # its cue to stop
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- the server ------------------------------------------------------------------------------------------
def policy(port: int, egress_bytes: int) -> str:
    # Connections: one per request, hundreds a second, so the (production-minded) defaults of 20/s and 256 per
    # sandbox would refuse most of them. Bytes: a session moves --repeats downloads plus the latency requests.
    return f"""\
version: 1
tenants:
  default:
    static_validation: {{enabled: false}}
    allowed_env: [PYTHONDONTWRITEBYTECODE]
    network:
      mode: allowlist
      max_connections: 1000000
      connections_per_s: 1000000
      allow:
        - {{host: {UPSTREAM_HOST}, ports: [{port}]}}
    sessions:
      defaults: {{egress_bytes: {egress_bytes}}}
"""


@contextlib.contextmanager
def egress_server(port: int, egress_bytes: int) -> Iterator[RunningServer]:
    with tempfile.TemporaryDirectory(prefix="bench-egress-") as directory:
        (Path(directory) / "tenants.yaml").write_text(policy(port, egress_bytes))
        with server_in_thread(policies_dir=Path(directory), max_running=4) as srv:
            yield srv


# ---- measurements -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Latency:
    mode: str
    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    p50_ratio: float | None = None  # proxy p50 / host p50
    loop_cpu_ms: float | None = None  # the server's event-loop thread's CPU per request (proxy)


@dataclass(frozen=True)
class Throughput:
    mode: str
    bytes: int
    repeats: int
    median_mb_s: float
    best_mb_s: float
    ratio: float | None = None  # proxy median / host median
    loop_cpu_share: float | None = None  # the server's event-loop thread's CPU / the downloads' time (proxy)


@dataclass(frozen=True)
class OneShot:
    mode: str
    n: int
    p50_ms: float
    p90_ms: float
    added_p50_ms: float | None = None  # p50 - cold p50
    ratio: float | None = None  # p50 / cold p50


def latency_row(mode: str, samples: list[float]) -> Latency:
    ms = [s * 1000 for s in samples]
    return Latency(mode=mode, n=len(ms), p50_ms=statistics.median(ms), p90_ms=percentile(ms, 90),
                   p99_ms=percentile(ms, 99), mean_ms=statistics.mean(ms))


def _host_client() -> dict[str, Any]:
    names: dict[str, Any] = {}
    exec(compile(CLIENT, "<egress client>", "exec"), names)  # noqa: S102 (our own code: what the session runs)
    return names


def _session_value(session: Session, expression: str, what: str) -> Any:
    """Evaluate ``expression`` in the session's kernel; its value, printed as JSON."""
    r = session.run(f"print(_json.dumps({expression}))", timeout=300)
    if not r.ok:
        raise RuntimeError(f"{what} in the session failed: {r.status} {r.stderr[-800:]} {r.message}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def loop_cpu_s() -> float:
    """CPU time of the in-process server's thread (its event loop: gRPC, and every sandbox's proxy)."""
    for thread in threading.enumerate():
        if thread.name == "sandbox-test-server" and thread.ident is not None:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    raise RuntimeError("the server's thread is not running")


def latency(client: dict[str, Any], session: Session, url: str, n: int) -> tuple[Latency, Latency]:
    client["egress_latency"](url, LATENCY_WARMUP, {})
    host = latency_row("host", client["egress_latency"](url, n, {}))
    _session_value(session, f"egress_latency({url!r}, {LATENCY_WARMUP})", "warm-up")
    cpu = loop_cpu_s()
    samples = _session_value(session, f"egress_latency({url!r}, {n})", "latency")
    cpu = loop_cpu_s() - cpu  # with the one gRPC call that carried the n requests: small beside them
    if len(samples) != n:
        raise RuntimeError(f"the session timed {len(samples)} requests, not {n}")
    proxy = latency_row("proxy", samples)
    return host, Latency(**{**asdict(proxy), "p50_ratio": proxy.p50_ms / host.p50_ms,
                            "loop_cpu_ms": cpu / n * 1000})


def throughput(client: dict[str, Any], session: Session, url: str, size: int, repeats: int,
               progress: Callable[[str], None]) -> tuple[Throughput, Throughput]:
    host_s: list[float] = []
    proxy_s: list[float] = []
    cpu = 0.0
    for i in range(repeats):  # alternating, so drift and noise hit both alike
        progress(f"bench: download {i + 1}/{repeats}: host, proxy ...")
        host_s.append(client["egress_download"](url, size, {}))
        before = loop_cpu_s()
        proxy_s.append(_session_value(session, f"egress_download({url!r}, {size})", "download"))
        cpu += loop_cpu_s() - before  # the call's own gRPC work too: a few ms

    def row(mode: str, seconds: list[float]) -> Throughput:
        rates = [size / s / MB for s in seconds]
        return Throughput(mode=mode, bytes=size, repeats=repeats, median_mb_s=statistics.median(rates),
                          best_mb_s=max(rates))

    host, proxy = row("host", host_s), row("proxy", proxy_s)
    return host, Throughput(**{**asdict(proxy), "ratio": proxy.median_mb_s / host.median_mb_s,
                               "loop_cpu_share": cpu / sum(proxy_s)})


def _warm_launched(srv: RunningServer) -> int | None:
    warm = getattr(srv.app.backend, "warm", None)
    return int(warm.launched) if warm is not None else None


def oneshots(srv: RunningServer, client: SandboxClient, n: int, warmup: int = 3) -> list[OneShot]:
    modes: dict[str, tuple[dict[str, Any], str]] = {
        "warm": ({"network": Network.none()}, "none\n"),
        "cold": ({"network": Network.none(), "env": COLD_ENV}, "none\n"),
        "network": ({"env": COLD_ENV}, PROXY_URL + "\n"),  # the tenant's allow-list
    }
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    launched: dict[str, int] = dict.fromkeys(modes, 0)

    def one(mode: str, measured: bool) -> None:
        kwargs, expected = modes[mode]
        before = _warm_launched(srv)
        start = time.perf_counter()
        r = client.execute(ONESHOT, language="python", **kwargs)
        elapsed = time.perf_counter() - start
        if not r.ok or r.stdout != expected:
            raise RuntimeError(f"one-shot {mode} failed: {r.status} stdout {r.stdout!r} "
                               f"stderr {r.stderr[-500:]!r} {r.message}")
        after = _warm_launched(srv)
        if measured:
            samples[mode].append(elapsed)
            if before is not None and after is not None:
                launched[mode] += after - before

    # cold and network alternate, each going first every other round, so drift and each one's leftovers (its
    # jail's teardown) hit both alike; warm runs in a block of its own, as its pool's refill after each run
    # would otherwise land on whichever mode came next.
    for i in range(warmup + n):
        for mode in ("cold", "network") if i % 2 else ("network", "cold"):
            one(mode, i >= warmup)
    for i in range(warmup + n):
        one("warm", i >= warmup)
    if launched["cold"] or launched["network"] or launched["warm"] < n * 0.9:
        # The warm path may send a few cold while its zygote is replaced; the cold modes must never be warm.
        raise RuntimeError(f"warm-path runs per mode are not what the modes claim: {launched}")
    cold_p50 = statistics.median(samples["cold"]) * 1000
    rows = []
    for mode in ("warm", "cold", "network"):
        values = samples[mode]
        p50 = statistics.median(values) * 1000
        rows.append(OneShot(mode=mode, n=len(values), p50_ms=p50, p90_ms=percentile(values, 90) * 1000,
                            added_p50_ms=p50 - cold_p50, ratio=p50 / cold_p50))
    return rows


# ---- output -----------------------------------------------------------------------------------------------
def format_tables(lat: list[Latency], tput: list[Throughput], shots: list[OneShot]) -> str:
    lines = [f"{'latency':<8} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'p50 vs host':>12} "
             f"{'loop CPU ms/req':>16}"]
    for r in lat:
        ratio = f"{r.p50_ratio:.2f}x" if r.p50_ratio is not None else "-"
        cpu = f"{r.loop_cpu_ms:.3f}" if r.loop_cpu_ms is not None else "-"
        lines.append(f"{r.mode:<8} {r.n:>5} {r.p50_ms:>8.3f} {r.p90_ms:>8.3f} {r.p99_ms:>8.3f} {r.mean_ms:>8.3f} "
                     f"{ratio:>12} {cpu:>16}")
    lines += ["", f"{'download':<8} {'MiB':>5} {'reps':>5} {'median MB/s':>12} {'best MB/s':>10} {'vs host':>8} "
                  f"{'loop CPU':>9}"]
    for t in tput:
        ratio = f"{t.ratio:.3f}x" if t.ratio is not None else "-"
        share = f"{t.loop_cpu_share:.0%}" if t.loop_cpu_share is not None else "-"
        lines.append(f"{t.mode:<8} {t.bytes / 2**20:>5.0f} {t.repeats:>5} {t.median_mb_s:>12.1f} "
                     f"{t.best_mb_s:>10.1f} {ratio:>8} {share:>9}")
    lines += ["", f"{'one-shot':<8} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p50 - cold':>11} {'vs cold':>8}"]
    for s in shots:
        added = f"{s.added_p50_ms:+.1f} ms" if s.added_p50_ms is not None else "-"
        ratio = f"{s.ratio:.2f}x" if s.ratio is not None else "-"
        lines.append(f"{s.mode:<8} {s.n:>5} {s.p50_ms:>8.1f} {s.p90_ms:>8.1f} {added:>11} {ratio:>8}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200, help="small GETs per side for the latency")
    parser.add_argument("--bytes", type=int, default=64 * 2**20, help="bytes per download (default 64 MiB)")
    parser.add_argument("--repeats", type=int, default=5, help="downloads per side")
    parser.add_argument("--oneshot-n", type=int, default=60, help="one-shot executions per mode")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="write the results as JSON to PATH, or to stdout instead of the tables")
    parser.add_argument("--serve-upstream", metavar="HOST", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if min(args.n, args.bytes, args.repeats, args.oneshot_n) < 1:
        parser.error("--n, --bytes, --repeats and --oneshot-n must be positive")
    if args.bytes * args.repeats > 3 * GIB:
        parser.error("--bytes x --repeats must stay within 3 GiB (the session's egress_bytes: the server's "
                     "ceiling is 4 GiB)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    meta: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "kernel": platform.release(), "upstream": UPSTREAM_HOST, "n": args.n,
                            "bytes": args.bytes, "repeats": args.repeats, "oneshot_n": args.oneshot_n}
    egress_bytes = min(4 * GIB, args.bytes * args.repeats + GIB)
    with upstream_process() as port, egress_server(port, egress_bytes) as srv, \
            SandboxClient(srv.target, timeout=300) as sbx:
        base = f"http://{UPSTREAM_HOST}:{port}"
        host_client = _host_client()
        progress("bench: opening a session ...")
        with sbx.session() as session:
            r = session.run(CLIENT + "\nimport os as _os\n_os.environ.get('HTTP_PROXY', 'none')")
            if not r.ok or r.value != repr(PROXY_URL):
                raise RuntimeError(f"the session has no proxy: {r.status} value {r.value!r} {r.stderr[-500:]}")
            progress(f"bench: latency, {args.n} GETs each: host, proxy ...")
            lat = latency(host_client, session, base + "/echo", args.n)
            tput = throughput(host_client, session, f"{base}/bytes/{args.bytes}", args.bytes, args.repeats,
                              progress)
            usage = session.refresh().usage
        expected = args.bytes * args.repeats
        if usage.egress_bytes < expected:  # the proxy counted at least the bodies: the bytes went through it
            raise RuntimeError(f"the session's proxy counted {usage.egress_bytes} bytes, expected >= {expected}")
        progress(f"bench: one-shot x{args.oneshot_n} each: cold and network (alternating), then warm ...")
        shots = oneshots(srv, sbx, args.oneshot_n)
    meta["session_egress_bytes"] = usage.egress_bytes

    if args.json is not None:
        doc = json.dumps({"meta": meta, "latency": [asdict(x) for x in lat],
                          "throughput": [asdict(x) for x in tput], "oneshot": [asdict(x) for x in shots]},
                         indent=2)
        if args.json == "-":
            print(doc)
            return 0
        Path(args.json).write_text(doc + "\n")
    print(f"egress, cpus={meta['cpus']}, kernel={meta['kernel']}, upstream {UPSTREAM_HOST} (own process)")
    print(format_tables(list(lat), list(tput), shots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
