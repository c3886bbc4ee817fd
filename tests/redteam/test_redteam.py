"""The shipped red-team corpus against real servers, with host checks on.

- Every case, on every backend (the ``server`` fixture, over ``conftest.BACKENDS``; static validation off, so
  the sandbox itself is what contains each program), one test per case over one run of the whole corpus.
- The whole corpus against a server with the shipped ``policies/default.yaml`` (static validation on, output
  redaction on), and against the same policy with static validation turned off.
- The runner can fail: a custom corpus whose expectations the sandbox does not meet is NOT CONTAINED (or NOT
  EXERCISED), through the runner and through ``sandbox-admin redteam`` (on the unvalidated default policy).
- Session steps through a real server: state kept across a session's calls, sessions apart from each other, a
  session restored from a snapshot; a tenant whose policy refuses sessions or snapshots; and nothing of the
  runner's sessions and snapshots left on the server afterwards.

The server runs in this process, so the host side of every check (canaries in the host's /tmp, /root, ... and
in the server's state and data directories, an environment variable of the server, loopback listeners, the
host's process table) is real. Cases the server does not contain are listed in ``KNOWN_FINDINGS`` with the
evidence, and marked xfail (strict) on that backend only.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sandbox_client import AsyncSandboxClient, SandboxClient
from sandbox_client.admin_cli import app
from sandbox_client.redteam.corpus import load_corpus, shipped_corpus
from sandbox_client.redteam.host import DEFAULT_CANARY_DIRS, HostChecks
from sandbox_client.redteam.runner import SESSION_LABEL, CaseReport, RunOptions, RunReport, Verdict, run_cases
from sandbox_client.redteam.schema import Case
from sandbox_server.stores.embedded import open_stores
from sandbox_server.testing import RunningServer, private_settings, server_in_thread

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = ROOT / "policies" / "default.yaml"
SECRET_ENV = "REDTEAM_SERVER_SECRET"  # noqa: S105 (a variable name; its value is random)

# (backend, case id) -> why it is not contained. Each is a security bug to fix, kept failing on purpose.
KNOWN_FINDINGS: dict[tuple[str, str], str] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case_id" in metafunc.fixturenames:
        metafunc.parametrize("case_id", [c.id for c in shipped_corpus().cases])


def run_corpus(server: RunningServer, cases: tuple[Case, ...], checks: HostChecks | None) -> RunReport:
    port = int(server.target.rsplit(":", 1)[1])

    async def run() -> RunReport:
        async with AsyncSandboxClient(server.target, timeout=120) as client:
            return await run_cases(client, cases, RunOptions(concurrency=4, host_checks=checks, host_ports=(port,)))

    return asyncio.run(run())


def host_checks(server: RunningServer, secret: str) -> HostChecks:
    """Canaries in the host's usual places and in the server's own state and data directories, and a secret
    in the server's (this process's) environment."""
    settings = server.settings
    return HostChecks(canary_dirs=(*DEFAULT_CANARY_DIRS, settings.state_dir, settings.data_dir),
                      secrets={f"the server's environment variable {SECRET_ENV}": secret})


@pytest.fixture(scope="module")
def server_secret() -> Iterator[str]:
    secret = "redteam-server-secret-" + secrets.token_hex(16)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SECRET_ENV, secret)
        yield secret


@pytest.fixture(scope="module")
def report(server: RunningServer, server_secret: str) -> RunReport:
    """The whole shipped corpus, once per backend."""
    result = run_corpus(server, shipped_corpus().cases, host_checks(server, server_secret))
    settings = server.settings
    backend = settings.backend.value + ("-rootfs" if settings.rootfs else "")
    backend += "-warm" if settings.warm_python else ""
    retried = sum(len(s.session_retries) for c in result.cases for s in c.steps)
    print(f"\nred-team corpus on {backend}: {len(result.cases)} cases in {result.duration_s:.1f} s; "
          f"{retried} session start(s) failed and were retried")
    return result


def describe(c: CaseReport) -> str:
    """A case's verdict with its evidence, for assertion messages."""
    lines = [f"{c.case_id}: {c.verdict.label}", *(f"  problem: {p}" for p in c.problems)]
    for s in c.steps:
        lines.append(f"  step {s.index + 1}: refusal={s.refusal!r} status={s.status} exit={s.exit_code} "
                     f"message={s.message!r} files={list(s.files)}")
        lines.append(textwrap.indent(f"stdout: {s.stdout_excerpt}\nstderr: {s.stderr_excerpt}", "    "))
    return "\n".join(lines)


