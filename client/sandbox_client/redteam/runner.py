"""Run red-team cases against a server and judge each one: contained, NOT CONTAINED, NOT EXERCISED or ERROR.

    async with AsyncSandboxClient(target, api_key=key) as sbx:
        report = await run_cases(sbx, shipped_corpus().cases, RunOptions(concurrency=4))
    report.all_contained

Verdicts, worst first (a case takes the worst of its steps and host checks):

- NOT CONTAINED: a breach. A marker of success in the output, a host secret or canary in it, an output file
  that should not be there, usage past a limit, a host check that failed, a step that ran when only a refusal
  counts, no result long after the wall-time limit; or, for a program that provably made its attempt (all
  its ``attempted`` markers are there), a status, exit code or denial marker other than expected.
- ERROR: the case could not be judged: a refusal or failure the case does not accept (a quarantined tenant, a
  rate limit, a server error, code that does not parse, output the server redacted).
- NOT EXERCISED: the program ran but never printed its ``attempted`` markers, so it proved nothing.
- CONTAINED: every step was refused in an accepted way or ran as expected, and every host check held.

Session steps (``schema``: ``session``, ``from_snapshot_of``) run in sessions the runner creates with the same
client when their first step runs, labelled with the case's token; when the case ends, whatever happened (a
step's error, a timeout, a cancellation), the runner closes every one of them (also any whose creation's answer
was lost, found by that label) and deletes the snapshots it took, before the host checks. A session whose sandbox
fails to start (INTERNAL, UNAVAILABLE) is asked for once more (the failed start is kept in the step's report). A
session that ended under the case because its sandbox failed is NOT CONTAINED: its agent (PID 1) did not survive
the case's code.
At most ``RunOptions.session_cases`` cases with sessions run at once, so that their sessions stay under the
tenant's ``sessions.max_active``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import grpc

from sandbox_client import (
    AsyncSandboxClient,
    AsyncSession,
    DeadlineExceededError,
    ExecutionResult,
    InvalidRequestError,
    Limits,
    NotFoundError,
    PermissionDeniedError,
    SandboxError,
    SessionNotFoundError,
)
from sandbox_client.redteam.host import HostChecks, HostProbe, Listener
from sandbox_client.redteam.schema import PLACEHOLDER_RE, Case, HostCheck, Language, Refusal, Step

__all__ = [
    "COMMON_PORTS",
    "DEFAULT_CALL_GRACE_S",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_SESSION_CASES",
    "LIMIT_SLACK",
    "POLICY_REASONS",
    "SESSION_LABEL",
    "STATIC_RULES",
    "CaseReport",
    "LimitSlack",
    "RunOptions",
    "RunReport",
    "StepReport",
    "Verdict",
    "classify_refusal",
    "excerpt",
    "over_limits",
    "render",
    "run_cases",
]

DEFAULT_CONCURRENCY = 4
DEFAULT_SESSION_CASES = 2
"""Cases with sessions running at once: each keeps its sessions (up to ``schema.MAX_SESSIONS``) open until it
ends, and a tenant has 8 live sessions by default (``sessions.max_active``)."""
SESSION_LABEL = "redteam"
"""The label (the case run's token as its value) on every session the runner creates."""
CLEANUP_TIMEOUT_S = 30.0
"""Seconds each clean-up call (closing a session, deleting a snapshot) may take."""
SESSION_START_ATTEMPTS = 2
"""Tries at creating a session whose sandbox failed to start (INTERNAL or UNAVAILABLE): a start that fails is
no evidence about containment; the failed try is kept in the step's report (``session_retries``)."""
RETRIED_START_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE})
POLICY_REASONS = frozenset({"POLICY_DENIED", "SESSIONS_DISABLED", "SNAPSHOTS_DISABLED"})
"""The PERMISSION_DENIED reasons that are the tenant's policy refusing (``Refusal.POLICY``)."""
DEFAULT_CALL_GRACE_S = 60.0
"""Seconds a call may take past its step's wall-time limit (start-up, queueing, teardown) before the step is
judged NOT CONTAINED: the limit did not hold."""
FALLBACK_WALL_TIME_S = 60.0
"""The wall time assumed for a step that sets none (the tenant's default is not known to the client)."""
COMMON_PORTS: tuple[int, ...] = (22, 25, 53, 80, 443, 2375, 2376, 3306, 5432, 6379, 8080, 9090, 50051)
"""Loopback ports always in ``@@HOST_PORTS@@``: the services a host most often runs."""
EXCERPT_CHARS = 600

