"""Static validation of submitted code: policy-driven, pure, and fail-closed.

``check_code(language, code, rules)`` returns every violation found (an empty list means the code passes).
It never raises and never passes what it could not check: a failure inside a checker becomes a
``validator_error`` violation, input it cannot analyse an ``unanalysable`` one.

These checks are a first filter, not a proof (see docs/static-validation.md): the sandbox contains whatever
they miss.

Positions: ``line`` and ``column`` are both 1-based; columns count characters (Unicode code points).
At most ``MAX_VIOLATIONS`` violations are returned, sorted by position.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from sandbox_server.policy.models import StaticValidation
from sandbox_server.validation.static._base import (
    DENIED_CALL,
    DENIED_COMMAND,
    DENIED_IMPORT,
    DENIED_MODULE,
    DUNDER_ESCAPE,
    DYNAMIC_REQUIRE,
    EVAL,
    MAX_CODE_BYTES,
    MAX_NESTING_DEPTH,
    NETWORK,
    OPEN_MODE,
    SYNTAX_ERROR,
    UNANALYSABLE,
    UNIVERSAL_NEWLINE,
    VALIDATOR_ERROR,
    CodeViolation,
    LineIndex,
    Unanalysable,
)
from sandbox_server.validation.static.bash import check_bash
from sandbox_server.validation.static.javascript import check_javascript
from sandbox_server.validation.static.python import check_python

__all__ = [
    "DENIED_CALL",
    "DENIED_COMMAND",
    "DENIED_IMPORT",
    "DENIED_MODULE",
    "DUNDER_ESCAPE",
    "DYNAMIC_REQUIRE",
    "EVAL",
    "MAX_CODE_BYTES",
    "MAX_NESTING_DEPTH",
    "MAX_VIOLATIONS",
    "NETWORK",
    "OPEN_MODE",
    "SYNTAX_ERROR",
    "UNANALYSABLE",
    "VALIDATOR_ERROR",
    "CodeViolation",
    "check_code",
]

logger = logging.getLogger(__name__)

MAX_VIOLATIONS = 100
_UNREADABLE = re.compile("[\x00\ud800-\udfff]")


def check_code(language: str, code: str, rules: StaticValidation) -> list[CodeViolation]:
    """Check ``code`` in ``language`` ("python" | "javascript" | "bash") against ``rules``.

    Returns the violations (empty: the code passes), at most ``MAX_VIOLATIONS``, sorted by position. Never
    raises: an unknown language, code the checker cannot analyse, and any error inside a checker are all
    violations.
    """
    if not rules.enabled:
        return []
    try:
        violations = _check(language, code, rules)
    except Unanalysable as exc:
        violations = [CodeViolation(UNANALYSABLE, exc.message, exc.line, exc.column)]
    except (RecursionError, MemoryError):
        violations = [CodeViolation(UNANALYSABLE, "the code is too deeply nested or too large to analyse", 1, 1)]
    except Exception:  # fail closed: a broken check rejects, it never lets through
        logger.exception("static validation failed for %s code", language)
        violations = [CodeViolation(VALIDATOR_ERROR, "the validator failed on this code; it is refused", 1, 1)]
    return sorted(set(violations), key=lambda v: (v.line, v.column, v.rule, v.message))[:MAX_VIOLATIONS]


def _check(language: str, code: str, rules: StaticValidation) -> list[CodeViolation]:
    size = len(code) if len(code) > rules.max_code_bytes else len(code.encode("utf-8", "surrogatepass"))
    if size > rules.max_code_bytes:
        return [CodeViolation(MAX_CODE_BYTES, f"the code is over the {rules.max_code_bytes}-byte limit", 1, 1)]
    checker = _CHECKERS.get(language)
    if checker is None:
        return [CodeViolation(UNANALYSABLE, f"no static rules for language {language[:40]!r}", 1, 1)]
    unreadable = _unreadable(code)
    if unreadable is not None:
        return [unreadable]
    return checker(code, rules)


def _unreadable(code: str) -> CodeViolation | None:
    """A NUL byte or a lone surrogate (text that is not valid UTF-8) cannot be analysed, nor run as written."""
    found = _UNREADABLE.search(code)
    if found is None:
        return None
    line, column = LineIndex(code, UNIVERSAL_NEWLINE).position(found.start())
    what = "a NUL character" if found.group() == "\x00" else "a lone surrogate (not valid UTF-8)"
    return CodeViolation(UNANALYSABLE, f"the code contains {what}", line, column)


_CHECKERS: dict[str, Callable[[str, StaticValidation], list[CodeViolation]]] = {
    "python": lambda code, rules: check_python(code, rules.python),
    "javascript": lambda code, rules: check_javascript(code, rules.javascript),
    "bash": lambda code, rules: check_bash(code, rules.bash),
}
