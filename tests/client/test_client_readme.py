"""Every python example of client/README.md runs, each in a fresh interpreter, against a real server.

The examples name placeholder servers, which the test replaces: ``127.0.0.1:50051`` becomes a real plaintext
server, ``sandbox.example.com:443`` a real mTLS server (the example's ``ca.crt``, ``client.crt`` and
``client.key`` are in its working directory). Each goes through a loopback proxy that counts connections, so an
example that never reaches its server fails. The one kind of example not run is an agent loop that needs a model
provider's API key and the internet: it names ``sandbox.internal:50051``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from real_servers import make_pki, server_with_policy
from tcp_proxy import TcpProxy

from sandbox_server.testing import RunningServer

README = Path(__file__).resolve().parents[2] / "client" / "README.md"
PLAIN_TARGET = "127.0.0.1:50051"
TLS_TARGET = "sandbox.example.com:443"
NEEDS_A_MODEL_PROVIDER = "sandbox.internal:50051"

# What the examples assume of the tenant: an env var they set, a priced model, a session budget.
README_POLICY = """
allowed_env: ["MODE"]
pricing:
  models:
    example-model: {input_per_million_tokens: 0.15, output_per_million_tokens: 0.6}
budget: {per_session: 100}
"""


@dataclass(frozen=True)
class Example:
    section: str
    code: str

    @property
    def target(self) -> str | None:
        for target in (PLAIN_TARGET, TLS_TARGET):
            if target in self.code:
                return target
        return None


def _examples() -> list[Example]:
    examples = []
    section = ""
    for match in re.finditer(r"^(#{2,3}) ([^\n]+)$|^```python\n(.*?)^```", README.read_text(encoding="utf-8"),
                             flags=re.DOTALL | re.MULTILINE):
        if match.group(2):
            section = match.group(2)
        else:
            examples.append(Example(section, match.group(3)))
    return examples


EXAMPLES = _examples()
RUNNABLE = [e for e in EXAMPLES if NEEDS_A_MODEL_PROVIDER not in e.code]
IDS = [f"{i}-{re.sub(r'[^a-z]+', '-', e.section.lower()).strip('-')}" for i, e in enumerate(RUNNABLE)]


def test_the_readme_has_examples_for_every_topic() -> None:
    assert len(RUNNABLE) >= 12
    code = "\n".join(e.code for e in RUNNABLE)
    for topic in ("AsyncSandboxClient", "execute_stream", "StreamInterruptedError", "RetryPolicy",
                  "BreakerPolicy", "CircuitOpenError", "idempotency_key", "start_as_current_span", "TLSConfig",
                  "client_private_key", "record_usage", "InvalidRequestError", "runtimes", "exercise=True",
                  # sessions
                  "sbx.session(", "async with sbx.session(", "await sbx.session(", "run_stream", "DisplayData",
                  "files.upload", "files.download", "files.list", "files.delete", "iter_download", "download_to",
                  "snapshot(", "snapshot_id=", "list_snapshots", "delete_snapshot", "attach_session",
                  "list_sessions", "get_session", "SessionNotFoundError",
                  # network
                  "Network.allowlist(EgressRule(", "Network.none()", "usage.egress_bytes_sent",
                  "session(network="):
        assert topic in code, topic


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples' working directory: ca.crt, client.crt and client.key for the mTLS example."""
    return make_pki(tmp_path_factory.mktemp("readme-pki"))


@pytest.fixture(scope="module")
def servers(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningServer]]:
    plain_dir, tls_dir = tmp_path_factory.mktemp("readme-plain"), tmp_path_factory.mktemp("readme-tls")
    with server_with_policy(plain_dir, README_POLICY) as plain, \
            server_with_policy(tls_dir, README_POLICY, tls_cert_file=pki / "server.crt",
                               tls_key_file=pki / "server.key", tls_client_ca_file=pki / "ca.crt") as tls:
        yield {PLAIN_TARGET: plain, TLS_TARGET: tls}


@pytest.mark.parametrize("example", RUNNABLE, ids=IDS)
def test_readme_example_runs(example: Example, servers: dict[str, RunningServer], pki: Path) -> None:
    target = example.target
    if target is None:  # talks to no server: runs as is
        done = subprocess.run([sys.executable, "-c", example.code], capture_output=True, text=True, timeout=120,
                              cwd=pki)
        assert done.returncode == 0, done.stderr
        return
    with TcpProxy(servers[target].target) as proxy:
        code = example.code.replace(target, proxy.target)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=pki)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip(), "the example printed nothing"
        assert proxy.connections >= 1, "the example never reached the server"
