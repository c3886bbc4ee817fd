"""The red-team corpus format: what a hostile case runs and exactly what "contained" means for it.

A corpus is a directory of YAML files, one per category::

    category: escape
    description: Attempts to leave the sandbox or take over its reporting.
    cases:
      - id: escape-mount-syscalls
        title: mount(2) a tmpfs, bind-mount /, remount / read-write
        steps:
          - language: python
            code: |
              print("ATTEMPT mount", flush=True)
              ...
            expect:
              refused_by: [static_validation]    # refused before it ran: contained
              status: [OK]                       # or it ran and ended so ...
              attempted: ["ATTEMPT mount"]       # ... having provably tried (else NOT EXERCISED) ...
              stdout_has: ["DENIED mount"]       # ... with the denial in its output ...
              stdout_lacks: ["ESCAPED"]          # ... and no sign of success
        host_check:                              # only with --host-checks (the runner on the server's host)
          absent_paths: ["/tmp/redteam-canary-@@TOKEN@@"]

Proof of exercise: every expectation that accepts a run names at least one ``attempted`` marker, a line the
program prints (and flushes) only once it has reached its hostile operation. A run without every marker is
NOT EXERCISED, never contained, so a case that crashes early, hits a missing tool or silently does nothing
fails loudly. A refusal proves nothing ran, so it needs no marker; only the refusals a case lists count, and a
static-validation refusal never counts for a ``syntax_error`` (a broken case is not a contained one).

Placeholders in ``code`` (rendered per language; any other ``@@NAME@@`` is an error):

- ``@@TOKEN@@``: a random token per case run (also in markers and host paths), for test-owned names;
- ``@@CANARY_PATHS@@``: the host files the runner plants with ``--host-checks`` (a JSON list in Python and
  JavaScript, shell words in bash); their random contents must never appear in any output;
- ``@@HOST_PORTS@@``: TCP/UDP ports on the host's loopback worth knocking on (the server's own, common
  services, and the runner's listeners under ``--host-checks``); likewise a JSON list or shell words.

Sessions (``docs/sessions.md``): a step may name a ``session``, a short name of the case's own. The steps naming
the same session run in one session (one sandbox, one Python kernel, one workspace, kept across its calls),
which the runner creates, with its own client (the attacked tenant), when the first of those steps runs, and
closes when the case ends, whatever happened. A session's first step may say ``from_snapshot_of: <a session
of the same case>``: the runner then snapshots that session at that moment and starts the new one from the
snapshot (deleted when the case ends)::

      - id: session-snapshot-links
        title: plant links in a session, snapshot it, look from a session started from the snapshot
        steps:
          - session: a                 # created here (CreateSession), with this step's language
            language: python
            code: ...
            expect: ...
          - session: b
            from_snapshot_of: a        # SnapshotSession(a), then CreateSession(snapshot_id=...)
            language: bash
            code: ...
            expect: ...

Steps without ``session`` are one-shot executions, as always; the two kinds mix freely in a case. A session
step is judged by the same expectations; a refusal of its session (CreateSession, or the snapshot it starts
from) is the step's refusal, so ``refused_by: [policy]`` accepts a tenant whose policy denies sessions or
snapshots; any other failure to make the session is an ERROR.
A session that ends under the case because its sandbox failed (the agent, PID 1, did not survive an earlier
step) is NOT CONTAINED at the step that finds it gone. The session-wide limits (``memory_bytes``,
``max_pids``, ``file_size_bytes``, ``scratch_bytes``, ``egress_bytes``) may be set only on a session's first
step, where they create it; any step may set its call's ``wall_time_s``, ``cpu_time_s`` and ``output_bytes``. A
case uses at most ``MAX_SESSIONS`` sessions; a concurrent case may use sessions, each in one step only, and none
started from a snapshot (the order of its steps is not defined).

Rules for hostile programs (checked by review, not by this schema): network targets are loopback only
(127.0.0.0/8, ::1) and unix sockets, except in the egress category, whose programs name outside addresses but
reach them only through the egress proxy on the sandbox's own loopback, or after a route lookup that sends
nothing (tests/redteam/test_egress_corpus.py checks it); anything that would do damage if not contained aims at
test-owned targets (names carrying ``@@TOKEN@@``, the runner's canaries) and never deletes or overwrites real
files.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from sandbox_client import Limits, Status
from sandbox_client.redteam.categories import Category, Language

__all__ = [
    "MAX_SESSIONS",
    "MAX_STEPS",
    "PLACEHOLDERS",
    "SESSION_LIMITS",
    "Case",
    "CaseLimits",
    "Category",
    "CorpusFile",
    "Expectation",
    "HostCheck",
    "HostSecret",
    "Language",
    "Refusal",
    "Step",
]

PLACEHOLDERS = frozenset({"TOKEN", "CANARY_PATHS", "HOST_PORTS"})
"""The ``@@NAME@@`` placeholders a program may use (see the module docstring)."""
MARKER_PLACEHOLDERS = frozenset({"TOKEN"})
"""The placeholders allowed in markers and host paths."""
PLACEHOLDER_RE = re.compile(r"@@([A-Za-z0-9_]+)@@")
CASE_ID_RE = r"^[a-z0-9][a-z0-9-]{1,79}$"
MAX_STEPS = 6
MAX_SESSIONS = 3
"""Sessions one case may use (the runner keeps them all open until the case ends)."""
SESSION_NAME_RE = r"^[a-z][a-z0-9_-]{0,31}$"
SESSION_LIMITS = frozenset({"memory_bytes", "max_pids", "file_size_bytes", "scratch_bytes", "egress_bytes"})
"""The limits that hold for a session's whole life: set when it is created (its first step), never per call."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Refusal(StrEnum):
    """A way the server may refuse a step before anything runs, which then counts as contained."""

    STATIC_VALIDATION = "static_validation"
    """INVALID_ARGUMENT with a violation of ``code`` by a static-validation rule other than ``syntax_error``."""
    GUARDRAIL = "guardrail"
    """INVALID_ARGUMENT with a violation by an input guardrail rule (blocked pattern, file names, ...)."""
    POLICY = "policy"
    """PERMISSION_DENIED by the tenant's policy (reason POLICY_DENIED): a language, limit or variable; for a
    session step, also sessions or snapshots disabled (SESSIONS_DISABLED, SNAPSHOTS_DISABLED)."""


