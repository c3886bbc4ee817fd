"""The corpus format and the runner's judging, without a server: the schema refuses what it must, the shipped
corpus keeps its rules (loopback-only targets, one file per category, enough cases), refusals and limits are
judged as documented."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from importlib import resources
from pathlib import Path

import grpc
import pytest

from sandbox_client import (
    ErrorDetails,
    ExecutionResult,
    FieldViolation,
    InvalidRequestError,
    Limits,
    OutputFile,
    PermissionDeniedError,
    ResourceUsage,
    Status,
)
from sandbox_client.redteam.categories import Category, Language
from sandbox_client.redteam.corpus import CorpusError, load_corpus, shipped_corpus
from sandbox_client.redteam.runner import classify_refusal, excerpt, over_limits, render
from sandbox_client.redteam.schema import PLACEHOLDER_RE, Refusal

MIN_CASES = 40
IPV4 = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d{1,3}){3})(?![\w.])")
IPV6 = re.compile(r"(?<![\w:])((?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4})(?![\w:])")


def test_shipped_corpus_covers_every_category_and_language() -> None:
    cases = shipped_corpus().cases
    assert len(cases) >= MIN_CASES
    assert set(Counter(c.category for c in cases)) == set(Category)
    assert {s.language for c in cases for s in c.steps} == set(Language)
    assert any(len(c.steps) > 1 for c in cases)  # two-step cases (plant, then look from a fresh sandbox)
    assert any(c.concurrent for c in cases)


def test_shipped_files_are_one_per_category() -> None:
    directory = resources.files("sandbox_client.redteam") / "corpus"
    names = sorted(f.name for f in directory.iterdir() if f.name.endswith(".yaml"))
    assert names == sorted(f"{c.value}.yaml" for c in Category)
    for case in shipped_corpus().cases:
        assert case.id.split("-")[0] in {"escape", "host", "network", "resource", "persistence", "info", "bypass"}


def test_shipped_programs_target_only_loopback() -> None:
    """The network rule, checked mechanically: every IP literal in any program or input file is loopback."""
    for case in shipped_corpus().cases:
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
