"""``sandbox-admin eval`` end to end against a real server (nsjail): the shipped suites pass, HumanEval
completions are judged as HumanEval's harness judges them, deliberate failures are reported for what they are
(in multi-step cases, with the step that failed), and the JSON and HTML reports hold what they promise."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from eval_helpers import PRICE_PER_EXECUTION, report_of, run_eval, write
from typer.testing import CliRunner

from sandbox_client import SandboxClient
from sandbox_client.admin_cli import EXIT_FAILURE
from sandbox_client.evaluation.runner import RUN_LABEL
from sandbox_client.evaluation.suite import load_suite, shipped_suites
from sandbox_server.testing import RunningServer

SANDBOX_ADMIN = Path(sys.executable).with_name("sandbox-admin")
TOP_KEYS = {"suite", "run", "summary", "latency_s", "statuses", "reasons", "errors_by_type", "slowest", "results"}
SUMMARY_KEYS = {"runs", "passed", "failed", "errors", "not_run", "success_rate", "cases", "cases_passed",
                "pass_at_1", "total_cost"}
LATENCY_KEYS = {"count", "mean", "min", "p50", "p90", "p99", "max"}
RESULT_KEYS = {"id", "repeat", "source", "language", "tags", "task_id", "outcome", "reason", "detail", "status",
               "exit_code", "client_time_s", "server_wall_time_s", "cost", "execution_id", "error_type",
               "error_code", "steps", "failed_step", "session_id"}

FAILURES = """\
name: deliberate-failures
cases:
  - id: passes
    code: print(1)
    expected_stdout: "1\\n"
  - id: wrong-output
    code: print("hello world")
    expected_stdout: "hello there\\n"
  - id: trailing-space
    code: print("abc  ")
    expected_stdout: "abc\\n"
  - id: trailing-space-stripped
    code: print("abc  ")
    expected_stdout: "abc"
    strip_trailing_whitespace: true
  - id: wrong-status
    code: "import sys\\nprint('partial')\\nsys.exit(5)"
  - id: wrong-exit-code
    language: bash
    code: exit 3
    expected_exit_code: 4
  - id: refused
    code: print(1)
    limits: {wall_time_s: 1000}
  - id: too-slow
    code: "import time\\ntime.sleep(5)"
    max_time_s: 0.5
  - id: check-fails
    code: print(3)
    check: "import sys\\nassert int(sys.stdin.read()) == 4, 'not four'"
  - id: wrong-error
    language: cobol
    code: print(1)
    expected_error: PermissionDeniedError
  - id: not-refused
    code: print(1)
    expected_error: INVALID_ARGUMENT
  - id: missing-file
    code: print(1)
    expected_files: {out.txt: "x"}
