"""Egress end to end: real servers on each backend, real sandboxes, the server's proxy in each sandbox's own
network namespace, real HTTP and HTTPS upstreams on 127.0.0.x (tests/egress/servers.py). What the proxy decides
for each request is tests/egress/test_proxy.py's; here: that sandboxes reach exactly what their policy lists,
through the proxy only, on both backends, in one-shot executions and sessions, counted, limited, priced and
audited; credentials added on the way and never seen; packages from a wheelhouse.

Refused *addresses* (metadata, link-local, other ranges) are not sent from here: tests/egress/test_isolated.py
runs those inside a network namespace of its own with only loopback up."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import json
import os
import tarfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from sandbox_client import (
    EgressRule,
    ExecutionResult,
    Network,
    PermissionDeniedError,
    SandboxClient,
    SandboxError,
    Status,
)
from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_client._proto.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from sandbox_server.stores.embedded import open_stores
from sandbox_server.stores.incidents import IncidentRecord
from sandbox_server.testing import RunningServer, private_settings, server_in_thread

from .servers import CertificateAuthority, Upstream, make_test_ca, running_upstream

TOKEN_ENV = "SANDBOX_EGRESS_TEST_TOKEN"  # noqa: S105 - a variable name
TOKEN = "tok-" + os.urandom(12).hex()  # what the proxy injects; the sandbox must never see it
WHEEL = "sandbox_egress_demo"

FETCH = """
import json, urllib.request, urllib.error
out = []
for url in URLS:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            out.append({"url": url, "status": r.status, "body": r.read().decode(errors="replace")})
    except urllib.error.HTTPError as e:
        out.append({"url": url, "status": e.code, "refused": e.headers.get("X-Sandbox-Egress", "")})
    except Exception as e:
        out.append({"url": url, "error": type(e).__name__ + ": " + str(e)})
print(json.dumps(out))
"""


def label() -> str:
    """A session label of its own: incident response counts refusals per label (one that probes on purpose
    must not quarantine the next test's executions)."""
    return f"t-{uuid.uuid4().hex[:12]}"


def run(sbx: SandboxClient, code: str, **kwargs: Any) -> ExecutionResult:
    return sbx.execute(code, session_id=label(), **kwargs)


def fetch_code(*urls: str) -> str:
    return f"URLS = {list(urls)!r}\n" + FETCH


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return make_test_ca(tmp_path_factory.mktemp("ca"), names=("api.example.test", "secure.example.test"))


@pytest.fixture(scope="module")
def plain() -> Iterator[Upstream]:
    with running_upstream("127.0.0.2") as up:
        yield up


@pytest.fixture(scope="module")
def secure(ca: CertificateAuthority) -> Iterator[Upstream]:
    with running_upstream("127.0.0.3", tls=ca.server_context()) as up:
        yield up


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wheelhouse")
    make_wheel(directory, WHEEL, "VALUE = 42\n")
    for p in (directory, *directory.parents):
        if p == Path("/"):
            break
        p.chmod(p.stat().st_mode | 0o005)  # the sandbox user reads it through the read-only bind
    return directory


def make_wheel(directory: Path, name: str, source: str, version: str = "1.0") -> Path:
    """A minimal pure-Python wheel (PEP 427), made by hand: no build backend, no network."""
    import base64
    import hashlib
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": source.encode(),
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
              for p, d in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for p, d in files.items():
            wheel.writestr(p, d)
    path.chmod(0o644)
    return path


@dataclass(frozen=True)
class Mirror:
    port: int
    directory: Path


MIRROR_WHEEL = "sandbox_mirror_demo"
NPM_PACKAGE = "sandbox-npm-demo"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """An operator's package mirror on 127.0.0.4: a PEP 503 simple index for pip and an npm registry (a
    packument and its tarball), served as static files."""
    root = tmp_path_factory.mktemp("mirror")
    files = root / "files"
    files.mkdir()
    wheel = make_wheel(files, MIRROR_WHEEL, "VALUE = 'from the mirror'\n")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    project = root / "simple" / MIRROR_WHEEL.replace("_", "-")
    project.mkdir(parents=True)
    (project / "index.html").write_text(
        f'<html><body><a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a></body></html>\n')
    server = ThreadingHTTPServer(("127.0.0.4", 0), functools.partial(_Quiet, directory=str(root)))
    port = server.server_address[1]
    tarball = root / NPM_PACKAGE / "-" / f"{NPM_PACKAGE}-1.0.0.tgz"
    tarball.parent.mkdir(parents=True)
    with tarfile.open(tarball, "w:gz") as tgz:
        for name, text in (("package.json", json.dumps({"name": NPM_PACKAGE, "version": "1.0.0", "main": "index.js"})),
                           ("index.js", "module.exports = { value: 'from the npm mirror' };\n")):
            data = text.encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size, info.mode = len(data), 0o644
            tgz.addfile(info, io.BytesIO(data))
    body = tarball.read_bytes()
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(body).digest()).decode()
    (root / NPM_PACKAGE / "index.json").write_text(json.dumps({
        "name": NPM_PACKAGE, "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": {"name": NPM_PACKAGE, "version": "1.0.0", "main": "index.js", "dist": {
            "tarball": f"http://npm.example.test:{port}/{NPM_PACKAGE}/-/{tarball.name}",
            "integrity": integrity, "shasum": hashlib.sha1(body).hexdigest()}}}}))  # noqa: S324 - npm's format
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Mirror(port, root)
    finally:
        server.shutdown()
        server.server_close()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def translate_path(self, path: str) -> str:
        # npm asks for /<name>: the registry's packument, kept as <name>/index.json here.
        translated = super().translate_path(path)
        if os.path.isdir(translated) and os.path.exists(os.path.join(translated, "index.json")):
            return os.path.join(translated, "index.json")
        return translated


