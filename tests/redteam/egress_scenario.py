"""Run by tests/redteam/test_egress_corpus.py inside a network namespace the test made (``unshare --net``), with
only loopback up: the shipped corpus's egress cases, through the red-team runner with host checks, against one
server whose tenant "net" has an allow-list and whose tenant "nonet" has no network.

The namespace holds everything a proxy bug could reach: an allowed upstream (allowed.redteam.test, on
127.0.0.2:80), fake refused targets on addresses given to the namespace's own loopback (the metadata service on
169.254.169.254 and fd00:ec2::254, a private host on 10.20.30.40) and trap listeners on unlisted ports of
127.0.0.2; each counts the connections it accepts. Even a bug could not send a packet off the machine from here.

Each case runs twice: as shipped (the verdict that matters), and as a "-proof" copy whose expectation also needs
the lines that show the case was refused for the right reason on this tenant (the proxy's reason on "net", no
proxy at all on "nonet"), so a case cannot pass by failing early in some uninteresting way. Prints one JSON line.

Usage: egress_scenario.py BACKEND [DOCKER_HOST]
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sandbox_client import AsyncSandboxClient
from sandbox_client.redteam.categories import Category
from sandbox_client.redteam.corpus import shipped_corpus
from sandbox_client.redteam.host import DEFAULT_CANARY_DIRS, HostChecks
from sandbox_client.redteam.runner import RunOptions, RunReport, run_cases
from sandbox_client.redteam.schema import Case
from sandbox_server.stores.embedded import open_stores
from sandbox_server.testing import private_settings, server_in_thread

SERVER_PORT = 50123  # the namespace is the test's own: nothing else listens in it
METADATA_SECRET = "fake-imds-credential-" + secrets.token_hex(16)  # in every answer of the refused targets
TRAP_PORTS = 3
TENANTS = ("net", "nonet")
# What the test's resolver answers (the server's test-only `egress_hosts`), as the corpus file's header says.
NAMES = {
    "allowed.redteam.test": ["127.0.0.2"],
    "rebind.redteam.test": ["169.254.169.254"],
    "internal.redteam.test": ["10.20.30.40"],
    "mixed.redteam.test": ["127.0.0.2", "169.254.169.254"],
    "mapped.redteam.test": ["::ffff:169.254.169.254"],
    "loopback.redteam.test": ["127.0.0.1"],
}
# The refused targets get these addresses on the namespace's loopback (v6 may be unavailable: then skipped).
LOCAL_ADDRESSES = (("-4", "169.254.169.254/32"), ("-4", "10.20.30.40/32"), ("-6", "fd00:ec2::254/128"))

POLICY = f"""\
version: 1
tenants:
  net:
    static_validation: {{enabled: false}}
    network:
      mode: allowlist
      connections_per_s: 1000
      max_connections: 10000
      allow:
        - {{host: "*.redteam.test", ports: [80]}}       # names pass the list: their addresses are what is refused
        - {{host: 127.0.0.2, ports: [80]}}              # allowed.redteam.test's (loopback: named to be reached)
        - {{host: 127.0.0.1, ports: [{SERVER_PORT}]}}   # the server's own port, refused even when listed
        - {{host: 169.254.169.254, ports: [80, 443]}}   # the metadata service, refused even when listed
        - {{host: "fd00:ec2::254", ports: [80]}}
  nonet:
    static_validation: {{enabled: false}}
