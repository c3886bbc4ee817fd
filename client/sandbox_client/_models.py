"""The values the client hands back and takes in: frozen dataclasses in friendly units, free of protobuf.

Conversions to and from the wire types live in ``_convert`` and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Literal, TypeVar

_V = TypeVar("_V")


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
    egress_bytes: int | None = None
    """Bytes through the egress proxy, both directions together (a session's: over its whole life, so it is set
    when the session is created, never per call). Read only when the tenant's network policy is an allow-list."""

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


MAX_PORT = 65535


@dataclass(frozen=True)
class EgressRule:
    """One destination a request may reach through the server's egress proxy: a host and its ports.

    ``host`` is an exact name ("api.example.com"), ``"*."`` + a name ("*.example.com": its subdomains) or an IP
    literal; the server checks its form (``InvalidRequestError``). ``ports`` takes any iterable of ints and is kept
    sorted, without repeats, so equal rules compare equal.

    Raises:
        TypeError: ``host`` is not a str, ``ports`` is not an iterable of ints (``bool`` is not accepted).
        ValueError: ``host`` is empty, ``ports`` is empty or holds a port outside 1..65535.
    """

    host: str
    ports: tuple[int, ...]

    def __init__(self, host: str, ports: Iterable[int]) -> None:
        if not isinstance(host, str):
            raise TypeError(f"EgressRule.host must be a str, not {type(host).__name__}")
        if not host.strip():
            raise ValueError("EgressRule.host is empty")
        # A bare int or str would be a one-port mistake or iterate into characters: say so rather than guess.
        if isinstance(ports, str | bytes) or not isinstance(ports, Iterable):
            raise TypeError(f"EgressRule.ports must be an iterable of ints (e.g. [443]), not {type(ports).__name__}")
        checked = tuple(ports)
        for port in checked:
            if isinstance(port, bool) or not isinstance(port, int):
                raise TypeError(f"EgressRule.ports must hold ints, not {type(port).__name__}")
            if not 1 <= port <= MAX_PORT:
                raise ValueError(f"EgressRule.ports: a port is 1 to {MAX_PORT}, got {port!r}")
        if not checked:
            raise ValueError(f"EgressRule for {host!r} names no port")
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "ports", tuple(sorted(set(checked))))


RuleLike = EgressRule | tuple[str, Iterable[int]] | Mapping[str, object]
"""What ``Network.allowlist`` takes for one rule: an ``EgressRule``, ``(host, ports)`` or
``{"host": ..., "ports": [...]}``."""


