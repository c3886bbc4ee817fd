"""The corpus format and the runner's judging, without a server: the schema refuses what it must, the shipped
corpus keeps its rules (loopback-only targets, one file per category, enough cases), refusals and limits are
judged as documented, and the runner's sessions (through a fake client) are judged and always cleaned up."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
import yaml

from sandbox_client import (
    AsyncSandboxClient,
    DeadlineExceededError,
    ErrorDetails,
    ExecutionResult,
    FieldViolation,
    InvalidRequestError,
    Limits,
    OutputFile,
    PermissionDeniedError,
    ResourceUsage,
    SandboxError,
    SessionNotFoundError,
    Status,
)
from sandbox_client.redteam.categories import Category, Language
from sandbox_client.redteam.corpus import CorpusError, load_corpus, shipped_corpus
from sandbox_client.redteam.runner import (
    SESSION_LABEL,
    RunOptions,
    RunReport,
    Verdict,
    classify_refusal,
    excerpt,
    over_limits,
    render,
    run_cases,
)
from sandbox_client.redteam.schema import MAX_SESSIONS, MAX_STEPS, PLACEHOLDER_RE, Refusal

MIN_CASES = 40
CATEGORY_FILES = {Category.SESSION: "sessions.yaml"}
"""Corpus files named otherwise than ``<category>.yaml``."""
IPV4 = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d{1,3}){3})(?![\w.])")
IPV6 = re.compile(r"(?<![\w:])((?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4})(?![\w:])")


def test_shipped_corpus_covers_every_category_and_language() -> None:
    cases = shipped_corpus().cases
    assert len(cases) >= MIN_CASES
    assert set(Counter(c.category for c in cases)) == set(Category)
    assert {s.language for c in cases for s in c.steps} == set(Language)
    assert any(len(c.steps) > 1 for c in cases)  # two-step cases (plant, then look from a fresh sandbox)
    assert any(c.concurrent for c in cases)
    sessions = [c for c in cases if c.sessions]
    assert {c.category for c in sessions} == {Category.SESSION}
    assert any(len(c.sessions) > 1 and c.concurrent for c in sessions)  # two sessions at once
    assert any(s.from_snapshot_of for c in sessions for s in c.steps)  # a session restored from a snapshot
    assert {s.language for c in sessions for s in c.steps} == set(Language)


def test_shipped_session_cases() -> None:
    """The session cases the corpus promises (docs/sessions.md names them), each with the proof it needs."""
    cases = {c.id: c for c in shipped_corpus().select([Category.SESSION])}
    assert {"session-spy-background-process", "session-spy-hidden-process", "session-other-session",
            "session-agent-takeover", "session-agent-resource-limits", "session-agent-run-dir",
            "session-snapshot-planted-links", "session-snapshot-hard-link", "session-forged-agent-frames"} <= set(cases)
    for case in cases.values():
        assert all(s.session for s in case.steps), case.id  # every step of these runs in a session
        assert len(case.steps) <= MAX_STEPS
        assert len(case.sessions) <= MAX_SESSIONS
    spy = cases["session-spy-background-process"]
    assert spy.sessions == ("a",)
    assert "SPY ALIVE" in spy.steps[-1].expect.stdout_lacks
    assert spy.host_check.no_process
    other = cases["session-other-session"]
    assert other.concurrent
    assert other.sessions == ("a", "b")
    links = cases["session-snapshot-planted-links"]
    assert links.steps[1].from_snapshot_of == "a"
    assert "@@CANARY_PATHS@@" in links.steps[0].code


def test_shipped_files_are_one_per_category() -> None:
    directory = resources.files("sandbox_client.redteam") / "corpus"
    names = sorted(f.name for f in directory.iterdir() if f.name.endswith(".yaml"))
    assert names == sorted(CATEGORY_FILES.get(c, f"{c.value}.yaml") for c in Category)
    for name in names:
        assert yaml.safe_load((directory / name).read_text())["category"] == next(
            c.value for c in Category if CATEGORY_FILES.get(c, f"{c.value}.yaml") == name)
    for case in shipped_corpus().cases:
        assert case.id.split("-")[0] in {"escape", "host", "network", "resource", "persistence", "info", "bypass",
                                         "session", "egress"}


def test_shipped_programs_target_only_loopback() -> None:
    """The network rule, checked mechanically: every IP literal in any program or input file is loopback. The
    egress cases name outside addresses on purpose and have a rule of their own, checked in
    test_egress_corpus.py: they reach them only through the proxy on the sandbox's own loopback, or after a route
    lookup that sends nothing."""
    for case in shipped_corpus().cases:
        if case.category is Category.EGRESS:
            continue
        for step in case.steps:
            for text in (step.code, *step.files.values()):
                for literal in IPV4.findall(text):
                    assert ipaddress.ip_address(literal).is_loopback, (case.id, literal)
                for literal in IPV6.findall(text):
                    try:
                        address = ipaddress.ip_address(literal)
                    except ValueError:
                        continue  # not an address (e.g. a time or a C++-style scope)
                    assert address.is_loopback, (case.id, literal)
                assert "http://" not in text, case.id
                assert "https://" not in text, case.id


def test_shipped_host_paths_are_test_owned() -> None:
    for case in shipped_corpus().cases:
        for path in case.host_check.absent_paths:
            assert "@@TOKEN@@" in path
            assert path.startswith("/")


def write_corpus(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path


CASE = """\
category: escape
cases:
  - id: one
    title: a case
    steps:
      - language: python
        code: print("ATTEMPT x")
        expect: {EXPECT}
