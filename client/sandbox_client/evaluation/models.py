"""What a suite file holds, as pydantic models: our own cases, and HumanEval problems and completions.

Our models are frozen and reject unknown keys, so a misspelt expectation (``expected_stdot``) is an error
rather than a case that passes without checking anything. A case is one program (``code``), or ``steps``: calls
run in order in one session (docs/sessions.md), each with expectations of its own. HumanEval lines are taken
as the dataset and the code-generation tools write them: fields we do not use (HumanEval+'s ``plus_input``, a
results file's ``passed``) are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Final

import grpc
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from sandbox_client import (
    AuthenticationError,
    DeadlineExceededError,
    InvalidRequestError,
    Limits,
    NotFoundError,
    PermissionDeniedError,
    RequestCancelledError,
    ResourceExhaustedError,
    SandboxError,
    ServerError,
    Status,
    UnavailableError,
)

__all__ = [
    "CALL_LIMITS",
    "ERROR_NAMES",
    "HUMANEVAL_WALL_TIME_S",
    "MAX_STEPS",
    "Case",
    "CaseLimits",
    "Completion",
    "HumanEvalProblem",
    "Step",
    "SuiteDefaults",
    "SuiteHeader",
    "error_matches",
    "humaneval_program",
    "parse_size",
]

HUMANEVAL_WALL_TIME_S: Final = 3.0
"""The wall-time limit of a HumanEval program unless overridden: HumanEval's own harness gives each 3 s."""
MAX_STEPS: Final = 20
"""Steps a multi-step case may have."""
CALL_LIMITS: Final = frozenset({"wall_time_s", "cpu_time_s", "output_bytes"})
"""The limits a step may set for its own call; the others hold for the whole session (set them on the case)."""

_ERROR_CLASSES: Final[tuple[type[SandboxError], ...]] = (
    SandboxError,
    InvalidRequestError,
    AuthenticationError,
    PermissionDeniedError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    DeadlineExceededError,
    RequestCancelledError,
    ServerError,
)
ERROR_NAMES: Final[frozenset[str]] = frozenset(
    {cls.__name__ for cls in _ERROR_CLASSES} | {code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK}
)
"""What ``expected_error`` may name: a client exception class (``InvalidRequestError``) or a gRPC status code
(``INVALID_ARGUMENT``)."""

_SIZE_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", re.IGNORECASE)
_SIZE_UNITS: Final[Mapping[str, int]] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_size(value: object) -> object:
    """A byte count from a suite: an int as is, or a string with a unit (``"64MiB"``, ``"1.5GB"``, ``"512"``).

    KB/MB/GB are powers of 1000, KiB/MiB/GiB powers of 1024. Anything else is returned unchanged for pydantic
    to refuse with its own message.

    Raises:
        ValueError: a string that is not a size, or not a whole number of bytes.
    """
    if not isinstance(value, str):
        return value
    match = _SIZE_RE.fullmatch(value)
    if match is None:
        raise ValueError(f"not a size: {value!r} (a number of bytes, or e.g. '64MiB', '1.5GB')")
    number = float(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()]
    if not number.is_integer():
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return int(number)


Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]
Bytes = Annotated[int, BeforeValidator(parse_size), Field(gt=0, strict=True)]
Count = Annotated[int, Field(gt=0, strict=True)]
CaseId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^\S(?:.*\S)?$")]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Tag = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^\S+$")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CaseLimits(_Model):
    """Resource limits of a case, as ``sandbox_client.Limits`` names them. Unset fields take the server's
    (tenant's) default; sizes may carry a unit (``memory_bytes: 64MiB``)."""

    wall_time_s: Seconds | None = None
    cpu_time_s: Seconds | None = None
    memory_bytes: Bytes | None = None
    max_pids: Count | None = None
    output_bytes: Bytes | None = None
    file_size_bytes: Bytes | None = None
    scratch_bytes: Bytes | None = None
    egress_bytes: Bytes | None = None

    def merged(self, override: CaseLimits) -> CaseLimits:
        """These limits with every field ``override`` sets replaced by its value."""
        return self.model_copy(update={name: getattr(override, name) for name in override.model_fields_set})

    def to_client(self) -> Limits | None:
        """The client's ``Limits``; None when nothing is set (the server's defaults apply)."""
        values = self.model_dump(exclude_none=True)
        return Limits(**values) if values else None

    def call_part(self) -> CaseLimits:
        """Only the limits one call of a session may set (``CALL_LIMITS``)."""
        return CaseLimits(**{k: v for k, v in self.model_dump(exclude_none=True).items() if k in CALL_LIMITS})


