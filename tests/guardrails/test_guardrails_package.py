"""The public surface of sandbox_server.guardrails."""

from __future__ import annotations

import sandbox_server.guardrails as guardrails
from sandbox_server.guardrails import inputs, secrets


def test_public_names_are_pinned() -> None:
    assert guardrails.__all__ == [
        "GuardrailViolation",
        "RedactionResult",
        "TextRedactionResult",
        "check_inputs",
        "redact",
        "redact_text",
    ]
    assert inputs.__all__ == ["GUARDRAIL_ERROR", "GUARDRAIL_RULES", "MAX_SCAN_BYTES", "PROMPT_INJECTION_MARKERS",
                              "GuardrailViolation", "check_inputs"]
    assert secrets.__all__ == ["CHUNK_OVERLAP_CHARS", "EXCLUDED_PLUGINS", "MAX_LINE_CHARS", "SCANNER_ERROR",
                               "RedactionResult", "TextRedactionResult", "redact", "redact_text"]
    for module in (guardrails, inputs, secrets):
        for name in module.__all__:
            assert hasattr(module, name)