def test_case_is_contained(report: RunReport, case_id: str, request: pytest.FixtureRequest) -> None:
    backend = request.node.callspec.params["server"]
    finding = KNOWN_FINDINGS.get((backend, case_id))
    if finding is not None:
        request.applymarker(pytest.mark.xfail(reason=finding, strict=True))
    case = report.case(case_id)
    assert case is not None
    assert case.verdict is Verdict.CONTAINED, describe(case)
    assert not case.notes or all("not checked: none found" in n for n in case.notes), case.notes


def test_corpus_left_nothing_behind(report: RunReport, no_leftovers: None) -> None:
    """After the whole corpus (fork bombs, orphans, FIFOs...): no scratch, cgroup, mount or container left."""
    assert report.cases


def test_host_checks_were_real(report: RunReport, server: RunningServer) -> None:
    """The canaries were planted, in the server's own directories too, and removed afterwards."""
    assert report.host_checks
    planted = {Path(p).parent for p in report.canaries}
    assert {Path("/tmp"), Path("/root"), server.settings.state_dir, server.settings.data_dir} <= planted
    assert not any(Path(p).exists() for p in report.canaries)


# ---- the shipped default policy, with and without static validation ------------------------------------------


def policy_server(directory: Path, validation: bool) -> Iterator[RunningServer]:
    """An nsjail server with the shipped default policy, as it is or with static validation turned off."""
    text = DEFAULT_POLICY.read_text()
    if not validation:
        policy = yaml.safe_load(text)
        assert policy["tenants"]["default"]["static_validation"]["enabled"] is True
        policy["tenants"]["default"]["static_validation"]["enabled"] = False
        text = yaml.safe_dump(policy)
    (directory / "default.yaml").write_text(text)
    # Incident response would quarantine the tenant after the validator's escape-like refusals; it has tests of
    # its own (tests/production).
    with server_in_thread(backend="nsjail", max_running=4, max_queued=32, policies_dir=directory,
                          incidents={"enabled": False}) as srv:
        yield srv


@pytest.fixture(scope="module")
def default_policy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from policy_server(tmp_path_factory.mktemp("default-policy"), validation=True)


@pytest.fixture(scope="module")
def unvalidated_policy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from policy_server(tmp_path_factory.mktemp("default-policy-unvalidated"), validation=False)


def assert_all_contained(result: RunReport, backend: str = "nsjail") -> None:
    """Every case contained, but the known findings of ``backend``, which must still not be (as xfail strict)."""
    failed = [describe(c) for c in result.cases if not c.contained and (backend, c.case_id) not in KNOWN_FINDINGS]
    assert not failed, "\n\n".join(failed)
    fixed = [c.case_id for c in result.cases if c.contained and (backend, c.case_id) in KNOWN_FINDINGS]
    assert not fixed, f"contained now: remove them from KNOWN_FINDINGS: {fixed}"


def test_default_policy_contains_the_corpus(default_policy_server: RunningServer, server_secret: str) -> None:
    checks = host_checks(default_policy_server, server_secret)
    result = run_corpus(default_policy_server, shipped_corpus().cases, checks)
    assert_all_contained(result)
    refused = {c.case_id for c in result.cases if any(s.refused_as == "static_validation" for s in c.steps)}
    # Static validation was on and did refuse the obvious (and the validator bypasses ran, and were contained).
    assert {"escape-namespace-syscalls", "network-host-loopback-python", "escape-unshare-command"} <= refused
    assert not refused & {c.id for c in shipped_corpus().cases if c.category == "validator_bypass"}