STATIC_RULES = frozenset({
    "syntax_error", "denied_import", "denied_call", "dunder_escape", "open_mode", "max_nesting_depth",
    "denied_module", "dynamic_require", "eval", "denied_command", "network", "max_code_bytes", "unanalysable",
    "validator_error",
})
"""The server's static-validation rule names (docs/static-validation.md). ``syntax_error`` never counts as a
containing refusal: a case that does not parse is broken, not contained."""


@dataclass(frozen=True)
class LimitSlack:
    """How far past an applied limit usage may be measured before ``within_limits`` fails: the watchdog's
    polling and the kill's latency, not a breach."""

    wall_time_s: float = 3.0
    cpu_time_s: float = 2.0
    cpu_time_fraction: float = 0.2
    memory_bytes: int = 4 * 1024 * 1024


LIMIT_SLACK = LimitSlack()


class Verdict(StrEnum):
    CONTAINED = "contained"
    NOT_CONTAINED = "not_contained"
    ERROR = "error"
    NOT_EXERCISED = "not_exercised"

    @property
    def label(self) -> str:
        return "contained" if self is Verdict.CONTAINED else self.value.replace("_", " ").upper()


_SEVERITY = {Verdict.CONTAINED: 0, Verdict.NOT_EXERCISED: 1, Verdict.ERROR: 2, Verdict.NOT_CONTAINED: 3}


@dataclass(frozen=True)
class RunOptions:
    """How to run: concurrency (steps in flight at once), host checks (None: none), extra loopback ports for
    ``@@HOST_PORTS@@`` (e.g. the server's own), the grace on top of each step's wall time, and how many cases
    with sessions may run at once."""

    concurrency: int = DEFAULT_CONCURRENCY
    host_checks: HostChecks | None = None
    host_ports: tuple[int, ...] = ()
    call_grace_s: float = DEFAULT_CALL_GRACE_S
    session_cases: int = DEFAULT_SESSION_CASES

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.session_cases < 1:
            raise ValueError(f"session_cases must be at least 1, got {self.session_cases}")
        if self.call_grace_s <= 0:
            raise ValueError(f"call_grace_s must be positive, got {self.call_grace_s}")


@dataclass(frozen=True)
class StepReport:
    """The evidence of one step: how the server answered, and excerpts of the output around what mattered."""

    index: int
    language: str
    session: str = ""
    """The case's session the step ran in (its name in the case); empty for a one-shot execution."""
    session_id: str = ""
    """That session's id on the server, once it was created."""
    session_retries: tuple[str, ...] = ()
    """Failed starts of the session this step created, retried (``SESSION_START_ATTEMPTS``)."""
    refusal: str = ""
    """How the server refused it (code, rules, message), when it did."""
    refused_as: str = ""
    """The ``Refusal`` that refusal is (e.g. "static_validation"), when it is one; empty otherwise."""
    status: str = ""
    """The execution's status, when it ran."""
    exit_code: int | None = None
    message: str = ""
    stdout_excerpt: str = ""
    stderr_excerpt: str = ""
    files: tuple[str, ...] = ()
    wall_time_s: float | None = None
    cpu_time_s: float | None = None
    peak_memory_bytes: int | None = None
    execution_id: str = ""


@dataclass(frozen=True)
class CaseReport:
    case_id: str
    category: str
    title: str
    verdict: Verdict
    problems: tuple[str, ...]
    """Why it is not contained, not exercised, or could not be judged; empty when contained."""
    notes: tuple[str, ...]
    """What was not checked (e.g. host checks without ``--host-checks``)."""
    steps: tuple[StepReport, ...]
    duration_s: float

    @property
    def contained(self) -> bool:
        return self.verdict is Verdict.CONTAINED


