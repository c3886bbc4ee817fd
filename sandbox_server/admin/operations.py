"""What the Admin service's operational calls (incidents, costs, executions, quarantines) read and act on,
gathered in one frozen input so the AdminServicer needs no knowledge of how they are built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sandbox_server.stores.base import AuditStore
from sandbox_server.stores.costs import CostStore

if TYPE_CHECKING:
    from sandbox_server.execution.servicer import RunningExecution
    from sandbox_server.incidents.manager import IncidentManager
    from sandbox_server.sessions.manager import SessionManager


class LiveExecutions(Protocol):
    """The executions holding a sandbox now, and the way to kill one."""

    @property
    def running(self) -> Mapping[str, RunningExecution]: ...

    def kill(self, execution_id: str) -> bool: ...


@dataclass(frozen=True)
class Operations:
    audit: AuditStore
    costs: CostStore
    incidents: IncidentManager
    executions: LiveExecutions
    sessions: SessionManager | None = None