class SuiteDefaults(_Model):
    """The ``defaults`` of a YAML suite, applied to every case; a case's own value wins. ``limits`` merge field
    by field and ``tags`` add to each case's own."""

    language: str | None = Field(default=None, min_length=1)
    limits: CaseLimits = CaseLimits()
    max_time_s: Seconds | None = None
    strip_trailing_whitespace: bool | None = None
    tags: tuple[Tag, ...] = ()

    def apply(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """A case's raw mapping with these defaults filled in (before validation, so errors name the case)."""
        merged = dict(raw)
        for name in ("language", "max_time_s", "strip_trailing_whitespace"):
            value = getattr(self, name)
            if value is not None:
                merged.setdefault(name, value)
        own_limits = merged.get("limits")
        if self.limits.model_fields_set and (own_limits is None or isinstance(own_limits, Mapping)):
            merged["limits"] = {**self.limits.model_dump(exclude_none=True), **(own_limits or {})}
        own_tags = merged.get("tags")
        if self.tags and (own_tags is None or isinstance(own_tags, list | tuple)):
            merged["tags"] = [*self.tags, *(t for t in own_tags or () if t not in self.tags)]
        return merged


class SuiteHeader(_Model):
    """A YAML suite written as a mapping (a bare list of cases is fine too)."""

    name: str | None = Field(default=None, min_length=1)
    description: str = ""
    defaults: SuiteDefaults = SuiteDefaults()
    cases: list[Any] = Field(min_length=1)


def _status_from_exit_code(data: Any) -> Any:
    # A non-zero expected exit code says what the status must be; spare the author writing both.
    if isinstance(data, Mapping) and "expected_status" not in data:
        code = data.get("expected_exit_code")
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            return {**data, "expected_status": Status.NONZERO_EXIT.value}
    return data


def _check_expectations(
    expected_stdout: str | None,
    check: str | None,
    expected_error: str | None,
    expected_exit_code: int | None,
    expected_status: Status,
    given: set[str],
    clashing: set[str],
) -> None:
    """The rules shared by a case and a step: one way of checking stdout, a refusal excludes running, an exit
    code implies its status."""
    if expected_stdout is not None and check is not None:
        raise ValueError("give expected_stdout or check, not both")
    if expected_error is not None:
        if expected_error not in ERROR_NAMES:
            known = ", ".join(sorted(ERROR_NAMES))
            raise ValueError(f"expected_error: unknown error {expected_error!r}; one of {known}")
        named = sorted(clashing & given)
        if named:
            raise ValueError(f"expected_error says nothing runs: drop {', '.join(named)}")
    if expected_exit_code is not None:
        wanted = Status.OK if expected_exit_code == 0 else Status.NONZERO_EXIT
        if expected_status is not wanted:
            raise ValueError(
                f"expected_exit_code {expected_exit_code} needs expected_status {wanted.value}, "
                f"not {expected_status.value}"
            )


class Step(_Model):
    """One call of a multi-step case, run in the case's session after the steps before it (see ``Case``).

    Its expectations are a single-step case's, checked in this order: ``expected_status`` (default OK),
    ``expected_exit_code``, ``expected_stdout`` (``strip_trailing_whitespace`` defaults to the case's),
    ``expected_value`` (a Python call's ``value``: the repr of its last expression, ``""`` for none),
    ``expected_outputs`` (the MIME types of its rich outputs, in order: ``[image/png]`` for one figure, ``[]``
    for none), ``expected_files`` (the exact text of workspace files after the call), then ``check`` (a
    program in the step's language run in a fresh sandbox with the step's stdout on its stdin; it passes when
    the check exits 0). ``expected_error``: the server must refuse this call (the session goes on).
    ``limits`` may set only the call's own (``wall_time_s``, ``cpu_time_s``, ``output_bytes``); ``env`` is
    for bash and JavaScript calls (a Python call runs in the session's kernel, with the session's environment).
    """

    code: str = Field(min_length=1)
    language: str = Field(default="python", min_length=1)
    """The case's language when the step gives none."""
    stdin: str = ""
    files: dict[str, str] = Field(default_factory=dict)
    """Placed in the workspace before the call."""
    env: dict[str, str] = Field(default_factory=dict)
    limits: CaseLimits = CaseLimits()
    expected_status: Status = Status.OK
    expected_exit_code: int | None = Field(default=None, strict=True)
    expected_stdout: str | None = None
    strip_trailing_whitespace: bool = False
    expected_value: str | None = None
    expected_outputs: tuple[Annotated[str, Field(min_length=1, pattern=r"^\S+/\S+$")], ...] | None = None
    expected_files: dict[str, str] = Field(default_factory=dict)
    check: str | None = Field(default=None, min_length=1)
    expected_error: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _status_from_exit_code(cls, data: Any) -> Any:
        return _status_from_exit_code(data)

    @model_validator(mode="after")
    def _consistent(self) -> Step:
        _check_expectations(
            self.expected_stdout, self.check, self.expected_error, self.expected_exit_code, self.expected_status,
            self.model_fields_set,
            {"expected_status", "expected_exit_code", "expected_stdout", "expected_value", "expected_outputs",
             "expected_files", "check"},
        )
        session_wide = sorted(name for name in self.limits.model_fields_set if name not in CALL_LIMITS)
        if session_wide:
            raise ValueError(f"limits: {', '.join(session_wide)} hold for the whole session: set them on the case")
        if self.language == "python" and self.env:
            raise ValueError("env: a Python call runs in the session's kernel, with the session's environment: "
                             "set env on the case")
        if self.language != "python" and (self.expected_value is not None or self.expected_outputs is not None):
            raise ValueError("expected_value and expected_outputs are a Python call's")
        return self


STEP_ONLY: Final = ("stdin", "expected_status", "expected_exit_code", "expected_stdout", "expected_files", "check",
                    "expected_error")
"""A single-step case's fields that a multi-step case gives on each step instead."""


class Case(_Model):
    """One case of our own format: a program, what it gets, and what it must do to pass.

    The expectations, all optional and checked in this order: ``expected_status`` (default OK),
    ``expected_exit_code``, ``expected_stdout`` (exact, or ignoring trailing whitespace on every line and
    trailing blank lines with ``strip_trailing_whitespace``), ``expected_files`` (exact contents of files the
    program wrote), then ``check``: a program in the same language run in a fresh sandbox after the case, with
    the case's stdout on its stdin and the files the case wrote in its working directory; the case passes when
    the check exits 0. ``expected_error`` instead says the server must refuse the request (nothing runs).
    ``max_time_s`` is a client-side ceiling on the call: past it the case fails as too slow.

    A multi-step case gives ``steps`` instead of ``code`` (and of the expectations, which each step has): the
    runner starts a session for it (with the case's ``files`` in its workspace, its ``env``, and its
    ``limits``: those of the session, and each call's defaults), runs the steps in order, stops at the first
    that does not pass, and closes the session. It passes when every step does; ``max_time_s`` is then the
    ceiling of each step's call, and ``language`` and ``strip_trailing_whitespace`` the steps' defaults.
    """

    id: CaseId
    language: str = Field(default="python", min_length=1)
    code: str | None = Field(default=None, min_length=1)
    steps: Annotated[tuple[Step, ...], Field(min_length=1, max_length=MAX_STEPS)] | None = None
    stdin: str = ""
    files: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    expected_status: Status = Status.OK
    expected_exit_code: int | None = Field(default=None, strict=True)
    expected_stdout: str | None = None
    strip_trailing_whitespace: bool = False
    expected_files: dict[str, str] = Field(default_factory=dict)
    check: str | None = Field(default=None, min_length=1)
    expected_error: str | None = None
    limits: CaseLimits = CaseLimits()
    max_time_s: Seconds | None = None
    tags: tuple[Tag, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        data = _status_from_exit_code(data)
        steps = data.get("steps") if isinstance(data, Mapping) else None
        if isinstance(steps, list | tuple):
            # The case's language and whitespace rule are its steps' defaults.
            inherited = {name: data[name] for name in ("language", "strip_trailing_whitespace") if name in data}
            data = {**data, "steps": [{**inherited, **step} if isinstance(step, Mapping) else step
                                      for step in steps]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Case:
        if self.steps is not None:
            if self.code is not None:
                raise ValueError("give code (one program) or steps (calls in one session), not both")
            on_steps = [name for name in STEP_ONLY if name in self.model_fields_set]
            if on_steps:
                raise ValueError(f"a case with steps gives {', '.join(on_steps)} on each step")
            return self
        if self.code is None:
            raise ValueError("give code (one program) or steps (calls in one session)")
        _check_expectations(
            self.expected_stdout, self.check, self.expected_error, self.expected_exit_code, self.expected_status,
            self.model_fields_set,
            {"expected_status", "expected_exit_code", "expected_stdout", "expected_files", "check"},
        )
        return self

    @property
    def program(self) -> str:
        """The code of a single-step case ("" for a multi-step one)."""
        return self.code or ""

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages the case runs, in order of first use."""
        if self.steps is None:
            return (self.language,)
        return tuple(dict.fromkeys(step.language for step in self.steps))


def error_matches(expected: str, error: SandboxError) -> bool:
    """Whether ``error`` is what ``expected_error`` names (its class, a base class, or its gRPC code)."""
    return expected == error.code.name or any(cls.__name__ == expected for cls in type(error).__mro__)


class HumanEvalProblem(BaseModel):
    """A HumanEval problem (one line of ``HumanEval.jsonl``); a ``completion`` on the line itself is used
    before the ``canonical_solution``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    task_id: CaseId
    prompt: str
    canonical_solution: str | None = None
    completion: str | None = None
    test: str
    entry_point: Identifier


class Completion(BaseModel):
    """A line of a completions file, as code-generation tools write them (``samples.jsonl``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    task_id: CaseId
    completion: str


def humaneval_program(problem: HumanEvalProblem, completion: str) -> str:
    """The program HumanEval's harness runs for a completion; the completion passes when it exits 0."""
    return problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})"
