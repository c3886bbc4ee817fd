"""Fixtures for the adapter tests: one real sandbox server (nsjail, loopback) for the module, and clients; and a
server whose tenant has a network, with the upstream it allows, for the adapters' ``network`` setting."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from adapter_helpers import NETWORK_POLICY, server_with_policy

from sandbox_client import SandboxClient
from sandbox_server.testing import RunningServer, server_in_thread


@pytest.fixture(scope="session")
def adapter_server() -> Iterator[RunningServer]:
    """The default tenant's policy (static validation on, the usual limits). Incident response is off: the
    tests' deliberate timeouts and refused programs would otherwise throttle or quarantine this shared server
    (test_quarantine_is_explained runs one of its own)."""
    with server_in_thread(max_running=4, max_queued=32, incidents={"enabled": False}) as srv:
        yield srv


@pytest.fixture
def adapter_client(adapter_server: RunningServer) -> Iterator[SandboxClient]:
    with SandboxClient(adapter_server.target, timeout=60) as client:
        yield client


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass  # no line on stderr per probe


@pytest.fixture(scope="session")
def upstream_port() -> Iterator[int]:
    """The port of an HTTP server on 127.0.0.2 (loopback) that ``network_server``'s tenant allows."""
    with ThreadingHTTPServer(("127.0.0.2", 0), _Ok) as upstream:
        thread = threading.Thread(target=upstream.serve_forever, daemon=True)
        thread.start()
        try:
            yield upstream.server_address[1]
        finally:
            upstream.shutdown()
            thread.join(5)


@pytest.fixture(scope="session")
def network_server(tmp_path_factory: pytest.TempPathFactory, upstream_port: int) -> Iterator[RunningServer]:
    """A server whose default tenant has a network (``NETWORK_POLICY``). Incident response is off: the probes'
    refused requests would otherwise count towards an incident."""
    with server_with_policy(tmp_path_factory.mktemp("network"), NETWORK_POLICY.format(port=upstream_port),
                            incidents={"enabled": False}) as srv:
        yield srv


@pytest.fixture
def network_client(network_server: RunningServer) -> Iterator[SandboxClient]:
    with SandboxClient(network_server.target, timeout=60) as client:
        yield client