"""


def test_the_basic_suite_passes_on_a_real_server(
    runner: CliRunner, eval_server: RunningServer, tmp_path: Path
) -> None:
    html = tmp_path / "basic.html"
    result = run_eval(runner, eval_server, "basic", "--json", "--html", str(html))
    assert result.exit_code == 0, (result.stdout, result.stderr)
    report = report_of(result)
    cases = len(load_suite(shipped_suites()["basic"]).cases)
    assert 20 <= cases <= 30
    failing = [(r["id"], r["reason"], r["detail"]) for r in report["results"] if r["outcome"] != "passed"]
    assert not failing
    summary = report["summary"]
    assert summary["runs"] == summary["passed"] == summary["cases"] == summary["cases_passed"] == cases
    assert (summary["failed"], summary["errors"], summary["not_run"], summary["success_rate"]) == (0, 0, 0, 1.0)
    assert {r["language"] for r in report["results"]} == {"python", "javascript", "bash"}
    for status in ("OK", "NONZERO_EXIT", "TIMEOUT", "MEMORY_LIMIT", "OUTPUT_LIMIT"):
        assert report["statuses"][status] >= 1, report["statuses"]
    assert report["errors_by_type"] == {"InvalidRequestError": 1}  # the expected refusal of a syntax error
    assert report["reasons"] == {}

    # Latency: every run timed by the client, every run that ran by the server too.
    client, server = report["latency_s"]["client"], report["latency_s"]["server"]
    assert client["count"] == cases
    assert server["count"] == cases - 1
    assert 0 < client["min"] <= client["p50"] <= client["p90"] <= client["p99"] <= client["max"]
    assert client["max"] >= 1.0  # the timing-out case runs into its 1 s wall limit
    assert report["slowest"][0]["id"] == "py-timeout"

    # Cost: a price per execution; a case with a check program ran twice, the refused one not at all.
    checks = sum(1 for c in load_suite(shipped_suites()["basic"]).cases if c.case.check is not None)
    assert summary["total_cost"] == pytest.approx(PRICE_PER_EXECUTION * (cases - 1 + checks))
    by_id = {r["id"]: r for r in report["results"]}
    assert by_id["py-check-primes"]["cost"] == pytest.approx(2 * PRICE_PER_EXECUTION)
    assert by_id["py-syntax-error-refused"]["cost"] == 0

    html_text = html.read_text(encoding="utf-8")
    assert "<svg" in html_text
    assert html_text.count("<tr class=\"passed\">") == cases


def test_json_report_keys_are_stable(runner: CliRunner, eval_server: RunningServer, tmp_path: Path) -> None:
    suite = write(tmp_path / "two.jsonl", '{"id": "a", "code": "print(1)"}\n'
                                          '{"id": "b", "language": "bash", "code": "echo 2", "tags": ["t"]}\n')
    report = report_of(run_eval(runner, eval_server, str(suite), "--json"))
    assert set(report) == TOP_KEYS
    assert set(report["suite"]) == {"name", "path", "description", "cases", "skipped_tasks"}
    assert set(report["run"]) == {"target", "session_id", "started_at", "duration_s", "concurrency", "repeat",
                                  "limits", "fail_fast"}
    assert set(report["summary"]) == SUMMARY_KEYS
    assert set(report["latency_s"]) == {"client", "server"}
    assert set(report["latency_s"]["client"]) == set(report["latency_s"]["server"]) == LATENCY_KEYS
    assert all(set(r) == RESULT_KEYS for r in report["results"])
    assert set(report["slowest"][0]) == {"id", "repeat", "client_time_s", "server_wall_time_s", "outcome"}
    assert [r["id"] for r in report["results"]] == ["a", "b"]
    assert report["results"][1]["source"] == f"{suite}:2"
    assert report["run"]["target"] == eval_server.target
    assert report["run"]["session_id"].startswith("eval-")


def test_deliberate_failures_are_reported_for_what_they_are(
    runner: CliRunner, eval_server: RunningServer, tmp_path: Path
) -> None:
    suite = write(tmp_path / "failures.yaml", FAILURES)
    result = run_eval(runner, eval_server, str(suite), "--json")
    assert result.exit_code == EXIT_FAILURE
    report = report_of(result)
    by_id = {r["id"]: r for r in report["results"]}
    outcomes = {case_id: (r["outcome"], r["reason"]) for case_id, r in by_id.items()}
    assert outcomes == {
        "passes": ("passed", None),
        "wrong-output": ("failed", "wrong_output"),
        "trailing-space": ("failed", "wrong_output"),
        "trailing-space-stripped": ("passed", None),
        "wrong-status": ("failed", "wrong_status"),
        "wrong-exit-code": ("failed", "wrong_exit_code"),
        "refused": ("error", "refused"),
        "too-slow": ("failed", "too_slow"),
        "check-fails": ("failed", "check_failed"),
        "wrong-error": ("failed", "wrong_error"),
        "not-refused": ("failed", "not_refused"),
        "missing-file": ("failed", "wrong_files"),
    }
    assert "-hello there\n+hello world" in by_id["wrong-output"]["detail"]
    assert "only in trailing whitespace" in by_id["trailing-space"]["detail"]
    assert by_id["wrong-status"]["status"] == "NONZERO_EXIT"
    assert by_id["wrong-status"]["exit_code"] == 5
    assert "expected OK" in by_id["wrong-status"]["detail"]
    assert "partial" in by_id["wrong-status"]["detail"]  # the end of its stdout
    assert "exit code 3, expected 4" in by_id["wrong-exit-code"]["detail"]
    refused = by_id["refused"]
    assert (refused["error_type"], refused["error_code"], refused["status"]) == (
        "InvalidRequestError", "INVALID_ARGUMENT", None)
    assert "wall_time_ms" in refused["detail"]
    assert "ceiling" in refused["detail"]
    too_slow = by_id["too-slow"]
    assert 0.5 <= too_slow["client_time_s"] < 3  # cancelled at its ceiling, not waited for
    assert "max_time_s is 0.5" in too_slow["detail"]
    assert "AssertionError: not four" in by_id["check-fails"]["detail"]
    assert "expected PermissionDeniedError" in by_id["wrong-error"]["detail"]
    assert "unknown language 'cobol'" in by_id["wrong-error"]["detail"]
    assert "out.txt" in by_id["missing-file"]["detail"]

    summary = report["summary"]
    assert (summary["runs"], summary["passed"], summary["failed"], summary["errors"]) == (12, 2, 9, 1)
    assert summary["success_rate"] == pytest.approx(2 / 12)
    assert report["reasons"]["wrong_output"] == 2
    assert report["errors_by_type"] == {"InvalidRequestError": 2}  # the refused case and the unknown language

    human = run_eval(runner, eval_server, str(suite))
    assert human.exit_code == EXIT_FAILURE
    assert "2/12 passed" in human.stdout
    for case_id in ("wrong-output", "refused", "too-slow", "check-fails"):
        assert case_id in human.stdout
    assert "InvalidRequestError (INVALID_ARGUMENT)" in human.stdout


def test_humaneval_sample_passes_with_its_canonical_solutions(
    runner: CliRunner, eval_server: RunningServer
) -> None:
    result = run_eval(runner, eval_server, "humaneval-sample", "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    report = report_of(result)
    tasks = [r["task_id"] for r in report["results"]]
    assert 5 <= len(tasks) <= 10
    assert all(r["outcome"] == "passed" and "humaneval" in r["tags"] for r in report["results"])
    assert report["summary"]["pass_at_1"] == 1.0


def test_wrong_completions_fail_the_right_tasks(runner: CliRunner, eval_server: RunningServer, tmp_path: Path) -> None:
    problems = {p.case.id: p for p in load_suite(shipped_suites()["humaneval-sample"]).cases}
    canonical = {}
    for line in shipped_suites()["humaneval-sample"].read_text().splitlines():
        problem = json.loads(line)
        canonical[problem["task_id"]] = problem["canonical_solution"]
    assert {f"SandboxEval/{n}" for n in range(8)} <= set(problems)
    samples = [
        ("SandboxEval/0", canonical["SandboxEval/0"]),
        ("SandboxEval/1", "    return text == text[::-1]\n"),  # forgets case and punctuation
        ("SandboxEval/2", canonical["SandboxEval/2"]),  # two samples of task 2: one right, one wrong
        ("SandboxEval/2", "    return sorted(intervals)\n"),
        ("SandboxEval/3", "    while True:\n        pass\n"),  # never returns
        ("SandboxEval/4", "    return text[k:] +\n"),  # does not parse: the server refuses it
        ("SandboxEval/5", canonical["SandboxEval/5"]),
    ]
    completions = write(tmp_path / "samples.jsonl", "".join(
        json.dumps({"task_id": task, "completion": completion, "model": "test"}) + "\n"
        for task, completion in samples))
    result = run_eval(runner, eval_server, "humaneval-sample", "--completions", str(completions),
                      "--limits", "wall_time_s=1", "--json")
    assert result.exit_code == EXIT_FAILURE
    report = report_of(result)
    outcomes = {r["id"]: (r["outcome"], r["reason"], r["status"]) for r in report["results"]}
    assert outcomes == {
        "SandboxEval/0": ("passed", None, "OK"),
        "SandboxEval/1": ("failed", "wrong_status", "NONZERO_EXIT"),
        "SandboxEval/2#1": ("passed", None, "OK"),
        "SandboxEval/2#2": ("failed", "wrong_status", "NONZERO_EXIT"),
        "SandboxEval/3": ("failed", "wrong_status", "TIMEOUT"),
        "SandboxEval/4": ("error", "refused", None),
        "SandboxEval/5": ("passed", None, "OK"),
    }
    by_id = {r["id"]: r for r in report["results"]}
    assert "AssertionError" in by_id["SandboxEval/1"]["detail"]
    assert by_id["SandboxEval/2#2"]["task_id"] == "SandboxEval/2"
    assert by_id["SandboxEval/2#2"]["source"] == f"{completions}:4"
    assert "syntax" in by_id["SandboxEval/4"]["detail"].lower()
    assert report["suite"]["skipped_tasks"] == ["SandboxEval/6", "SandboxEval/7"]
    assert report["summary"]["pass_at_1"] == pytest.approx((1 + 0 + 0.5 + 0 + 0 + 1) / 6)
    assert report["run"]["limits"] == {"wall_time_s": 1}


def test_repeat_session_and_limits_overrides(runner: CliRunner, eval_server: RunningServer, tmp_path: Path) -> None:
    suite = write(tmp_path / "small.yaml", """\
