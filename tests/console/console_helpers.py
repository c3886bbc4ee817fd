"""Shared by the console tests: a real server with its console on, API keys in its store, and small waits."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sandbox_client import ExecutionResult, SandboxClient
from sandbox_client.admin import AdminClient
from sandbox_server.testing import RunningServer, private_settings, server_in_thread

# acme and globex run and pay for executions; mallory is the tenant the tests get quarantined.
CONSOLE_POLICY = """\
version: 1
tenants:
  acme:
    description: Acme Corp
    languages: [python]
    pricing: {per_execution: 0.01}
  globex:
    description: Globex
    languages: [python]
    pricing: {per_execution: 0.05}
  mallory:
    languages: [python]
"""
WAIT_S = 20.0
"""How long to wait for something the server does in the background (an incident opening)."""
ARTIFACTS = Path(__file__).parent / "artifacts"

_T = TypeVar("_T")


@dataclass(frozen=True)
class ConsoleServer:
    srv: RunningServer
    keys: dict[str, str]
    """Tenant keys by tenant, and "admin": an admin key of acme."""
    admin_key_id: str

    @property
    def origin(self) -> str:
        port = self.srv.app.console_port
        assert port is not None
        return f"http://127.0.0.1:{port}"

    def sandbox(self, tenant: str = "acme", **options: Any) -> SandboxClient:
        return SandboxClient(self.srv.target, api_key=self.keys[tenant], timeout=60, retry=None, **options)

    def admin(self) -> AdminClient:
        return AdminClient(self.srv.target, api_key=self.keys["admin"], timeout=30)


@contextlib.contextmanager
def console_server(tmp_path: Path, **overrides: Any) -> Iterator[ConsoleServer]:
    """A server requiring API keys, with its console on a free port, CONSOLE_POLICY, a tenant key per tenant
    and an admin key, made in the server's own key store."""
    policies = tmp_path / "console-policies"
    policies.mkdir()
    (policies / "console.yaml").write_text(CONSOLE_POLICY)
    settings = private_settings(auth="api-keys", policies_dir=policies, console_port=0, max_running=4,
                                **overrides)
    with server_in_thread(settings) as srv:
        assert srv.app.stores is not None
        keys = {tenant: srv.app.stores.keys.create(tenant, "tenant", "agent")[1]
                for tenant in ("acme", "globex", "mallory")}
        record, keys["admin"] = srv.app.stores.keys.create("acme", "admin", "operator")
        yield ConsoleServer(srv, keys, record.key_id)


def wait_for(what: str, probe: Callable[[], _T | None], timeout_s: float = WAIT_S) -> _T:
    """Call ``probe`` until it returns something other than None; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout_s:g} s")
        time.sleep(0.05)


@contextlib.contextmanager
def in_background(call: Callable[[], _T]) -> Iterator[Callable[[], _T]]:
    """Run ``call`` on a thread; the block gets a function that waits for its result (or raises its error)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # handed to the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="console-test-call")
    thread.start()

    def result() -> _T:
        thread.join(timeout=90)
        assert not thread.is_alive(), "the background call did not end"
        if "error" in box:
            raise box["error"]
        value: _T = box["result"]
        return value

    try:
        yield result
    finally:
        thread.join(timeout=90)


def run_code(console: ConsoleServer, code: str, tenant: str = "acme", **options: Any) -> Callable[[], ExecutionResult]:
    """A function that runs ``code`` as ``tenant`` (for ``in_background``)."""

    def call() -> ExecutionResult:
        with console.sandbox(tenant) as sbx:
            return sbx.execute(code, **options)

    return call


def artifacts_dir() -> Path:
    """Where screenshots go: $SANDBOX_TEST_ARTIFACTS, or tests/console/artifacts (ignored by git)."""
    directory = Path(os.environ.get("SANDBOX_TEST_ARTIFACTS") or ARTIFACTS)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