def policies(plain: Upstream, secure: Upstream, mirror: Mirror) -> str:
    return f"""\
version: 1
tenants:
  net:
    allowed_env: ["*"]
    static_validation: {{enabled: false}}
    guardrails: {{output_secrets: redact}}
    pricing: {{egress_gb: 1000.0}}
    network:
      mode: allowlist
      refusals_before_incident: 4
      allow:
        - {{host: 127.0.0.2, ports: [{plain.port}]}}
        - {{host: files.example.test, ports: [{plain.port}]}}
        - {{host: "*.wild.test", ports: [{plain.port}]}}
        - {{host: 127.0.0.4, ports: [{mirror.port}]}}
        - {{host: pypi.example.test, ports: [{mirror.port}]}}
        - {{host: npm.example.test, ports: [{mirror.port}]}}
        - {{host: 127.0.0.3, ports: [{secure.port}]}}
        - {{host: secure.example.test, ports: [{secure.port}]}}
        - host: api.example.test
          ports: [{secure.port}]
          credentials: [{{header: Authorization, env: {TOKEN_ENV}, template: "Bearer {{value}}"}}]
  small:
    allowed_env: ["*"]
    static_validation: {{enabled: false}}
    defaults: {{egress_bytes: 200000}}
    network:
      mode: allowlist
      max_connections: 3
      allow:
        - {{host: 127.0.0.2, ports: [{plain.port}]}}
  nonet:
    allowed_env: ["*"]
    static_validation: {{enabled: false}}
"""


@pytest.fixture(scope="module", params=["nsjail", "docker"])
def egress_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, plain: Upstream,
                  secure: Upstream, ca: CertificateAuthority, wheelhouse: Path,
                  mirror: Mirror) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    extra: dict[str, Any] = {}
    if request.param == "docker":
        extra["docker_host"] = request.getfixturevalue("dockerd").host
    directory = tmp_path_factory.mktemp("egress-policies")
    (directory / "tenants.yaml").write_text(policies(plain, secure, mirror))
    os.environ[TOKEN_ENV] = TOKEN  # the server's own environment: the proxy reads it, no sandbox does
    names = {name: ["127.0.0.2"] for name in ("files.example.test", "a.wild.test", "b.c.wild.test")}
    names.update({name: ["127.0.0.3"] for name in ("secure.example.test", "api.example.test")})
    names.update({name: ["127.0.0.4"] for name in ("pypi.example.test", "npm.example.test")})
    settings = private_settings(auth="api-keys", policies_dir=directory, backend=request.param, metrics_port=0,
                                egress_hosts=names, egress_ca_file=ca.ca_cert, wheelhouse=wheelhouse,
                                package_index_url=f"http://pypi.example.test:{mirror.port}/simple/",
                                npm_registry_url=f"http://npm.example.test:{mirror.port}/",
                                incidents={"enabled": True}, **extra)
    stores = open_stores(settings.data_dir)
    try:
        keys = {name: stores.keys.create(name, "tenant", "test")[1] for name in ("net", "small", "nonet")}
    finally:
        stores.close()
    try:
        with server_in_thread(settings) as srv:
            yield srv, keys
    finally:
        os.environ.pop(TOKEN_ENV, None)


