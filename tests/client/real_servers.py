"""Real servers for the client tests: fault-injecting backends (the real nsjail backend, made to fail on
purpose), servers with a policy of the test's own, and certificates for TLS servers."""

from __future__ import annotations

import contextlib
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sandbox_server.backends.base import Backend
from sandbox_server.backends.nsjail import NsjailBackend
from sandbox_server.errors import BackendUnavailable, SandboxFailure
from sandbox_server.execution.spec import ExecutionResult, ExecutionSpec, OutputCallback
from sandbox_server.settings import Settings
from sandbox_server.testing import RunningServer, private_settings, server_in_thread

BackendFactory = Callable[[Settings], Backend]


def unavailable_at_first(fail_first: int, runs: list[str], retry_after_s: float = 0.05) -> BackendFactory:
    """The real nsjail backend, raising BackendUnavailable (UNAVAILABLE + RetryInfo ``retry_after_s``) for its
    first ``fail_first`` runs, then running for real. ``runs`` gets every run's execution id."""

    class Flaky(NsjailBackend):
        async def run(self, spec: ExecutionSpec, on_output: OutputCallback | None = None) -> ExecutionResult:
            runs.append(spec.execution_id)
            if len(runs) <= fail_first:
                raise BackendUnavailable("the backend is down (injected)", retry_after_s=retry_after_s)
            return await super().run(spec, on_output)

    return Flaky


def failing(runs: list[str]) -> BackendFactory:
    """A backend whose every run fails as the server's own fault (INTERNAL)."""

    class Failing(NsjailBackend):
        async def run(self, spec: ExecutionSpec, on_output: OutputCallback | None = None) -> ExecutionResult:
            runs.append(spec.execution_id)
            raise SandboxFailure("could not create the execution's cgroup (injected)")

    return Failing


@contextlib.contextmanager
def server_with_policy(
    tmp_path: Path, tenant_yaml: str, backend_factory: BackendFactory | None = None, **overrides: Any
) -> Iterator[RunningServer]:
    """A development-mode server (tenant "default", no keys) whose one policy file holds ``tenant_yaml``."""
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    body = textwrap.indent(textwrap.dedent(tenant_yaml).strip() or "{}", "    ")
    (policies / "default.yaml").write_text(f"version: 1\ntenants:\n  default:\n{body}\n")
    settings = private_settings(policies_dir=policies, **overrides)
    with server_in_thread(settings, backend_factory=backend_factory) as srv:
        yield srv


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> Path:
    """ca.crt; server.crt/.key for 127.0.0.1 and localhost; named.crt/.key for sandbox.test only;
    client.crt/.key. Returns ``directory``."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=test-ca", cwd=directory)
    names = {"server": "IP:127.0.0.1,DNS:localhost", "named": "DNS:sandbox.test", "client": "DNS:client"}
    for name, alt_names in names.items():
        (directory / f"{name}.ext").write_text(f"subjectAltName={alt_names}\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext", cwd=directory)
    return directory


def running_execution(srv: RunningServer, timeout_s: float = 10.0) -> str:
    """The id of the execution that holds a sandbox on ``srv`` now, once there is one."""
    deadline = time.monotonic() + timeout_s
    while not srv.app.servicer.running:
        assert time.monotonic() < deadline, "no execution started"
        time.sleep(0.005)
    (execution_id,) = srv.app.servicer.running
    return execution_id


def audit_ids(srv: RunningServer) -> list[str]:
    """The execution ids of the server's audit trail, newest first."""
    assert srv.app.stores is not None
    return [record.execution_id for record in srv.app.stores.audit.list(limit=100)]