class HostSecret(StrEnum):
    """Host values a case's output must not contain; checked only with host checks, matched as whole words.

    The runner's canaries and the secrets it is given are checked in every case; these are opt-in because
    they are short or structured enough that only the case printing them should be judged on them.
    """

    HOSTNAME = "hostname"
    """The host's hostname (skipped when it is the sandbox's own, "sandbox", or "localhost")."""
    MACHINE_ID = "machine_id"
    """The host's /etc/machine-id."""
    SHADOW = "shadow"
    """The password hashes of the host's /etc/shadow."""


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:  # a bad pattern fails the load, never a run (fail closed)
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
    return pattern


Marker = Annotated[str, Field(min_length=1, max_length=500)]
Regex = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_regex)]


def _placeholders(text: str, allowed: frozenset[str], where: str) -> None:
    unknown = sorted({m for m in PLACEHOLDER_RE.findall(text) if m not in allowed})
    if unknown:
        raise ValueError(f"{where}: unknown placeholder(s) {', '.join('@@' + u + '@@' for u in unknown)}; "
                         f"allowed: {', '.join('@@' + a + '@@' for a in sorted(allowed))}")


class CaseLimits(_Model):
    """Limits of one step, in the client's units (seconds, bytes); unset fields take the tenant's defaults."""

    wall_time_s: float | None = Field(default=None, gt=0)
    cpu_time_s: float | None = Field(default=None, gt=0)
    memory_bytes: int | None = Field(default=None, gt=0)
    max_pids: int | None = Field(default=None, gt=0)
    output_bytes: int | None = Field(default=None, gt=0)
    file_size_bytes: int | None = Field(default=None, gt=0)
    scratch_bytes: int | None = Field(default=None, gt=0)
    egress_bytes: int | None = Field(default=None, gt=0)

    def to_client(self) -> Limits:
        return Limits(**self.model_dump())

    def session_part(self) -> Limits:
        """The limits that create a session (``SESSION_LIMITS``); the rest left unset."""
        return Limits(**{k: v for k, v in self.model_dump().items() if k in SESSION_LIMITS})

    def call_part(self) -> Limits:
        """The limits of one call in a session (everything but ``SESSION_LIMITS``)."""
        return Limits(**{k: v for k, v in self.model_dump().items() if k not in SESSION_LIMITS})

    def sets_session_limits(self) -> bool:
        return any(getattr(self, name) is not None for name in SESSION_LIMITS)