def test_default_policy_without_validation_contains_the_corpus(
    unvalidated_policy_server: RunningServer, server_secret: str
) -> None:
    result = run_corpus(unvalidated_policy_server, shipped_corpus().cases,
                        host_checks(unvalidated_policy_server, server_secret))
    assert_all_contained(result)
    # Nothing was refused: every program ran, so the jail itself contained every one (a known finding's later
    # steps aside, when it broke its own session).
    assert all(not s.refusal for c in result.cases for s in c.steps if ("nsjail", c.case_id) not in KNOWN_FINDINGS)


# ---- the runner can fail ----------------------------------------------------------------------------------------

FAKE_CORPUS = """\
category: escape
cases:
  - id: fake-prints-forbidden-marker
    title: prints the very marker its expectation forbids
    steps:
      - language: python
        code: |
          print("ATTEMPT fake", flush=True)
          print("ESC" + "APED fake", flush=True)
        expect:
          status: [OK]
          attempted: ["ATTEMPT fake"]
          stdout_lacks: ["ESCAPED"]
  - id: fake-expects-a-refusal
    title: expects to be refused, but the sandbox runs it
    steps:
      - language: bash
        code: echo harmless
        expect:
          refused_by: [static_validation]
  - id: fake-expects-a-denial
    title: expects a denial that never comes (writing its own /tmp is allowed)
    steps:
      - language: bash
        code: |
          echo "ATTEMPT write"
          echo x > /tmp/mine && echo "WROTE /tmp/mine"
        expect:
          status: [OK]
          attempted: ["ATTEMPT write"]
          stdout_has: ["DENIED /tmp/mine"]
  - id: fake-leaks-a-host-secret
    title: prints a value the runner was told is a host secret
    steps:
      - language: python
        code: |
          print("ATTEMPT leak", flush=True)
          print("SECRET_PLACEHOLDER", flush=True)
        expect:
          status: [OK]
          attempted: ["ATTEMPT leak"]
  - id: fake-does-nothing
    title: exits before its attempt
    steps:
      - language: python
        code: raise SystemExit(0)
        expect:
          status: [OK]
          attempted: ["ATTEMPT never"]
  - id: fake-shared-state
    title: two executions print the same "random" line
    distinct_lines: ["RANDOM "]
    steps:
      - language: bash
        code: echo "RANDOM 4"
        expect: {status: [OK], attempted: ["RANDOM"]}
      - language: bash
        code: echo "RANDOM 4"
        expect: {status: [OK], attempted: ["RANDOM"]}
  - id: fake-contained-control
    title: a case the sandbox does contain, so the run is not all failures
    steps:
      - language: python
        code: |
          import errno
          print("ATTEMPT shadow", flush=True)
          try:
              open("/etc/shadow").read()
              print("READ shadow")
          except OSError as e:
              print("DENIED shadow", errno.errorcode[e.errno])
        expect:
          status: [OK]
          attempted: ["ATTEMPT shadow"]
          stdout_has: ["DENIED shadow"]
          stdout_lacks: ["READ shadow"]
"""
FAKE_VERDICTS = {
    "fake-prints-forbidden-marker": Verdict.NOT_CONTAINED,
    "fake-expects-a-refusal": Verdict.NOT_CONTAINED,
    "fake-expects-a-denial": Verdict.NOT_CONTAINED,
    "fake-leaks-a-host-secret": Verdict.NOT_CONTAINED,
    "fake-does-nothing": Verdict.NOT_EXERCISED,
    "fake-shared-state": Verdict.NOT_CONTAINED,
    "fake-contained-control": Verdict.CONTAINED,
}