- id: sleepy
  code: "import time\\ntime.sleep(0.3)\\nprint('done')"
  expected_stdout: "done\\n"
- id: quick
  language: javascript
  code: console.log(1)
  expected_stdout: "1\\n"
""")
    session = "eval-test-session-1"
    report = report_of(run_eval(runner, eval_server, str(suite), "--repeat", "3", "--concurrency", "2",
                                "--session-id", session, "--json"))
    assert [(r["id"], r["repeat"]) for r in report["results"]] == [
        ("sleepy", 0), ("sleepy", 1), ("sleepy", 2), ("quick", 0), ("quick", 1), ("quick", 2)]
    assert report["summary"]["runs"] == report["summary"]["passed"] == 6
    assert report["summary"]["cases_passed"] == 2
    assert report["latency_s"]["client"]["count"] == 6
    assert report["run"]["session_id"] == session
    # The server recorded every execution under the run's session.
    assert eval_server.app.stores is not None
    recorded = {rec.execution_id for rec in eval_server.app.stores.audit.list(session_id=session, limit=100)}
    assert {r["execution_id"] for r in report["results"]} <= recorded

    # A tighter wall-time limit for the whole run turns the sleeper into a timeout.
    limited = run_eval(runner, eval_server, str(suite), "--limits", "wall_time_s=0.1", "--json")
    assert limited.exit_code == EXIT_FAILURE
    by_id = {r["id"]: r for r in report_of(limited)["results"]}
    assert (by_id["sleepy"]["status"], by_id["sleepy"]["reason"]) == ("TIMEOUT", "wrong_status")
    assert by_id["quick"]["outcome"] == "passed"

    # Only the tagged cases.
    tagged = write(tmp_path / "tagged.jsonl", '{"id": "a", "code": "print(1)", "tags": ["x"]}\n'
                                              '{"id": "b", "code": "print(2)", "tags": ["y"]}\n')
    only = report_of(run_eval(runner, eval_server, str(tagged), "--tag", "y", "--json"))
    assert [r["id"] for r in only["results"]] == ["b"]


def test_fail_fast_stops_starting_cases(runner: CliRunner, eval_server: RunningServer, tmp_path: Path) -> None:
    lines = ['{"id": "first", "code": "print(1)", "expected_stdout": "2\\n"}\n']
    lines += [f'{{"id": "later-{i}", "code": "print({i})"}}\n' for i in range(5)]
    suite = write(tmp_path / "ff.jsonl", "".join(lines))
    result = run_eval(runner, eval_server, str(suite), "--fail-fast", "--concurrency", "1", "--json")
    assert result.exit_code == EXIT_FAILURE
    summary = report_of(result)["summary"]
    assert (summary["runs"], summary["failed"], summary["passed"], summary["not_run"]) == (6, 1, 0, 5)


def test_unreachable_server_is_an_error_per_case(runner: CliRunner, tmp_path: Path) -> None:
    suite = write(tmp_path / "one.jsonl", '{"id": "a", "code": "print(1)"}\n')
    result = run_eval(runner, None, str(suite), "--json")
    assert result.exit_code == EXIT_FAILURE
    (only,) = report_of(result)["results"]
    assert (only["outcome"], only["reason"], only["error_code"]) == ("error", "refused", "UNAVAILABLE")
    assert only["error_type"] in {"UnavailableError", "CircuitOpenError"}  # the client may retry first


def test_html_report_is_self_contained(runner: CliRunner, eval_server: RunningServer, tmp_path: Path) -> None:
    suite = write(tmp_path / "mixed.yaml", """\
