"""Suite files without a server: the shipped suites load; bad files are usage errors (exit 2) that say where
(file:line) and which case; HumanEval problems become HumanEval's own program; the statistics and the
histogram behave at their edges."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from eval_helpers import run_eval, write
from typer.testing import CliRunner

from sandbox_client import Limits, Status
from sandbox_client.admin_cli import EXIT_USAGE
from sandbox_client.evaluation.html_report import histogram_bins, latency_histogram_svg
from sandbox_client.evaluation.models import Case, CaseLimits, HumanEvalProblem, humaneval_program, parse_size
from sandbox_client.evaluation.report import percentile
from sandbox_client.evaluation.suite import SuiteError, load_suite, resolve_suite, shipped_suites

BAD_FILES = [
    pytest.param(
        "bad.yaml",
        "cases:\n  - id: a\n    code: print(1)\n    expected_stdot: '1'\n",
        [":4: case 'a': expected_stdot: unknown field"],
        id="misspelt-field",
    ),
    pytest.param(
        "bad.yaml",
        "cases:\n  - id: a\n    code: x\n    limits:\n      wall_time_s: -1\n      memory_bytes: 12 parsecs\n",
        [":5: case 'a': limits.wall_time_s: Input should be greater than 0",
         ":6: case 'a': limits.memory_bytes: not a size: '12 parsecs'"],
        id="bad-limits",
    ),
    pytest.param(
        "bad.yaml",
        "- id: a\n  code: x\n  expected_stdout: '1'\n  check: pass\n- id: a\n  code: y\n- code: z\n",
        [":1: case 'a': give expected_stdout or check, not both", ":7: case without an id: id: required"],
        id="both-expectations-and-missing-id",
    ),
    pytest.param(
        "dup.yaml",
        "- id: a\n  code: x\n- id: b\n  code: y\n- id: a\n  code: z\n",
        [":5: case 'a': duplicate id (first at "],
        id="duplicate-id",
    ),
    pytest.param(
        "bad.yaml",
        "- id: a\n  code: x\n  expected_status: DONE\n",
        [":3: case 'a': expected_status: Input should be 'OK'"],
        id="unknown-status",
    ),
    pytest.param(
        "bad.yaml",
        "- id: a\n  code: x\n  expected_error: Oops\n",
        [":1: case 'a': expected_error: unknown error 'Oops'"],
        id="unknown-error",
    ),
    pytest.param(
        "bad.yaml",
        "- id: a\n  code: x\n  expected_error: INVALID_ARGUMENT\n  expected_stdout: x\n",
        [":1: case 'a': expected_error says nothing runs: drop expected_stdout"],
        id="error-and-output",
    ),
    pytest.param(
        "bad.yaml",
        "- id: a\n  code: x\n  expected_exit_code: 2\n  expected_status: OK\n",
        [":1: case 'a': expected_exit_code 2 needs expected_status NONZERO_EXIT, not OK"],
        id="exit-code-and-status",
    ),
    pytest.param("bad.yaml", "cases:\n  - id: a\n    code: [unclosed\n", [":4: not valid YAML"], id="yaml-syntax"),
    pytest.param("bad.yaml", "just a string\n", [":1: a suite is a list of cases"], id="yaml-not-a-suite"),
    pytest.param("bad.yaml", "name: x\ncases: []\n", [":2: cases: List should have at least 1 item"],
                 id="yaml-no-cases"),
    pytest.param("bad.yaml", "defaults:\n  limits: {cpu_time_s: 0}\ncases:\n  - {id: a, code: x}\n",
                 [":2: defaults.limits.cpu_time_s: Input should be greater than 0"], id="bad-defaults"),
    pytest.param(
        "bad.jsonl",
        '{"id": "x", "code": "print(1)"}\n{"id": "y", "code": 5}\nnot json\n[1]\n',
        [":2: case 'y': code: Input should be a valid string", ":3: not JSON: Expecting value",
         ":4: a case must be a JSON object, not a list"],
        id="jsonl-lines",
    ),
    pytest.param(
        "bad.jsonl",
        '{"task_id": "T/1", "prompt": "def f():\\n", "test": "", "entry_point": "f"}\n'
        '{"task_id": "T/2", "prompt": "", "test": "", "entry_point": "1f", "canonical_solution": ""}\n'
        '{"task_id": "T/3", "prompt": ""}\n',
        [":1: task 'T/1': no completion or canonical_solution",
         ":2: HumanEval problem 'T/2': entry_point: String should match pattern",
         ":3: HumanEval problem 'T/3': test: required"],
        id="humaneval-lines",
    ),
    pytest.param(
        "bad.yaml",
        "- id: a\n  code: x\n  steps:\n    - code: y\n"
        "- id: b\n  expected_stdout: x\n  steps:\n    - code: y\n"
        "- id: c\n"
        "- id: d\n  steps: []\n",
        [":1: case 'a': give code (one program) or steps (calls in one session), not both",
         ":5: case 'b': a case with steps gives expected_stdout on each step",
         ":9: case 'c': give code (one program) or steps (calls in one session)",
         ":11: case 'd': steps: Tuple should have at least 1 item"],
        id="code-or-steps",
    ),
    pytest.param(
        "bad.yaml",
        "- id: a\n  steps:\n    - code: x\n      limits: {memory_bytes: 64MiB}\n"
        "    - code: y\n      env: {A: b}\n"
        "    - code: echo\n      language: bash\n      expected_value: '1'\n"
        "    - code: z\n      expected_outputs: [png]\n"
        "    - code: w\n      expected_stdot: x\n",
        [":3: case 'a': steps.0: limits: memory_bytes hold for the whole session: set them on the case",
         ":5: case 'a': steps.1: env: a Python call runs in the session's kernel",
         ":7: case 'a': steps.2: expected_value and expected_outputs are a Python call's",
         ":11: case 'a': steps.3.expected_outputs.0: String should match pattern",
         ":13: case 'a': steps.4.expected_stdot: unknown field"],
        id="bad-steps",
    ),
    pytest.param("bad.txt", "id: a\n", [": unknown suite format"], id="unknown-suffix"),
    pytest.param("bad.jsonl", b"\xff\xfe", [": not valid UTF-8"], id="not-utf8"),
]


@pytest.mark.parametrize(("name", "content", "expected"), BAD_FILES)
def test_bad_suites_are_usage_errors_with_file_and_line(
    runner: CliRunner, tmp_path: Path, name: str, content: str | bytes, expected: list[str]
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write(path, content)
    result = run_eval(runner, None, str(path))  # no server: nothing may be run
    assert result.exit_code == EXIT_USAGE, result.output
    assert "the suite does not load" in result.stderr
    for fragment in expected:
        assert f"{path}{fragment}" in result.stderr, result.stderr
    as_json = run_eval(runner, None, str(path), "--json")
    assert as_json.exit_code == EXIT_USAGE
    error = json.loads(as_json.stderr)["error"]
    assert error["problems"]
    assert all(p["location"].startswith(str(path)) for p in error["problems"])


def test_bad_completions_files(runner: CliRunner, tmp_path: Path) -> None:
    problems = write(tmp_path / "problems.jsonl",
                     '{"task_id": "T/1", "prompt": "def f():\\n", "test": "def check(c): pass", "entry_point": "f"}\n')
    completions = write(tmp_path / "samples.jsonl",
                        '{"task_id": "T/1", "completion": "    return 1"}\n{"task_id": "T/9", "completion": "x"}\n'
                        '{"task_id": "T/1"}\n{oops\n')
    result = run_eval(runner, None, str(problems), "--completions", str(completions))
    assert result.exit_code == EXIT_USAGE
    assert f"{completions}:2: task 'T/9' is not a problem of the suite" in result.stderr
    assert f"{completions}:3: completion: required" in result.stderr
    assert f"{completions}:4: not JSON" in result.stderr

    ours = write(tmp_path / "ours.jsonl", '{"id": "a", "code": "print(1)"}\n')
    mixed = run_eval(runner, None, str(ours), "--completions", str(completions))
    assert mixed.exit_code == EXIT_USAGE
    assert "needs a suite of HumanEval problems" in mixed.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch"], "not a shipped suite (shipped: basic, humaneval-sample, sessions)"),
        (["basic", "--limits", "wall_time_s=abc"], "--limits: wall_time_s: Input should be a valid number"),
        (["basic", "--limits", "foo=1,wall_time_s=0"], "foo: unknown field"),
        (["basic", "--limits", "wall_time_s"], "expected name=value"),
        (["basic", "--session-id", "has space"], "--session-id"),
        (["basic", "--tag", "no-such-tag"], "no case of basic has the tag(s) no-such-tag"),
        # typer's own checks: its usage message
        (["basic", "--concurrency", "0"], "Usage:"),
        (["basic", "--completions", "/no/such/file"], "Usage:"),
    ],
)
def test_bad_options_are_usage_errors(runner: CliRunner, args: list[str], message: str) -> None:
    result = run_eval(runner, None, *args)
    assert result.exit_code == EXIT_USAGE
    assert message in result.stderr


def test_shipped_suites_load_and_resolve_by_name() -> None:
    shipped = shipped_suites()
    assert set(shipped) == {"basic", "humaneval-sample", "sessions"}
    assert resolve_suite("basic") == shipped["basic"]
    basic = load_suite(shipped["basic"])
    assert basic.name == "basic"
    assert 20 <= len(basic.cases) <= 30
    languages = {c.case.language for c in basic.cases}
    assert languages == {"python", "javascript", "bash"}
    statuses = {c.case.expected_status for c in basic.cases}
    assert {Status.OK, Status.NONZERO_EXIT, Status.TIMEOUT, Status.MEMORY_LIMIT} <= statuses
    assert any(c.case.check for c in basic.cases)
    assert any(c.case.stdin for c in basic.cases)
    assert any(c.case.files for c in basic.cases)
    assert all(re.fullmatch(r".*basic\.yaml:\d+", c.source) for c in basic.cases)
    # The suite's defaults reach every case; a case's own limits win field by field.
    assert all(c.case.max_time_s == 30 for c in basic.cases)
    timeout = next(c.case for c in basic.cases if c.case.id == "py-timeout")
    assert timeout.limits.wall_time_s == 1
    memory = next(c.case for c in basic.cases if c.case.id == "py-memory-limit")
    assert memory.limits.memory_bytes == 64 * 1024 * 1024

    sample = load_suite(shipped["humaneval-sample"])
    assert 5 <= len(sample.cases) <= 10
    assert all(c.task_id == c.case.id and c.case.tags == ("humaneval",) for c in sample.cases)


def test_the_sessions_suite_is_multi_step() -> None:
    suite = load_suite(resolve_suite("sessions"))
    assert suite.name == "sessions"
    assert 6 <= len(suite.cases) <= 12
    steps = [step for c in suite.cases for step in c.case.steps or ()]
    assert all(len(c.case.steps or ()) >= 2 for c in suite.cases)
    assert all(c.case.code is None for c in suite.cases)
    assert {step.language for step in steps} == {"python", "bash", "javascript"}
    assert any(step.expected_outputs == ("image/png",) for step in steps)
    assert any(step.expected_value is not None for step in steps)
    assert any(step.expected_status is Status.NONZERO_EXIT for step in steps)
    assert any(step.stdin for step in steps)
    assert any(step.check for step in steps)
    assert any(step.expected_files for step in steps)
    assert any(c.case.files for c in suite.cases)  # a file uploaded into the session's workspace
    assert all(c.case.max_time_s == 60 for c in suite.cases)


def test_step_defaults_come_from_the_case(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path / "s.yaml", """\
defaults:
  language: bash
  strip_trailing_whitespace: true
  limits: {wall_time_s: 5, memory_bytes: 256MiB}
