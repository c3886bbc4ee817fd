"""What a suite file holds, as pydantic models: our own cases, and HumanEval problems and completions.

Our models are frozen and reject unknown keys, so a misspelt expectation (``expected_stdot``) is an error
rather than a case that passes without checking anything. HumanEval lines are taken as the dataset and the
code-generation tools write them: fields we do not use (HumanEval+'s ``plus_input``, a results file's
``passed``) are ignored.
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
    "ERROR_NAMES",
    "HUMANEVAL_WALL_TIME_S",
    "Case",
    "CaseLimits",
    "Completion",
    "HumanEvalProblem",
    "SuiteDefaults",
    "SuiteHeader",
    "error_matches",
    "humaneval_program",
    "parse_size",
]

HUMANEVAL_WALL_TIME_S: Final = 3.0
"""The wall-time limit of a HumanEval program unless overridden: HumanEval's own harness gives each 3 s."""

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

    def merged(self, override: CaseLimits) -> CaseLimits:
        """These limits with every field ``override`` sets replaced by its value."""
        return self.model_copy(update={name: getattr(override, name) for name in override.model_fields_set})

    def to_client(self) -> Limits | None:
        """The client's ``Limits``; None when nothing is set (the server's defaults apply)."""
        values = self.model_dump(exclude_none=True)
        return Limits(**values) if values else None


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


class Case(_Model):
    """One case of our own format: a program, what it gets, and what it must do to pass.

    The expectations, all optional and checked in this order: ``expected_status`` (default OK),
    ``expected_exit_code``, ``expected_stdout`` (exact, or ignoring trailing whitespace on every line and
    trailing blank lines with ``strip_trailing_whitespace``), ``expected_files`` (exact contents of files the
    program wrote), then ``check``: a program in the same language run in a fresh sandbox after the case, with
    the case's stdout on its stdin and the files the case wrote in its working directory; the case passes when
    the check exits 0. ``expected_error`` instead says the server must refuse the request (nothing runs).
    ``max_time_s`` is a client-side ceiling on the call: past it the case fails as too slow.
    """

    id: CaseId
    language: str = Field(default="python", min_length=1)
    code: str = Field(min_length=1)
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
    def _status_from_exit_code(cls, data: Any) -> Any:
        # A non-zero expected exit code says what the status must be; spare the author writing both.
        if isinstance(data, Mapping) and "expected_status" not in data:
            code = data.get("expected_exit_code")
            if isinstance(code, int) and not isinstance(code, bool) and code != 0:
                return {**data, "expected_status": Status.NONZERO_EXIT.value}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Case:
        if self.expected_stdout is not None and self.check is not None:
            raise ValueError("give expected_stdout or check, not both")
        if self.expected_error is not None:
            if self.expected_error not in ERROR_NAMES:
                raise ValueError(
                    f"expected_error: unknown error {self.expected_error!r}; one of {', '.join(sorted(ERROR_NAMES))}"
                )
            clashing = {"expected_status", "expected_exit_code", "expected_stdout", "expected_files", "check"}
            given = sorted(clashing & self.model_fields_set)
            if given:
                raise ValueError(f"expected_error says nothing runs: drop {', '.join(given)}")
        if self.expected_exit_code is not None:
            wanted = Status.OK if self.expected_exit_code == 0 else Status.NONZERO_EXIT
            if self.expected_status is not wanted:
                raise ValueError(
                    f"expected_exit_code {self.expected_exit_code} needs expected_status {wanted.value}, "
                    f"not {self.expected_status.value}"
                )
        return self


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
