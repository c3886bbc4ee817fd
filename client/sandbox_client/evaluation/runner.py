"""Running a suite's cases through a sandbox server, concurrently, and judging each run.

Each run of a case ends in one ``CaseResult``: ``passed``; ``failed`` (it ran, or was refused, and did not
do what the case expects: wrong status, exit code, output or files, a failing check program, too slow, a
refusal other than the one expected); or ``error`` (the harness could not judge it: the server refused a
case that expects to run, the check program could not run, the client failed). Nothing raises out of a run:
every exception becomes a result, so one bad case never stops the others.

A multi-step case (``steps``) runs in a session of its own: created for each run of the case, its steps run in
order, the first that does not pass ends the run (its result names the step: ``failed_step``, and the detail
starts with "step N of M"), and the session is closed whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final, Protocol

from sandbox_client import (
    AsyncSession,
    AsyncSessionContext,
    ExecutionResult,
    Limits,
    SandboxError,
    SessionNotFoundError,
    Status,
)
from sandbox_client.evaluation.models import Case, CaseLimits, Step, error_matches
from sandbox_client.evaluation.suite import LoadedCase

__all__ = [
    "CALL_MARGIN_S",
    "DEFAULT_CONCURRENCY",
    "CaseResult",
    "Executor",
    "Outcome",
    "Reason",
    "RunOptions",
    "RunResult",
    "new_session_id",
    "run_cases",
]

DEFAULT_CONCURRENCY: Final = 4
CALL_MARGIN_S: Final = 30.0
"""Seconds a call may take beyond the case's wall-time limit (queueing, sandbox start and teardown)."""
DETAIL_CHARS: Final = 1200
"""The most of a failure's detail kept (a diff, a stderr tail)."""
DIFF_LINES: Final = 24
CLOSE_TIMEOUT_S: Final = 30.0
"""Seconds the close of a multi-step case's session may take."""
RUN_LABEL: Final = "eval_run"
"""The label (the run's session id as its value) on every session a run creates."""


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"


class Reason(StrEnum):
    """Why a run did not pass."""

    WRONG_STATUS = "wrong_status"
    WRONG_EXIT_CODE = "wrong_exit_code"
    WRONG_OUTPUT = "wrong_output"
    WRONG_FILES = "wrong_files"
    CHECK_FAILED = "check_failed"
    TOO_SLOW = "too_slow"
    NOT_REFUSED = "not_refused"
    """The case expects the server to refuse it, and it ran."""
    WRONG_ERROR = "wrong_error"
    """The server refused the case, but not with the error it expects."""
    REFUSED = "refused"
    """The server refused a case that expects to run (an error)."""
    CHECK_ERROR = "check_error"
    """The check program itself could not run (refused, or the client failed): an error."""
    CLIENT_ERROR = "client_error"
    WRONG_VALUE = "wrong_value"
    """A step's ``value`` (the repr of its last expression) is not the expected one."""
    WRONG_OUTPUTS = "wrong_outputs"
    """A step's rich outputs do not have the expected MIME types."""
    SESSION_CLOSED = "session_closed"
    """The session of a multi-step case closed before its last step ran."""


