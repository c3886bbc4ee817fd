"""Shared helpers for the static-validation tests."""

from __future__ import annotations

from typing import Any

from sandbox_server.policy.models import BashRules, JavaScriptRules, PythonRules, StaticValidation
from sandbox_server.validation.static import CodeViolation, check_code

Found = list[tuple[str, int, int]]  # (rule, line, column)


def rules(*, python: dict[str, Any] | None = None, javascript: dict[str, Any] | None = None,
          bash: dict[str, Any] | None = None, **top: Any) -> StaticValidation:
    """The default rules with some fields replaced (validated like a policy file would be)."""
    return StaticValidation(
        python=PythonRules(**(python or {})),
        javascript=JavaScriptRules(**(javascript or {})),
        bash=BashRules(**(bash or {})),
        **top,
    )


def check(language: str, code: str, policy: StaticValidation | None = None) -> list[CodeViolation]:
    return check_code(language, code, policy if policy is not None else StaticValidation())


def found(language: str, code: str, policy: StaticValidation | None = None) -> Found:
    """(rule, line, column) of every violation, in the order check_code returns them (by position)."""
    return [(v.rule, v.line, v.column) for v in check(language, code, policy)]
