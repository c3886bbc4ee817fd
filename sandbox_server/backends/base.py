"""The backend interface: run one ExecutionSpec in a fresh sandbox, and close. Nothing else."""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sandbox_server.errors import BackendUnavailable, SandboxFailure
from sandbox_server.execution.spec import ExecutionResult, ExecutionSpec, OutputCallback, SessionSpec
from sandbox_server.telemetry import record_phase

if TYPE_CHECKING:
    from sandbox_server.egress.gateway import EgressGateway, EgressLink
    from sandbox_server.execution.spec import EgressSpec, Usage
    from sandbox_server.sessions.sandbox import SessionSandbox

log = logging.getLogger(__name__)


class Backend(abc.ABC):
    """Runs each spec in a fresh sandbox that is torn down in every outcome, cancellation included.

    ``run`` raises BackendUnavailable when the backend cannot run anything now, SandboxFailure when one
    sandbox could not be set up; a program's own failure is a result, never an exception. It returns once the
    program's outcome is known and none of the processes it started runs; what is left of the teardown then
    (the sandbox's init exiting, cgroup, scratch, container removal) may finish after the reply, and a failure
    there goes to ``on_teardown_failure``.
    """

    name: str
    # Told of a teardown that failed after its execution's result was returned, in that execution's context
    # (the server feeds it to its metrics and incident response). One that fails before is the call's error.
    on_teardown_failure: Callable[[SandboxFailure], None] | None = None
    # The server's egress proxies (egress/gateway.py); a spec with network needs it.
    egress: EgressGateway | None = None

    async def attach_egress(self, pid: int, egress: EgressSpec, max_bytes: int, *, execution_id: str = "",
                            session_id: str = "", exercise: bool = False) -> EgressLink:
        """Open the proxy of the sandbox whose process ``pid`` is given (in its network namespace). Raises
        SandboxFailure when it cannot: the program must not run without the network its policy gives it; or
        SandboxGone (UNAVAILABLE, from the gateway) when that process has already ended."""
        from sandbox_server.egress.gateway import EgressContext

        if self.egress is None:
            raise SandboxFailure("this server has no egress proxy: a sandbox with network cannot start")
        try:
            return await self.egress.attach(pid, egress, max_bytes, EgressContext(
                tenant=egress.tenant, execution_id=execution_id, session_id=session_id, exercise=exercise))
        except OSError as exc:
            raise SandboxFailure(f"could not open the sandbox's egress proxy: {exc}") from exc

    async def teardown(self, work: Coroutine[Any, Any, None], tracked: set[asyncio.Task[None]], *,
                       after_reply: bool) -> None:
        """Run an execution's teardown as a task of its own, held in ``tracked`` until it ends (so that aclose
        can wait for one whose request has gone). ``after_reply``: return at once and let it finish after the
        result is returned; its span and, if it fails, the failure's report then belong to the execution's
        call (call this in its context). Otherwise wait for it, even when cancelled, and raise its failure."""
        began = time.time_ns()
        task = asyncio.get_running_loop().create_task(work)
        tracked.add(task)
        task.add_done_callback(tracked.discard)
        if not after_reply:
            try:
                await asyncio.shield(task)
            finally:
                record_phase("sandbox.teardown", began)
            return

        def done(task: asyncio.Task[None]) -> None:
            record_phase("sandbox.teardown", began)
            if task.cancelled():
                return
            error = task.exception()
            if not isinstance(error, SandboxFailure):
                if error is not None:
                    log.error("teardown failed", exc_info=error)
                return
            if self.on_teardown_failure is not None:
                try:
                    self.on_teardown_failure(error)
                except Exception:  # a reporting fault must not hide the teardown's own log line
                    log.exception("reporting a teardown failure failed")

        task.add_done_callback(done)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare (reap leftovers of a crash, probe the host). Called once before the first run."""

    @abc.abstractmethod
    async def run(self, spec: ExecutionSpec, on_output: OutputCallback | None = None) -> ExecutionResult:
        """Run the spec to completion; ``on_output`` receives each output chunk as it arrives."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Wait for every teardown still in flight and release what the backend holds."""

    async def open_session(self, spec: SessionSpec) -> SessionSandbox:
        """Start one session's sandbox (sessions/sandbox.py) and wait for its agent to be ready. Raises
        BackendUnavailable (this backend cannot now, or has no sessions) or SandboxFailure."""
        raise BackendUnavailable(f"the {self.name} backend does not run sessions", retry_after_s=60)

    def kill(self, execution_id: str) -> bool:
        """Kill a running execution now: its ``run`` returns a KILLED result ("killed by an operator").
        False when no such execution is running here."""
        return False

    def describe(self) -> dict[str, str]:
        """Which isolation features are active, for the start-up banner and health reports."""
        return {}

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def with_egress(usage: Usage, link: EgressLink | None) -> Usage:
    """The usage with the proxy's counters (unchanged without network)."""
    import dataclasses

    if link is None:
        return usage
    stats = link.stats
    return dataclasses.replace(usage, egress_bytes_sent=stats.bytes_sent, egress_bytes_received=stats.bytes_received,
                               egress_connections=stats.connections)