description: <b>escaped</b> & shown
cases:
  - id: ok-<1>
    code: print(1)
  - id: fails
    code: print("<script>alert(1)</script>")
    expected_stdout: "x\\n"
""")
    html = tmp_path / "report.html"
    result = run_eval(runner, eval_server, str(suite), "--html", str(html))
    assert result.exit_code == EXIT_FAILURE
    text = html.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "http" not in text  # no stylesheet, script, font or image from anywhere
    assert not re.search(r"<(script|link|img|iframe)\b", text, re.IGNORECASE)
    assert re.search(r"<svg\b.*<rect\b.*</svg>", text, re.DOTALL)  # the histogram's bars
    assert "<style>" in text
    assert "ok-&lt;1&gt;" in text
    assert "&lt;b&gt;escaped&lt;/b&gt; &amp; shown" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert text.count('<tr class="passed">') == 1
    assert text.count('<tr class="failed">') == 1

    missing_dir = run_eval(runner, eval_server, str(suite), "--html", str(tmp_path / "nowhere" / "r.html"))
    assert missing_dir.exit_code == 2
    assert "no such directory" in missing_dir.stderr


def test_sandbox_admin_eval_basic_as_a_subprocess(eval_server: RunningServer) -> None:
    """The console script, a bare suite name, the human report on a pipe (no progress bar), exit 0."""
    env = {**os.environ, "SANDBOX_TARGET": eval_server.target}
    done = subprocess.run([str(SANDBOX_ADMIN), "eval", "basic"], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, (done.stdout, done.stderr)
    cases = len(load_suite(shipped_suites()["basic"]).cases)
    assert f"{cases}/{cases} passed (100.0%)" in done.stdout
    assert "p50" in done.stdout
    assert "p99" in done.stdout
    assert "Slowest" in done.stdout
    assert done.stderr == ""  # no progress bar when stderr is not a terminal


# ---- multi-step cases: one session per case ---------------------------------------------------------------------


def sessions_left(srv: RunningServer) -> list[str]:
    """Sessions an evaluation run created that are still live (each case must close its own)."""
    with SandboxClient(srv.target, timeout=30) as sbx:
        return [s.id for s in sbx.list_sessions() if RUN_LABEL in s.labels]


def test_the_sessions_suite_passes_on_a_real_server(
    runner: CliRunner, eval_server: RunningServer, tmp_path: Path
) -> None:
    html = tmp_path / "sessions.html"
    result = run_eval(runner, eval_server, "sessions", "--json", "--html", str(html), "--session-id", "eval-sessions-1")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    report = report_of(result)
    suite = load_suite(shipped_suites()["sessions"])
    cases = len(suite.cases)
    assert 6 <= cases <= 12
    failing = [(r["id"], r["reason"], r["failed_step"], r["detail"]) for r in report["results"]
               if r["outcome"] != "passed"]
    assert not failing
    summary = report["summary"]
    assert summary["runs"] == summary["passed"] == summary["cases_passed"] == cases
    assert summary["success_rate"] == 1.0
    steps = {c.case.id: len(c.case.steps or ()) for c in suite.cases}
    for r in report["results"]:
        assert r["steps"] == steps[r["id"]] >= 2
        assert r["failed_step"] is None
        assert r["session_id"].startswith("ses_")
    assert len({r["session_id"] for r in report["results"]}) == cases  # a session of its own per case
    assert {r["language"] for r in report["results"]} >= {"python", "bash, python, javascript"}
    # Every step is an execution priced as such, and so is each check program.
    checks = sum(1 for c in suite.cases for step in c.case.steps or () if step.check is not None)
    assert summary["total_cost"] == pytest.approx(PRICE_PER_EXECUTION * (sum(steps.values()) + checks))
    html_text = html.read_text(encoding="utf-8")
    assert html_text.count('<tr class="passed">') == cases
    assert sessions_left(eval_server) == []


MULTI_STEP_FAILURES = """\
name: multi-step-failures
cases:
  - id: passes
    steps:
      - code: x = 2
      - code: x * 21
        expected_value: "42"
  - id: wrong-output-at-step-2
    steps:
      - code: words = ["a", "b"]
      - code: print(len(words))
        expected_stdout: "3\\n"
      - code: print("never run")
  - id: wrong-value-at-step-1
    steps:
      - code: 1 + 1
        expected_value: "3"
      - code: print("never run")
  - id: no-figure
    steps:
      - code: print("no figure here")
        expected_outputs: [image/png]
  - id: wrong-file
    steps:
      - language: bash
        code: echo draft > notes.txt
        expected_files: {notes.txt: "final\\n"}
  - id: unexpected-exception
    steps:
      - code: value = 1
      - code: value / 0
      - code: value
  - id: check-fails-at-step-2
    steps:
      - code: print(1)
      - code: print(5)
        check: "import sys\\nassert int(sys.stdin.read()) == 4, 'not four'"
  - id: refused-step-expected
    steps:
      - code: "def broken(:"
        expected_error: InvalidRequestError
      - code: print("the session goes on")
        expected_stdout: "the session goes on\\n"