def client(egress_server: tuple[RunningServer, dict[str, str]], tenant: str = "net") -> SandboxClient:
    srv, keys = egress_server
    return SandboxClient(srv.target, api_key=keys[tenant], retry=None, timeout=120)


def fetched(stdout: str) -> list[dict[str, Any]]:
    return list(json.loads(stdout.strip().splitlines()[-1]))


# ---- one-shot executions -------------------------------------------------------------------------------------
def test_a_sandbox_reaches_what_its_policy_lists_and_nothing_else(
        egress_server: tuple[RunningServer, dict[str, str]], plain: Upstream) -> None:
    port = plain.port
    with client(egress_server) as sbx:
        result = run(sbx, fetch_code(
            f"http://127.0.0.2:{port}/echo/literal", f"http://files.example.test:{port}/echo/name",
            f"http://a.wild.test:{port}/echo/wild", f"http://wild.test:{port}/echo/bare-suffix",
            f"http://127.0.0.2:{port + 1}/echo/other-port", f"http://unlisted.example.test:{port}/echo",
            f"http://2130706433:{port}/echo/decimal"), language="python")
    assert result.status is Status.OK, result.stderr
    got = {r["url"].split("/", 3)[-1]: r for r in fetched(result.stdout)}
    assert got["echo/literal"]["status"] == 200
    assert json.loads(got["echo/name"]["body"])["headers"]["host"] == f"files.example.test:{port}"
    assert got["echo/wild"]["status"] == 200
    assert got["echo/bare-suffix"]["refused"] == "refused; reason=host_not_allowed"
    assert got["echo/other-port"]["refused"] == "refused; reason=port_not_allowed"
    assert got["echo"]["refused"] == "refused; reason=host_not_allowed"
    assert got["echo/decimal"]["refused"] == "refused; reason=bad_host"
    assert result.usage.egress_connections == 3
    assert result.usage.egress_bytes_sent > 0
    assert result.usage.egress_bytes_received > 0


def test_https_goes_through_connect_and_the_sandbox_verifies_the_upstream(
        egress_server: tuple[RunningServer, dict[str, str]], secure: Upstream, ca: CertificateAuthority) -> None:
    with client(egress_server) as sbx:
        result = run(sbx,
            f"curl -sS --cacert ca.pem https://secure.example.test:{secure.port}/echo/tls", language="bash",
            files={"ca.pem": ca.ca_cert.read_bytes()})
    assert result.status is Status.OK, result.stderr
    echo = json.loads(result.stdout)
    assert echo["tls"] is True
    assert echo["path"] == "/echo/tls"


def test_without_network_a_sandbox_has_no_proxy_and_no_route(
        egress_server: tuple[RunningServer, dict[str, str]], plain: Upstream) -> None:
    code = f"""
import os, socket
print(sorted(k for k in os.environ if "proxy" in k.lower()))
for address in [("127.0.0.1", 3128), ("127.0.0.2", {plain.port})]:
    try:
        socket.create_connection(address, timeout=2)
        print("CONNECTED", address)
    except OSError as e:
        print("refused", address, e.errno)
"""
    with client(egress_server, "nonet") as sbx:
        result = run(sbx, code, language="python")
    assert result.status is Status.OK, result.stderr
    assert result.stdout.splitlines()[0] == "[]"
    assert "CONNECTED" not in result.stdout
    assert result.usage.egress_connections == 0
    assert result.usage.egress_bytes_sent == 0


def test_direct_connections_bypassing_the_proxy_go_nowhere(
        egress_server: tuple[RunningServer, dict[str, str]], plain: Upstream) -> None:
    code = f"""
import socket
for address in [("127.0.0.2", {plain.port}), ("10.0.0.1", 80)]:
    try:
        socket.create_connection(address, timeout=2)
        print("CONNECTED", address)
    except OSError as e:
        print("no", address, e.errno)
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", ("127.0.0.53", 53))
    print("udp sent locally only")
except OSError as e:
    print("udp", e.errno)
"""
    with client(egress_server) as sbx:
        result = run(sbx, code, language="python")
    assert result.status is Status.OK, result.stderr
    assert "CONNECTED" not in result.stdout
    assert plain.requests == [] or all(not r.path.startswith("/direct") for r in plain.requests)