"""


def proofs(trap_ports: list[int]) -> dict[str, dict[str, list[str]]]:
    """Per case, per tenant: lines (regular expressions, one whole line each) that show why it was contained."""
    m = r"169\.254\.169\.254"
    meta = "metadata_or_link_local"
    absent = "ConnectionRefusedError"  # no proxy: nothing listens on the sandbox's 127.0.0.1:3128
    redirect = rf"http://allowed\.redteam\.test/redirect\?to=http%3A%2F%2F{m}%2Flatest%2Fmeta-data%2F"
    net: dict[str, list[str]] = {
        "egress-unlisted-ip-literal-python": [
            r"REFUSED CONNECT 127\.0\.0\.1:22 403 port_not_allowed",  # listed, for the server's port only
            r"REFUSED CONNECT \[::1\]:22 403 host_not_allowed",
            r"REFUSED GET http://127\.0\.0\.1:22/ 403 port_not_allowed",
            rf"REFUSED CONNECT 127\.0\.0\.1:{SERVER_PORT} 403 server_port"],
        "egress-unlisted-ip-literal-bash": [
            r"REFUSED CONNECT 127\.0\.0\.1:22 403 port_not_allowed",
            r"REFUSED GET http://\[::1\]:22/ 403 host_not_allowed",
            rf"REFUSED CONNECT 127\.0\.0\.1:{SERVER_PORT} 403 server_port"],
        "egress-metadata-proxy-python": [
            rf"REFUSED GET http://{m}/latest/meta-data/ 403 {meta}",
            rf"REFUSED CONNECT {m}:80 403 {meta}",
            rf"REFUSED CONNECT {m}:443 403 {meta}",
            rf"REFUSED PUT http://{m}/latest/api/token 403 {meta}",
            rf"REFUSED GET http://\[fd00:ec2::254\]/latest/meta-data/ 403 {meta}",
            rf"REFUSED urllib 403 {meta}",
            r"REFUSED GET http://metadata\.google\.internal/computeMetadata/v1/ 403 host_not_allowed"],
        "egress-metadata-proxy-javascript": [
            rf"REFUSED GET http://{m}/latest/meta-data/ 403 {meta}",
            rf"REFUSED PUT http://{m}/latest/api/token 403 {meta}",
            rf"REFUSED CONNECT \[::ffff:{m}\]:80 403 {meta}"],
        "egress-metadata-proxy-bash": [
            rf"REFUSED GET http://{m}/latest/meta-data/ 403 {meta}",
            rf"REFUSED CONNECT \[::ffff:{m}\]:80 403 {meta}",
            rf"REFUSED CONNECT \[::ffff:a9fe:a9fe\]:80 403 {meta}",
            r"REFUSED CONNECT 2852039166:80 400 bad_host"],
        "egress-dns-rebinding-python": [
            rf"REFUSED GET http://rebind\.redteam\.test/latest/meta-data/ #1 403 {meta}",
            rf"REFUSED CONNECT rebind\.redteam\.test:80 #2 403 {meta}",
            r"REFUSED GET http://internal\.redteam\.test/latest/meta-data/ #1 403 private_address",
            rf"REFUSED CONNECT mixed\.redteam\.test:80 #1 403 {meta}",
            rf"REFUSED CONNECT mapped\.redteam\.test:80 #1 403 {meta}",
            r"REFUSED CONNECT loopback\.redteam\.test:80 #1 403 loopback_address",
            rf"REFUSED GET http://REBIND\.redteam\.TEST\./latest/meta-data/ #1 403 {meta}"],
        "egress-unlisted-port-python": [
            r"ALLOWED CONNECT allowed\.redteam\.test:80 \(listed\) 200",
            r"REFUSED CONNECT allowed\.redteam\.test:22 403 port_not_allowed",
            r"REFUSED GET http://allowed\.redteam\.test:8080/echo 403 port_not_allowed",
            r"REFUSED CONNECT allowed\.redteam\.test:'65558' 400 bad_request",
            r"REFUSED CONNECT allowed\.redteam\.test:'80:22' 400 bad_request",
            *(rf"REFUSED CONNECT allowed\.redteam\.test:{p} 403 port_not_allowed" for p in trap_ports)],
        "egress-redirect-to-refused-python": [
            rf"ALLOWED GET {redirect} 302",
            rf"REDIRECTED http://{m}/latest/meta-data/",
            rf"REFUSED FOLLOW http://{m}/latest/meta-data/ 403 {meta}",
            rf"REFUSED FOLLOW http://rebind\.redteam\.test/latest/meta-data/ 403 {meta}",
            r"REFUSED FOLLOW http://internal\.redteam\.test/ 403 private_address",
            r"REFUSED FOLLOW http://allowed\.redteam\.test:22/ 403 port_not_allowed",
            rf"REFUSED FOLLOW http://\[::ffff:{m}\]/latest/ 403 {meta}",
            rf"REFUSED FOLLOW http://allowed\.redteam\.test@{m}/latest/meta-data/ 400 bad_request",
            rf"REFUSED urllib http://{m}/latest/meta-data/ 403 {meta}"],
        "egress-redirect-to-refused-javascript": [
            rf"ALLOWED GET {redirect} 302",
            rf"REDIRECTED http://{m}/latest/meta-data/",
            rf"REFUSED FOLLOW http://{m}/latest/meta-data/ 403 {meta}",
            r"REFUSED FOLLOW http://internal\.redteam\.test/ 403 private_address"],
        "egress-forged-proxy-requests-python": [
            rf"REFUSED URI refused, Host allowed 403 {meta}",
            r"REFUSED origin form, Host refused 400 bad_request",
            r"REFUSED userinfo 400 bad_request",
            r"REFUSED CONNECT without a port 400 bad_request",
            r"ALLOWED URI allowed, Host refused 200",
            r"UPSTREAM-HOST allowed\.redteam\.test",
            r"ALLOWED pipelined 200",
            rf"REFUSED pipelined 403 {meta}",
            r"REFUSED smuggled 400 bad_request"],  # a body framed two ways: refused whole
        "egress-ip-literal-forms-python": [
            rf"REFUSED CONNECT \[::ffff:{m}\]:80 403 {meta}",
            rf"REFUSED GET http://\[::ffff:a9fe:a9fe\]/latest/meta-data/ 403 {meta}",
            r"REFUSED CONNECT 2852039166:80 400 bad_host",
            r"REFUSED CONNECT 0251\.0376\.0251\.0376:80 400 bad_host",
            r"REFUSED GET http://0xa9fea9fe/latest/meta-data/ 400 bad_host",
            r"REFUSED CONNECT 169\.254\.43518:80 400 bad_host",
            rf"REFUSED CONNECT {m}\.:80 403 {meta}",
            r"REFUSED CONNECT \[::ffff:127\.0\.0\.1\]:80 403 port_not_allowed"],
        "egress-dns-tunnel-python": [
            r"REFUSED CONNECT 8\.8\.8\.8:53 403 host_not_allowed",
            r"REFUSED GET http://[0-9a-f]+\.t1\.exfil\.redteam\.invalid/ 403 host_not_allowed"],
    }
    nonet: dict[str, list[str]] = {
        "egress-unlisted-ip-literal-python": [rf"FAILED CONNECT 127\.0\.0\.1:22 {absent}"],
        "egress-unlisted-ip-literal-bash": [r"FAILED CONNECT 127\.0\.0\.1:22 no connection"],
        "egress-metadata-proxy-python": [rf"FAILED GET http://{m}/latest/meta-data/ {absent}",
                                         r"FAILED urllib URLError"],
        "egress-metadata-proxy-javascript": [rf"FAILED CONNECT \[::ffff:{m}\]:80 ECONNREFUSED"],
        "egress-metadata-proxy-bash": [rf"FAILED CONNECT \[::ffff:{m}\]:80 no connection"],
        "egress-dns-rebinding-python": [rf"FAILED CONNECT rebind\.redteam\.test:80 #2 {absent}"],
        "egress-unlisted-port-python": [rf"FAILED CONNECT allowed\.redteam\.test:22 {absent}"],
        "egress-redirect-to-refused-python": [rf"FAILED GET {redirect} {absent}"],
        "egress-redirect-to-refused-javascript": [rf"FAILED GET {redirect} ECONNREFUSED"],
        "egress-forged-proxy-requests-python": [rf"FAILED URI refused, Host allowed {absent}"],
        "egress-ip-literal-forms-python": [rf"FAILED CONNECT \[::ffff:{m}\]:80 {absent}"],
        "egress-dns-tunnel-python": [rf"FAILED CONNECT 8\.8\.8\.8:53 {absent}"],
    }
    # Around the proxy the sandbox looks the same with or without network: no route anywhere.
    direct = {
        "egress-metadata-direct-python": [rf"FAILED {m}:80 ENETUNREACH", r"FAILED urllib URLError"],
        "egress-direct-tcp-python": [r"FAILED 8\.8\.8\.8:53 ENETUNREACH", r"FAILED 172\.17\.0\.1:2375 ENETUNREACH"],
        "egress-direct-tcp-bash": [r"FAILED 8\.8\.8\.8/53", rf"FAILED {m}/80"],
        "egress-direct-javascript": [rf"FAILED {m}:80 ENETUNREACH",
                                     rf"(FAILED fetch ENETUNREACH|REFUSED fetch 403 {meta})"],
        "egress-raw-udp-out-python": [r"DENIED inet-raw-icmp EPERM", r"FAILED udp 8\.8\.8\.8 ENETUNREACH"],
        "egress-dns-tunnel-bash": [r"FAILED udp 8\.8\.8\.8", r"FAILED getent"],
    }
    dns_direct = [r"FAILED udp 8\.8\.8\.8 ENETUNREACH", r"FAILED tcp 8\.8\.8\.8 ENETUNREACH",
                  r"FAILED getaddrinfo gaierror"]
    net["egress-dns-tunnel-python"] += dns_direct
    nonet["egress-dns-tunnel-python"] += dns_direct
    out: dict[str, dict[str, list[str]]] = {}
    for case_id in {*net, *nonet, *direct}:
        out[case_id] = {"net": net.get(case_id, []) + direct.get(case_id, []),
                        "nonet": nonet.get(case_id, []) + direct.get(case_id, [])}
    return out


def with_proof(case: Case, lines: list[str]) -> Case:
    """A copy of ``case`` (id + "-proof") whose only step must also print each of ``lines`` as a whole line."""
    data = case.model_dump()
    step = data["steps"][0]
    step["expect"]["stdout_matches"] = (*step["expect"]["stdout_matches"], *(f"(?m)^{line}$" for line in lines))
    data["id"] = f"{case.id}-proof"
    return Case.model_validate(data)


# ---- the namespace's upstream and refused targets ----------------------------------------------------------------


class _Fake(ThreadingHTTPServer):
    """An HTTP server that counts every connection it accepts and records every request."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, refused: bool) -> None:
        self.address_family = family
        self.refused = refused
        self.connections = 0
        self.requests: list[dict[str, str]] = []
        self.lock = threading.Lock()
        super().__init__(address, _FakeHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.connections += 1
        super().process_request(request, client_address)


class _FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    server: _Fake

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        length = self.headers.get("Content-Length", "")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if chunked:
            while (line := self.rfile.readline(1024).strip()) and int(line.split(b";")[0], 16):
                self.rfile.read(int(line.split(b";")[0], 16) + 2)
            self.rfile.readline(1024)
        elif length.isdigit():
            self.rfile.read(int(length))
        with self.server.lock:
            self.server.requests.append({
                "method": self.command, "path": self.path, "host": self.headers.get("Host", ""),
                "content_length": length, "transfer_encoding": self.headers.get("Transfer-Encoding", "")})
        url = urlsplit(self.path)
        if self.server.refused:
            # What a metadata service would hand out: a test's secret, which no case's output may contain.
            self._reply(200, f"ami-id\niam/security-credentials/\n{METADATA_SECRET}\n".encode())
        elif url.path == "/redirect":
            self._reply(302, b"redirecting\n", [("Location", parse_qs(url.query).get("to", ["/"])[0])])
        elif url.path.startswith("/echo"):
            headers = {name.lower(): value for name, value in self.headers.items()}
            self._reply(200, json.dumps({"path": self.path, "headers": headers}).encode(),
                        [("Content-Type", "application/json")])
        else:
            self._reply(404, b"not found\n")

    do_POST = do_PUT = do_HEAD = do_OPTIONS = do_DELETE = do_GET

    def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        for name, value in headers or []:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@contextmanager
def running(host: str, port: int, *, refused: bool) -> Iterator[_Fake]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = _Fake((host, port), family, refused)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


# ---- the run -------------------------------------------------------------------------------------------------------


def summary(report: RunReport) -> dict[str, Any]:
    return {c.case_id: {"verdict": c.verdict.value, "problems": list(c.problems), "notes": list(c.notes),
                        "stdout": [s.stdout_excerpt for s in c.steps], "stderr": [s.stderr_excerpt for s in c.steps],
                        "refusal": [s.refusal for s in c.steps]}
            for c in report.cases}


def main() -> None:
    backend = sys.argv[1]
    extra: dict[str, Any] = {"docker_host": sys.argv[2]} if backend == "docker" else {}
    if ip("link", "set", "lo", "up").returncode != 0:
        raise SystemExit("cannot bring lo up: not in a namespace of our own?")
    added = [address for family, address in LOCAL_ADDRESSES
             if ip(family, "addr", "add", address, "dev", "lo", *(["nodad"] if family == "-6" else [])).returncode == 0]
    routes = ip("-o", "route", "show", "table", "all").stdout + ip("-6", "-o", "route", "show", "table", "all").stdout
    links = ip("-o", "link").stdout
    egress = [c for c in shipped_corpus().cases if c.category is Category.EGRESS]
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        allowed = stack.enter_context(running("127.0.0.2", 80, refused=False))
        fakes = {f"{host}:{port}": stack.enter_context(running(host, port, refused=True))
                 for host, port in (("169.254.169.254", 80), ("169.254.169.254", 443), ("10.20.30.40", 80),
                                    ("fd00:ec2::254", 80))
                 if any(a.startswith(host + "/") for a in added)}
        traps = [stack.enter_context(running("127.0.0.2", 0, refused=True)) for _ in range(TRAP_PORTS)]
        trap_ports = [int(t.server_address[1]) for t in traps]
        fakes.update({f"127.0.0.2:{p}": t for p, t in zip(trap_ports, traps, strict=True)})
        table = proofs(trap_ports)

        policies = Path(tmp) / "policies"
        policies.mkdir()
        (policies / "tenants.yaml").write_text(POLICY)
        settings = private_settings(auth="api-keys", policies_dir=policies, backend=backend, port=SERVER_PORT,
                                    egress_hosts=NAMES, incidents={"enabled": False}, max_running=4, **extra)
        stores = open_stores(settings.data_dir)
        try:
            keys = {tenant: stores.keys.create(tenant, "tenant", "redteam egress")[1] for tenant in TENANTS}
        finally:
            stores.close()
        checks = HostChecks(canary_dirs=(*DEFAULT_CANARY_DIRS, settings.state_dir, settings.data_dir),
                            secrets={"the fake metadata service's credential": METADATA_SECRET})
        options = RunOptions(concurrency=4, host_checks=checks, host_ports=(SERVER_PORT, *trap_ports))

        async def run(target: str, tenant: str) -> RunReport:
            cases = [*egress, *(with_proof(c, table[c.id][tenant]) for c in egress if c.id in table)]
            async with AsyncSandboxClient(target, api_key=keys[tenant], timeout=120) as client:
                return await run_cases(client, cases, options)

        results: dict[str, Any] = {}
        with server_in_thread(settings) as srv:
            for tenant in TENANTS:
                results[tenant] = summary(asyncio.run(run(srv.target, tenant)))
        print(json.dumps({
            "egress_cases": [c.id for c in egress], "without_proof": sorted(c.id for c in egress if c.id not in table),
            "results": results, "added_addresses": added, "routes": routes, "links": links,
            "fakes": {name: {"connections": f.connections, "requests": f.requests} for name, f in fakes.items()},
            "allowed_requests": allowed.requests,
        }))


if __name__ == "__main__":
    main()
