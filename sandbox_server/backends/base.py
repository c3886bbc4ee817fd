"""The backend interface: run one ExecutionSpec in a fresh sandbox, and close. Nothing else."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self

from sandbox_server.execution.spec import ExecutionResult, ExecutionSpec, OutputCallback


class Backend(abc.ABC):
    """Runs each spec in a fresh sandbox that is torn down in every outcome, cancellation included.

    ``run`` raises BackendUnavailable when the backend cannot run anything now, SandboxFailure when one
    sandbox could not be set up; a program's own failure is a result, never an exception.
    """

    name: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare (reap leftovers of a crash, probe the host). Called once before the first run."""

    @abc.abstractmethod
    async def run(self, spec: ExecutionSpec, on_output: OutputCallback | None = None) -> ExecutionResult:
        """Run the spec to completion; ``on_output`` receives each output chunk as it arrives."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Wait for every teardown still in flight and release what the backend holds."""

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