@pytest.fixture
def fake_corpus(tmp_path: Path) -> tuple[Path, str]:
    """The fake corpus, and the host secret its leaking case prints."""
    secret = "fake-host-secret-" + secrets.token_hex(8)
    directory = tmp_path / "corpus"
    directory.mkdir()
    (directory / "fake.yaml").write_text(FAKE_CORPUS.replace("SECRET_PLACEHOLDER", secret))
    return directory, secret


def test_runner_reports_what_is_not_contained(
    unvalidated_policy_server: RunningServer, fake_corpus: tuple[Path, str]
) -> None:
    directory, secret = fake_corpus
    cases = load_corpus(directory).cases
    checks = HostChecks(canary_dirs=(), secrets={"a planted host secret": secret})
    result = run_corpus(unvalidated_policy_server, cases, checks)
    assert {c.case_id: c.verdict for c in result.cases} == FAKE_VERDICTS, [describe(c) for c in result.cases]
    assert not result.all_contained
    leak = result.case("fake-leaks-a-host-secret")
    assert leak is not None
    assert leak.problems == ("the program: a planted host secret appears in stdout",)  # named, never shown
    marker = result.case("fake-prints-forbidden-marker")
    assert marker is not None
    assert "ESCAPED fake" in marker.steps[0].stdout_excerpt  # the evidence comes with the verdict


def test_cli_exit_codes(unvalidated_policy_server: RunningServer, fake_corpus: tuple[Path, str]) -> None:
    server = unvalidated_policy_server
    directory, _ = fake_corpus
    runner = CliRunner()
    failing = runner.invoke(app, ["--target", server.target, "redteam", "--corpus", str(directory), "--json"])
    assert failing.exit_code == 1, failing.output
    data = json.loads(failing.stdout)
    # The command line is given no host secret, so the case printing one has nothing to leak there.
    expected = {**FAKE_VERDICTS, "fake-leaks-a-host-secret": Verdict.CONTAINED}
    assert {c["case_id"]: c["verdict"] for c in data["cases"]} == {k: v.value for k, v in expected.items()}
    assert data["all_contained"] is False

    passing = runner.invoke(app, ["--target", server.target, "redteam", "--corpus", str(directory),
                                  "--case", "fake-contained-control"])
    assert passing.exit_code == 0, passing.output
    assert "fake-contained-control" in passing.stdout
    assert "1 cases" in passing.stdout

    shipped = runner.invoke(app, ["--target", server.target, "redteam", "--category", "info_leak",
                                  "--case", "escape-signal-init", "--host-checks"])
    assert shipped.exit_code == 0, shipped.output

    unknown = runner.invoke(app, ["--target", server.target, "redteam", "--case", "no-such-case"])
    assert unknown.exit_code == 2
    assert "no such case: no-such-case" in unknown.stderr


def test_cli_unreachable_server(fake_corpus: tuple[Path, str]) -> None:
    directory, _ = fake_corpus
    result = CliRunner().invoke(app, ["--target", "127.0.0.1:1", "--timeout", "2", "redteam", "--corpus",
                                      str(directory)])
    assert result.exit_code == 1
    assert "cannot run the corpus" in result.stderr


# ---- session steps through a real server ------------------------------------------------------------------------

