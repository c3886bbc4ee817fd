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

Rules for hostile programs (checked by review, not by this schema): network targets are loopback only
(127.0.0.0/8, ::1) and unix sockets; anything that would do damage if not contained aims at test-owned
targets (names carrying ``@@TOKEN@@``, the runner's canaries) and never deletes or overwrites real files.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from sandbox_client import Limits, Status
from sandbox_client.redteam.categories import Category, Language

__all__ = [
    "PLACEHOLDERS",
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
MAX_STEPS = 4


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Refusal(StrEnum):
    """A way the server may refuse a step before anything runs, which then counts as contained."""

    STATIC_VALIDATION = "static_validation"
    """INVALID_ARGUMENT with a violation of ``code`` by a static-validation rule other than ``syntax_error``."""
    GUARDRAIL = "guardrail"
    """INVALID_ARGUMENT with a violation by an input guardrail rule (blocked pattern, file names, ...)."""
    POLICY = "policy"
    """PERMISSION_DENIED by the tenant's policy (reason POLICY_DENIED): a language, limit or variable."""


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

    def to_client(self) -> Limits:
        return Limits(**self.model_dump())


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


class Step(_Model):
    """One execution of a case."""

    language: Language
    code: str = Field(min_length=1)
    stdin: str = ""
    files: dict[str, str] = Field(default_factory=dict, description="input files (UTF-8 text) by relative path")
    limits: CaseLimits = CaseLimits()
    expect: Expectation

    @model_validator(mode="after")
    def _known_placeholders(self) -> Self:
        _placeholders(self.code, PLACEHOLDERS, "code")
        return self


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
    """One hostile scenario: one to four steps (e.g. plant something, then look for it from a fresh sandbox)."""

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
        return self


class _CaseEntry(_Model):
    """A case as written in a file: its category comes from the file."""

    id: str = Field(pattern=CASE_ID_RE)
    title: str = Field(min_length=1, max_length=200)
    why: str = Field(default="", max_length=2000)
    steps: tuple[Step, ...] = Field(min_length=1, max_length=MAX_STEPS)
    concurrent: bool = False
    distinct_lines: tuple[Marker, ...] = ()
    host_check: HostCheck = HostCheck()


class CorpusFile(_Model):
    """One YAML file of the corpus: a category and its cases."""

    category: Category
    description: str = ""
    cases: tuple[_CaseEntry, ...] = Field(min_length=1)

    def to_cases(self) -> tuple[Case, ...]:
        return tuple(Case(category=self.category, **entry.model_dump()) for entry in self.cases)