class Executor(Protocol):
    """What runs the code: ``AsyncSandboxClient.execute``'s and ``session``'s signatures, so a real client is used
    as is (``session`` only for multi-step cases)."""

    async def execute(
        self,
        code: str,
        *,
        language: str = ...,
        stdin: str | bytes = ...,
        files: Mapping[str, bytes | str] | None = ...,
        env: Mapping[str, str] | None = ...,
        limits: Limits | None = ...,
        session_id: str = ...,
        idempotency_key: str = ...,
        timeout: float | None = ...,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> ExecutionResult: ...

    def session(
        self,
        language: str = ...,
        *,
        languages: Sequence[str] | None = ...,
        limits: Limits | None = ...,
        idle_timeout_s: int | None = ...,
        max_lifetime_s: int | None = ...,
        cpu_total_s: float | None = ...,
        env: Mapping[str, str] | None = ...,
        files: Mapping[str, bytes | str] | None = ...,
        labels: Mapping[str, str] | None = ...,
        snapshot_id: str = ...,
        idempotency_key: str = ...,
        timeout: float | None = ...,
    ) -> AsyncSessionContext: ...


@dataclass(frozen=True)
class RunOptions:
    """How to run a suite.

    Raises:
        ValueError: ``concurrency``, ``repeat`` or ``call_timeout_s`` not positive.
    """

    session_id: str
    """Sent with every one-shot execution (and check program) of the run, and the ``eval_run`` label of every
    session its multi-step cases create."""
    concurrency: int = DEFAULT_CONCURRENCY
    """Cases in flight at once."""
    repeat: int = 1
    """Runs of each case (for latency statistics); a case passes only if every run does."""
    limits: CaseLimits | None = None
    """Overrides every case's limits, field by field (not the check programs': they take the defaults)."""
    fail_fast: bool = False
    """Start no new run after the first that does not pass; runs in flight finish."""
    call_timeout_s: float = 30.0
    """The gRPC deadline of each call, raised for a case to its wall-time limit plus ``CALL_MARGIN_S``."""

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.repeat < 1 or not self.call_timeout_s > 0:
            raise ValueError("concurrency, repeat and call_timeout_s must be positive")


@dataclass(frozen=True)
class CaseResult:
    """One run of one case. Times are seconds; ``client_time_s`` is the execute call as the client saw it
    (the check program not included)."""

    case_id: str
    repeat: int
    """Which run of the case, from 0."""
    source: str
    language: str
    tags: tuple[str, ...]
    task_id: str | None
    outcome: Outcome
    reason: Reason | None
    """None when passed."""
    detail: str
    """What went wrong, in words: a short diff, a stderr tail, the server's error. Empty when passed."""
    client_time_s: float
    status: Status | None = None
    """None when there is no result (refused, too slow, client error)."""
    exit_code: int | None = None
    server_wall_time_s: float | None = None
    """``usage.wall_time_s`` as the server measured it."""
    cost: float = 0.0
    """The execution's cost plus its check program's."""
    execution_id: str = ""
    error_type: str | None = None
    """The exception's class when the server refused the call or the client failed (e.g. InvalidRequestError)."""
    error_code: str | None = None
    """The gRPC status code of a refusal."""
    steps: int = 1
    """The case's steps (1 for a single program)."""
    failed_step: int | None = None
    """Which step (from 1) did not pass, in a multi-step case; None otherwise."""
    session_id: str = ""
    """The server's id of a multi-step case's session ("" for a single program, or a session never made)."""

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED


@dataclass(frozen=True)
class RunResult:
    """What ``run_cases`` hands back: every run that started, judged."""

    results: tuple[CaseResult, ...]
    """In suite order, then by run."""
    not_run: int
    """Runs never started (``fail_fast``)."""
    duration_s: float
    session_id: str


def new_session_id() -> str:
    """A fresh session id for one evaluation run."""
    return f"eval-{uuid.uuid4().hex[:16]}"


async def run_cases(
    executor: Executor,
    cases: Sequence[LoadedCase],
    options: RunOptions,
    *,
    on_result: Callable[[CaseResult], None] | None = None,
) -> RunResult:
    """Run every case ``options.repeat`` times, at most ``options.concurrency`` at once.

    Rounds run in order (every case once, then every case again), so repeats of one case are spread out.
    ``on_result`` is called in the event loop as each run ends (a progress bar).
    """
    started = time.perf_counter()
    work: Iterator[tuple[int, int]] = ((r, i) for r in range(options.repeat) for i in range(len(cases)))
    results: dict[tuple[int, int], CaseResult] = {}
    stop = asyncio.Event()

    async def worker() -> None:
        for repeat, index in work:  # one shared iterator: each item is taken by exactly one worker
            if stop.is_set():
                return
            result = await _run_one(executor, cases[index], repeat, options)
            results[(index, repeat)] = result
            if on_result is not None:
                on_result(result)
            if options.fail_fast and not result.passed:
                stop.set()

    async with asyncio.TaskGroup() as group:
        for _ in range(min(options.concurrency, len(cases) * options.repeat)):
            group.create_task(worker())
    ordered = tuple(results[key] for key in sorted(results))
    return RunResult(
        results=ordered,
        not_run=len(cases) * options.repeat - len(ordered),
        duration_s=time.perf_counter() - started,
        session_id=options.session_id,
    )


def _call_timeout(options: RunOptions, *limits: CaseLimits) -> float:
    """The gRPC deadline of a call: the run's, raised to the largest wall-time limit given plus the margin."""
    walls = [lim.wall_time_s for lim in limits if lim.wall_time_s is not None]
    return max(options.call_timeout_s, max(walls) + CALL_MARGIN_S) if walls else options.call_timeout_s


async def _run_one(executor: Executor, loaded: LoadedCase, repeat: int, options: RunOptions) -> CaseResult:
    case = loaded.case
    limits = case.limits.merged(options.limits) if options.limits is not None else case.limits
    base = CaseResult(
        case_id=case.id, repeat=repeat, source=loaded.source, language=", ".join(case.languages), tags=case.tags,
        task_id=loaded.task_id, outcome=Outcome.PASSED, reason=None, detail="", client_time_s=0.0,
        steps=len(case.steps) if case.steps is not None else 1,
    )
    if case.steps is not None:
        return await _run_steps(executor, case, case.steps, limits, base, options)
    call_timeout = _call_timeout(options, limits)

    ceiling = asyncio.timeout(case.max_time_s)  # None: no ceiling
    start = time.perf_counter()
    try:
        async with ceiling:
            executed = await executor.execute(
                case.program,
                language=case.language,
                stdin=case.stdin,
                files=case.files,
                env=case.env,
                limits=limits.to_client(),
                session_id=options.session_id,
                idempotency_key=_idempotency_key(),
                timeout=call_timeout,
            )
    except TimeoutError as exc:
        elapsed = time.perf_counter() - start
        if not ceiling.expired():  # raised by something else than the ceiling: the client failed
            detail = _cut(f"{type(exc).__name__}: {exc}")
            return replace(base, outcome=Outcome.ERROR, reason=Reason.CLIENT_ERROR, detail=detail,
                           client_time_s=elapsed, error_type=type(exc).__name__)
        detail = f"no result after {elapsed:.3f} s; max_time_s is {case.max_time_s} s (the call was cancelled)"
        return replace(base, outcome=Outcome.FAILED, reason=Reason.TOO_SLOW, detail=detail, client_time_s=elapsed)
    except SandboxError as exc:
        refused = replace(base, client_time_s=time.perf_counter() - start, error_type=type(exc).__name__,
                          error_code=exc.code.name)
        if case.expected_error is None:
            return replace(refused, outcome=Outcome.ERROR, reason=Reason.REFUSED, detail=_cut(_refusal(exc)))
        if error_matches(case.expected_error, exc):
            return refused
        detail = _cut(f"expected {case.expected_error}; {_refusal(exc)}")
        return replace(refused, outcome=Outcome.FAILED, reason=Reason.WRONG_ERROR, detail=detail)
    except Exception as exc:  # the harness judges every run, whatever the client raises
        detail = _cut(f"{type(exc).__name__}: {exc}")
        return replace(base, outcome=Outcome.ERROR, reason=Reason.CLIENT_ERROR, detail=detail,
                       client_time_s=time.perf_counter() - start, error_type=type(exc).__name__)
    elapsed = time.perf_counter() - start

    ran = replace(
        base, client_time_s=elapsed, status=executed.status, exit_code=executed.exit_code,
        server_wall_time_s=executed.usage.wall_time_s, cost=executed.cost, execution_id=executed.execution_id,
    )
    if case.max_time_s is not None and elapsed > case.max_time_s:
        detail = f"took {elapsed:.3f} s; max_time_s is {case.max_time_s} s"
        return replace(ran, outcome=Outcome.FAILED, reason=Reason.TOO_SLOW, detail=detail)
    verdict = _judge(case, executed)
    if verdict is not None:
        return replace(ran, outcome=Outcome.FAILED, reason=verdict[0], detail=_cut(verdict[1]))
    if case.check is None:
        return ran
    outcome, reason, detail, check_cost = await _run_check(executor, case.check, case.language, executed, options,
                                                           call_timeout)
    return replace(ran, outcome=outcome, reason=reason, detail=_cut(detail), cost=executed.cost + check_cost)


async def _run_steps(executor: Executor, case: Case, steps: Sequence[Step], limits: CaseLimits, base: CaseResult,
                     options: RunOptions) -> CaseResult:
    """A multi-step case: its session, its steps in order until one does not pass, then the session closed."""
    override = options.limits.call_part() if options.limits is not None else None
    call_limits = [step.limits.merged(override) if override is not None else step.limits for step in steps]
    call_timeout = _call_timeout(options, limits, *call_limits)
    start = time.perf_counter()
    try:
        session = await executor.session(
            case.language, limits=limits.to_client(), env=case.env or None, files=case.files or None,
            labels={RUN_LABEL: options.session_id}, idempotency_key=_idempotency_key(), timeout=call_timeout,
        )
    except SandboxError as exc:
        return replace(base, outcome=Outcome.ERROR, reason=Reason.REFUSED, client_time_s=time.perf_counter() - start,
                       detail=_cut(f"the case's session was refused: {_refusal(exc)}"),
                       error_type=type(exc).__name__, error_code=exc.code.name)
    except Exception as exc:  # the harness judges every run, whatever the client raises
        return replace(base, outcome=Outcome.ERROR, reason=Reason.CLIENT_ERROR,
                       client_time_s=time.perf_counter() - start, error_type=type(exc).__name__,
                       detail=_cut(f"the case's session could not be made: {type(exc).__name__}: {exc}"))
    ran = replace(base, session_id=session.id)
    try:
        for number, (step, step_limits) in enumerate(zip(steps, call_limits, strict=True), start=1):
            ran = await _run_step(executor, session, case, step, step_limits, ran, options, call_timeout)
            if not ran.passed:
                where = f"step {number} of {len(steps)} ({step.language})"
                return replace(ran, failed_step=number, detail=_cut(f"{where}: {ran.detail}"))
        return ran
    finally:
        with contextlib.suppress(Exception):  # already closed, or unreachable: the server's idle timeout ends it
            await session.aclose(timeout=CLOSE_TIMEOUT_S)


async def _run_step(executor: Executor, session: AsyncSession, case: Case, step: Step, limits: CaseLimits,
                    ran: CaseResult, options: RunOptions, call_timeout: float) -> CaseResult:
    """One step; ``ran`` (the case so far) with this step's call added: its time, cost, status and verdict."""
    ceiling = asyncio.timeout(case.max_time_s)
    start = time.perf_counter()
    try:
        async with ceiling:
            executed = await session.run(
                step.code, language=step.language, stdin=step.stdin, files=step.files or None, env=step.env or None,
                limits=limits.to_client(), idempotency_key=_idempotency_key(), timeout=call_timeout,
            )
    except TimeoutError as exc:
        elapsed = time.perf_counter() - start
        ran = replace(ran, client_time_s=ran.client_time_s + elapsed)
        if not ceiling.expired():
            return replace(ran, outcome=Outcome.ERROR, reason=Reason.CLIENT_ERROR, error_type=type(exc).__name__,
                           detail=_cut(f"{type(exc).__name__}: {exc}"))
        return replace(ran, outcome=Outcome.FAILED, reason=Reason.TOO_SLOW,
                       detail=f"no result after {elapsed:.3f} s; max_time_s is {case.max_time_s} s (the call was "
                              "cancelled)")
    except SessionNotFoundError as exc:
        ran = replace(ran, client_time_s=ran.client_time_s + time.perf_counter() - start,
                      error_type=type(exc).__name__, error_code=exc.code.name)
        why = exc.close_reason or "unknown"
        return replace(ran, outcome=Outcome.FAILED, reason=Reason.SESSION_CLOSED,
                       detail=f"the session closed before this step (close reason {why}): {exc.message}")
    except SandboxError as exc:
        ran = replace(ran, client_time_s=ran.client_time_s + time.perf_counter() - start,
                      error_type=type(exc).__name__, error_code=exc.code.name)
        if step.expected_error is None:
            return replace(ran, outcome=Outcome.ERROR, reason=Reason.REFUSED, detail=_cut(_refusal(exc)))
        if error_matches(step.expected_error, exc):
            return ran
        return replace(ran, outcome=Outcome.FAILED, reason=Reason.WRONG_ERROR,
                       detail=_cut(f"expected {step.expected_error}; {_refusal(exc)}"))
    except Exception as exc:  # the harness judges every run, whatever the client raises
        return replace(ran, outcome=Outcome.ERROR, reason=Reason.CLIENT_ERROR, error_type=type(exc).__name__,
                       client_time_s=ran.client_time_s + time.perf_counter() - start,
                       detail=_cut(f"{type(exc).__name__}: {exc}"))
    elapsed = time.perf_counter() - start
    ran = replace(
        ran, client_time_s=ran.client_time_s + elapsed, status=executed.status, exit_code=executed.exit_code,
        server_wall_time_s=(ran.server_wall_time_s or 0.0) + executed.usage.wall_time_s,
        cost=ran.cost + executed.cost, execution_id=executed.execution_id, error_type=None, error_code=None,
    )
    if case.max_time_s is not None and elapsed > case.max_time_s:
        return replace(ran, outcome=Outcome.FAILED, reason=Reason.TOO_SLOW,
                       detail=f"took {elapsed:.3f} s; max_time_s is {case.max_time_s} s")
    verdict = _judge_call(step, executed) or _judge_session_outputs(step, executed)
    if verdict is None:
        verdict = await _judge_workspace(session, step, call_timeout)
    if verdict is not None:
        return replace(ran, outcome=Outcome.FAILED, reason=verdict[0], detail=_cut(verdict[1]))
    if step.check is None:
        return ran
    outcome, reason, detail, check_cost = await _run_check(executor, step.check, step.language, executed, options,
                                                           call_timeout, with_files=False)
    return replace(ran, outcome=outcome, reason=reason, detail=_cut(detail), cost=ran.cost + check_cost)


def _judge_session_outputs(step: Step, executed: ExecutionResult) -> tuple[Reason, str] | None:
    """A step's value and rich outputs against what it expects."""
    if step.expected_value is not None and executed.value != step.expected_value:
        return Reason.WRONG_VALUE, f"value {executed.value!r}, expected {step.expected_value!r}" + _tails(executed)
    if step.expected_outputs is not None:
        mimes = [output.mime_type for output in executed.outputs]
        if mimes != list(step.expected_outputs):
            return Reason.WRONG_OUTPUTS, f"rich outputs {mimes}, expected {list(step.expected_outputs)}" + _tails(
                executed)
    return None


async def _judge_workspace(session: AsyncSession, step: Step, call_timeout: float) -> tuple[Reason, str] | None:
    """A step's ``expected_files``: the workspace's files after the call, downloaded."""
    for path, expected in step.expected_files.items():
        try:
            content = await session.files.download(path, timeout=call_timeout)
        except SandboxError as exc:
            return Reason.WRONG_FILES, f"cannot read {path!r} from the workspace: {_refusal(exc)}"
        actual = content.decode("utf-8", errors="replace")
        if actual != expected:
            return Reason.WRONG_FILES, f"{path} differs:\n{_diff(expected, actual, path)}"
    return None


def _judge(case: Case, executed: ExecutionResult) -> tuple[Reason, str] | None:
    """Why the result does not meet the case's expectations (the first one missed), or None if it does."""
    verdict = _judge_call(case, executed)
    if verdict is not None:
        return verdict
    for path, expected in case.expected_files.items():
        written = executed.file(path)
        if written is None:
            names = ", ".join(f.path for f in executed.files) or "none"
            return Reason.WRONG_FILES, f"the program wrote no file {path!r} (it wrote: {names})"
        actual = written.content.decode("utf-8", errors="replace")
        if actual != expected:
            return Reason.WRONG_FILES, f"{path} differs:\n{_diff(expected, actual, path)}"
    return None


def _judge_call(case: Case | Step, executed: ExecutionResult) -> tuple[Reason, str] | None:
    """The expectations a case and a step share: the refusal it expects, its status, exit code and stdout."""
    if case.expected_error is not None:
        return Reason.NOT_REFUSED, (
            f"expected the server to refuse it with {case.expected_error}, but it ran: {_status_line(executed)}"
        )
    if executed.status is not case.expected_status:
        return Reason.WRONG_STATUS, f"{_status_line(executed)}, expected {case.expected_status.value}" + _tails(
            executed
        )
    if case.expected_exit_code is not None and executed.exit_code != case.expected_exit_code:
        return Reason.WRONG_EXIT_CODE, f"exit code {executed.exit_code}, expected {case.expected_exit_code}" + _tails(
            executed
        )
    if case.expected_stdout is not None:
        expected, actual = case.expected_stdout, executed.stdout
        if case.strip_trailing_whitespace:
            expected, actual = _strip_trailing(expected), _strip_trailing(actual)
        if actual != expected:
            truncated = " (stdout was truncated at the output limit)" if executed.stdout_truncated else ""
            return Reason.WRONG_OUTPUT, f"stdout differs{truncated}:\n{_diff(expected, actual, 'stdout')}" + _tails(
                executed, stdout=False
            )
    return None


async def _run_check(
    executor: Executor, check: str, language: str, executed: ExecutionResult, options: RunOptions,
    call_timeout: float, *, with_files: bool = True,
) -> tuple[Outcome, Reason | None, str, float]:
    """Run a ``check`` program on a case's (or a step's) output, in a fresh sandbox: (outcome, reason, detail, the
    check's cost). A step's check gets its stdout only (a session's calls write to the workspace, not files)."""
    files: dict[str, bytes | str] = (
        {f.path: f.content for f in executed.files if not f.truncated} if with_files else {})
    try:
        checked = await executor.execute(
            check,
            language=language,
            stdin=executed.stdout_bytes,
            files=files,
            session_id=options.session_id,
            idempotency_key=_idempotency_key(),
            timeout=call_timeout,
        )
    except SandboxError as exc:
        return Outcome.ERROR, Reason.CHECK_ERROR, f"the check program was refused: {_refusal(exc)}", 0.0
    except Exception as exc:  # as for the case itself: a result, never an exception
        return Outcome.ERROR, Reason.CHECK_ERROR, f"the check program failed: {type(exc).__name__}: {exc}", 0.0
    if checked.ok:
        return Outcome.PASSED, None, "", checked.cost
    detail = f"the check program ended {_status_line(checked)}" + _tails(checked)
    if executed.stdout_truncated:
        detail += "\n(the case's stdout was truncated at the output limit)"
    return Outcome.FAILED, Reason.CHECK_FAILED, detail, checked.cost


def _idempotency_key() -> str:
    # One per execution: a retry of the same call (the client's own) never runs the program twice.
    return f"eval-{uuid.uuid4().hex}"


def _status_line(executed: ExecutionResult) -> str:
    line = f"status {executed.status.value}"
    if executed.message and executed.status is not Status.OK:
        return f"{line}: {executed.message}"  # the server's words name the exit code or signal
    if executed.exit_code not in (0, -1):
        line += f" (exit code {executed.exit_code})"
    return line


def _refusal(exc: SandboxError) -> str:
    """The error's class, code and message, and the field and quota violations the message does not repeat."""
    text = f"{type(exc).__name__} ({exc.code.name}): {exc.message}"
    for violation in exc.details.field_violations:
        reason = f" [{violation.reason}]" if violation.reason else ""
        if violation.description not in exc.message or reason:
            text += f"\n  {violation.field}: {violation.description}{reason}"
    for quota in exc.details.quota_violations:
        if quota.description not in exc.message:
            text += f"\n  {quota.subject}: {quota.description}"
    return text


def _tails(executed: ExecutionResult, *, stdout: bool = True) -> str:
    """The ends of stdout and stderr, for a detail."""
    parts = []
    if stdout and executed.stdout.strip():
        parts.append("stdout (end):\n" + _tail(executed.stdout))
    if executed.stderr.strip():
        parts.append("stderr (end):\n" + _tail(executed.stderr))
    return "".join("\n" + part for part in parts)


def _tail(text: str, lines: int = 8, chars: int = 400) -> str:
    kept = "\n".join(text.rstrip("\n").splitlines()[-lines:])
    return kept if len(kept) <= chars else "..." + kept[-chars:]


def _strip_trailing(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def _diff(expected: str, actual: str, name: str) -> str:
    """A short unified diff; when the texts differ only in whitespace, both shown with escapes."""
    lines = list(
        difflib.unified_diff(
            expected.splitlines(), actual.splitlines(), f"expected {name}", f"actual {name}", n=1, lineterm=""
        )
    )
    if not lines:
        return (
            "  (they differ only in line endings or the final newline)"
            f"\n  expected: {expected[-200:]!r}\n  actual:   {actual[-200:]!r}"
        )
    if len(lines) > DIFF_LINES:
        lines = [*lines[:DIFF_LINES], f"... ({len(lines) - DIFF_LINES} more diff lines)"]
    body = "\n".join(lines)
    if _strip_trailing(expected) == _strip_trailing(actual):
        body += (
            "\n(they differ only in trailing whitespace: set strip_trailing_whitespace to ignore it)"
            f"\n  expected: {expected[-200:]!r}\n  actual:   {actual[-200:]!r}"
        )
    return body


def _cut(detail: str) -> str:
    return detail if len(detail) <= DETAIL_CHARS else detail[:DETAIL_CHARS] + " ..."
