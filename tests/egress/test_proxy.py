"""The egress proxy over real sockets, loopback only: CONNECT tunnels with real TLS end to end (httpx, curl),
absolute-form HTTP with streamed and chunked bodies and keep-alive across hosts, every refusal made before any
connect, DNS rebinding, injected credentials over TLS onward (never in a log), the limits, garbage input, and
aclose. Also the secret source and the resolvers the proxy uses.

Network rule: the proxy listens on 127.0.0.1 and the test upstreams on 127.0.0.2 and 127.0.0.3. An autouse
guard wraps the event loop's ``create_connection`` (the proxy's only way to connect): it records every attempt
and refuses any that is not to a loopback address, so a refusal test can assert that no connect was even tried.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import h11
import httpx
import pytest

from sandbox_server.egress.credentials import CredentialMissing, SecretsFileError, SecretSource
from sandbox_server.egress.proxy import MAX_OPEN_CLIENTS, EgressLimits, EgressProxy, Refusal
from sandbox_server.egress.resolver import ResolveError, Resolver, StaticResolver, SystemResolver
from sandbox_server.egress.rules import AllowEntry, Credential, EgressRules, IPAddress
from sandbox_server.testing import free_port

from .servers import CertificateAuthority, Upstream, make_test_ca, pattern, running_upstream

CURL = "/usr/bin/curl"
SECRET_ENV = "EGRESS_TEST_TOKEN"  # noqa: S105 (a variable's name)
TOKEN = Credential("Authorization", env=SECRET_ENV, template="Bearer {value}")
# Names of keys in a secrets file, not secrets.
API_KEY = Credential("X-Api-Key", secret="api_key")  # noqa: S106
MISSING_KEY = Credential("X-Api-Key", secret="missing")  # noqa: S106
JSON_KEY = Credential("X-K", secret="k")  # noqa: S106
UNLIMITED = EgressLimits(max_bytes=10**12, max_connections=10_000, connections_per_s=10_000.0)
ip = ipaddress.ip_address


# -- the network guard --

@dataclass
class Connects:
    attempts: list[tuple[str, int]] = field(default_factory=list)
    hang: set[str] = field(default_factory=set)  # addresses whose connects never complete

    @property
    def upstream(self) -> list[tuple[str, int]]:
        """Attempts other than the tests' own connections to the proxy (127.0.0.1)."""
        return [a for a in self.attempts if a[0] != "127.0.0.1"]


@pytest.fixture(autouse=True)
async def connects(monkeypatch: pytest.MonkeyPatch) -> Connects:
    loop = asyncio.get_running_loop()
    real = loop.create_connection
    record = Connects()

    async def guarded(protocol_factory: Any, host: Any = None, port: Any = None, **kwargs: Any) -> Any:
        if host is None and kwargs.get("sock") is not None:  # wrapping an accepted socket: no connect
            return await real(protocol_factory, host, port, **kwargs)
        record.attempts.append((str(host), int(port)))
        if not ip(str(host)).is_loopback:
            raise OSError(f"test network guard: {host} is not a loopback address")
        if str(host) in record.hang:
            await asyncio.sleep(3600)
        return await real(protocol_factory, host, port, **kwargs)

    monkeypatch.setattr(loop, "create_connection", guarded)
    return record


# -- upstreams and proxies --

@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return make_test_ca(tmp_path_factory.mktemp("egress-ca"))


@pytest.fixture(scope="module")
def http_a() -> Iterator[Upstream]:
    with running_upstream("127.0.0.2") as up:
        yield up


@pytest.fixture(scope="module")
def http_b() -> Iterator[Upstream]:
    with running_upstream("127.0.0.3") as up:
        yield up


@pytest.fixture(scope="module")
def https_up(ca: CertificateAuthority) -> Iterator[Upstream]:
    with running_upstream("127.0.0.3", tls=ca.server_context()) as up:
        yield up