def test_a_request_may_narrow_its_tenants_list_never_widen_it(
        egress_server: tuple[RunningServer, dict[str, str]], plain: Upstream) -> None:
    srv, keys = egress_server
    port = plain.port
    channel = grpc.insecure_channel(srv.target)
    stub = pb_grpc.SandboxStub(channel)
    metadata = (("authorization", f"Bearer {keys['net']}"),)
    code = fetch_code(f"http://127.0.0.2:{port}/echo/a", f"http://files.example.test:{port}/echo/b").encode()
    try:
        narrowed = stub.Execute(pb.ExecuteRequest(
            language="python", code=code, network=pb.Network(
                mode=pb.Network.MODE_ALLOWLIST, allow=[pb.EgressRule(host="127.0.0.2", ports=[port])])),
            metadata=metadata, timeout=120)
        statuses = [r.get("status") for r in fetched(narrowed.stdout.decode())]
        assert statuses == [200, 403]
        none = stub.Execute(pb.ExecuteRequest(language="python", code=b"import os; print(os.environ.get('HTTP_PROXY'))",
                                              network=pb.Network(mode=pb.Network.MODE_NONE)),
                            metadata=metadata, timeout=120)
        assert none.stdout == b"None\n"
        for wider in (pb.EgressRule(host="127.0.0.2", ports=[port, port + 1]),
                      pb.EgressRule(host="*.example.test", ports=[port]),
                      pb.EgressRule(host="127.0.0.4", ports=[port])):
            with pytest.raises(grpc.RpcError) as info:
                stub.Execute(pb.ExecuteRequest(language="python", code=b"1", network=pb.Network(
                    mode=pb.Network.MODE_ALLOWLIST, allow=[wider])), metadata=metadata, timeout=120)
            assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED, wider
            assert "is not within tenant 'net'" in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as info:
            stub.Execute(pb.ExecuteRequest(language="python", code=b"1", network=pb.Network(
                mode=pb.Network.MODE_ALLOWLIST, allow=[pb.EgressRule(host="bad host", ports=[port])])),
                metadata=metadata, timeout=120)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        channel.close()
    narrower = Network.allowlist(EgressRule("127.0.0.2", [port]))
    with client(egress_server, "nonet") as sbx, pytest.raises(PermissionDeniedError):
        sbx.execute("1", language="python", network=narrower)


def test_credentials_are_added_on_the_way_and_never_seen(
        egress_server: tuple[RunningServer, dict[str, str]], secure: Upstream) -> None:
    code = f"""
import os, urllib.request
print(sorted(v for v in os.environ.values() if "tok-" in v))
req = urllib.request.Request("http://api.example.test:{secure.port}/echo/cred",
                             headers={{"Authorization": "Bearer forged"}})
print(urllib.request.urlopen(req, timeout=10).read().decode())
"""
    with client(egress_server) as sbx:
        result = run(sbx, code, language="python")
    assert result.status is Status.OK, result.stderr
    assert result.stdout.splitlines()[0] == "[]"
    assert TOKEN not in result.stdout  # the echo carried it back: the output guardrail redacted it
    assert "[REDACTED:injected_credential]" in result.stdout
    seen = [r for r in secure.requests if r.path == "/echo/cred"]
    assert seen
    assert seen[-1].headers["authorization"] == f"Bearer {TOKEN}"  # the forged one replaced
    assert seen[-1].tls  # onward over TLS, verified against the operator's CA
    with client(egress_server) as sbx:
        tunnel = run(sbx, fetch_code(f"https://api.example.test:{secure.port}/echo"), language="python")
    assert "credentials_need_http" in tunnel.stdout or "403" in tunnel.stdout