cases:
  - id: a
    steps:
      - code: echo 1
      - code: print(1)
        language: python
        strip_trailing_whitespace: false
        limits: {wall_time_s: 1}
"""))
    (loaded,) = suite.cases
    case = loaded.case
    assert case.steps is not None
    first, second = case.steps
    assert (first.language, first.strip_trailing_whitespace) == ("bash", True)
    assert (second.language, second.strip_trailing_whitespace) == ("python", False)
    assert case.limits.memory_bytes == 256 << 20  # the session's
    assert second.limits.wall_time_s == 1
    assert case.languages == ("bash", "python")
    assert case.program == ""


def test_a_humaneval_problem_runs_as_humaneval_runs_it(tmp_path: Path) -> None:
    problem = HumanEvalProblem(task_id="T/0", prompt="def f(x):\n", canonical_solution="    return x\n",
                               test="def check(candidate):\n    assert candidate(1) == 1\n", entry_point="f")
    program = humaneval_program(problem, "    return x\n")
    assert program == "def f(x):\n    return x\n\ndef check(candidate):\n    assert candidate(1) == 1\n\ncheck(f)"
    # Extra fields (HumanEval+, results files) are ignored; a completion on the line wins over the solution.
    line = {**problem.model_dump(exclude_none=True), "completion": "    return 2\n", "plus_input": [[1]]}
    suite = load_suite(write(tmp_path / "he.jsonl", json.dumps(line) + "\n"))
    (loaded,) = suite.cases
    assert loaded.case.code is not None
    assert "    return 2\n" in loaded.case.code
    assert loaded.case.limits.wall_time_s == 3.0


def test_completions_with_several_samples_and_missing_tasks(tmp_path: Path) -> None:
    problems = write(tmp_path / "p.jsonl", "".join(
        json.dumps({"task_id": f"T/{n}", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
                    "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}) + "\n" for n in range(3)))
    samples = write(tmp_path / "s.jsonl", "".join(
        json.dumps({"task_id": task, "completion": body}) + "\n"
        for task, body in [("T/0", "    return 1\n"), ("T/2", "    return 2\n"), ("T/2", "    return 1\n")]))
    suite = load_suite(problems, completions=samples)
    assert [(c.case.id, c.task_id, c.source) for c in suite.cases] == [
        ("T/0", "T/0", f"{samples}:1"), ("T/2#1", "T/2", f"{samples}:2"), ("T/2#2", "T/2", f"{samples}:3")]
    assert suite.skipped_tasks == ("T/1",)


def test_case_model_rules() -> None:
    case = Case.model_validate({"id": "a", "code": "x", "expected_exit_code": 3})
    assert case.expected_status is Status.NONZERO_EXIT  # implied by a non-zero exit code
    with pytest.raises(ValueError, match=r"unknown field|Extra inputs"):
        Case.model_validate({"id": "a", "code": "x", "nope": 1})
    with pytest.raises(ValueError, match="should be a valid number"):
        CaseLimits.model_validate({"wall_time_s": True})
    limits = CaseLimits.model_validate({"wall_time_s": 2, "memory_bytes": "1.5KiB", "output_bytes": "2MB"})
    assert limits.to_client() == Limits(wall_time_s=2.0, memory_bytes=1536, output_bytes=2_000_000)
    assert CaseLimits().to_client() is None
    merged = limits.merged(CaseLimits(wall_time_s=9))
    assert (merged.wall_time_s, merged.memory_bytes) == (9, 1536)
    assert parse_size("64MiB") == 64 << 20
    assert parse_size(7) == 7
    with pytest.raises(ValueError, match="whole number"):
        parse_size("1.5B")


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 0) == 1.0
    assert percentile(list(map(float, range(1, 101))), 90) == pytest.approx(90.1)
    assert percentile([1.0, 2.0], 100) == 2.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="0-100"):
        percentile([1.0], 101)


def test_histogram_bins_and_svg() -> None:
    values = [0.03] * 20 + [0.05] * 10 + [1.0]
    bins = histogram_bins(values)
    assert bins.log_scale  # 1 s against 30 ms: log-spaced
    assert sum(bins.counts) == len(values)
    assert len(bins.edges) == len(bins.counts) + 1
    assert bins.edges[0] == pytest.approx(0.03)
    assert bins.edges[-1] == pytest.approx(1.0)
    linear = histogram_bins([0.01, 0.02, 0.03])
    assert not linear.log_scale
    assert sum(linear.counts) == 3
    same = histogram_bins([0.5, 0.5])
    assert same.counts == (2,)
    assert same.edges[0] < 0.5 < same.edges[1]

    svg = latency_histogram_svg(values, markers=[("p50", 0.03), ("p99", 1.0)])
    assert svg.startswith("<svg")
    assert svg.endswith("</svg>")
    assert svg.count("<rect") == sum(1 for c in bins.counts if c)  # a bar per non-empty bin
    assert ">p50<" in svg
    assert ">p99<" in svg
    assert "log scale" in svg
    assert "No finished runs" in latency_histogram_svg([])
    with pytest.raises(SuiteError):
        resolve_suite("definitely-not-a-suite")