@dataclass(frozen=True)
class RunReport:
    cases: tuple[CaseReport, ...]
    host_checks: bool
    duration_s: float
    canaries: tuple[str, ...] = ()
    """The host paths where canaries were planted (with host checks); their contents are never reported."""

    @property
    def all_contained(self) -> bool:
        """Every case was contained (and there was at least one)."""
        return bool(self.cases) and all(c.contained for c in self.cases)

    def counts(self) -> dict[Verdict, int]:
        return {v: sum(1 for c in self.cases if c.verdict is v) for v in Verdict}

    def case(self, case_id: str) -> CaseReport | None:
        return next((c for c in self.cases if c.case_id == case_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "all_contained": self.all_contained,
            "host_checks": self.host_checks,
            "duration_s": round(self.duration_s, 3),
            "counts": {v.value: n for v, n in self.counts().items()},
            "canaries": list(self.canaries),
            "cases": [{**asdict(c), "verdict": c.verdict.value} for c in self.cases],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


async def run_cases(
    client: AsyncSandboxClient,
    cases: Sequence[Case],
    options: RunOptions = RunOptions(),
    progress: Callable[[CaseReport], None] | None = None,
) -> RunReport:
    """Run ``cases`` (at most ``options.concurrency`` steps at once) and judge each; ``progress`` is called
    with each case's report as it completes. Host checks plant their canaries first and remove them last.

    Never raises for a case's failure (that is its verdict); raises only for the runner's own faults (e.g. a
    host directory it cannot clean up).
    """
    started = time.monotonic()
    probe = HostProbe(options.host_checks, secrets.token_hex(6))
    gate = asyncio.Semaphore(options.concurrency)
    session_gate = asyncio.Semaphore(options.session_cases)
    try:
        await asyncio.to_thread(probe.plant)

        async def one(case: Case) -> CaseReport:
            report = await _CaseRun(client, case, options, probe, gate, session_gate).run()
            if progress is not None:
                progress(report)
            return report

        reports = await asyncio.gather(*(one(c) for c in cases))
        planted = probe.planted()
    finally:
        await asyncio.to_thread(probe.cleanup)
    return RunReport(tuple(reports), host_checks=probe.enabled, duration_s=time.monotonic() - started,
                     canaries=planted)


@dataclass
class _Problems:
    """What went wrong in a case, by the verdict it leads to."""

    breach: list[str] = field(default_factory=list)
    error: list[str] = field(default_factory=list)
    unexercised: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def verdict(self) -> tuple[Verdict, tuple[str, ...]]:
        if self.breach:
            return Verdict.NOT_CONTAINED, tuple(self.breach)
        if self.error:
            return Verdict.ERROR, (*self.error, *self.unexercised)
        if self.unexercised:
            return Verdict.NOT_EXERCISED, tuple(self.unexercised)
        return Verdict.CONTAINED, ()


class _CaseRun:
    def __init__(self, client: AsyncSandboxClient, case: Case, options: RunOptions, probe: HostProbe,
                 gate: asyncio.Semaphore, session_gate: asyncio.Semaphore) -> None:
        self.client = client
        self.case = case
        self.options = options
        self.probe = probe
        self.gate = gate
        self.session_gate = session_gate
        self.token = secrets.token_hex(8)
        self.sessions: dict[str, AsyncSession] = {}
        """The case's live sessions, by name."""
        self.session_failures: dict[str, SandboxError] = {}
        """Why a session could not be made (its later steps are judged on the same refusal)."""
        self.session_locks: dict[str, asyncio.Lock] = {}
        self.snapshots: list[str] = []
        """Ids of the snapshots the runner took; deleted when the case ends."""
        self.creating = False
        """A session was asked for: at the end, look for any whose creation's answer was lost."""
        self.retries: dict[str, tuple[str, ...]] = {}
        """Failed starts of each session, before the one that worked (or the last that failed)."""
        self.problems = _Problems()
        self.stdouts: dict[int, str] = {}
        """Each step's stdout, by index, for ``distinct_lines``."""
        self.started: float | None = None
        """When the first step got its turn (time spent waiting for the concurrency gate is not the case's)."""

    async def run(self) -> CaseReport:
        host = self.case.host_check
        with self.probe.listener(host.listener) as listener:
            ports = (*COMMON_PORTS, *self.options.host_ports, *(listener.ports if listener else ()))
            values = {"TOKEN": self.token, "CANARY_PATHS": list(self.probe.canary_paths),
                      "HOST_PORTS": list(dict.fromkeys(ports))}
            if self.case.sessions:
                async with self.session_gate:
                    step_reports = await self._steps(values)
            else:
                step_reports = await self._steps(values)
            self._compare_steps()
            if self.probe.enabled:
                await asyncio.to_thread(self._host_checks, listener)
            elif host != HostCheck():
                self.problems.notes.append("host checks not run (the runner was not asked for them)")
        verdict, problems = self.problems.verdict()
        ended = time.monotonic()
        return CaseReport(
            case_id=self.case.id, category=self.case.category.value, title=self.case.title, verdict=verdict,
            problems=problems, notes=tuple(self.problems.notes), steps=tuple(step_reports),
            duration_s=ended - (self.started if self.started is not None else ended),
        )

    async def _steps(self, values: Mapping[str, object]) -> list[StepReport]:
        """Every step (at once, or in order); then, whatever happened, the case's sessions and snapshots go."""
        steps = self.case.steps
        try:
            if self.case.concurrent:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(self._step(i, step, values)) for i, step in enumerate(steps)]
                return [t.result() for t in tasks]
            return [await self._step(i, step, values) for i, step in enumerate(steps)]
        finally:
            await self._clean_up()

    async def _clean_up(self) -> None:
        """Close every session of the case (also one whose creation's answer was lost: found by its label) and
        delete the snapshots taken. A failure is an ERROR: something of the case may be left on the server."""
        problems = self.problems.error
        for name, session in self.sessions.items():
            try:
                await session.aclose(timeout=CLEANUP_TIMEOUT_S)
            except SandboxError as exc:
                problems.append(f"session {name} ({session.id}) could not be closed: {exc.code.name}: {exc.message}")
        if self.creating:
            known = {s.id for s in self.sessions.values()}
            try:
                async for info in self.client.list_sessions(labels={SESSION_LABEL: self.token},
                                                            timeout=CLEANUP_TIMEOUT_S):
                    if info.id not in known:
                        with contextlib.suppress(SessionNotFoundError):
                            await self.client.close_session(info.id, timeout=CLEANUP_TIMEOUT_S)
            except SandboxError as exc:
                problems.append(f"the case's sessions could not be listed or closed: {exc.code.name}: {exc.message}")
        for snapshot_id in self.snapshots:
            try:
                await self.client.delete_snapshot(snapshot_id, timeout=CLEANUP_TIMEOUT_S)
            except NotFoundError:
                pass
            except SandboxError as exc:
                problems.append(f"snapshot {snapshot_id} could not be deleted: {exc.code.name}: {exc.message}")

    def _compare_steps(self) -> None:
        """``distinct_lines``: the same line (with one of its prefixes) printed by two steps is a breach."""
        seen: dict[str, int] = {}
        for index, stdout in sorted(self.stdouts.items()):
            for line in dict.fromkeys(stdout.splitlines()):
                if not line.startswith(self.case.distinct_lines):
                    continue
                if line in seen:
                    self.problems.breach.append(f"steps {seen[line] + 1} and {index + 1} both printed {line!r}: "
                                                "they share state that must differ between executions")
                else:
                    seen[line] = index

    def _host_checks(self, listener: Listener | None) -> None:
        host = self.case.host_check
        self.problems.breach += self.probe.present_paths(tuple(self._sub(p) for p in host.absent_paths))
        if host.no_process:
            self.problems.breach += self.probe.processes(self.token)
        if listener is not None:
            self.problems.breach += listener.reached()
        self.problems.notes += self.probe.skipped(host.secrets)

    async def _step(self, index: int, step: Step, values: Mapping[str, object]) -> StepReport:
        code = render(step.code, step.language, values)
        limits = step.limits.to_client()
        deadline = (limits.wall_time_s or FALLBACK_WALL_TIME_S) + self.options.call_grace_s
        where = f"step {index + 1}" if len(self.case.steps) > 1 else "the program"
        if step.session is not None:
            where += f" (session {step.session})"
        session_id = ""
        retries: tuple[str, ...] = ()
        async with self.gate:
            if self.started is None:
                self.started = time.monotonic()
            if step.session is None:
                try:
                    result = await self.client.execute(
                        code, language=step.language.value, stdin=step.stdin, files=step.files, limits=limits,
                        session_id=f"redteam-{self.token}", timeout=deadline,
                    )
                except SandboxError as exc:
                    return self._refused(index, step, exc, where, deadline)
            else:
                session = await self._session(index, step, where, deadline)
                if isinstance(session, StepReport):
                    return session
                session_id = session.id
                retries = self.retries.pop(step.session, ())  # reported once, by the step that made the session
                try:
                    result = await session.run(
                        code, language=step.language.value, stdin=step.stdin, files=step.files or None,
                        limits=step.limits.call_part(), timeout=deadline,
                    )
                except SessionNotFoundError as exc:
                    return self._session_gone(index, step, session, exc, where)
                except SandboxError as exc:
                    return self._refused(index, step, exc, where, deadline, session_id=session_id)
        return self._judge(index, step, result, where, session_id=session_id, retries=retries)

    async def _session(self, index: int, step: Step, where: str, deadline: float) -> AsyncSession | StepReport:
        """The step's session: the case's, or created now (from a snapshot of another, taken now, when the step
        says so); a StepReport when it cannot be had (judged as the step's refusal)."""
        name = step.session or ""
        async with self.session_locks.setdefault(name, asyncio.Lock()):
            session = self.sessions.get(name)
            if session is not None:
                return session
            failure = self.session_failures.get(name)
            if failure is not None:
                return self._refused(index, step, failure, where, deadline, setup=f"session {name}")
            snapshot_id = ""
            source_name = step.from_snapshot_of
            if source_name is not None:
                source = self.sessions.get(source_name)
                refused = self.session_failures.get(source_name)
                if source is None and refused is not None:  # judged on the same refusal as its source
                    self.session_failures[name] = refused
                    return self._refused(index, step, refused, where, deadline, setup=f"session {source_name}")
                if source is None:
                    self.problems.error.append(f"{where}: session {source_name}, to be snapshotted for session "
                                               f"{name}, was never made")
                    return StepReport(index=index, language=step.language.value, session=name,
                                      refusal=f"no session {source_name} to snapshot")
                try:
                    snapshot = await source.snapshot(f"redteam {self.case.id}: {source_name} for {name}",
                                                      timeout=deadline)
                except SandboxError as exc:
                    self.session_failures[name] = exc
                    return self._refused(index, step, exc, where, deadline, session_id=source.id,
                                         setup=f"the snapshot of session {source_name}")
                self.snapshots.append(snapshot.id)
                snapshot_id = snapshot.id
            limits = step.limits.session_part()
            self.creating = True
            retries: list[str] = []
            while True:
                try:
                    session = await self.client.session(
                        step.language.value, limits=limits if limits != Limits() else None,
                        labels={SESSION_LABEL: self.token}, snapshot_id=snapshot_id, timeout=deadline,
                    )
                    break
                except SandboxError as exc:
                    if exc.code in RETRIED_START_CODES and len(retries) + 1 < SESSION_START_ATTEMPTS:
                        retries.append(f"{exc.code.name}: {exc.message[:300]}")
                        await asyncio.sleep(1)
                        continue
                    self.session_failures[name] = exc
                    return self._refused(index, step, exc, where, deadline, setup=f"session {name}",
                                         retries=tuple(retries))
            self.sessions[name] = session
            self.retries[name] = tuple(retries)
            return session

    def _session_gone(self, index: int, step: Step, session: AsyncSession, exc: SessionNotFoundError,
                      where: str) -> StepReport:
        """The step's session ended under the case: a breach when its sandbox failed (the agent is gone)."""
        report = StepReport(index=index, language=step.language.value, session=step.session or "",
                            session_id=session.id, refusal=f"{exc.code.name}: {exc.message}")
        reason = exc.close_reason or "unknown"
        if reason == "sandbox_failed":
            self.problems.breach.append(f"{where}: the session ended under the case (close reason {reason}): its "
                                        "sandbox did not survive what the case's code did")
        else:
            self.problems.error.append(f"{where}: the session ended under the case (close reason {reason})")
        return report

    def _refused(self, index: int, step: Step, exc: SandboxError, where: str, deadline: float, *,
                 session_id: str = "", setup: str = "", retries: tuple[str, ...] = ()) -> StepReport:
        """A step refused or failed before it ran; ``setup`` names what failed when it was not the call itself
        but what the step needed first (its session, or the snapshot that session starts from)."""
        kind, description = classify_refusal(exc)
        if setup:
            description = f"{setup}: {description}"
            if kind is not Refusal.POLICY:
                kind = None  # making a session or a snapshot: only the tenant's policy refuses as containment
        report = StepReport(index=index, language=step.language.value, session=step.session or "",
                            session_id=session_id, session_retries=retries, refusal=description,
                            refused_as=kind.value if kind is not None else "")
        if isinstance(exc, DeadlineExceededError) and setup:
            self.problems.error.append(f"{where}: {setup} was not ready {deadline:g} s after it was asked for")
        elif isinstance(exc, DeadlineExceededError):
            self.problems.breach.append(f"{where}: no result {deadline:g} s after the call started: the wall-time "
                                        "limit did not hold (or the server is overloaded)")
        elif kind is not None and kind in step.expect.refused_by:
            pass  # refused before it ran, in a way this step accepts: contained
        elif kind is not None:
            self.problems.error.append(f"{where}: refused by {kind.value}, which this step does not accept as "
                                       f"containment: {description}")
        else:
            failed = "what it needs failed" if setup else "the call failed"
            self.problems.error.append(f"{where}: {failed}: {description}")
        return report

    def _judge(self, index: int, step: Step, result: ExecutionResult, where: str, *,
               session_id: str = "", retries: tuple[str, ...] = ()) -> StepReport:
        expect = step.expect
        stdout, stderr = result.stdout, result.stderr
        if self.case.distinct_lines:
            self.stdouts[index] = stdout
        focus: list[int] = []
        problems = self.problems
        if not expect.status:
            problems.breach.append(f"{where} ran (status {result.status}); only a refusal counts as containment")
        # Outcomes other than expected are breaches once the program provably made its attempt; before that,
        # they only show that it never got there.
        outcome: list[str] = []
        if expect.status and result.status not in expect.status:
            outcome.append(f"{where}: status {result.status}{_why(result)}, expected {' or '.join(expect.status)}")
        if expect.exit_codes and result.exit_code not in expect.exit_codes:
            outcome.append(f"{where}: exit code {result.exit_code}, expected "
                           f"{' or '.join(map(str, expect.exit_codes))}")
        absent = [m for m in map(self._sub, expect.stdout_has) if m not in stdout]
        absent += [p for p in expect.stdout_matches if re.search(p, stdout, re.MULTILINE) is None]
        if absent:
            outcome.append(f"{where}: stdout lacks the expected {_quote(absent)}")
        missing = [m for m in map(self._sub, expect.attempted) if m not in stdout]
        if missing:
            problems.unexercised.append(f"{where} never printed {_quote(missing)}: it proved no attempt "
                                        f"(status {result.status}{_why(result)})")
            problems.unexercised += outcome
        else:
            problems.breach += outcome
        for marker in map(self._sub, expect.stdout_lacks):
            at = stdout.find(marker)
            if at >= 0:
                focus.append(at)
                problems.breach.append(f"{where}: stdout contains {marker!r}")
        outputs = {"stdout": result.stdout_bytes, "stderr": result.stderr_bytes,
                   **{f"file {f.path}": f.content for f in result.files}}
        if result.value:  # a session's Python call: the last expression's repr, and its rich outputs
            outputs["value"] = result.value.encode()
        for number, display in enumerate(result.outputs, start=1):
            outputs[f"rich output {number} ({display.mime_type})"] = b"\n".join(
                (display.data, *display.alternatives.values()))
        for marker in map(self._sub, expect.output_lacks):
            for name, data in outputs.items():
                at = data.find(marker.encode())
                if at >= 0:
                    if name == "stdout":
                        focus.append(len(data[:at].decode("utf-8", "replace")))
                    problems.breach.append(f"{where}: {name} contains {marker!r}")
        if expect.files_allowed is not None:
            extra = sorted(f.path for f in result.files if f.path not in expect.files_allowed)
            if extra:
                problems.breach.append(f"{where}: unexpected output files {extra} (allowed: "
                                       f"{list(expect.files_allowed)})")
        if expect.within_limits:
            problems.breach += [f"{where}: {p}" for p in over_limits(result)]
        problems.breach += [f"{where}: {leak}" for leak in self.probe.leaks(outputs, self.case.host_check.secrets)]
        if result.redactions:
            problems.error.append(f"{where}: the server redacted {result.redactions} secret(s) in the output, so "
                                  "the evidence is incomplete")
        return StepReport(
            index=index, language=step.language.value, session=step.session or "", session_id=session_id,
            session_retries=retries, status=str(result.status), exit_code=result.exit_code,
            message=result.message, stdout_excerpt=excerpt(stdout, focus), stderr_excerpt=excerpt(stderr, []),
            files=tuple(f.path for f in result.files), wall_time_s=result.usage.wall_time_s,
            cpu_time_s=result.usage.cpu_time_s, peak_memory_bytes=result.usage.peak_memory_bytes,
            execution_id=result.execution_id,
        )

    def _sub(self, text: str) -> str:
        return text.replace("@@TOKEN@@", self.token)


def render(code: str, language: Language, values: Mapping[str, object]) -> str:
    """``code`` with its ``@@NAME@@`` placeholders replaced: strings as they are, lists as a JSON array in
    Python and JavaScript and as shell words in bash.

    Raises:
        KeyError: a placeholder without a value (the schema refuses unknown ones at load).
    """

    def one(match: Any) -> str:
        value = values[match.group(1)]
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            if language is Language.BASH:
                return " ".join(shlex.quote(str(v)) for v in value)
            return json.dumps(value)
        raise TypeError(f"placeholder {match.group(1)}: unsupported value {type(value).__name__}")

    return PLACEHOLDER_RE.sub(one, code)


def classify_refusal(exc: SandboxError) -> tuple[Refusal | None, str]:
    """Which ``Refusal`` an error is (None: none that a case may accept), and a one-line description."""
    description = f"{exc.code.name}: {exc.message}"
    if isinstance(exc, InvalidRequestError):
        rules = sorted({v.reason for v in exc.field_violations if v.reason})
        if rules:
            description = f"{exc.code.name} ({', '.join(rules)}): {exc.message}"
        if "syntax_error" in rules:
            return None, description  # a case that does not parse is broken, not contained
        if any(v.field == "code" and v.reason in STATIC_RULES for v in exc.field_violations):
            return Refusal.STATIC_VALIDATION, description
        if any(v.reason and v.reason not in STATIC_RULES for v in exc.field_violations):
            return Refusal.GUARDRAIL, description
        return None, description
    if isinstance(exc, PermissionDeniedError):
        description = f"{exc.code.name} ({exc.reason}): {exc.message}"
        if exc.reason in POLICY_REASONS:
            return Refusal.POLICY, description
    return None, description


def over_limits(result: ExecutionResult, slack: LimitSlack = LIMIT_SLACK) -> list[str]:
    """How ``result``'s usage went past its applied limits (beyond ``slack``); empty when it stayed inside."""
    limits: Limits = result.limits
    usage = result.usage
    found: list[str] = []
    output = len(result.stdout_bytes) + len(result.stderr_bytes)
    if limits.output_bytes is not None and output > limits.output_bytes:
        found.append(f"{output} bytes of stdout + stderr, over the output limit of {limits.output_bytes}")
    if limits.wall_time_s is not None and usage.wall_time_s > limits.wall_time_s + slack.wall_time_s:
        found.append(f"wall time {usage.wall_time_s:.2f} s, over the limit of {limits.wall_time_s:g} s")
    if limits.cpu_time_s is not None:
        allowed = limits.cpu_time_s + max(slack.cpu_time_s, slack.cpu_time_fraction * limits.cpu_time_s)
        if usage.cpu_time_s > allowed:
            found.append(f"CPU time {usage.cpu_time_s:.2f} s, over the limit of {limits.cpu_time_s:g} s")
    if limits.memory_bytes is not None and usage.peak_memory_bytes > limits.memory_bytes + slack.memory_bytes:
        found.append(f"peak memory {usage.peak_memory_bytes} bytes, over the limit of {limits.memory_bytes}")
    for f in result.files:
        if limits.file_size_bytes is not None and f.size > limits.file_size_bytes:
            found.append(f"output file {f.path} is {f.size} bytes, over the file-size limit of "
                         f"{limits.file_size_bytes}")
    total = sum(f.size for f in result.files)
    if limits.scratch_bytes is not None and total > limits.scratch_bytes:
        found.append(f"output files total {total} bytes, over the scratch limit of {limits.scratch_bytes}")
    return found


def excerpt(text: str, focus: Sequence[int], chars: int = EXCERPT_CHARS) -> str:
    """A short excerpt of ``text``: around the first ``focus`` offset when there is one, else its head and
    tail."""
    if len(text) <= chars:
        return text
    if focus:
        start = max(0, min(focus) - chars // 3)
        end = min(len(text), start + chars)
        return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")
    head = chars * 2 // 3
    return text[:head] + " … " + text[-(chars - head):]


def _quote(items: Sequence[str]) -> str:
    return ", ".join(repr(i) for i in items)


def _why(result: ExecutionResult) -> str:
    return f": {result.message}" if result.message else ""