def test_the_byte_and_connection_limits_hold(
        egress_server: tuple[RunningServer, dict[str, str]], plain: Upstream) -> None:
    port = plain.port
    urls = [f"http://127.0.0.2:{port}/bytes/150000", f"http://127.0.0.2:{port}/bytes/150000",
            *[f"http://127.0.0.2:{port}/echo/{i}" for i in range(4)]]
    with client(egress_server, "small") as sbx:
        result = run(sbx, fetch_code(*urls), language="python")
    assert result.status is Status.OK, result.stderr
    outcomes = fetched(result.stdout)
    assert outcomes[0]["status"] == 200
    assert outcomes[1].get("status") != 200 or len(outcomes[1].get("body", "")) < 150000  # cut at 200 kB
    assert all(o.get("status") != 200 for o in outcomes[2:])
    usage = result.usage
    assert usage.egress_bytes_sent + usage.egress_bytes_received <= 200_000 + 64 * 1024
    assert usage.egress_connections <= 3


def test_egress_is_audited_and_priced(egress_server: tuple[RunningServer, dict[str, str]],
                                      plain: Upstream) -> None:
    srv, _ = egress_server
    with client(egress_server) as sbx:
        result = run(sbx, fetch_code(f"http://127.0.0.2:{plain.port}/bytes/100000"), language="python")
    assert result.status is Status.OK, result.stderr
    moved = result.usage.egress_bytes_sent + result.usage.egress_bytes_received
    assert moved > 100_000
    assert result.cost == pytest.approx(1000.0 * moved / 1e9, rel=0.01)  # egress_gb: 1000 per GB
    stores = srv.app.stores
    assert stores is not None
    record = stores.audit.get(result.execution_id)
    assert record is not None
    assert record.egress_bytes_received == result.usage.egress_bytes_received
    assert record.egress_connections == 1
    port = srv.app.metrics_port
    deadline = time.monotonic() + 10
    while True:  # the metric is counted once the audit record is durable, a moment after the reply
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            page = reply.read().decode()
        received = sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
                       if line.startswith("sandbox_egress_bytes_total{") and 'direction="received"' in line
                       and 'tenant="net"' in line)
        if received >= result.usage.egress_bytes_received or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert received >= result.usage.egress_bytes_received


# ---- sessions ------------------------------------------------------------------------------------------------
def test_a_session_keeps_its_network_and_counts_it(
        egress_server: tuple[RunningServer, dict[str, str]], plain: Upstream) -> None:
    port = plain.port
    with client(egress_server) as sbx, sbx.session() as session:
        first = session.run(f"import urllib.request\nurllib.request.urlopen('http://127.0.0.2:{port}/echo/s1')"
                            ".status")
        assert first.value == "200", first.stderr
        second = session.run(f"curl -sS -o /dev/null -w '%{{http_code}}' http://files.example.test:{port}/echo/s2",
                             language="bash")
        assert second.stdout == "200", second.stderr
        assert first.usage.egress_connections == 1
        assert second.usage.egress_connections == 1
        info = session.refresh()
        assert info.usage.egress_bytes == sum(
            r.usage.egress_bytes_sent + r.usage.egress_bytes_received for r in (first, second))
        with pytest.raises(ValueError, match="session"):  # the client says so before sending
            sbx.execute("1", language="python", session_id=session.id, network=Network.none())


def test_repeated_refusals_in_a_session_open_an_incident(
        egress_server: tuple[RunningServer, dict[str, str]], plain: Upstream) -> None:
    srv, _ = egress_server
    with client(egress_server) as sbx, sbx.session() as session:
        probe = session.run(fetch_code(*[f"http://unlisted-{i}.example.test/x" for i in range(5)]))
        assert probe.status is Status.OK, probe.stderr
        incidents = srv.app.incidents
        assert incidents is not None
        deadline = time.monotonic() + 10
        found: list[IncidentRecord] = []
        while time.monotonic() < deadline and not found:
            listed = asyncio.run_coroutine_threadsafe(incidents.list(True, "net", 50), srv.loop).result(10)
            found = [i for i in listed if i.rule == "egress_refusals" and session.id in i.subject]
            time.sleep(0.1)
        assert found, probe.stdout


# ---- packages ------------------------------------------------------------------------------------------------
def test_pip_installs_from_the_wheelhouse_in_one_shot_and_in_a_session(
        egress_server: tuple[RunningServer, dict[str, str]]) -> None:
    with client(egress_server, "nonet") as sbx:
        one = run(sbx, f"pip install -q {WHEEL} && python3 -c 'import {WHEEL}; print({WHEEL}.VALUE)'",
                          language="bash")
        assert one.status is Status.OK, one.stderr
        assert one.stdout.strip().splitlines()[-1] == "42"
        assert not [f for f in one.files if ".packages" in f.path]  # not returned as output files
        with sbx.session() as session:
            installed = session.run(f"pip install -q {WHEEL}", language="bash")
            assert installed.status is Status.OK, installed.stderr
            imported = session.run(f"import {WHEEL}\n{WHEEL}.VALUE")
            assert imported.value == "42", imported.stderr
            assert any(f.path.startswith(".packages") for f in session.files.list(recursive=True))