class Expectation(_Model):
    """What "contained" means for one step. It is contained when it was refused in one of the ``refused_by``
    ways, or when it ran and every one of these held:

    - the status is in ``status`` (and the exit code in ``exit_codes``, when given);
    - every ``attempted`` marker is in stdout (otherwise the verdict is NOT EXERCISED);
    - every ``stdout_has`` marker is in stdout and every ``stdout_matches`` pattern matches it;
    - no ``stdout_lacks`` marker is in stdout, and no ``output_lacks`` marker in stdout, stderr or any file;
    - every output file's path is in ``files_allowed`` (when given);
    - with ``within_limits``, usage stayed inside the applied limits (see ``runner.LIMIT_SLACK``).

    Markers may use ``@@TOKEN@@``. A step whose ``status`` is empty must be refused: running at all is a breach.
    """

    refused_by: tuple[Refusal, ...] = ()
    status: tuple[Status, ...] = ()
    exit_codes: tuple[int, ...] = ()
    attempted: tuple[Marker, ...] = ()
    stdout_has: tuple[Marker, ...] = ()
    stdout_matches: tuple[Regex, ...] = ()
    stdout_lacks: tuple[Marker, ...] = ()
    output_lacks: tuple[Marker, ...] = ()
    files_allowed: tuple[str, ...] | None = None
    within_limits: bool = True

    @model_validator(mode="after")
    def _states_a_criterion(self) -> Self:
        if not self.refused_by and not self.status:
            raise ValueError("an expectation must accept a refusal (refused_by) or a run (status), or both")
        if self.status and not self.attempted:
            raise ValueError("an expectation that accepts a run must name at least one 'attempted' marker: the "
                             "proof that the program reached its hostile operation")
        if Status.UNSPECIFIED in self.status:
            raise ValueError("status UNSPECIFIED (a server that sent none) can never count as contained")
        if self.exit_codes and not self.status:
            raise ValueError("exit_codes need a status that runs")
        for marker in (*self.attempted, *self.stdout_has, *self.stdout_lacks, *self.output_lacks):
            _placeholders(marker, MARKER_PLACEHOLDERS, f"marker {marker!r}")
        return self


SessionName = Annotated[str, Field(pattern=SESSION_NAME_RE)]


class Step(_Model):
    """One execution of a case: a one-shot execution, or a call in one of the case's sessions."""

    session: SessionName | None = None
    """The case's session this step runs in (created by the runner at its first step); None: a one-shot
    execution."""
    from_snapshot_of: SessionName | None = None
    """On a session's first step only: start it from a snapshot of that other session, taken right then."""
    language: Language
    code: str = Field(min_length=1)
    stdin: str = ""
    files: dict[str, str] = Field(default_factory=dict, description="input files (UTF-8 text) by relative path")
    limits: CaseLimits = CaseLimits()
    expect: Expectation

    @model_validator(mode="after")
    def _known_placeholders(self) -> Self:
        _placeholders(self.code, PLACEHOLDERS, "code")
        if self.from_snapshot_of is not None:
            if self.session is None:
                raise ValueError("from_snapshot_of starts a session: the step needs a 'session'")
            if self.from_snapshot_of == self.session:
                raise ValueError(f"session {self.session!r} cannot start from a snapshot of itself")
        return self


