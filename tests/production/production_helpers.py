"""Shared helpers for the production-stack tests: a server with a policy of the test's own, and metrics."""

from __future__ import annotations

import re
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sandbox_server.backends.base import Backend
from sandbox_server.settings import Settings
from sandbox_server.testing import RunningServer, private_settings, server_in_thread


@contextmanager
def server_with_policy(
    tmp_path: Path, tenant_yaml: str, backend_factory: Callable[[Settings], Backend] | None = None,
    **overrides: Any,
) -> Iterator[RunningServer]:
    """A development-mode server (tenant "default") whose one policy file holds ``tenant_yaml`` (the body of
    the default tenant, YAML), with a metrics endpoint; ``backend_factory`` replaces the configured backend."""
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    body = textwrap.indent(textwrap.dedent(tenant_yaml).strip() or "{}", "    ")
    (policies / "default.yaml").write_text(f"version: 1\ntenants:\n  default:\n{body}\n")
    settings = private_settings(**{"policies_dir": policies, "metrics_port": 0, **overrides})
    with server_in_thread(settings, backend_factory=backend_factory) as srv:
        yield srv


def scrape(srv: RunningServer, calls: int | None = None) -> str:
    """The metrics page; with ``calls``, once that many Sandbox calls are counted (a refused call's status
    can reach the client a moment before the server counts it)."""
    assert srv.app.metrics_port is not None
    deadline = time.monotonic() + 10
    while True:
        url = f"http://127.0.0.1:{srv.app.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = str(reply.read().decode())
        if calls is None or metric(text, "sandbox_rpcs_total") >= calls or time.monotonic() > deadline:
            return text
        time.sleep(0.02)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` whose labels include ``labels`` (summed over the others); 0 if none."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total
