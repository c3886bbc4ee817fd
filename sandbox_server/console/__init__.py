"""The operators' web console (docs/console.md): a front end of the Admin API, served by the server process.

uvicorn runs the Starlette app inside the server's own event loop (a task), on its own port (``console_port``,
loopback by default), with the server's TLS certificate when it has one. Every action is an Admin API call made
over gRPC to this same server with the signed-in operator's key (``admin_calls``). The app starts after the gRPC
server (its calls need it) and stops before the gRPC server drains.

Modules: auth (sessions, cookies, CSRF), admin_calls (the gRPC calls), pages (routes), live (server-sent
events), charts (SVG), web (templates, security headers, forms); templates/ and static/ are package data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import uvicorn

from sandbox_server.console.admin_calls import Upstream
from sandbox_server.console.auth import Cookies, SessionStore
from sandbox_server.console.pages import ConsoleState, build_app
from sandbox_server.console.web import Templates
from sandbox_server.server import forward_credentials
from sandbox_server.settings import WILDCARD_HOSTS, Settings, is_loopback

log = logging.getLogger(__name__)

ADMIN_THREADS = 8
"""Admin API calls in flight from the console at once (each blocks one of these threads)."""
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
GRACEFUL_S = 1
"""How long open requests may finish at stop; live streams end at once."""

__all__ = ["Console", "admin_target"]


def _bracketed(host: str) -> str:
    bare = host.strip("[]")
    return f"[{bare}]" if ":" in bare else bare


def admin_target(settings: Settings, grpc_port: int) -> str:
    """Where the console calls the Admin API: the server's own port, on loopback when it listens everywhere."""
    host = settings.host
    if host in WILDCARD_HOSTS:
        host = "::1" if host.strip("[]") == "::" else "127.0.0.1"
    return f"{_bracketed(host)}:{grpc_port}"


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: SIGTERM and SIGINT stay the App's (drain, then stop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Console:
    def __init__(self, settings: Settings, grpc_port: int) -> None:
        self.settings = settings
        self.tls = settings.tls_cert_file is not None
        self.port = 0
        self._executor = ThreadPoolExecutor(max_workers=ADMIN_THREADS, thread_name_prefix="console-admin")
        upstream = Upstream(admin_target(settings, grpc_port), forward_credentials(settings), self._executor)
        self.state = ConsoleState(sessions=SessionStore(), cookies=Cookies(secure=self.tls), upstream=upstream,
                                  templates=Templates(), dev_mode=settings.dev_mode)
        self.app = build_app(self.state, settings.console_host)
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{_bracketed(self.settings.console_host)}:{self.port}/"

    def describe(self) -> str:
        """One line for the start-up banner."""
        if self.settings.dev_mode:
            return (f"{self.url} (DEVELOPMENT MODE: no API keys, so nobody can sign in; the console needs a server "
                    "with API keys and an admin key)")
        line = f"{self.url} (sign in with an admin API key)"
        if not self.tls and not is_loopback(self.settings.console_host):
            line += " WARNING: plaintext on a non-loopback address: admin keys cross the network unencrypted"
        return line

    def _socket(self) -> socket.socket:
        host = self.settings.console_host.strip("[]") or "0.0.0.0"  # noqa: S104 - the operator's choice
        port = self.settings.console_port or 0
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _config(self) -> uvicorn.Config:
        s = self.settings
        cert = str(s.tls_cert_file) if s.tls_cert_file is not None else None
        key = str(s.tls_key_file) if s.tls_key_file is not None else None
        # mTLS on the server: the console asks browsers for a client certificate from the same CA.
        client_ca = str(s.tls_client_ca_file) if cert is not None and s.tls_client_ca_file is not None else None
        return uvicorn.Config(
            self.app, lifespan="off", log_config=None, access_log=False, server_header=False, http="h11",
            ws="none", interface="asgi3", proxy_headers=False, timeout_graceful_shutdown=GRACEFUL_S,
            ssl_certfile=cert, ssl_keyfile=key, ssl_ca_certs=client_ca,
            ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca is not None else ssl.CERT_NONE,
        )

    async def start(self) -> None:
        """Bind the port (console_port 0 picks one: ``port``) and serve; returns once requests are answered."""
        sock = self._socket()
        self.port = sock.getsockname()[1]
        # uvicorn's own start and stop lines would speak of a "server process": the console logs its own.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server = _Server(self._config())
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="console")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while not self._server.started:
            if self._task.done():
                sock.close()
                self._task.result()  # its exception
                raise RuntimeError("the console stopped while starting")
            if loop.time() > deadline:
                await self.stop()
                raise RuntimeError(f"the console did not start within {START_TIMEOUT_S:g} s")
            await asyncio.sleep(0.01)
        log.info("console serving", extra={"event": "console_started", "url": self.url})

    async def stop(self) -> None:
        """End live streams and sessions, stop serving. Never raises: the server's own stop goes on."""
        self.state.closing.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, STOP_TIMEOUT_S)
            except Exception:
                log.exception("the console did not stop cleanly")
        self.state.sessions.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
