"""What every backend starts a session's sandbox with: the agent's command line, its private /run, the pids
its own threads need, and the ``init`` exchange that makes it ready."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sandbox_server.errors import SandboxFailure
from sandbox_server.execution.spec import SessionSpec
from sandbox_server.sessions import agent
from sandbox_server.sessions.channel import AgentError, ChannelClosed
from sandbox_server.sessions.sandbox import SessionSandbox

# The agent is passed as the interpreter's -c argument: read-only to the sandbox, one string (well under
# Linux's 128 KiB per argument). -I: no PYTHON* variable, no user site, no script directory on sys.path. Its one
# argument is the kernel's program (kernel_launcher.py), which the agent cannot read from the server's package.
AGENT_SOURCE = Path(agent.__file__).read_text()
AGENT_ARGV = ("/usr/bin/python3", "-I", "-c", AGENT_SOURCE, agent.KERNEL_LAUNCHER)
RUN_BYTES = 16 * 1024 * 1024
# The agent's private directory lives here: the kernel's sockets and connection file, the calls' code.
SESSION_RUN_MOUNT = f"none:/run:tmpfs:size={RUN_BYTES},mode=1777"
# Threads and processes of the agent and the kernel, on top of the session's own max_pids.
SYSTEM_PIDS = 32
INIT_TIMEOUT_S = 90.0  # the kernel's start, on a loaded host


async def start_agent(sandbox: SessionSandbox, spec: SessionSpec) -> dict[str, Any]:
    """Send the agent its ``init`` (the session's environment; start the kernel?) and wait for its answer.
    Raises SandboxFailure (with the agent's log) when it does not come."""
    try:
        reply, _ = await asyncio.wait_for(
            sandbox.channel.request("init", {"env": dict(spec.env), "kernel": spec.kernel}), INIT_TIMEOUT_S)
    except (AgentError, ChannelClosed, TimeoutError) as exc:
        why = exc.message if isinstance(exc, AgentError) else str(exc) or "no answer in time"
        tail = sandbox.log_tail().strip()[-1500:]
        raise SandboxFailure(f"the session's sandbox did not start: {why}" + (f" ({tail})" if tail else ""),
                             metadata={"phase": "session_start", "backend": sandbox.backend}) from exc
    return reply
