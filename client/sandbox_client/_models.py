"""The values the client hands back and takes in: frozen dataclasses in friendly units, free of protobuf.

Conversions to and from the wire types live in ``_convert`` and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import StrEnum
from functools import cached_property
from typing import Literal


class Status(StrEnum):
    """How an execution ended. The proto's ``STATUS_*`` names without the prefix."""

    OK = "OK"
    """The program exited 0."""
    NONZERO_EXIT = "NONZERO_EXIT"
    """The program exited with another code (see ``ExecutionResult.exit_code``)."""
    TIMEOUT = "TIMEOUT"
    """Killed at the wall-time limit."""
    CPU_LIMIT = "CPU_LIMIT"
    """Killed at the CPU-time limit."""
    MEMORY_LIMIT = "MEMORY_LIMIT"
    """Killed by the kernel's OOM killer at the memory limit."""
    OUTPUT_LIMIT = "OUTPUT_LIMIT"
    """Killed when stdout + stderr passed the output limit."""
    KILLED = "KILLED"
    """Ended by another signal (see ``ExecutionResult.signal``)."""
    REJECTED = "REJECTED"
    """Refused after it ran, e.g. by an output guardrail."""
    FILE_SIZE_LIMIT = "FILE_SIZE_LIMIT"
    """Killed for writing a file larger than the file-size limit."""
    UNSPECIFIED = "UNSPECIFIED"
    """The server sent no status, or one this client version does not know (a newer server)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one execution. ``None`` takes the server's default.

    Requested limits must be positive and at most the server's ceiling (the server answers
    ``InvalidRequestError`` otherwise). Times are in seconds and sent with millisecond precision
    (rounded to the nearest millisecond, at least 1 ms); sizes are in bytes.

    Raises:
        TypeError: a field has the wrong type (``bool`` is not accepted as a number).
        ValueError: a field is not positive (or a time is not finite).
    """

    wall_time_s: float | None = None
    """Wall-clock time before the sandbox is killed."""
    cpu_time_s: float | None = None
    """CPU time summed over every process of the sandbox."""
    memory_bytes: int | None = None
    """Memory of the whole sandbox (RSS + page cache + tmpfs), no swap."""
    max_pids: int | None = None
    """Processes and threads alive at once."""
    output_bytes: int | None = None
    """stdout + stderr together."""
    file_size_bytes: int | None = None
    """Largest single file the program may write."""
    scratch_bytes: int | None = None
    """Size of the private scratch working directory."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name in _SECONDS_FIELDS:
                _check_seconds(f.name, value)
            else:
                _check_count(f.name, value)


_SECONDS_FIELDS = frozenset({"wall_time_s", "cpu_time_s"})


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Limits.{name} must be a number of seconds, not {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"Limits.{name} must be positive and finite, got {value!r}")


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Limits.{name} must be an int, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"Limits.{name} must be positive, got {value!r}")


@dataclass(frozen=True)
class ResourceUsage:
    """What the execution consumed."""

    wall_time_s: float
    cpu_time_s: float
    peak_memory_bytes: int


@dataclass(frozen=True)
class OutputFile:
    """A regular file the program left under its working directory."""

    path: str
    content: bytes
    """At most the server's per-file cap: a prefix of the file when ``truncated``."""
    size: int
    """The file's real size in bytes."""
    truncated: bool


@dataclass(frozen=True)
class OutputChunk:
    """A piece of the program's output, as ``execute_stream`` yields it."""

    stream: Literal["stdout", "stderr"]
    data: bytes

    @property
    def text(self) -> str:
        """``data`` decoded as UTF-8 (invalid bytes replaced).

        A multi-byte character may be split across two chunks; the final ``ExecutionResult``
        decodes the joined bytes and has no such seams.
        """
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ExecutionResult:
    """The outcome of one execution: the same value from ``execute`` and, last, from ``execute_stream``."""

    execution_id: str
    status: Status
    exit_code: int
    """The program's exit code; -1 when it was ended by a signal."""
    signal: int
    """The signal that ended the program, 0 if none."""
    stdout_bytes: bytes
    stderr_bytes: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    files: tuple[OutputFile, ...]
    files_truncated: bool
    """Some output files were left out (the server's count or total size cap)."""
    usage: ResourceUsage
    message: str
    """Why, in words, for every status but OK."""
    limits: Limits
    """The limits that were applied."""
    language: str
    """Canonical language name."""
    backend: str
    """The sandbox backend that ran it ("nsjail" or "docker")."""
    redactions: int = 0
    """Secrets the server's output guardrail replaced in stdout, stderr and files."""
    cost: float = 0.0
    """What this execution cost, priced by the tenant's policy (currency units)."""
    trace_id: str = ""
    """The OpenTelemetry trace id of the call (32 hex digits), to find it in traces, logs and the audit."""

    @cached_property
    def stdout(self) -> str:
        """``stdout_bytes`` decoded as UTF-8 (invalid bytes replaced)."""
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @cached_property
    def stderr(self) -> str:
        """``stderr_bytes`` decoded as UTF-8 (invalid bytes replaced)."""
        return self.stderr_bytes.decode("utf-8", errors="replace")

    @property
    def ok(self) -> bool:
        """The program exited 0 (``status`` is ``Status.OK``)."""
        return self.status is Status.OK

    def file(self, path: str) -> OutputFile | None:
        """The output file at ``path`` (as the server reports it, relative), or None."""
        for output_file in self.files:
            if output_file.path == path:
                return output_file
        return None


@dataclass(frozen=True)
class Runtime:
    """A language the server can run."""

    language: str
    """Canonical name, e.g. "python"."""
    aliases: tuple[str, ...]
    """Other names ``execute(language=...)`` accepts."""
    version: str
    """Interpreter version, as the interpreter reports it."""
    file_name: str
    """The name the code gets in the sandbox's working directory."""


@dataclass(frozen=True)
class BudgetState:
    """Where one of the tenant's budgets stands."""

    budget: str
    """"session", "day" or "month"."""
    limit: float
    spent: float
    """Settled cost in the budget's period (running executions' reservations not included)."""
    exceeded: bool
    """New executions are refused until the period ends (never, for a session budget)."""


@dataclass(frozen=True)
class UsageReport:
    """The answer to ``record_usage``."""

    cost: float
    """What the reported usage cost (0 for a retried report already recorded)."""
    session_cost: float
    """The session's whole cost so far: executions and model usage."""
    budgets: tuple[BudgetState, ...]