def _check_sessions(steps: tuple[Step, ...], concurrent: bool) -> None:
    """The case-wide rules of sessions (see the module docstring)."""
    seen: list[str] = []
    for number, step in enumerate(steps, start=1):
        name = step.session
        if name is None:
            continue
        first = name not in seen
        if step.from_snapshot_of is not None:
            if concurrent:
                raise ValueError(f"step {number}: a concurrent case cannot start a session from a snapshot (its "
                                 "steps have no order)")
            if not first:
                raise ValueError(f"step {number}: from_snapshot_of belongs on session {name!r}'s first step")
            if step.from_snapshot_of not in seen:
                raise ValueError(f"step {number}: from_snapshot_of {step.from_snapshot_of!r} names no session "
                                 "that an earlier step of the case uses")
        if not first:
            if concurrent:
                raise ValueError(f"step {number}: in a concurrent case a session is used by one step only "
                                 f"({name!r} is used twice)")
            if step.limits.sets_session_limits():
                raise ValueError(f"step {number}: {', '.join(sorted(SESSION_LIMITS))} hold for session {name!r}'s "
                                 "whole life: set them on its first step")
            continue
        seen.append(name)
    if len(seen) > MAX_SESSIONS:
        raise ValueError(f"a case uses at most {MAX_SESSIONS} sessions, not {len(seen)}")


class HostCheck(_Model):
    """Checks made on the server's host after every step of the case has ended (only with host checks)."""

    absent_paths: tuple[str, ...] = ()
    """Host paths (``@@TOKEN@@`` allowed; absolute) that must not exist; the runner removes any it finds."""
    no_process: bool = False
    """No host process may have the case's token in its command line (after a short grace for teardown)."""
    listener: bool = False
    """The runner listens on the host's loopback (TCP and UDP, ports added to ``@@HOST_PORTS@@``); nothing may
    reach it."""
    secrets: tuple[HostSecret, ...] = ()

    @model_validator(mode="after")
    def _test_owned_paths(self) -> Self:
        for path in self.absent_paths:
            _placeholders(path, MARKER_PLACEHOLDERS, f"absent path {path!r}")
            if not path.startswith("/") or "@@TOKEN@@" not in path:
                # The runner removes what it finds there: only test-owned names, never a real file.
                raise ValueError(f"absent path {path!r} must be absolute and contain @@TOKEN@@")
        return self


class Case(_Model):
    """One hostile scenario: one to six steps (e.g. plant something, then look for it from a fresh sandbox, or
    from the next call of the same session)."""

    id: str = Field(pattern=CASE_ID_RE)
    title: str = Field(min_length=1, max_length=200)
    category: Category
    why: str = Field(default="", max_length=2000, description="what it attacks and what containment means")
    steps: tuple[Step, ...] = Field(min_length=1, max_length=MAX_STEPS)
    concurrent: bool = False
    """Run the steps at the same time (e.g. one hides a secret while another looks for it); in order otherwise,
    each starting after the previous one ended, all with the same session id."""
    distinct_lines: tuple[Marker, ...] = ()
    """Prefixes of stdout lines that must differ between steps: no two steps that ran may print the same line
    starting with one of them (e.g. "RANDOM ": executions must not share random state)."""
    host_check: HostCheck = HostCheck()

    @model_validator(mode="after")
    def _distinct_needs_steps(self) -> Self:
        if self.distinct_lines and len(self.steps) < 2:
            raise ValueError("distinct_lines compares steps: a case using it needs at least two")
        _check_sessions(self.steps, self.concurrent)
        return self

    @property
    def sessions(self) -> tuple[str, ...]:
        """The sessions the case uses, in the order of their first step."""
        return tuple(dict.fromkeys(s.session for s in self.steps if s.session is not None))


class _CaseEntry(_Model):
    """A case as written in a file: its category comes from the file."""

    id: str = Field(pattern=CASE_ID_RE)
    title: str = Field(min_length=1, max_length=200)
    why: str = Field(default="", max_length=2000)
    steps: tuple[Step, ...] = Field(min_length=1, max_length=MAX_STEPS)
    concurrent: bool = False
    distinct_lines: tuple[Marker, ...] = ()
    host_check: HostCheck = HostCheck()

    @model_validator(mode="after")
    def _sessions(self) -> Self:
        _check_sessions(self.steps, self.concurrent)  # here too, so that a problem is named with its file and case
        return self


class CorpusFile(_Model):
    """One YAML file of the corpus: a category and its cases."""

    category: Category
    description: str = ""
    cases: tuple[_CaseEntry, ...] = Field(min_length=1)

    def to_cases(self) -> tuple[Case, ...]:
        return tuple(Case(category=self.category, **entry.model_dump()) for entry in self.cases)
