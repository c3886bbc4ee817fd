"""The public surface of sandbox_server.guardrails."""

from __future__ import annotations

import sandbox_server.guardrails as guardrails
from sandbox_server.guardrails import inputs, secrets
from sandbox_server.policy.models import SecretAction


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
                               "RedactionResult", "TextRedactionResult", "add_known_secret", "redact", "redact_text"]
    for module in (guardrails, inputs, secrets):
        for name in module.__all__:
            assert hasattr(module, name)


def test_a_secret_the_server_holds_is_redacted_wherever_it_appears() -> None:
    value = "s3cr3t-" + "x" * 20
    secrets.add_known_secret(value)
    secrets.add_known_secret("short")  # too short to be told from ordinary words: ignored
    out = secrets.redact(f"a {value} b {value}\nshort".encode(), SecretAction.REDACT)
    assert out.data == b"a [REDACTED:injected_credential] b [REDACTED:injected_credential]\nshort"
    assert (out.redactions, out.kinds) == (2, ("injected_credential",))
