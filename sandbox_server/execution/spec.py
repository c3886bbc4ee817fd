"""ExecutionSpec (what to run, frozen) and ExecutionResult (what happened), shared by every backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from sandbox_server.execution.runtimes import Runtime


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

    def as_dict(self) -> dict[str, int]:
        """The limits by name (dataclasses.asdict deep-copies each value: slow, on every request, for ints)."""
        return {name: getattr(self, name) for name in _LIMIT_NAMES}


_LIMIT_NAMES = tuple(Limits.__dataclass_fields__)


@dataclass(frozen=True)
class InputFile:
    path: str  # validated: relative, normalised, no ".."
    content: bytes


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


# Called by a backend with each chunk of output, in order; awaiting it applies back-pressure.
OutputCallback = Callable[[StreamName, bytes], Awaitable[None]]