SESSION_CORPUS = """\
category: session
cases:
  - id: fake-session-state
    title: a session keeps its kernel and workspace across calls; another session has neither; a snapshot the files
    steps:
      - session: a
        language: python
        code: |
          x = 41
          with open("shared.txt", "w") as f:
              f.write("from python\\n")
          print("ATTEMPT set", flush=True)
        expect: {status: [OK], attempted: ["ATTEMPT set"]}
      - session: a
        language: python
        code: print("ATTEMPT get", x + 1)
        expect: {status: [OK], attempted: ["ATTEMPT get"], stdout_has: ["ATTEMPT get 42"]}
      - session: a
        language: bash
        code: echo "ATTEMPT read $(cat shared.txt)"
        expect: {status: [OK], attempted: ["ATTEMPT read"], stdout_has: ["ATTEMPT read from python"]}
      - session: b
        language: python
        code: print("ATTEMPT other", "x" in dir(), __import__("os").path.exists("shared.txt"))
        expect: {status: [OK], attempted: ["ATTEMPT other"], stdout_has: ["ATTEMPT other False False"]}
      - session: c
        from_snapshot_of: a
        language: bash
        code: echo "ATTEMPT restored $(cat shared.txt)"
        expect: {status: [OK], attempted: ["ATTEMPT restored"], stdout_has: ["ATTEMPT restored from python"]}
      - language: bash
        code: echo "ATTEMPT one-shot $(ls)"
        expect: {status: [OK], attempted: ["ATTEMPT one-shot"], stdout_lacks: ["shared.txt"]}
  - id: fake-session-marker
    title: a session's second call prints the marker its expectation forbids
    steps:
      - session: a
        language: bash
        code: echo "ATTEMPT one"
        expect: {status: [OK], attempted: ["ATTEMPT one"]}
      - session: a
        language: python
        code: print("ATTEMPT two", "ESC" + "APED")
        expect: {status: [OK], attempted: ["ATTEMPT two"], stdout_lacks: ["ESCAPED"]}
  - id: fake-session-timeout
    title: a session call past its wall time, expected to end OK; the next call still runs
    steps:
      - session: a
        language: python
        code: |
          import time
          print("ATTEMPT sleep", flush=True)
          time.sleep(30)
        limits: {wall_time_s: 1}
        expect: {status: [OK], attempted: ["ATTEMPT sleep"]}
      - session: a
        language: python
        code: print("ATTEMPT after")
        expect: {status: [OK], attempted: ["ATTEMPT after"]}
"""
SESSION_VERDICTS = {
    "fake-session-state": Verdict.CONTAINED,
    "fake-session-marker": Verdict.NOT_CONTAINED,
    "fake-session-timeout": Verdict.NOT_CONTAINED,
}


def runner_leftovers(server: RunningServer) -> tuple[list[str], list[str]]:
    """The runner's sessions still live on the server, and any snapshot left (nothing else takes any there)."""
    with SandboxClient(server.target, timeout=30) as sbx:
        sessions = [s.id for s in sbx.list_sessions() if SESSION_LABEL in s.labels]
        snapshots = [s.id for s in sbx.list_snapshots()]
    return sessions, snapshots


def test_runner_runs_session_steps(unvalidated_policy_server: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "sessions.yaml").write_text(SESSION_CORPUS)
    result = run_corpus(unvalidated_policy_server, load_corpus(tmp_path).cases, None)
    assert {c.case_id: c.verdict for c in result.cases} == SESSION_VERDICTS, [describe(c) for c in result.cases]
    state = result.case("fake-session-state")
    assert state is not None
    ids = [s.session_id for s in state.steps]
    assert ids[0] == ids[1] == ids[2]
    assert len({ids[0], ids[3], ids[4]}) == 3
    assert ids[5] == ""  # the one-shot step
    marker = result.case("fake-session-marker")
    assert marker is not None
    assert marker.problems == ("step 2 (session a): stdout contains 'ESCAPED'",)
    timeout = result.case("fake-session-timeout")
    assert timeout is not None
    assert timeout.problems[0].startswith("step 1 (session a): status TIMEOUT")
    assert timeout.steps[1].status == "OK"
    assert runner_leftovers(unvalidated_policy_server) == ([], [])


SESSION_POLICY = """\
version: 1
tenants:
  nosessions:
    static_validation: {enabled: false}
    sessions: {enabled: false}
  nosnapshots:
    static_validation: {enabled: false}
    sessions: {snapshots: {enabled: false}}
"""
REFUSED_CORPUS = """\
category: session
cases:
  - id: fake-refused-accepted
    title: a session the policy may refuse
    steps:
      - session: a
        language: python
        code: print("ATTEMPT a")
        expect: {refused_by: [policy], status: [OK], attempted: ["ATTEMPT a"]}
      - session: b
        from_snapshot_of: a
        language: python
        code: print("ATTEMPT b")
        expect: {refused_by: [policy], status: [OK], attempted: ["ATTEMPT b"]}
  - id: fake-refused-unaccepted
    title: a session that must run
    steps:
      - session: a
        language: bash
        code: echo "ATTEMPT a"
        expect: {status: [OK], attempted: ["ATTEMPT a"]}
"""


