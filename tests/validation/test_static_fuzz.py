"""Fuzzing: whatever the input, check_code returns violations (never raises), quickly, and fails closed.

Random text and hostile generated programs (deep nesting, long lines, NUL bytes, lone surrogates, fragments of
real attacks glued together) go through every language's checker.
"""

from __future__ import annotations

import sys
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sandbox_server.policy.models import StaticValidation
from sandbox_server.validation.static import UNANALYSABLE, VALIDATOR_ERROR, CodeViolation, check_code

LANGUAGES = ("python", "javascript", "bash")
# No explain phase: it traces every line of the checkers, which makes a 2 ms check take seconds, so a failure
# found under load would then time out while it is being explained instead of being reported.
SETTINGS = settings(max_examples=60, deadline=None, phases=[p for p in Phase if p is not Phase.explain],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# A hang detector, not a speed goal (bench/ measures speed): a checker that loops or backtracks without bound takes
# minutes on these inputs, a correct one milliseconds, and a loaded CI host runs several times slower than idle.
MAX_SECONDS = 10.0
RULES = StaticValidation()

FRAGMENTS = [
    "(", ")", "[", "]", "{", "}", "'", '"', "`", "\\", "\n", " ", "\t", "#", ";", "|", "&", "$(", "${", "<<EOF\n",
    "EOF\n", "/*", "*/", "//", "/", "import os\n", "os.system('id')", "eval(", "require('net')", "curl x\n",
    "lambda: ", "def f():\n    ", "class A:\n    ", "async def g():\n    await ", "if x:\n    ", "f'{", "}'",
    "getattr(os, 'system')", "__builtins__", ".__globals__", "x = ", "yield ", "\x00", "\udc80", "é", "\u2028",
    "$'\\x63url'", "bash -c '", "eval \"", "new Function(", "/[", "]/", "=/", "+", "-", "not ", "*", "**", ":",
    "from . import *\n", "import ctypes\n", "exec 3<>/dev/tcp/h/80\n", "case x in\n", "esac\n", "a=(", "$((",
]


def hostile_python(depth: int, kind: str) -> str:
    return {
        "parens": "(" * depth + "1" + ")" * depth,
        "brackets": "x = " + "[" * depth + "]" * depth,
        "unary": "-" * depth + "1",
        "sum": "1" + "+1" * depth,
        "attrs": "a" + ".b" * depth,
        "calls": "f" + "()" * depth,
        "lambdas": "lambda: " * depth + "0",
        "ifexp": "a if b else " * depth + "c",
        "nots": "not " * depth + "x",
        "open": "(" * depth,
        "indent": "".join(" " * i + "if x:\n" for i in range(min(depth, 2000))) + " " * min(depth, 2000) + "pass\n",
        "longline": "x = '" + "a" * depth * 10 + "'",
        "getattrs": "getattr(" * depth + "os" + ", 'x')" * depth,
        "aliases": "".join(f"a{i} = a{i + 1}\n" for i in range(min(depth, 5000))),
        "dicts": "{1: " * depth + "1" + "}" * depth,
        "fstrings": "f'{" * min(depth, 200) + "x" + "}'" * min(depth, 200),
    }[kind]


def _run(language: str, code: str) -> list[CodeViolation]:
    start = time.perf_counter()
    violations = check_code(language, code, RULES)
    elapsed = time.perf_counter() - start
    assert elapsed < MAX_SECONDS, f"{language} took {elapsed:.2f}s on {len(code)} characters"
    assert isinstance(violations, list)
    assert all(isinstance(v, CodeViolation) and v.line >= 1 and v.column >= 1 for v in violations)
    assert all(v.rule != VALIDATOR_ERROR for v in violations), violations
    return violations


@SETTINGS
@given(code=st.text(max_size=2000), language=st.sampled_from(LANGUAGES))
def test_random_text_never_raises(code: str, language: str) -> None:
    _run(language, code)


@SETTINGS
@given(parts=st.lists(st.sampled_from(FRAGMENTS), max_size=300), language=st.sampled_from(LANGUAGES))
def test_glued_fragments_never_raise(parts: list[str], language: str) -> None:
    code = "".join(parts)
    violations = _run(language, code)
    if "\x00" in code or "\udc80" in code:
        assert [v.rule for v in violations] == [UNANALYSABLE]


@SETTINGS
@given(
    kind=st.sampled_from(["parens", "brackets", "unary", "sum", "attrs", "calls", "lambdas", "ifexp", "nots",
                          "open", "indent", "longline", "getattrs", "aliases", "dicts", "fstrings"]),
    depth=st.one_of(st.integers(1, 300), st.integers(300, 100_000)),
    language=st.sampled_from(LANGUAGES),
)
def test_hostile_python_never_raises_or_hangs(kind: str, depth: int, language: str) -> None:
    code = hostile_python(depth, kind)
    violations = _run(language, code)
    # Flat chains (1 + 1 + ..., a.a.a...) add no nesting level: what bounds them is the parser's own limit,
    # three times the interpreter's recursion limit, which hypothesis raises while it runs a test.
    beyond_the_parser = max(5_000, 3 * sys.getrecursionlimit())
    if language == "python" and depth >= beyond_the_parser and kind in (
            "parens", "unary", "sum", "attrs", "calls", "lambdas", "ifexp", "nots", "open", "dicts"):
        assert violations, f"{kind} x{depth} passed"  # too deep to analyse (or to parse): refused


@SETTINGS
@given(data=st.binary(max_size=3000), language=st.sampled_from(LANGUAGES))
def test_invalid_utf8_decoded_with_surrogates_fails_closed(data: bytes, language: str) -> None:
    code = data.decode("utf-8", errors="surrogateescape")
    violations = _run(language, code)
    if any("\udc80" <= c <= "\udcff" for c in code) or "\x00" in code:
        assert [v.rule for v in violations] == [UNANALYSABLE]


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize(
    "code",
    ["(" * 100_000, "[" * 100_000, "{" * 100_000, "$(" * 100_000, "${" * 100_000, "`" * 100_000, "`${" * 80_000,
     "=/[" * 80_000, "/*" * 100_000, "'\"" * 100_000, "\\" * 200_000, "<<E " * 50_000 + "\n",
     "case x in\n" * 20_000, "eval " * 50_000, "bash -c '" * 20_000, "a" * 250_000, "\n" * 250_000,
     "\n".join(f"c{i}*" for i in range(30_000))],
    ids=lambda code: f"{code[:6]!r}x{len(code)}",
)
def test_pathological_inputs_finish_in_time(language: str, code: str) -> None:
    _run(language, code)