@dataclass(frozen=True)
class World:
    ca: CertificateAuthority
    a: Upstream  # plain, 127.0.0.2, named plain.example.test
    b: Upstream  # plain, 127.0.0.3, named files.example.test
    tls: Upstream  # HTTPS, 127.0.0.3, named files.example.test and api.example.test (credentials)

    def entries(self) -> tuple[AllowEntry, ...]:
        return (
            AllowEntry("127.0.0.2", (self.a.port,)),
            AllowEntry("127.0.0.3", (self.b.port, self.tls.port)),
            AllowEntry("plain.example.test", (self.a.port,)),
            AllowEntry("files.example.test", (self.b.port, self.tls.port)),
            AllowEntry("api.example.test", (self.tls.port,), credentials=(TOKEN,)),
            AllowEntry("meta.example.test", (80,)),
            AllowEntry("nowhere.example.test", (80,)),
            AllowEntry("224.0.0.1", (80,)),
        )

    def rules(self, *extra: AllowEntry, server_ports: frozenset[int] = frozenset()) -> EgressRules:
        return EgressRules(entries=self.entries() + extra, server_ports=server_ports)

    def resolver(self) -> StaticResolver:
        return StaticResolver({"plain.example.test": ["127.0.0.2"], "files.example.test": ["127.0.0.3"],
                               "api.example.test": ["127.0.0.3"], "meta.example.test": ["169.254.169.254"]})


@pytest.fixture(scope="module")
def world(ca: CertificateAuthority, http_a: Upstream, http_b: Upstream, https_up: Upstream) -> World:
    return World(ca, http_a, http_b, https_up)


@dataclass
class Running:
    proxy: EgressProxy
    port: int
    refusals: list[Refusal]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reasons(self) -> list[str]:
        return [r.reason for r in self.refusals]


class Start(Protocol):
    def __call__(self, *, rules: EgressRules | None = None, limits: EgressLimits | None = None,
                 resolver: Resolver | None = None, secrets: SecretSource | None = None,
                 ssl_context: ssl.SSLContext | None = None, **kwargs: float) -> Awaitable[Running]: ...


@pytest.fixture
async def start(world: World) -> AsyncIterator[Start]:
    running: list[Running] = []

    async def _start(*, rules: EgressRules | None = None, limits: EgressLimits | None = None,
                     resolver: Resolver | None = None, secrets: SecretSource | None = None,
                     ssl_context: ssl.SSLContext | None = None, **kwargs: float) -> Running:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        refusals: list[Refusal] = []
        proxy = EgressProxy(rules or world.rules(), limits or UNLIMITED, resolver=resolver or world.resolver(),
                            secrets=secrets or SecretSource(environ={}),
                            ssl_context=ssl_context or world.ca.client_context(), on_refusal=refusals.append,
                            **kwargs)
        await proxy.serve(sock)
        running.append(Running(proxy, sock.getsockname()[1], refusals))
        return running[-1]

    yield _start
    for r in running:
        await r.proxy.aclose()


# -- clients --

@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def refusal(self) -> str:
        return self.headers.get("x-sandbox-egress", "")