def test_pip_and_npm_install_from_the_operators_mirror_through_the_proxy(
        egress_server: tuple[RunningServer, dict[str, str]], request: pytest.FixtureRequest) -> None:
    with client(egress_server) as sbx, sbx.session() as session:
        installed = session.run(f"pip install -q {MIRROR_WHEEL.replace('_', '-')}", language="bash")
        assert installed.status is Status.OK, installed.stderr
        assert installed.usage.egress_connections >= 1  # through the proxy, to the mirror
        imported = session.run(f"import {MIRROR_WHEEL}\n{MIRROR_WHEEL}.VALUE")
        assert imported.value == "'from the mirror'", imported.stderr
        if egress_server[0].settings.backend.value == "docker":
            return  # the shipped runtime images carry no npm (docs/egress.md)
        npm = session.run(f"npm install --no-save {NPM_PACKAGE} >/dev/null && "
                          f"node -e \"console.log(require('{NPM_PACKAGE}').value)\"", language="bash")
        assert npm.status is Status.OK, npm.stderr
        assert npm.stdout.strip() == "from the npm mirror"


def test_a_sandbox_whose_proxy_cannot_be_made_never_runs_and_leaves_nothing(
        egress_server: tuple[RunningServer, dict[str, str]], plain: Upstream,
        assert_no_leftovers: Callable[..., None]) -> None:
    srv, _ = egress_server
    backend = srv.app.backend
    gateway, backend.egress = backend.egress, None  # as if the proxy could not be opened in its namespace
    try:
        with client(egress_server) as sbx, pytest.raises(SandboxError) as info:
            run(sbx, "print('ran')", language="python")
        assert "egress proxy" in str(info.value)
    finally:
        backend.egress = gateway
    assert_no_leftovers(srv)
    with client(egress_server) as sbx:  # and the next one is served as before
        assert run(sbx, fetch_code(f"http://127.0.0.2:{plain.port}/echo/after"), language="python").status is \
            Status.OK


def test_javascript_reaches_the_network_through_the_proxy_on_any_node(
        egress_server: tuple[RunningServer, dict[str, str]], plain: Upstream, secure: Upstream,
        ca: CertificateAuthority) -> None:
    """Node before 22.21 ignores HTTP_PROXY: the preload the environment names (node_proxy.mjs) routes fetch,
    http.get and https.get through the proxy, redirects included, each hop checked on its own."""
    code = f"""
const get = (lib, url) => new Promise((done) => lib.get(url, (m) => {{ let d = ''; m.on('data', (c) => d += c);
  m.on('end', () => done(m.statusCode + ' ' + JSON.parse(d).path)); }}).on('error', (e) => done('error ' + e.code)));
(async () => {{
  let r = await fetch('http://files.example.test:{plain.port}/echo/fetch');
  console.log('fetch', r.status, (await r.json()).path);
  r = await fetch('https://secure.example.test:{secure.port}/echo/tls');
  console.log('fetch-tls', r.status, (await r.json()).path);
  r = await fetch('http://files.example.test:{plain.port}/redirect?to=http://unlisted.example.test/');
  console.log('redirect', r.status, r.headers.get('x-sandbox-egress'));
  console.log('http.get', await get(require('http'), 'http://127.0.0.2:{plain.port}/echo/get'));
  console.log('https.get', await get(require('https'), 'https://secure.example.test:{secure.port}/echo/get'));
}})();
"""
    with client(egress_server) as sbx:
        result = run(sbx, code, language="javascript", env={"NODE_EXTRA_CA_CERTS": "/work/ca.pem"},
                     files={"ca.pem": ca.ca_cert.read_bytes()})
    assert result.status is Status.OK, result.stderr
    assert result.stdout.splitlines() == [
        "fetch 200 /echo/fetch", "fetch-tls 200 /echo/tls", "redirect 403 refused; reason=host_not_allowed",
        "http.get 200 /echo/get", "https.get 200 /echo/get"]
