"""Helpers for the adapter tests."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sandbox_client import EgressRule, Network
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


# -- the network an adapter gives its sandboxes --------------------------------------------------------------------

NETWORK_POLICY = """\
static_validation: {{enabled: false}}   # the probe runs curl, which the default bash checks deny
network:
  mode: allowlist
  allow:
    - {{host: 127.0.0.2, ports: [{port}]}}
    - {{host: "*.example.test", ports: [443]}}
"""
"""The tenant of ``network_server``: the upstream on 127.0.0.2, and a wildcard the adapters narrow to."""
NARROWED = Network.allowlist(EgressRule("api.example.test", [443]))
"""Within the tenant's list, without the upstream: the proxy refuses the probe's request (host_not_allowed)."""
WIDER = Network.allowlist(EgressRule("pypi.org", [443]))
"""Outside the tenant's list: the server refuses the request naming the rule."""
WIDER_REFUSAL = "network.allow[0] (pypi.org ports [443]) is not within tenant 'default''s allow-list"


def network_probe(port: int) -> str:
    """Bash that shows the sandbox's network: the proxy its environment names ("none" without network), and what
    a request to the tenant's upstream 127.0.0.2:``port`` got (its headers, then its status; 000: no connection)."""
    return (f'echo "proxy=${{https_proxy:-none}}"\n'
            f"curl -s -o /dev/null -D - -w 'status=%{{http_code}}\\n' --max-time 5 http://127.0.0.2:{port}/ "
            "| tr -d '\\r'")


def sandbox_network(text: str) -> str:
    """Which network the probe's output (or a tool's text around it) shows: "tenant" (the tenant's allow-list:
    the upstream answered), "narrowed" (NARROWED: the proxy refused the upstream), "none" (no proxy, no route)."""
    if "proxy=none" in text and "status=000" in text:
        return "none"
    if "proxy=http://127.0.0.1:3128" in text and "status=200" in text:
        return "tenant"
    if ("proxy=http://127.0.0.1:3128" in text and "status=403" in text
            and "X-Sandbox-Egress: refused; reason=host_not_allowed" in text):
        return "narrowed"
    raise AssertionError(f"not a network probe's output:\n{text}")
