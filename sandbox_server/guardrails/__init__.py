"""Content guardrails: input checks (patterns, file rules, prompt-injection markers) and output secret
redaction. Pure functions that fail closed; the guardrails interceptor applies them."""

from __future__ import annotations

from sandbox_server.guardrails.inputs import GuardrailViolation, check_inputs
from sandbox_server.guardrails.secrets import RedactionResult, TextRedactionResult, redact, redact_text

__all__ = [
    "GuardrailViolation",
    "RedactionResult",
    "TextRedactionResult",
    "check_inputs",
    "redact",
    "redact_text",
]
