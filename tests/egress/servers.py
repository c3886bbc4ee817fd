"""Upstreams for egress tests: plain HTTP and HTTPS servers on 127.0.0.x (Linux routes all of 127/8 to lo, so
127.0.0.2 and 127.0.0.3 are addresses of their own without any setup) on ephemeral ports, and a test CA made
with the ``openssl`` CLI. Each server runs the stdlib's ``http.server`` in a thread of its own, so it works the
same from synchronous and asyncio tests.

Endpoints (any method unless said):

- ``/echo...``: the request as JSON: method, path, headers (lower-case names; repeats joined with ", "), the
  header list as sent, body length, SHA-256 and (up to 64 KiB, as UTF-8) text, whether it came chunked, the
  server's address and whether it was TLS.
- ``/bytes/N``: N bytes of :func:`pattern` (``?chunked=1``: in chunks rather than with a Content-Length).
- ``/redirect?to=URL``: 302 to URL.

Usage::

    ca = make_test_ca(tmp_path / "ca")
    with running_upstream("127.0.0.3", tls=ca.server_context()) as up:
        ...  # up.url, up.port, up.requests
"""

from __future__ import annotations

import hashlib
import json
import secrets
import ssl
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "DEFAULT_IPS",
    "DEFAULT_NAMES",
    "CertificateAuthority",
    "RecordedRequest",
    "Upstream",
    "make_test_ca",
    "pattern",
    "running_upstream",
]

DEFAULT_NAMES = ("api.example.test", "files.example.test")
DEFAULT_IPS = ("127.0.0.3",)
MAX_BODY = 64 * 1024 * 1024
ECHO_BODY_CHARS = 64 * 1024
_BLOCK = bytes(range(256)) * 256  # 64 KiB


def pattern(n: int) -> bytes:
    """The first ``n`` bytes ``/bytes/N`` serves."""
    whole, rest = divmod(n, len(_BLOCK))
    return _BLOCK * whole + _BLOCK[:rest]


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA and one server certificate it signed, as PEM files in ``directory``."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    names: tuple[str, ...]
    ips: tuple[str, ...]

    def client_context(self) -> ssl.SSLContext:
        """Verifies servers against this CA only (hostname checks on)."""
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.server_cert), str(self.server_key))
        return ctx


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def make_test_ca(directory: Path, names: tuple[str, ...] = DEFAULT_NAMES,
                 ips: tuple[str, ...] = DEFAULT_IPS) -> CertificateAuthority:
    """A fresh CA (P-256, a week's validity) and a server certificate for ``names`` and ``ips``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert, ext = (directory / n for n in ("server.key", "server.csr", "server.crt", "server.ext"))
    _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", ca_key, "-out", ca_cert, "-days", "7", "-subj", "/CN=sandbox-server egress test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={names[0] if names else ips[0]}")
    alt_names = ",".join([f"DNS:{n}" for n in names] + [f"IP:{i}" for i in ips])
    ext.write_text(f"subjectAltName={alt_names}\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-set_serial",
             str(secrets.randbits(63)), "-days", "7", "-sha256", "-extfile", ext, "-out", cert)
    return CertificateAuthority(directory, ca_cert, ca_key, cert, key, tuple(names), tuple(ips))


@dataclass(frozen=True)
class RecordedRequest:
    """What a server received (``headers``: lower-case names, repeats joined with ", ")."""

    method: str
    path: str
    headers: Mapping[str, str]
    header_list: tuple[tuple[str, str], ...]
    body_length: int
    tls: bool


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.host = address[0]
        self.recorded: list[RecordedRequest] = []
        self.lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS in the connection's own thread: a client stalling its handshake holds up nobody else.
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(10)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: a test's output is its assertions

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        try:
            body, chunked = self._body()
        except (ValueError, OSError):
            self.close_connection = True
            self._reply(400, b"bad body\n")
            return
        with self.server.lock:
            self.server.recorded.append(RecordedRequest(self.command, self.path, self._headers(),
                                                        tuple(self.headers.items()), len(body),
                                                        self.server.tls is not None))
        url = urlsplit(self.path)
        if url.path.startswith("/echo"):
            self._echo(body, chunked)
        elif url.path.startswith("/bytes/"):
            self._bytes(int(url.path.removeprefix("/bytes/")), parse_qs(url.query).get("chunked") == ["1"])
        elif url.path == "/redirect":
            target = parse_qs(url.query).get("to", ["/"])[0]
            self._reply(302, b"redirecting\n", [("Location", target)])
        else:
            self._reply(404, b"not found\n")

    def _body(self) -> tuple[bytes, bool]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts), True
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length), False

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return headers

    def _echo(self, body: bytes, chunked: bool) -> None:
        headers = self._headers()
        host, port = self.server.host, self.server.server_address[1]
        echo = {
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "header_list": [[n, v] for n, v in self.headers.items()],
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body": body[:ECHO_BODY_CHARS].decode("utf-8", "replace"),
            "chunked": chunked,
            "server": f"{host}:{port}",
            "tls": self.server.tls is not None,
        }
        self._reply(200, json.dumps(echo).encode(), [("Content-Type", "application/json")])

    def _bytes(self, n: int, chunked: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding" if chunked else "Content-Length", "chunked" if chunked else str(n))
        self.end_headers()
        if self.command == "HEAD":
            return
        sent = 0
        while sent < n:
            piece = _BLOCK[: min(len(_BLOCK), n - sent)]
            self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece)
            sent += len(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        for name, value in headers or []:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@dataclass
class Upstream:
    """A running test server."""

    host: str
    port: int
    tls: bool
    _server: _Server = field(repr=False)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._server.lock:
            return list(self._server.recorded)


@contextmanager
def running_upstream(host: str = "127.0.0.2", *, tls: ssl.SSLContext | None = None) -> Iterator[Upstream]:
    """An HTTP (or, with ``tls``, HTTPS) server on ``host`` and an ephemeral port, until the block ends."""
    server = _Server((host, 0), tls)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"upstream-{host}", daemon=True)
    thread.start()
    try:
        yield Upstream(host, server.server_address[1], tls is not None, server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