@pytest.fixture(scope="module")
def session_policy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    """A server requiring API keys, with a tenant that may not create sessions and one that may not snapshot."""
    policies = tmp_path_factory.mktemp("session-policies")
    (policies / "tenants.yaml").write_text(SESSION_POLICY)
    settings = private_settings(auth="api-keys", policies_dir=policies)
    stores = open_stores(settings.data_dir)
    try:
        keys = {name: stores.keys.create(name, "tenant", "test")[1] for name in ("nosessions", "nosnapshots")}
    finally:
        stores.close()
    with server_in_thread(settings) as srv:
        yield srv, keys


def test_policy_refusals_of_sessions_and_snapshots(session_policy_server: tuple[RunningServer, dict[str, str]],
                                                   tmp_path: Path) -> None:
    server, keys = session_policy_server
    (tmp_path / "refused.yaml").write_text(REFUSED_CORPUS)
    cases = load_corpus(tmp_path).cases

    async def run(key: str) -> RunReport:
        async with AsyncSandboxClient(server.target, api_key=key, timeout=120) as client:
            return await run_cases(client, cases, RunOptions())

    nosessions = asyncio.run(run(keys["nosessions"]))
    assert {c.case_id: c.verdict for c in nosessions.cases} == {
        "fake-refused-accepted": Verdict.CONTAINED, "fake-refused-unaccepted": Verdict.ERROR}
    accepted = nosessions.case("fake-refused-accepted")
    assert accepted is not None
    assert [s.refused_as for s in accepted.steps] == ["policy", "policy"]
    assert "SESSIONS_DISABLED" in accepted.steps[0].refusal
    unaccepted = nosessions.case("fake-refused-unaccepted")
    assert unaccepted is not None
    assert "refused by policy, which this step does not accept" in unaccepted.problems[0]

    nosnapshots = asyncio.run(run(keys["nosnapshots"]))
    assert {c.case_id: c.verdict for c in nosnapshots.cases} == {
        "fake-refused-accepted": Verdict.CONTAINED, "fake-refused-unaccepted": Verdict.CONTAINED}
    accepted = nosnapshots.case("fake-refused-accepted")
    assert accepted is not None
    assert accepted.steps[0].status == "OK"
    assert "the snapshot of session a" in accepted.steps[1].refusal
    assert "SNAPSHOTS_DISABLED" in accepted.steps[1].refusal
    with SandboxClient(server.target, api_key=keys["nosnapshots"], timeout=30) as sbx:
        assert list(sbx.list_sessions()) == []


def test_cli_lists_and_runs_session_cases(unvalidated_policy_server: RunningServer) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["--target", unvalidated_policy_server.target, "redteam", "--category", "session",
                                 "--list"])
    assert listed.exit_code == 0, listed.output
    assert "session-agent-takeover" in listed.stdout
    assert "a:bash → a:python" in listed.stdout
    assert "b:python" in listed.stdout
    ran = runner.invoke(app, ["--target", unvalidated_policy_server.target, "redteam", "--case",
                              "session-agent-takeover", "--case", "session-snapshot-planted-links",
                              "--session-cases", "1", "--json"])
    assert ran.exit_code == 0, ran.output
    data = json.loads(ran.stdout)
    assert data["all_contained"] is True
    steps = [s for c in data["cases"] for s in c["steps"]]
    assert {s["session"] for s in steps} == {"a", "b"}
    assert all(s["session_id"].startswith("ses_") for s in steps)
    assert runner_leftovers(unvalidated_policy_server) == ([], [])
