"""check_code as a whole: the public surface, size limits, unreadable input, and failing closed."""

from __future__ import annotations

import dataclasses
import gc

import pytest
from static_helpers import check, found, rules

import sandbox_server.validation.static as static
from sandbox_server.policy.models import StaticValidation
from sandbox_server.validation.static import (
    MAX_CODE_BYTES,
    MAX_VIOLATIONS,
    UNANALYSABLE,
    VALIDATOR_ERROR,
    CodeViolation,
    check_code,
)

LANGUAGES = ["python", "javascript", "bash"]
EVIL = {
    "python": "import ctypes\neval('1')\n",
    "javascript": "require('child_process').exec('id');\n",
    "bash": "curl http://example.org\n",
}


def test_public_names_are_pinned() -> None:
    assert static.__all__ == [
        "DENIED_CALL", "DENIED_COMMAND", "DENIED_IMPORT", "DENIED_MODULE", "DUNDER_ESCAPE", "DYNAMIC_REQUIRE",
        "EVAL", "MAX_CODE_BYTES", "MAX_NESTING_DEPTH", "MAX_VIOLATIONS", "NETWORK", "OPEN_MODE", "SYNTAX_ERROR",
        "UNANALYSABLE", "VALIDATOR_ERROR", "CodeViolation", "check_code",
    ]


def test_violation_is_a_frozen_value() -> None:
    violation = CodeViolation("eval", "eval is denied", 3, 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        violation.line = 1  # type: ignore[misc]
    assert violation == CodeViolation("eval", "eval is denied", 3, 7)


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_evil_samples_are_caught(language: str) -> None:
    assert check(language, EVIL[language])


@pytest.mark.parametrize("language", LANGUAGES)
def test_disabled_rules_check_nothing(language: str) -> None:
    assert check(language, EVIL[language], rules(enabled=False)) == []
    assert check(language, "\x00" * 10, rules(enabled=False)) == []


@pytest.mark.parametrize("language", LANGUAGES)
def test_code_over_max_code_bytes_is_refused_in_utf8_bytes(language: str) -> None:
    policy = rules(max_code_bytes=10)
    assert all(v.rule != MAX_CODE_BYTES for v in check(language, "x" * 10, policy))  # exactly at the limit
    assert found(language, "é" * 6, policy) == [("max_code_bytes", 1, 1)]  # 6 characters, 12 bytes
    assert found(language, "x" * 1_000_000, policy) == [("max_code_bytes", 1, 1)]


@pytest.mark.parametrize("language", LANGUAGES)
def test_nul_and_lone_surrogates_are_unanalysable_at_their_position(language: str) -> None:
    assert found(language, "a = 1\nbb\x00", StaticValidation()) == [(UNANALYSABLE, 2, 3)]
    assert found(language, "ok\n\n  '\udc80'", StaticValidation()) == [(UNANALYSABLE, 3, 4)]


def test_an_unknown_language_is_refused() -> None:
    assert found("cobol", "DISPLAY 'HI'.") == [(UNANALYSABLE, 1, 1)]
    assert found("", "") == [(UNANALYSABLE, 1, 1)]


@pytest.mark.parametrize(
    ("error", "rule"),
    [(RuntimeError("bug"), VALIDATOR_ERROR), (KeyError("x"), VALIDATOR_ERROR), (RecursionError(), UNANALYSABLE),
     (MemoryError(), UNANALYSABLE)],
)
def test_an_error_inside_a_checker_rejects(monkeypatch: pytest.MonkeyPatch, error: Exception, rule: str) -> None:
    def broken(code: str, policy: StaticValidation) -> list[CodeViolation]:
        raise error

    monkeypatch.setitem(static._CHECKERS, "python", broken)
    assert found("python", "print('harmless')") == [(rule, 1, 1)]


def test_violations_are_sorted_deduplicated_and_capped() -> None:
    code = "".join(f"eval('{i}')\n" for i in range(MAX_VIOLATIONS * 2))
    violations = check_code("python", code, StaticValidation())
    assert len(violations) == MAX_VIOLATIONS
    assert violations == sorted(violations, key=lambda v: (v.line, v.column))
    assert [v.line for v in violations] == list(range(1, MAX_VIOLATIONS + 1))


def test_the_garbage_collector_is_left_as_it_was() -> None:
    assert gc.isenabled()
    check("python", "x = 1\n")
    check("python", "x = (\n")
    assert gc.isenabled()
    gc.disable()
    try:
        check("python", "x = 1\n")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_checking_leaves_the_rules_untouched() -> None:
    policy = StaticValidation()
    before = policy.model_dump()
    for language in LANGUAGES:
        check(language, EVIL[language], policy)
    assert policy.model_dump() == before
