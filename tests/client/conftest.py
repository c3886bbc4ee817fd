"""Fixtures for the client tests: one fake Sandbox server (fake_sandbox.py) per session, and clients.

The ``client``/``aclient`` fixtures pin what goes on the wire and how each status maps to an exception, one
attempt per call: they retry nothing and have no circuit breaker (test_client_resilience.py tests those).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from fake_sandbox import API_KEY, CLIENT_TIMEOUT_S, FakeSandbox, FakeServer, serve_in_thread

from sandbox_client import AsyncSandboxClient, SandboxClient


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeServer]:
    with serve_in_thread(FakeSandbox()) as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeServer) -> FakeSandbox:
    """The fake's servicer, reset: no calls seen, nothing scripted."""
    fake_server.servicer.reset()
    return fake_server.servicer


@pytest.fixture
def client(fake_server: FakeServer, fake: FakeSandbox) -> Iterator[SandboxClient]:
    with SandboxClient(fake_server.target, api_key=API_KEY, timeout=CLIENT_TIMEOUT_S, retry=None, breaker=None) as sbx:
        yield sbx


@pytest.fixture
async def aclient(fake_server: FakeServer, fake: FakeSandbox) -> AsyncIterator[AsyncSandboxClient]:
    async with AsyncSandboxClient(
        fake_server.target, api_key=API_KEY, timeout=CLIENT_TIMEOUT_S, retry=None, breaker=None
    ) as sbx:
        yield sbx