"""


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ("{status: [OK]}", "at least one 'attempted' marker"),
        ("{}", "must accept a refusal"),
        ("{status: [UNSPECIFIED], attempted: [x]}", "UNSPECIFIED"),
        ("{status: [OK], attempted: [x], stdout_matches: ['(']}", "invalid regular expression"),
        ("{status: [OK], attempted: ['@@NOPE@@']}", "unknown placeholder"),
        ("{refused_by: [static_validation], exit_codes: [1]}", "exit_codes need a status"),
        ("{status: [OK], attempted: [x], surprise: 1}", "Extra inputs are not permitted"),
        ("{status: [FINE], attempted: [x]}", "status"),
    ],
)
def test_schema_refuses_unclear_expectations(tmp_path: Path, expect: str, message: str) -> None:
    with pytest.raises(CorpusError, match=re.escape(message)) as info:
        load_corpus(write_corpus(tmp_path, CASE.replace("{EXPECT}", expect)))
    assert "c.yaml: cases.0 (one)" in str(info.value)  # the file and the case are named


def test_schema_refuses_unknown_placeholders_in_code(tmp_path: Path) -> None:
    text = CASE.replace("{EXPECT}", "{status: [OK], attempted: [x]}").replace('print("ATTEMPT x")', "'echo @@SHELL@@'")
    with pytest.raises(CorpusError, match="unknown placeholder"):
        load_corpus(write_corpus(tmp_path, text))


def test_schema_refuses_host_paths_that_are_not_test_owned(tmp_path: Path) -> None:
    text = CASE.replace("{EXPECT}", "{status: [OK], attempted: [x]}")
    text += "    host_check: {absent_paths: [/etc/passwd]}\n"
    with pytest.raises(CorpusError, match="must be absolute and contain @@TOKEN@@"):
        load_corpus(write_corpus(tmp_path, text))


def test_schema_refuses_distinct_lines_on_one_step(tmp_path: Path) -> None:
    text = CASE.replace("{EXPECT}", "{status: [OK], attempted: [x]}") + '    distinct_lines: ["RANDOM "]\n'
    with pytest.raises(CorpusError, match="needs at least two"):
        load_corpus(write_corpus(tmp_path, text))


def test_corpus_refuses_duplicate_ids_and_empty_directories(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="holds no corpus file"):
        load_corpus(tmp_path)
    text = CASE.replace("{EXPECT}", "{status: [OK], attempted: [x]}")
    write_corpus(tmp_path, text, "a.yaml")
    write_corpus(tmp_path, text, "b.yaml")
    with pytest.raises(CorpusError, match="duplicate case ids: one"):
        load_corpus(tmp_path)


def session_case(steps: list[dict[str, Any]], concurrent: bool = False) -> str:
    """A one-case corpus file whose steps are these (each gets code and an expectation)."""
    full = [{"language": "python", "code": 'print("ATTEMPT x")', "expect": {"status": ["OK"], "attempted": ["x"]},
             **step} for step in steps]
    case: dict[str, Any] = {"id": "one", "title": "a case", "steps": full}
    if concurrent:
        case["concurrent"] = True
    return yaml.safe_dump({"category": "session", "cases": [case]}, sort_keys=False)


@pytest.mark.parametrize(
    ("steps", "concurrent", "message"),
    [
        ([{"from_snapshot_of": "a"}], False, "from_snapshot_of starts a session: the step needs a 'session'"),
        ([{"session": "a", "from_snapshot_of": "a"}], False, "cannot start from a snapshot of itself"),
        ([{"session": "b", "from_snapshot_of": "a"}, {"session": "a"}], False,
         "from_snapshot_of 'a' names no session that an earlier step of the case uses"),
        ([{"session": "a"}, {"session": "b"}, {"session": "b", "from_snapshot_of": "a"}], False,
         "from_snapshot_of belongs on session 'b''s first step"),
        ([{"session": "a"}, {"session": "b", "from_snapshot_of": "a"}], True,
         "a concurrent case cannot start a session from a snapshot"),
        ([{"session": "a"}, {"session": "a"}], True, "in a concurrent case a session is used by one step only"),
        ([{"session": "a"}, {"session": "a", "limits": {"memory_bytes": 1 << 28}}], False,
         "hold for session 'a''s whole life: set them on its first step"),
        ([{"session": n} for n in "abcd"], False, f"a case uses at most {MAX_SESSIONS} sessions, not 4"),
        ([{"session": "Not A Name"}], False, "String should match pattern"),
        ([{"session": "a"}] * (MAX_STEPS + 1), False, f"at most {MAX_STEPS} items"),
    ],
)
def test_schema_refuses_unclear_sessions(tmp_path: Path, steps: list[dict[str, Any]], concurrent: bool,
                                         message: str) -> None:
    with pytest.raises(CorpusError, match=re.escape(message)) as info:
        load_corpus(write_corpus(tmp_path, session_case(steps, concurrent)))
    assert "c.yaml: cases.0 (one)" in str(info.value)  # the file and the case are named


def test_schema_accepts_sessions() -> None:
    from sandbox_client.redteam.schema import CorpusFile

    text = session_case([{"session": "a", "limits": {"memory_bytes": 1 << 28, "wall_time_s": 5}},
                         {"session": "a", "language": "bash", "code": "echo x", "limits": {"wall_time_s": 2}},
                         {"code": "print(1)"},
                         {"session": "b", "from_snapshot_of": "a"}])
    (case,) = CorpusFile.model_validate(yaml.safe_load(text)).to_cases()
    assert case.sessions == ("a", "b")
    assert [s.session for s in case.steps] == ["a", "a", None, "b"]
    first = case.steps[0].limits
    assert first.session_part() == Limits(memory_bytes=1 << 28)
    assert first.call_part() == Limits(wall_time_s=5)


def test_select_by_category_and_id() -> None:
    corpus = shipped_corpus()
    network = corpus.select([Category.NETWORK])
    assert network
    assert all(c.category is Category.NETWORK for c in network)
    mixed = corpus.select([Category.NETWORK], ["escape-signal-init"])
    assert {c.id for c in mixed} == {c.id for c in network} | {"escape-signal-init"}
    with pytest.raises(CorpusError, match="no such case: nope"):
        corpus.select(case_ids=["nope"])


def test_render_per_language() -> None:
    values = {"TOKEN": "t0k", "CANARY_PATHS": ["/tmp/a b", "/root/c"], "HOST_PORTS": [22, 80]}
    assert render("x = @@CANARY_PATHS@@; @@TOKEN@@", Language.PYTHON, values) == 'x = ["/tmp/a b", "/root/c"]; t0k'
    assert render("for p in @@HOST_PORTS@@", Language.JAVASCRIPT, values) == "for p in [22, 80]"
    assert render("for p in @@CANARY_PATHS@@", Language.BASH, values) == "for p in '/tmp/a b' /root/c"
    assert not PLACEHOLDER_RE.search(render("@@TOKEN@@@@HOST_PORTS@@", Language.BASH, values))


def invalid(*violations: FieldViolation) -> InvalidRequestError:
    return InvalidRequestError("refused", code=grpc.StatusCode.INVALID_ARGUMENT,
                               details=ErrorDetails(field_violations=violations))


def test_classify_refusal() -> None:
    static = invalid(FieldViolation("code", "line 1: 'ctypes' is denied", "denied_import"))
    assert classify_refusal(static)[0] is Refusal.STATIC_VALIDATION
    assert "denied_import" in classify_refusal(static)[1]
    broken = invalid(FieldViolation("code", "line 1: invalid syntax", "syntax_error"),
                     FieldViolation("code", "line 2: 'ctypes' is denied", "denied_import"))
    assert classify_refusal(broken)[0] is None  # a case that does not parse is broken, not contained
    guardrail = invalid(FieldViolation("stdin", "matches a blocked pattern", "blocked_pattern"))
    assert classify_refusal(guardrail)[0] is Refusal.GUARDRAIL
    assert classify_refusal(invalid(FieldViolation("limits.wall_time_ms", "too large")))[0] is None
    policy = PermissionDeniedError("no", code=grpc.StatusCode.PERMISSION_DENIED,
                                   details=ErrorDetails(reason="POLICY_DENIED"))
    assert classify_refusal(policy)[0] is Refusal.POLICY
    quarantined = PermissionDeniedError("no", code=grpc.StatusCode.PERMISSION_DENIED,
                                        details=ErrorDetails(reason="QUARANTINED"))
    assert classify_refusal(quarantined)[0] is None  # incident response, not containment
    for reason in ("SESSIONS_DISABLED", "SNAPSHOTS_DISABLED"):  # the tenant's policy, for a session step
        denied = PermissionDeniedError("no", code=grpc.StatusCode.PERMISSION_DENIED,
                                       details=ErrorDetails(reason=reason))
        assert classify_refusal(denied)[0] is Refusal.POLICY


def result(**changes: object) -> ExecutionResult:
    base: dict[str, object] = {
        "execution_id": "e", "status": Status.OK, "exit_code": 0, "signal": 0, "stdout_bytes": b"",
        "stderr_bytes": b"", "stdout_truncated": False, "stderr_truncated": False, "files": (),
        "files_truncated": False, "usage": ResourceUsage(wall_time_s=1.0, cpu_time_s=1.0, peak_memory_bytes=1 << 20),
        "message": "", "language": "python", "backend": "nsjail",
        "limits": Limits(wall_time_s=5, cpu_time_s=5, memory_bytes=64 << 20, max_pids=16, output_bytes=100,
                         file_size_bytes=10, scratch_bytes=15),
    }
    base.update(changes)
    return ExecutionResult(**base)  # type: ignore[arg-type]


def test_over_limits() -> None:
    assert over_limits(result()) == []
    problems = over_limits(result(
        stdout_bytes=b"x" * 80, stderr_bytes=b"y" * 30,
        usage=ResourceUsage(wall_time_s=9.0, cpu_time_s=8.0, peak_memory_bytes=(64 << 20) + (5 << 20)),
        files=(OutputFile("a", b"", 11, True), OutputFile("b", b"", 9, False)),
    ))
    assert len(problems) == 6, problems
    assert over_limits(result(usage=ResourceUsage(wall_time_s=7.5, cpu_time_s=6.5, peak_memory_bytes=64 << 20))) == []


def test_excerpt_centres_on_the_evidence() -> None:
    text = "a" * 5000 + "ESCAPED" + "b" * 5000
    near = excerpt(text, [5000])
    assert "ESCAPED" in near
    assert len(near) < 700
    assert excerpt("short", []) == "short"
    assert " … " in excerpt(text, [])


# ---- the runner's sessions, through a fake client ----------------------------------------------------------------


@dataclass
class FakeServer:
    """What a fake client's sessions did. The code of a session step says what its call does: "crash" (the
    client raises something the runner does not expect), "deadline", "gone" (the session's sandbox failed),
    "bomb" (prints the forbidden marker), else an ordinary result proving its attempt. A session whose first
    step is JavaScript is refused by policy (SESSIONS_DISABLED)."""

    created: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    """Sessions created without the client hearing of it (a lost answer): found only by their label."""
    open_now: int = 0
    open_most: int = 0
    failed_starts: int = 0
    """The next session starts that fail as a sandbox that did not start (INTERNAL)."""


class FakeSession:
    def __init__(self, server: FakeServer, session_id: str) -> None:
        self.server = server
        self.id = session_id

    async def run(self, code: str, **_: Any) -> ExecutionResult:
        await asyncio.sleep(0.01)
        if code == "crash":
            raise RuntimeError("the client broke")
        if code == "deadline":
            raise DeadlineExceededError("late", code=grpc.StatusCode.DEADLINE_EXCEEDED)
        if code == "gone":
            raise SessionNotFoundError(f"session {self.id} is closed (sandbox_failed)", code=grpc.StatusCode.NOT_FOUND,
                                       details=ErrorDetails(metadata={"close_reason": "sandbox_failed"}))
        out = b"ATTEMPT x\nESCAPED\n" if code == "bomb" else b"ATTEMPT x\n"
        return result(stdout_bytes=out, limits=Limits())

    async def snapshot(self, name: str, **_: Any) -> SimpleNamespace:
        snapshot_id = f"snap_{len(self.server.snapshots)}"
        self.server.snapshots.append(snapshot_id)
        return SimpleNamespace(id=snapshot_id)

    async def aclose(self, **_: Any) -> None:
        self.server.closed.append(self.id)
        self.server.open_now -= 1


class FakeClient:
    def __init__(self, server: FakeServer) -> None:
        self.server = server

    def session(self, language: str = "python", *, labels: dict[str, str] | None = None,
                **_: Any) -> Awaitable[FakeSession]:
        async def create() -> FakeSession:
            await asyncio.sleep(0.01)
            if language == "javascript":
                raise PermissionDeniedError("no sessions", code=grpc.StatusCode.PERMISSION_DENIED,
                                            details=ErrorDetails(reason="SESSIONS_DISABLED"))
            server = self.server
            if server.failed_starts:
                server.failed_starts -= 1
                raise SandboxError("the session's sandbox did not start", code=grpc.StatusCode.INTERNAL)
            lost = f"ses_lost{len(server.lost)}"  # each creation also leaves one the client never hears of
            server.lost.append(lost)
            server.labels[lost] = dict(labels or {})
            session_id = f"ses_{len(server.created)}"
            server.created.append(session_id)
            server.labels[session_id] = dict(labels or {})
            server.open_now += 1
            server.open_most = max(server.open_most, server.open_now)
            return FakeSession(server, session_id)

        return create()

    async def list_sessions(self, labels: dict[str, str] | None = None, **_: Any) -> AsyncIterator[Any]:
        for session_id, own in list(self.server.labels.items()):
            if session_id not in self.server.closed and (labels or {}).items() <= own.items():
                yield SimpleNamespace(id=session_id)

    async def close_session(self, session_id: str, **_: Any) -> None:
        self.server.closed.append(session_id)

    async def delete_snapshot(self, snapshot_id: str, **_: Any) -> None:
        self.server.deleted.append(snapshot_id)


def fake_run(tmp_path: Path, steps_by_case: dict[str, list[dict[str, Any]]], session_cases: int = 2,
             failed_starts: int = 0) -> tuple[FakeServer, RunReport]:
    cases = []
    for case_id, steps in steps_by_case.items():
        full = [{"language": "python", "expect": {"status": ["OK"], "attempted": ["ATTEMPT x"],
                                                  "stdout_lacks": ["ESCAPED"]}, **step} for step in steps]
        cases.append({"id": case_id, "title": case_id, "steps": full})
    (tmp_path / "fake.yaml").write_text(yaml.safe_dump({"category": "session", "cases": cases}))
    server = FakeServer(failed_starts=failed_starts)
    client = cast(AsyncSandboxClient, FakeClient(server))
    options = RunOptions(concurrency=4, session_cases=session_cases)
    report = asyncio.run(run_cases(client, load_corpus(tmp_path).cases, options))
    return server, report


def test_runner_judges_session_steps(tmp_path: Path) -> None:
    server, report = fake_run(tmp_path, {
        "fine": [{"session": "a", "code": "ok"}, {"session": "b", "from_snapshot_of": "a", "code": "ok"},
                 {"session": "a", "code": "ok"}],
        "breach": [{"session": "a", "code": "ok"}, {"session": "a", "code": "bomb"}],
        "late": [{"session": "a", "code": "deadline"}],
        "gone": [{"session": "a", "code": "ok"}, {"session": "a", "code": "gone"}],
        "policy": [{"session": "a", "language": "javascript", "code": "ok",
                    "expect": {"refused_by": ["policy"], "status": ["OK"], "attempted": ["ATTEMPT x"]}},
                   {"session": "a", "language": "bash", "code": "ok", "expect": {"refused_by": ["policy"]}}],
        "unaccepted": [{"session": "a", "language": "javascript", "code": "ok"}],
    })
    verdicts = {c.case_id: c.verdict for c in report.cases}
    assert verdicts == {"fine": Verdict.CONTAINED, "breach": Verdict.NOT_CONTAINED, "late": Verdict.NOT_CONTAINED,
                        "gone": Verdict.NOT_CONTAINED, "policy": Verdict.CONTAINED, "unaccepted": Verdict.ERROR}
    fine = report.case("fine")
    assert fine is not None
    assert [(s.session, s.session_id != "") for s in fine.steps] == [("a", True), ("b", True), ("a", True)]
    assert fine.steps[0].session_id == fine.steps[2].session_id != fine.steps[1].session_id
    breach = report.case("breach")
    assert breach is not None
    assert breach.problems == ("step 2 (session a): stdout contains 'ESCAPED'",)
    gone = report.case("gone")
    assert gone is not None
    assert "close reason sandbox_failed" in gone.problems[0]
    late = report.case("late")
    assert late is not None
    assert "no result" in late.problems[0]
    policy = report.case("policy")
    assert policy is not None
    assert all(s.refused_as == "policy" for s in policy.steps)
    # Every session the runner made, and every one it never heard of (found by its label), was closed; every
    # snapshot deleted; and no two cases with sessions ran at once beyond the limit (2 cases x 2 sessions).
    assert set(server.created) | set(server.lost) <= set(server.closed)
    assert server.snapshots == server.deleted == ["snap_0"]
    assert all(own.keys() == {SESSION_LABEL} for own in server.labels.values())
    assert server.open_most <= 4


def test_runner_cleans_up_after_a_crash_and_limits_session_cases(tmp_path: Path) -> None:
    server = FakeServer()
    steps = [{"session": "a", "code": "ok"}, {"session": "b", "from_snapshot_of": "a", "code": "crash"}]
    (tmp_path / "fake.yaml").write_text(yaml.safe_dump({"category": "session", "cases": [
        {"id": "crash", "title": "crash", "steps": [
            {"language": "python", "expect": {"status": ["OK"], "attempted": ["ATTEMPT x"]}, **s} for s in steps]}]}))
    client = cast(AsyncSandboxClient, FakeClient(server))
    with pytest.raises(RuntimeError):
        asyncio.run(run_cases(client, load_corpus(tmp_path).cases, RunOptions()))
    assert server.created == ["ses_0", "ses_1"]
    assert set(server.created) | set(server.lost) <= set(server.closed)
    assert server.deleted == server.snapshots == ["snap_0"]

    one_at_a_time, _ = fake_run(tmp_path, {f"case-{n}": [{"session": "a", "code": "ok"}, {"session": "b", "code": "ok"}]
                                           for n in range(4)}, session_cases=1)
    assert one_at_a_time.open_most == 2  # one case's two sessions at a time
    assert len(one_at_a_time.created) == 8


def test_a_session_that_fails_to_start_is_asked_for_once_more(tmp_path: Path) -> None:
    server, report = fake_run(tmp_path, {"flaky": [{"session": "a", "code": "ok"}, {"session": "a", "code": "ok"}]},
                              failed_starts=1)
    (case,) = report.cases
    assert case.verdict is Verdict.CONTAINED
    assert case.steps[0].session_retries == ("INTERNAL: the session's sandbox did not start",)
    assert case.steps[1].session_retries == ()
    assert len(server.created) == 1

    server, report = fake_run(tmp_path, {"broken": [{"session": "a", "code": "ok"}]}, failed_starts=2)
    (case,) = report.cases
    assert case.verdict is Verdict.ERROR  # no evidence either way: not contained, not a breach
    assert "INTERNAL: the session's sandbox did not start" in case.problems[0]
    assert len(case.steps[0].session_retries) == 1
    assert server.created == []