def parse(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Reply(int(lines[0].split()[1]), headers, body)


async def exchange(port: int, data: bytes, *, half_close: bool = True, wait_s: float = 5.0) -> bytes:
    """Send raw bytes to the proxy and read until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        async with asyncio.timeout(wait_s):
            return await reader.read()
    finally:
        writer.close()


async def ask(port: int, request_line: str, *headers: str) -> Reply:
    """One request, ``Connection: close``, and the reply."""
    authority = request_line.split()[1].removeprefix("http://").split("/")[0]
    head = "\r\n".join([f"{request_line} HTTP/1.1", f"Host: {authority}", *headers, "Connection: close", "", ""])
    return parse(await exchange(port, head.encode()))


async def open_tunnel(port: int, authority: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 Connection established\r\n"), head
    return reader, writer


class HttpClient:
    """A program in the sandbox: one connection to the proxy, requests in absolute form, h11 on its side."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> HttpClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, method: str, url: str, *, headers: tuple[tuple[str, str], ...] = (),
                      body: bytes | list[bytes] | None = None) -> Reply:
        sent: list[tuple[str, str]] = [("Host", urlsplit(url).netloc), *headers]
        if isinstance(body, list):
            sent.append(("Transfer-Encoding", "chunked"))
        elif body is not None:
            sent.append(("Content-Length", str(len(body))))
        out = self.conn.send(h11.Request(method=method, target=url, headers=sent)) or b""
        for piece in body if isinstance(body, list) else [body] if body else []:
            out += self.conn.send(h11.Data(data=piece)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        self.writer.write(out)
        status, got, parts = 0, {}, []
        async with asyncio.timeout(10):
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(await self.reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    got = {k.decode().lower(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    parts.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return Reply(status, got, b"".join(parts))

    def close(self) -> None:
        self.writer.close()


def via_httpx(proxy_url: str, verify: ssl.SSLContext, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """httpx as a program would use it (synchronous: run it in a thread, the proxy shares the test's loop)."""
    with httpx.Client(proxy=proxy_url, verify=verify, trust_env=False, timeout=10) as client:
        return client.request(method, url, **kwargs)


async def curl(*args: str) -> tuple[int, bytes, bytes]:
    # A bare environment: no *_PROXY or NO_PROXY from the host can make curl go anywhere but the given proxy.
    proc = await asyncio.create_subprocess_exec(CURL, "-sS", "--max-time", "10", *args, env={"PATH": "/usr/bin:/bin"},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out, err


def assert_refused(reply: Reply, status: int, reason: str, running: Running, address: str = "") -> None:
    assert reply.status == status, reply
    assert reply.refusal == f"refused; reason={reason}"
    assert reply.body.startswith(f"egress refused: {reason} (".encode()), reply.body
    assert running.refusals[-1].reason == reason
    assert running.refusals[-1].address == address


# -- CONNECT and TLS end to end --

async def test_connect_tls_with_httpx(start: Start, world: World, connects: Connects) -> None:
    running = await start()
    url = f"https://files.example.test:{world.tls.port}/echo?q=1"
    resp = await asyncio.to_thread(via_httpx, running.url, world.ca.client_context(), "GET", url)
    assert resp.status_code == 200
    echo = resp.json()
    assert echo["tls"] is True
    assert echo["server"] == f"127.0.0.3:{world.tls.port}"
    assert echo["path"] == "/echo?q=1"
    stats = running.proxy.stats
    assert stats.connections == 1
    assert stats.bytes_received > len(resp.content)
    assert stats.bytes_sent > 0
    assert running.refusals == []
    assert connects.upstream == [("127.0.0.3", world.tls.port)]


async def test_connect_tls_with_curl(start: Start, world: World) -> None:
    running = await start()
    code, out, err = await curl("--proxy", running.url, "--cacert", str(world.ca.ca_cert),
                                f"https://files.example.test:{world.tls.port}/echo")
    assert code == 0, err
    assert json.loads(out)["tls"] is True
    # The certificate names 127.0.0.3 too: a CONNECT to the IP literal verifies as well.
    code, out, err = await curl("--proxy", running.url, "--cacert", str(world.ca.ca_cert),
                                f"https://127.0.0.3:{world.tls.port}/echo")
    assert code == 0, err
    assert json.loads(out)["server"] == f"127.0.0.3:{world.tls.port}"


# -- absolute-form HTTP --

async def test_plain_get_strips_hop_by_hop_headers(start: Start, world: World) -> None:
    running = await start()
    head = "\r\n".join([
        f"GET http://plain.example.test:{world.a.port}/echo?x=1 HTTP/1.1", "Host: evil.example.test",
        "X-Kept: yes", "X-Hop: 1", "Connection: X-Hop, keep-alive, close, Content-Length", "Keep-Alive: timeout=5",
        "Proxy-Authorization: Basic c2FuZGJveDpwdw==", "Proxy-Connection: keep-alive", "TE: trailers",
        "Trailer: X-T", "Upgrade: websocket", "Content-Length: 5", "", "hello",
    ])
    reply = parse(await exchange(running.port, head.encode()))
    assert reply.status == 200
    echo = reply.json()
    assert echo["path"] == "/echo?x=1"
    assert echo["headers"]["host"] == f"plain.example.test:{world.a.port}"
    assert echo["headers"]["x-kept"] == "yes"
    for gone in ("x-hop", "connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
                 "upgrade"):
        assert gone not in echo["headers"], gone
    assert [n for n, _ in echo["header_list"] if n.lower() == "host"] == ["host"]
    assert echo["body"] == "hello"  # a Connection header cannot take the framing away


async def test_post_bodies_are_streamed(start: Start, world: World) -> None:
    running = await start()
    url = f"http://files.example.test:{world.b.port}/echo"
    chunks = [os.urandom(n) for n in (1, 1000, 70_000, 3)]
    client = await HttpClient.connect(running.port)
    try:
        chunked = (await client.request("POST", url, body=chunks)).json()
        plain = (await client.request("PUT", url, body=b"".join(chunks))).json()
    finally:
        client.close()
    whole = b"".join(chunks)
    assert chunked["chunked"] is True
    assert plain["chunked"] is False
    for echo in (chunked, plain):
        assert echo["body_length"] == len(whole)
        assert echo["body_sha256"] == hashlib.sha256(whole).hexdigest()

    big = os.urandom(3 * 1024 * 1024)
    gen = (big[i:i + 100_000] for i in range(0, len(big), 100_000))
    resp = await asyncio.to_thread(via_httpx, running.url, world.ca.client_context(), "POST", url, content=gen)
    assert resp.json()["chunked"] is True
    assert resp.json()["body_sha256"] == hashlib.sha256(big).hexdigest()


async def test_expect_100_continue_with_curl(start: Start, world: World, tmp_path: Path) -> None:
    running = await start()
    data = tmp_path / "body"
    data.write_bytes(os.urandom(200_000))
    code, out, err = await curl("--proxy", running.url, "-H", "Expect: 100-continue", "--data-binary", f"@{data}",
                                f"http://plain.example.test:{world.a.port}/echo")
    assert code == 0, err
    assert json.loads(out)["body_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert "expect" not in json.loads(out)["headers"]


async def test_keep_alive_across_hosts_reuses_upstreams(start: Start, world: World, connects: Connects) -> None:
    running = await start()
    client = await HttpClient.connect(running.port)
    try:
        servers = [(await client.request("GET", url)).json()["server"] for url in (
            f"http://plain.example.test:{world.a.port}/echo",
            f"http://files.example.test:{world.b.port}/echo",
            f"http://plain.example.test:{world.a.port}/echo",
            f"http://files.example.test:{world.b.port}/echo",
        )]
        head = await client.request("HEAD", f"http://plain.example.test:{world.a.port}/bytes/100")
        body = await client.request("GET", f"http://plain.example.test:{world.a.port}/bytes/3000000?chunked=1")
    finally:
        client.close()
    a, b = f"127.0.0.2:{world.a.port}", f"127.0.0.3:{world.b.port}"
    assert servers == [a, b, a, b]
    assert (head.status, head.headers["content-length"], head.body) == (200, "100", b"")
    assert body.body == pattern(3_000_000)
    assert running.proxy.stats.connections == 2  # one per (scheme, host, port), reused
    assert connects.upstream == [("127.0.0.2", world.a.port), ("127.0.0.3", world.b.port)]


async def test_pipelined_and_http10_requests(start: Start, world: World) -> None:
    running = await start()
    target = f"http://plain.example.test:{world.a.port}/echo"
    two = (f"GET {target}?1 HTTP/1.1\r\nHost: x\r\n\r\nGET {target}?2 HTTP/1.1\r\nHost: x\r\n"
           "Connection: close\r\n\r\n").encode()
    data = await exchange(running.port, two)
    assert data.count(b"HTTP/1.1 200 ") == 2
    assert b'"/echo?1"' in data
    assert b'"/echo?2"' in data
    reply = parse(await exchange(running.port, f"GET {target} HTTP/1.0\r\n\r\n".encode()))
    assert reply.status == 200


async def test_redirect_is_passed_back_and_its_target_checked_on_its_own(start: Start, world: World) -> None:
    running = await start()
    reply = await ask(running.port, f"GET http://plain.example.test:{world.a.port}/redirect?to="
                                    "http://evil.example.test/steal")
    assert reply.status == 302
    assert reply.headers["location"] == "http://evil.example.test/steal"
    assert_refused(await ask(running.port, "GET http://evil.example.test/steal"), 403, "host_not_allowed", running)


# -- refusals, each before any connect --

REFUSED = [
    ("CONNECT unlisted.example.test:443", 403, "host_not_allowed", "", "unlisted.example.test:443"),
    ("CONNECT files.example.test:1", 403, "port_not_allowed", "", "files.example.test:1"),
    ("CONNECT 127.0.0.5:{a}", 403, "host_not_allowed", "", "127.0.0.5:{a}"),
    ("CONNECT [::1]:{a}", 403, "host_not_allowed", "", "[::1]:{a}"),
    ("GET http://127.0.0.2:{b}/echo", 403, "port_not_allowed", "", "127.0.0.2:{b}"),
    ("CONNECT 2130706433:{a}", 400, "bad_host", "", "2130706433:{a}"),
    ("GET http://0x7f.1:{a}/echo", 400, "bad_host", "", "0x7f.1:{a}"),
    ("GET http://127.1:{a}/echo", 400, "bad_host", "", "127.1:{a}"),
    ("CONNECT 224.0.0.1:80", 403, "multicast", "224.0.0.1", "224.0.0.1:80"),
    ("GET http://meta.example.test/latest/meta-data/", 403, "metadata_or_link_local", "169.254.169.254",
     "meta.example.test:80"),
    ("CONNECT meta.example.test:80", 403, "metadata_or_link_local", "169.254.169.254", "meta.example.test:80"),
    ("GET http://nowhere.example.test/", 502, "unresolvable", "", "nowhere.example.test:80"),
    ("CONNECT api.example.test:{tls}", 403, "credentials_need_http", "", "api.example.test:{tls}"),
    ("GET /echo", 400, "bad_request", "", ":0"),
    ("OPTIONS *", 400, "bad_request", "", ":0"),
    ("GET https://files.example.test:{tls}/echo", 400, "bad_request", "", "files.example.test:{tls}"),
    ("GET ftp://files.example.test/x", 400, "bad_request", "", "files.example.test:80"),
    ("GET http://user:pw@files.example.test:{b}/echo", 400, "bad_request", "", "files.example.test:{b}"),
    ("CONNECT files.example.test", 400, "bad_request", "", ":0"),
    ("CONNECT files.example.test:99999", 400, "bad_request", "", ":0"),
]


@pytest.mark.parametrize(("line", "status", "reason", "address", "shown"), REFUSED)
async def test_refused_before_any_connect(start: Start, world: World, connects: Connects, line: str, status: int,
                                          reason: str, address: str, shown: str) -> None:
    running = await start()
    ports = {"a": world.a.port, "b": world.b.port, "tls": world.tls.port}
    reply = await ask(running.port, line.format(**ports))
    assert_refused(reply, status, reason, running, address)
    assert reply.body == f"egress refused: {reason} ({shown.format(**ports)})\n".encode()
    assert connects.upstream == []
    assert (running.proxy.stats.refusals, running.proxy.stats.connections) == (1, 0)


async def test_server_port_refused_even_when_named(start: Start, world: World, connects: Connects) -> None:
    running = await start(rules=world.rules(server_ports=frozenset({world.a.port})))
    assert_refused(await ask(running.port, f"CONNECT 127.0.0.2:{world.a.port}"), 403, "server_port", running,
                   "127.0.0.2")
    assert_refused(await ask(running.port, f"GET http://plain.example.test:{world.a.port}/echo"), 403,
                   "server_port", running, "127.0.0.2")
    assert connects.upstream == []


async def test_refusal_is_logged_without_secrets(start: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sandbox_server.egress")
    running = await start()
    await ask(running.port, "GET http://meta.example.test/")
    [record] = [r for r in caplog.records if r.getMessage() == "egress refused"]
    assert record.name == "sandbox_server.egress"
    fields = {k: getattr(record, k) for k in ("host", "port", "reason", "address")}
    assert fields == {"host": "meta.example.test", "port": 80, "reason": "metadata_or_link_local",
                      "address": "169.254.169.254"}


class SequenceResolver:
    """Answers in turn (the last one repeats): a name that rebinds between lookups."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = [[ip(a) for a in answer] for answer in answers]
        self.asked = 0

    async def resolve(self, host: str) -> list[IPAddress]:
        self.asked += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


async def test_rebinding_is_checked_on_what_is_connected(start: Start, world: World, connects: Connects) -> None:
    resolver = SequenceResolver(["127.0.0.2"], ["127.0.0.9"], ["127.0.0.2", "127.0.0.9"])
    rules = world.rules(AllowEntry("rebind.example.test", (world.a.port,)))
    running = await start(rules=rules, resolver=resolver)
    url = f"http://rebind.example.test:{world.a.port}/echo"
    assert (await ask(running.port, f"GET {url}")).json()["server"] == f"127.0.0.2:{world.a.port}"
    assert_refused(await ask(running.port, f"GET {url}"), 403, "loopback_address", running, "127.0.0.9")
    # One refused address in an answer refuses the request: the allowed one is not tried either.
    assert_refused(await ask(running.port, f"CONNECT rebind.example.test:{world.a.port}"), 403, "loopback_address",
                   running, "127.0.0.9")
    assert resolver.asked == 3
    assert connects.upstream == [("127.0.0.2", world.a.port)]


async def test_unreachable_and_timed_out_upstreams(start: Start, world: World, connects: Connects) -> None:
    dead = free_port("127.0.0.2")
    running = await start(rules=world.rules(AllowEntry("127.0.0.2", (dead,))), connect_timeout_s=0.3)
    assert_refused(await ask(running.port, f"CONNECT 127.0.0.2:{dead}"), 502, "upstream_unreachable", running,
                   "127.0.0.2")
    connects.hang.add("127.0.0.2")
    assert_refused(await ask(running.port, f"CONNECT 127.0.0.2:{world.a.port}"), 504, "upstream_timeout", running,
                   "127.0.0.2")


# -- credentials --

async def test_credentials_are_injected_over_tls(start: Start, world: World,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sandbox_server.egress")
    secret = "sk-test-" + os.urandom(12).hex()
    secrets = SecretSource(environ={SECRET_ENV: secret})
    running = await start(secrets=secrets)
    verify = world.ca.client_context()
    for url in (f"http://api.example.test:{world.tls.port}/echo", "http://api.example.test/echo"):
        resp = await asyncio.to_thread(via_httpx, running.url, verify, "GET", url,
                                       headers={"Authorization": "Basic cHJvZ3JhbTpwdw=="})
        echo = resp.json()
        assert (echo["tls"], echo["server"]) == (True, f"127.0.0.3:{world.tls.port}")
        assert echo["headers"]["authorization"] == f"Bearer {secret}"
        assert [n for n, _ in echo["header_list"] if n.lower() == "authorization"] == ["Authorization"]
        assert echo["headers"]["host"] == f"api.example.test:{world.tls.port}"
    assert running.proxy.redactions() == [secret]
    assert secrets.known_values() == [secret]
    # Refusals around the credentialed host carry no secret either.
    assert_refused(await ask(running.port, f"CONNECT api.example.test:{world.tls.port}"), 403,
                   "credentials_need_http", running)
    assert secret not in caplog.text
    for record in caplog.records:
        assert secret not in repr(vars(record))


async def test_missing_credential_and_untrusted_upstream(start: Start, world: World,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sandbox_server.egress")
    running = await start()
    url = f"http://api.example.test:{world.tls.port}/echo"
    assert_refused(await ask(running.port, f"GET {url}"), 502, "credential_unavailable", running)
    assert getattr(caplog.records[-1], "detail") == f"environment variable {SECRET_ENV} is not set"  # noqa: B009

    # The onward TLS is verified: an upstream the proxy's context does not trust gets nothing.
    other_ca = make_test_ca(world.ca.directory.parent / "other-ca")
    secrets = SecretSource(environ={SECRET_ENV: "never-sent"})
    running = await start(secrets=secrets, ssl_context=other_ca.client_context())
    assert_refused(await ask(running.port, f"GET {url}"), 502, "upstream_tls", running, "127.0.0.3")
    assert all("never-sent" not in r.path for r in world.tls.requests)


# -- limits --

async def test_byte_limit_cuts_a_download_and_everything_after(start: Start, world: World) -> None:
    limit = 400_000
    running = await start(limits=EgressLimits(max_bytes=limit, max_connections=100, connections_per_s=100.0))
    tunnel_reader, tunnel_writer = await open_tunnel(running.port, f"127.0.0.2:{world.a.port}")
    try:
        data = await exchange(running.port, f"GET http://plain.example.test:{world.a.port}/bytes/2000000 HTTP/1.1"
                                            "\r\nHost: x\r\n\r\n".encode(), half_close=False)
        assert data.startswith(b"HTTP/1.1 200 ")
        assert len(data) < limit
        stats = running.proxy.stats
        assert stats.limit_exceeded == "egress_bytes"
        assert stats.bytes_sent + stats.bytes_received <= limit
        # The limit is the whole proxy's: the open tunnel was closed too, and new requests are refused.
        assert await asyncio.wait_for(tunnel_reader.read(), 5) == b""
    finally:
        tunnel_writer.close()
    assert_refused(await ask(running.port, f"GET http://plain.example.test:{world.a.port}/echo"), 403,
                   "egress_bytes", running)


async def test_zero_bytes_allows_nothing(start: Start, world: World, connects: Connects) -> None:
    running = await start(limits=EgressLimits(max_bytes=0, max_connections=10, connections_per_s=10.0))
    assert_refused(await ask(running.port, f"CONNECT 127.0.0.2:{world.a.port}"), 403, "egress_bytes", running)
    assert connects.upstream == []


async def test_connection_count_limit(start: Start, world: World) -> None:
    running = await start(limits=EgressLimits(max_bytes=10**9, max_connections=2, connections_per_s=100.0))
    url = f"http://plain.example.test:{world.a.port}/echo"
    for _ in range(2):
        assert (await ask(running.port, f"GET {url}")).status == 200
    assert_refused(await ask(running.port, f"GET {url}"), 403, "connections", running)
    assert running.proxy.stats.limit_exceeded == "connections"


async def test_connection_rate_limit(start: Start, world: World) -> None:
    running = await start(limits=EgressLimits(max_bytes=10**9, max_connections=100, connections_per_s=1.0))
    url = f"http://plain.example.test:{world.a.port}/echo"
    assert (await ask(running.port, f"GET {url}")).status == 200
    assert_refused(await ask(running.port, f"GET {url}"), 429, "connection_rate", running)
    assert running.proxy.stats.limit_exceeded == "connection_rate"


async def test_connections_open_at_once_are_bounded(start: Start, world: World) -> None:
    """Each open connection holds the server's descriptors: past MAX_OPEN_CLIENTS at once, new ones are closed
    unread, and the proxy serves again once they are gone."""
    running = await start(limits=EgressLimits(max_bytes=10**9, max_connections=10_000, connections_per_s=10_000.0))
    idle = [await asyncio.open_connection("127.0.0.1", running.port) for _ in range(MAX_OPEN_CLIENTS)]
    try:
        await asyncio.sleep(0.2)  # every one accepted, each waiting for its request head
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed unread
        writer.close()
        assert running.proxy.stats.limit_exceeded == "open_connections"
    finally:
        for _, w in idle:
            w.close()
    await asyncio.sleep(0.2)
    assert (await ask(running.port, f"GET http://plain.example.test:{world.a.port}/echo")).status == 200


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="negative"):
        EgressLimits(max_bytes=-1, max_connections=1, connections_per_s=1.0)
    with pytest.raises(ValueError, match="negative"):
        EgressLimits(max_bytes=1, max_connections=1, connections_per_s=float("nan"))


# -- what the sandbox sends cannot hurt the proxy --

GARBAGE = [
    b"\x00\x01\x02\xff\r\n\r\n",
    b"HELLO\r\n\r\n",
    b"GET http://plain.example.test/ HTTP/9.9\r\n\r\n",
    b"GET http://plain.example.test/ HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"GET http://plain.example.test/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET http://plain.example.test/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"GET http://plain.example.test/ HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET http://pl\xe4in.example.test/ HTTP/1.1\r\nHost: a\r\n\r\n",
    b"CONNECT \x7f:1 HTTP/1.1\r\n\r\n",
]


async def test_garbage_gets_400_or_a_close(start: Start, world: World) -> None:
    running = await start()
    rng = random.Random(20240611)
    valid = f"POST http://plain.example.test:{world.a.port}/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked" \
            "\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    payloads = list(GARBAGE)
    payloads += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(20)]
    for _ in range(30):
        mutated = bytearray(valid.encode())
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        payloads.append(bytes(mutated))
    for payload in payloads:
        data = await exchange(running.port, payload)
        assert data == b"" or parse(data).status in (200, 400, 403, 502), (payload, data[:200])
    for payload in GARBAGE[:7]:
        assert parse(await exchange(running.port, payload)).status == 400
    assert not running.proxy._accepting.done()  # type: ignore[union-attr]
    assert (await ask(running.port, f"GET http://plain.example.test:{world.a.port}/echo")).status == 200


async def test_a_body_framed_two_ways_is_refused_never_forwarded(start: Start, world: World) -> None:
    """Request smuggling: an upstream framing by Content-Length would read the chunked body's rest as a request
    of the sandbox's own, past every check (RFC 9112 6.3)."""
    running = await start()
    before = len(world.a.requests)
    smuggled = (f"POST http://plain.example.test:{world.a.port}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                "Transfer-Encoding: chunked\r\n\r\n31\r\nGET /smuggled HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n\r\n"
                "0\r\n\r\n").encode()
    assert parse(await exchange(running.port, smuggled)).status == 400
    twice = (f"POST http://plain.example.test:{world.a.port}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
             "Content-Length: 6\r\n\r\nhello!").encode()
    assert parse(await exchange(running.port, twice)).status == 400
    assert len(world.a.requests) == before


async def test_request_head_size_limit(start: Start, world: World) -> None:
    running = await start()
    url = f"http://plain.example.test:{world.a.port}/echo"
    assert_refused(await ask(running.port, f"GET {url}", "X-Big: " + "a" * 70_000), 431, "headers_too_large", running)
    assert (await ask(running.port, f"GET {url}", "X-Big: " + "a" * 60_000)).status == 200


async def test_idle_tunnel_is_closed(start: Start, world: World) -> None:
    running = await start(idle_timeout_s=0.3)
    reader, writer = await open_tunnel(running.port, f"127.0.0.2:{world.a.port}")
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_aclose_ends_open_tunnels_and_connections(start: Start, world: World) -> None:
    running = await start()
    tunnels = [await open_tunnel(running.port, f"127.0.0.2:{world.a.port}") for _ in range(3)]
    reader, writer = tunnels[0]
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
    idle = await HttpClient.connect(running.port)
    assert (await idle.request("GET", f"http://plain.example.test:{world.a.port}/echo")).status == 200
    started = time.monotonic()
    await running.proxy.aclose()
    assert time.monotonic() - started < 2
    for reader, writer in tunnels:
        await asyncio.wait_for(reader.read(), 2)
        assert reader.at_eof()
        writer.close()
    assert await asyncio.wait_for(idle.reader.read(), 2) == b""
    idle.close()
    assert not running.proxy._tasks
    await running.proxy.aclose()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", running.port)


# -- the secret source --

def test_secrets_file_must_be_private_and_is_reread(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    path.write_text("api_key: first-value\n")
    path.chmod(0o644)
    source = SecretSource(secrets_file=path)
    with pytest.raises(SecretsFileError, match="0644"):
        source.value(API_KEY)
    path.chmod(0o600)
    assert source.value(API_KEY) == "first-value"
    path.write_text("api_key: second-value\nother: x\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert source.value(API_KEY) == "second-value"
    assert source.known_values() == ["second-value"]
    with pytest.raises(CredentialMissing, match="'missing'"):
        source.value(MISSING_KEY)


def test_secrets_file_errors_never_quote_the_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    path.write_text("api_key: [unclosed sk-live-123\n")
    path.chmod(0o600)
    with pytest.raises(SecretsFileError) as caught:
        SecretSource(secrets_file=path).value(API_KEY)
    assert "sk-live" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    path.write_text("api_key: [sk-live-123]\n")
    with pytest.raises(SecretsFileError, match="'api_key' is not a string") as caught:
        SecretSource(secrets_file=path).value(API_KEY)
    assert "sk-live" not in str(caught.value)
    with pytest.raises(SecretsFileError, match="no secrets file"):
        SecretSource().value(API_KEY)


def test_secrets_json_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"k": "json-value"}))
    path.chmod(0o400)
    source = SecretSource(secrets_file=path, environ={"TOKEN": "env-value"})
    assert source.value(JSON_KEY) == "json-value"
    assert source.value(Credential("X-T", env="TOKEN")) == "env-value"
    with pytest.raises(CredentialMissing, match="environment variable UNSET is not set"):
        source.value(Credential("X-T", env="UNSET"))
    assert sorted(source.known_values()) == ["env-value", "json-value"]


# -- resolvers --

async def test_static_resolver() -> None:
    fallback = StaticResolver({"other.test": ["127.0.0.4"]})
    resolver = StaticResolver({"A.Example.test.": ["127.0.0.2", "::1", "127.0.0.2"], "empty.test": []},
                              fallback=fallback)
    assert await resolver.resolve("a.example.test") == [ip("127.0.0.2"), ip("::1")]
    assert await resolver.resolve("other.test") == [ip("127.0.0.4")]
    for bad in ("unknown.test", "empty.test", "127.0.0.1", "2130706433"):
        with pytest.raises(ResolveError):
            await resolver.resolve(bad)
    with pytest.raises(ValueError, match="IP literal"):
        StaticResolver({"127.0.0.1": ["127.0.0.1"]})


async def test_system_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    calls: list[str] = []
    answer: list[Any] = []

    async def fake_getaddrinfo(host: str, port: Any, **kwargs: Any) -> list[Any]:
        calls.append(host)
        if host == "slow.test":
            await asyncio.sleep(10)
        if host == "fail.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answer

    monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
    resolver = SystemResolver(timeout_s=0.1)
    for literal in ("127.0.0.1", "2130706433", "0x7f.1", "[::1]", "bad_name.test"):
        with pytest.raises(ResolveError):
            await resolver.resolve(literal)
    assert calls == []  # never handed to getaddrinfo, which would read them as addresses
    inet, inet6 = socket.AF_INET, socket.AF_INET6
    answer[:] = [(inet, 1, 6, "", ("127.0.0.2", 0)), (inet6, 1, 6, "", ("::1", 0, 0, 0)),
                 (inet, 1, 6, "", ("127.0.0.2", 0))]
    assert await resolver.resolve("Name.Test.") == [ip("127.0.0.2"), ip("::1")]
    assert calls == ["name.test"]
    with pytest.raises(ResolveError, match="longer than"):
        await resolver.resolve("slow.test")
    with pytest.raises(ResolveError, match="cannot resolve"):
        await resolver.resolve("fail.test")
    answer.clear()
    with pytest.raises(ResolveError, match="no address"):
        await resolver.resolve("empty.test")


async def test_resolver_failure_refuses(start: Start, world: World) -> None:
    class Broken:
        async def resolve(self, host: str) -> list[IPAddress]:
            raise RuntimeError("resolver bug")

    running = await start(resolver=Broken())
    assert_refused(await ask(running.port, f"GET http://plain.example.test:{world.a.port}/echo"), 502,
                   "unresolvable", running)

