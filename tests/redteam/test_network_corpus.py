"""The shipped cases that connect to the host's loopback ports (bash's /dev/tcp, Python, Node), judged by the
runner on what their programs really do in a network namespace of their own with only loopback up (as in a
sandbox), without a server.

A connect to a port nothing listens on may take that very port as its source port and connect the socket to
itself (TCP simultaneous open). It happens rarely with a sandbox's whole ephemeral range; here the namespace's
range is that one port, so it happens every time. Such a socket reached nothing: the case stays contained. A
listener in the namespace stands in for a host service that a failed containment would reach: connecting to it
must still be judged NOT CONTAINED.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from sandbox_client import AsyncSandboxClient, ExecutionResult, Limits, ResourceUsage, Status
from sandbox_client.redteam.corpus import shipped_corpus
from sandbox_client.redteam.runner import COMMON_PORTS, RunOptions, RunReport, Verdict, run_cases

# The cases that connect to the host's loopback ports, each in its language.
CASES = {"network-bash-dev-tcp": "bash", "network-host-loopback-python": "python",
         "network-host-loopback-javascript": "javascript"}
SELF_PORT = 40000
"""The namespace's only ephemeral port: a connect to it from inside connects the socket to itself."""
PEER_PORT = 40001
"""Where the namespace's listener (a reachable "host service") is, when there is one."""

# Run as ``python -c NAMESPACE LANGUAGE CODE SELF_PORT PEER_PORT`` under ``unshare --net``; prints one JSON line.
NAMESPACE = """\
import json, socket, subprocess, sys
from pathlib import Path

RUN = {"bash": ["/bin/bash", "-c"], "python": ["/usr/bin/python3", "-c"], "javascript": ["/usr/bin/node", "-e"]}
language, code, self_port, peer_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
Path("/proc/sys/net/ipv4/ip_local_port_range").write_text(f"{self_port} {self_port}")
listener = socket.create_server(("127.0.0.1", peer_port)) if peer_port else None
done = subprocess.run([*RUN[language], code], capture_output=True, timeout=120, check=False)
accepted = 0
if listener is not None:
    listener.setblocking(False)
    while True:
        try:
            listener.accept()[0].close()
        except BlockingIOError:
            break
        accepted += 1
print(json.dumps({"stdout": done.stdout.decode(), "stderr": done.stderr.decode(), "exit_code": done.returncode,
                  "accepted": accepted}))
"""


@dataclass
class NamespaceClient:
    """Stands in for a server: runs each program in a fresh network namespace with only loopback up."""

    peer: bool
    runs: list[dict[str, Any]] = field(default_factory=list)

    async def execute(self, code: str, *, language: str, **_: Any) -> ExecutionResult:
        done = await asyncio.to_thread(
            subprocess.run,
            ["unshare", "--net", "--", sys.executable, "-c", NAMESPACE, language, code, str(SELF_PORT),
             str(PEER_PORT if self.peer else 0)],
            capture_output=True, text=True, timeout=180, check=False,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        run: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        self.runs.append(run)
        return ExecutionResult(
            execution_id="e", status=Status.OK, exit_code=run["exit_code"], signal=0,
            stdout_bytes=run["stdout"].encode(), stderr_bytes=run["stderr"].encode(), stdout_truncated=False,
            stderr_truncated=False, files=(), files_truncated=False,
            usage=ResourceUsage(wall_time_s=1.0, cpu_time_s=0.1, peak_memory_bytes=1 << 20), message="",
            limits=Limits(), language=language, backend="nsjail",
        )


def run_case(case_id: str, client: NamespaceClient, host_ports: tuple[int, ...]) -> RunReport:
    case = shipped_corpus().case(case_id)
    assert case is not None
    sandbox = cast(AsyncSandboxClient, client)
    return asyncio.run(run_cases(sandbox, (case,), RunOptions(host_ports=host_ports)))


def test_ports_are_not_common_ones() -> None:
    assert not {SELF_PORT, PEER_PORT} & set(COMMON_PORTS)


@pytest.mark.parametrize("case_id", CASES)
def test_a_self_connection_is_not_an_escape(case_id: str) -> None:
    client = NamespaceClient(peer=False)
    report = run_case(case_id, client, (SELF_PORT,))
    (case,) = report.cases
    (run,) = client.runs
    assert case.verdict is Verdict.CONTAINED, (case.problems, run)
    # It did connect its socket to itself (so the test exercised that), and that alone is no breach.
    assert f"SELF-CONNECTION 127.0.0.1:{SELF_PORT}" in run["stdout"], run


@pytest.mark.parametrize("case_id", CASES)
def test_a_real_connection_is_still_an_escape(case_id: str) -> None:
    client = NamespaceClient(peer=True)
    report = run_case(case_id, client, (SELF_PORT, PEER_PORT))
    (case,) = report.cases
    (run,) = client.runs
    assert run["accepted"] == 1, run
    assert f"CONNECTED 127.0.0.1:{PEER_PORT}\n" in run["stdout"], run
    assert f"SELF-CONNECTION 127.0.0.1:{SELF_PORT}" in run["stdout"], run
    assert case.verdict is Verdict.NOT_CONTAINED
    assert case.problems == ("the program: stdout contains 'CONNECTED'",)