"""


def test_a_failing_step_is_named(runner: CliRunner, eval_server: RunningServer, tmp_path: Path) -> None:
    suite = write(tmp_path / "multi.yaml", MULTI_STEP_FAILURES)
    result = run_eval(runner, eval_server, str(suite), "--json")
    assert result.exit_code == EXIT_FAILURE
    by_id = {r["id"]: r for r in report_of(result)["results"]}
    got = {case_id: (r["outcome"], r["reason"], r["failed_step"], r["steps"]) for case_id, r in by_id.items()}
    assert got == {
        "passes": ("passed", None, None, 2),
        "wrong-output-at-step-2": ("failed", "wrong_output", 2, 3),
        "wrong-value-at-step-1": ("failed", "wrong_value", 1, 2),
        "no-figure": ("failed", "wrong_outputs", 1, 1),
        "wrong-file": ("failed", "wrong_files", 1, 1),
        "unexpected-exception": ("failed", "wrong_status", 2, 3),
        "check-fails-at-step-2": ("failed", "check_failed", 2, 2),
        "refused-step-expected": ("passed", None, None, 2),
    }
    wrong = by_id["wrong-output-at-step-2"]
    assert wrong["detail"].startswith("step 2 of 3 (python): stdout differs")
    assert "-3\n+2" in wrong["detail"]
    assert "never run" not in json.dumps(by_id)  # the steps after a failing one do not run
    assert by_id["wrong-value-at-step-1"]["detail"].startswith("step 1 of 2 (python): value '2', expected '3'")
    assert "rich outputs [], expected ['image/png']" in by_id["no-figure"]["detail"]
    assert "-final\n+draft" in by_id["wrong-file"]["detail"]
    exception = by_id["unexpected-exception"]
    assert (exception["status"], exception["exit_code"]) == ("NONZERO_EXIT", 1)
    assert "ZeroDivisionError" in exception["detail"]
    assert "AssertionError: not four" in by_id["check-fails-at-step-2"]["detail"]
    assert all(r["session_id"].startswith("ses_") for r in by_id.values())

    human = run_eval(runner, eval_server, str(suite))
    assert human.exit_code == EXIT_FAILURE
    assert "2/8 passed" in human.stdout
    assert "wrong_output at step 2/3" in human.stdout
    assert "check_failed at step 2/2" in human.stdout
    html = tmp_path / "multi.html"
    assert run_eval(runner, eval_server, str(suite), "--html", str(html)).exit_code == EXIT_FAILURE
    html_text = html.read_text(encoding="utf-8")
    assert html_text.count('<tr class="failed">') == 6  # one row per case, however many steps
    assert "wrong_value at step 1/2" in html_text
    assert sessions_left(eval_server) == []


def test_sandbox_admin_eval_sessions_as_a_subprocess(eval_server: RunningServer) -> None:
    """The console script runs the shipped sessions suite by its name."""
    env = {**os.environ, "SANDBOX_TARGET": eval_server.target}
    done = subprocess.run([str(SANDBOX_ADMIN), "eval", "sessions", "--repeat", "2", "--concurrency", "4"],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, (done.stdout, done.stderr)
    cases = len(load_suite(shipped_suites()["sessions"]).cases)
    assert f"Suite sessions ({cases} cases x 2)" in done.stdout
    assert f"{2 * cases}/{2 * cases} passed (100.0%)" in done.stdout
    assert sessions_left(eval_server) == []