@dataclass(frozen=True)
class Network:
    """A request's own network, narrowing what its tenant's policy allows (never widening it: a rule outside the
    tenant's allow-list is refused with ``PermissionDeniedError``). Not giving one takes the tenant's network.

        Network.none()                                            # no network at all
        Network.allowlist(EgressRule("api.example.com", [443]))   # only this, of what the tenant allows

    An allow-list without rules reaches nothing (``Network.none()`` says that more plainly).

    Raises:
        TypeError: ``allow`` holds something other than ``EgressRule``.
        ValueError: an unknown ``mode``, or rules with mode "none".
    """

    mode: Literal["none", "allowlist"]
    allow: tuple[EgressRule, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in ("none", "allowlist"):
            raise ValueError(f"Network.mode must be 'none' or 'allowlist', got {self.mode!r}")
        allow = tuple(self.allow)  # a list given by hand: frozen like the rest
        for rule in allow:
            if not isinstance(rule, EgressRule):
                raise TypeError(f"Network.allow must hold EgressRule, not {type(rule).__name__} "
                                "(Network.allowlist also takes (host, ports) and mappings)")
        if self.mode == "none" and allow:
            raise ValueError("Network.allow is only for mode 'allowlist'")
        object.__setattr__(self, "allow", allow)

    @classmethod
    def none(cls) -> Network:
        """No network at all for this request (always within the tenant's policy)."""
        return cls(mode="none")

    @classmethod
    def allowlist(cls, *rules: RuleLike) -> Network:
        """Only these destinations, each within one of the tenant's rules (the same or a narrower host, a subset
        of its ports). A rule is an ``EgressRule``, ``(host, ports)`` or ``{"host": ..., "ports": [...]}``.

        Raises:
            TypeError, ValueError: a rule is malformed (see ``EgressRule``).
        """
        return cls(mode="allowlist", allow=tuple(_as_rule(rule) for rule in rules))


def _as_rule(rule: object) -> EgressRule:
    if isinstance(rule, EgressRule):
        return rule
    if isinstance(rule, Mapping):
        if set(rule) != {"host", "ports"}:
            raise ValueError("an egress rule mapping has exactly the keys 'host' and 'ports', "
                             f"got {sorted(map(str, rule))}")
        host, ports = rule["host"], rule["ports"]
    elif isinstance(rule, tuple) and len(rule) == 2:
        host, ports = rule
    else:
        raise TypeError(f"an egress rule is an EgressRule, (host, ports) or a mapping, not {type(rule).__name__}")
    return EgressRule(host, ports)  # its own checks say what is wrong with host or ports


@dataclass(frozen=True)
class ResourceUsage:
    """What the execution consumed."""

    wall_time_s: float
    cpu_time_s: float
    peak_memory_bytes: int
    egress_bytes_sent: int = 0
    """Bytes the program sent through the egress proxy (0 without network)."""
    egress_bytes_received: int = 0
    """Bytes the egress proxy passed back to the program."""
    egress_connections: int = 0
    """Connections the egress proxy made for the program."""


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


class FrozenMapping(Mapping[str, _V]):
    """An immutable ``str``-keyed mapping: the mappings inside the frozen models (equal to a dict with the same
    items, hashable when its values are, picklable)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, _V] | Iterable[tuple[str, _V]] = ()) -> None:
        self._items: dict[str, _V] = dict(items)

    def __getitem__(self, key: str) -> _V:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return repr(self._items)

    def __getstate__(self) -> dict[str, _V]:
        return self._items

    def __setstate__(self, state: dict[str, _V]) -> None:
        self._items = state


@dataclass(frozen=True)
class DisplayData:
    """A rich output of a Python call in a session: a ``display()``, a matplotlib figure, a rich last value.

    ``data`` is the richest representation, of type ``mime_type`` ("image/png", "image/svg+xml", "text/html",
    "application/json", ...): images as raw bytes (not base64), text as UTF-8, JSON as JSON text.
    """

    mime_type: str
    data: bytes
    alternatives: Mapping[str, bytes] = field(default_factory=FrozenMapping[bytes])
    """The same output in its other MIME types (e.g. "text/plain"), immutable."""
    is_result: bool = False
    """The call's last value (``Out[n]``), not a ``display()`` call."""
    display_id: str = ""
    """Set when the output can be updated later (``display(..., display_id=True)``)."""
    update: bool = False
    """This output replaces the earlier one with the same ``display_id``."""

    def __post_init__(self) -> None:
        if not isinstance(self.alternatives, FrozenMapping):  # a dict given by hand: frozen like the rest
            object.__setattr__(self, "alternatives", FrozenMapping(self.alternatives))

    @property
    def text(self) -> str:
        """``data`` decoded as UTF-8 (invalid bytes replaced): the text of a text/* or JSON output."""
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class CodeError:
    """The exception that ended a Python call in a session (the session's kernel survives it)."""

    name: str
    """The exception's class, e.g. "ZeroDivisionError"."""
    value: str
    """``str()`` of the exception."""
    traceback: tuple[str, ...]
    """The formatted traceback, one entry per frame (plain text); it is on the call's stderr too."""


@dataclass(frozen=True)
class ExecutionResult:
    """The outcome of one execution: the same value from ``execute`` and, last, from ``execute_stream``.

    The fields from ``value`` on are a session's (``Session.run``): empty, or false, for a one-shot execution.
    """

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
    value: str = ""
    """Python in a session: the text/plain repr of the call's last expression ("" when there is none)."""
    outputs: tuple[DisplayData, ...] = ()
    """Python in a session: the call's rich outputs (figures, ``display()``, a rich last value), in order."""
    error: CodeError | None = None
    """Python in a session: the exception that ended the call (``status`` is then NONZERO_EXIT)."""
    kernel_restarted: bool = False
    """The session's Python kernel was restarted during this call: the session's variables are gone."""
    warnings: tuple[str, ...] = ()
    """Things the caller should know, in words (e.g. the same failing call repeated)."""
    execution_count: int = 0
    """Python in a session: the kernel's execution counter (``In[n]``)."""

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


FileType = Literal["file", "directory", "symlink", "other"]


@dataclass(frozen=True)
class FileInfo:
    """A file, directory or link of a session's workspace."""

    path: str
    """Relative to the workspace, e.g. "data/in.csv"."""
    size: int
    """Bytes (of a regular file; 0 or the file system's figure otherwise)."""
    mtime: datetime
    """Last modification, timezone-aware (UTC)."""
    type: FileType = "file"
    """"file", "directory", "symlink" (listed, never followed) or "other" (a FIFO, socket or device; or a kind
    this client version does not know)."""


class SessionState(StrEnum):
    """Where a session stands. The proto's ``SESSION_STATE_*`` names without the prefix."""

    READY = "READY"
    """Waiting for a call."""
    BUSY = "BUSY"
    """A call runs in it (more may be waiting)."""
    CLOSED = "CLOSED"
    """Gone (only ``close`` ever answers with it: every other call then raises ``SessionNotFoundError``)."""
    UNSPECIFIED = "UNSPECIFIED"
    """The server sent no state, or one this client version does not know."""


@dataclass(frozen=True)
class SessionUsage:
    """What a session has consumed so far."""

    calls: int
    """Calls that ran in it."""
    cpu_time_s: float
    """CPU seconds of its whole sandbox (counted against ``SessionInfo.cpu_total_s``)."""
    memory_bytes: int
    """Memory it holds now."""
    peak_memory_bytes: int
    """The most memory it held."""
    workspace_bytes: int
    """Bytes used in its workspace."""
    cost: float
    """What it cost so far, its calls and its held time (currency units of the tenant's pricing)."""
    kernel_restarts: int
    """Times its Python kernel was restarted (each time its variables were lost)."""
    egress_bytes: int = 0
    """Bytes through the egress proxy so far, both ways (counted against ``Limits.egress_bytes``)."""


@dataclass(frozen=True)
class SessionInfo:
    """A session as the server describes it."""

    id: str
    """"ses_" + 32 base-32 characters: unguessable, and visible to its own tenant only."""
    state: SessionState
    created_at: datetime
    """Timezone-aware (UTC), as every time here."""
    last_used_at: datetime
    """The end of its last call (or its creation)."""
    expires_at: datetime | None
    """When it closes unless a call comes first; None once closed."""
    closed_at: datetime | None
    """When it closed; None while it lives."""
    limits: Limits
    """Applied limits: ``memory_bytes``, ``max_pids``, ``scratch_bytes`` (the workspace), ``file_size_bytes`` and
    ``egress_bytes`` hold for the session's whole life; ``wall_time_s``, ``cpu_time_s`` and ``output_bytes`` are
    each call's defaults."""
    idle_timeout_s: int
    """Seconds without a call after which it closes."""
    max_lifetime_s: int
    """Seconds after its creation at which it closes, whatever it is doing."""
    cpu_total_s: float
    """CPU seconds for its whole life; it closes when they are spent."""
    languages: tuple[str, ...]
    """What its calls may run."""
    labels: Mapping[str, str]
    """The caller's own tags, given at creation (immutable)."""
    usage: SessionUsage
    close_reason: str
    """When closed: "closed" (asked), "idle_timeout", "max_lifetime", "cpu_limit", "budget_exceeded", ...;
    "" while it lives."""
    backend: str
    """The sandbox backend that runs it."""
    snapshot_id: str
    """The snapshot it started from ("" if none)."""

    def __post_init__(self) -> None:
        if not isinstance(self.labels, FrozenMapping):  # a dict given by hand: frozen like the rest
            object.__setattr__(self, "labels", FrozenMapping(self.labels))


@dataclass(frozen=True)
class SnapshotInfo:
    """A saved workspace (regular files only), from which a new session can start (``session(snapshot_id=)``)."""

    id: str
    """"snap_" + 32 base-32 characters."""
    session_id: str
    """The session it was taken from."""
    name: str
    created_at: datetime
    """Timezone-aware (UTC)."""
    size_bytes: int
    """The files' content, together."""
    files: int
    """Regular files saved."""
    skipped: int
    """Links, FIFOs and devices left out."""
