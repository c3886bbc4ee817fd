"""ExecutionSpec (what to run, frozen) and ExecutionResult (what happened), shared by every backend; SessionSpec
(what a session's sandbox is made with)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from sandbox_server.execution.runtimes import Runtime

if TYPE_CHECKING:
    from sandbox_server.egress.rules import EgressRules


@dataclass(frozen=True)
class Limits:
    """Applied limits, every one set (units in the names)."""

    wall_time_ms: int
    cpu_time_ms: int
    memory_bytes: int
    max_pids: int
    output_bytes: int
    file_size_bytes: int
    scratch_bytes: int
    egress_bytes: int = 64 * 1024 * 1024  # through the egress proxy, both ways (read only with an allow-list)

    def as_dict(self) -> dict[str, int]:
        """The limits by name (dataclasses.asdict deep-copies each value: slow, on every request, for ints)."""
        return {name: getattr(self, name) for name in _LIMIT_NAMES}


_LIMIT_NAMES = tuple(Limits.__dataclass_fields__)


@dataclass(frozen=True)
class InputFile:
    path: str  # validated: relative, normalised, no ".."
    content: bytes


@dataclass(frozen=True)
class EgressSpec:
    """A sandbox's network when its tenant's policy is an allow-list: what the proxy lets through (the request's
    own list, within its tenant's) and how much; the byte limit is ``Limits.egress_bytes``."""

    rules: EgressRules
    tenant: str  # whose policy it is: refusals are reported under it
    max_connections: int
    connections_per_s: float
    refusals_before_incident: int


@dataclass(frozen=True)
class ExecutionSpec:
    """Everything a backend needs to run one request; each backend translates it in one place."""

    execution_id: str
    runtime: Runtime
    code: bytes
    stdin: bytes
    files: tuple[InputFile, ...]
    env: tuple[tuple[str, str], ...]
    limits: Limits
    cpu_cores: float
    max_output_files: int
    max_output_file_bytes: int
    session_id: str = ""
    exercise: bool = False  # an operator's check (ExecuteRequest.exercise): audited and observed as such
    egress: EgressSpec | None = None  # None: no network at all


class Status(Enum):
    """Mirrors sandbox.v1.Status (the proto name is ``STATUS_`` + the member name)."""

    OK = 1
    NONZERO_EXIT = 2
    TIMEOUT = 3
    CPU_LIMIT = 4
    MEMORY_LIMIT = 5
    OUTPUT_LIMIT = 6
    KILLED = 7
    REJECTED = 8
    FILE_SIZE_LIMIT = 9


class StreamName(Enum):
    STDOUT = 1
    STDERR = 2


@dataclass(frozen=True)
class OutputFile:
    path: str
    content: bytes
    size: int
    truncated: bool


@dataclass(frozen=True)
class Usage:
    wall_time_s: float
    cpu_time_s: float
    peak_memory_bytes: int
    # Through the egress proxy (0 without network): bytes from the sandbox, bytes to it, connections made.
    egress_bytes_sent: int = 0
    egress_bytes_received: int = 0
    egress_connections: int = 0


@dataclass(frozen=True)
class DisplayData:
    """A rich output of a session's Python call (see sandbox.proto's DisplayData)."""

    mime_type: str
    data: bytes
    alternatives: tuple[tuple[str, bytes], ...] = ()
    is_result: bool = False
    display_id: str = ""
    update: bool = False

    @property
    def size(self) -> int:
        return len(self.data) + sum(len(value) for _, value in self.alternatives)


@dataclass(frozen=True)
class CodeError:
    """The exception that ended a session's Python call."""

    name: str
    value: str
    traceback: tuple[str, ...]


@dataclass(frozen=True)
class ExecutionResult:
    execution_id: str
    status: Status
    exit_code: int
    signal: int
    stdout: bytes
    stdout_truncated: bool
    stderr: bytes
    stderr_truncated: bool
    files: tuple[OutputFile, ...]
    files_truncated: bool
    usage: Usage
    message: str
    limits: Limits
    language: str
    backend: str
    # A call in a session (see sandbox.proto): the last expression's value, rich outputs, the exception.
    value: str = ""
    outputs: tuple[DisplayData, ...] = ()
    error: CodeError | None = None
    kernel_restarted: bool = False
    warnings: tuple[str, ...] = ()
    execution_count: int = 0


@dataclass(frozen=True)
class SessionSpec:
    """Everything a backend needs to start one session's sandbox. Its limits hold for the sandbox's whole life
    (memory, pids, workspace, file size); the calls' own limits (wall, CPU, output) are the session layer's."""

    session_id: str
    limits: Limits
    cpu_total_ms: int  # the CPU-time backstop of the whole sandbox (RLIMIT_CPU); the session layer counts it
    max_lifetime_s: float  # the sandbox's own backstop; the session layer closes it first
    env: tuple[tuple[str, str], ...]  # the fixed environment and the session's variables, in order
    kernel: bool  # start a Python kernel
    cpu_cores: float
    egress: EgressSpec | None = None  # None: no network at all


# Called by a backend with each chunk of output, in order; awaiting it applies back-pressure.
OutputCallback = Callable[[StreamName, bytes], Awaitable[None]]
