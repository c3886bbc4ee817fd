"""Helpers for the adapter tests."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sandbox_server.testing import RunningServer, private_settings, server_in_thread


@contextmanager
def server_with_policy(tmp_path: Path, tenant_yaml: str, **overrides: Any) -> Iterator[RunningServer]:
    """A server of its own whose default tenant's policy body is ``tenant_yaml``."""
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    body = textwrap.indent(textwrap.dedent(tenant_yaml).strip() or "{}", "    ")
    (policies / "default.yaml").write_text(f"version: 1\ntenants:\n  default:\n{body}\n")
    with server_in_thread(private_settings(policies_dir=policies, **overrides)) as srv:
        yield srv
