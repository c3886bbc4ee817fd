"""Content guardrails on what a request brings in: code, stdin and input files, checked against a tenant's
:class:`~sandbox_server.policy.models.Guardrails`.

Pure: no I/O, no clock, and the rules are only read. Every rule is checked and every violation returned (an
empty list means the input may run). Fails closed: an exception inside a check becomes a violation with rule
``guardrail_error``, never a pass.

Bounded work: ``blocked_patterns`` and the prompt-injection markers see at most the first
:data:`MAX_SCAN_BYTES` of each field (bytes of stdin and of each file, decoded as UTF-8 with invalid bytes
replaced; characters of the code). Request validation caps the code far below that; the rest of a larger
stdin or file is not searched. The patterns come from the operator's policy: a pattern that backtracks
badly is the operator's to fix.
"""

from __future__ import annotations

import functools
import logging
import posixpath
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from sandbox_server.policy.models import Guardrails

logger = logging.getLogger(__name__)

__all__ = [
    "GUARDRAIL_ERROR",
    "GUARDRAIL_RULES",
    "MAX_SCAN_BYTES",
    "PROMPT_INJECTION_MARKERS",
    "GuardrailViolation",
    "check_inputs",
]

MAX_SCAN_BYTES = 1024 * 1024
GUARDRAIL_ERROR = "guardrail_error"
# Every rule name a violation of check_inputs carries (the policy's Guardrails field it enforces, or the error).
GUARDRAIL_RULES = frozenset({"blocked_patterns", "prompt_injection", "denied_file_names", "max_input_files",
                             "max_input_file_bytes", GUARDRAIL_ERROR})

# Curated markers of text written to steer a language model that later reads the input or the output, rather
# than to be run. Matched case-insensitively over text whose whitespace runs, zero-width characters and
# compatibility forms are normalised (see _normalise), anywhere in the field: the code is searched whole, which
# covers its comments and string literals. A first filter, not a proof.
PROMPT_INJECTION_MARKERS: tuple[tuple[str, str], ...] = (
    ("ignore previous instructions",
     r"\b(?:ignore|disregard|forget|override|skip)\s+(?:all\s+|any\s+|of\s+)?(?:the\s+|your\s+|my\s+)?"
     r"(?:previous|prior|above|earlier|preceding|former|original|system)\s+"
     r"(?:instructions?|prompts?|directions?|rules|guidelines|messages?|context)\b"),
    ("disregard the above", r"\bdisregard\s+(?:everything\s+|all\s+)?(?:the\s+)?above\b"),
    ("forget everything", r"\bforget\s+(?:everything|all)\s+(?:you\s+(?:were|have\s+been)\s+told|above|before)\b"),
    ("you are now", r"\byou\s+are\s+now\s+(?:a|an|my|no\s+longer|free|unrestricted|jailbroken|dan|acting\s+as)\b"),
    ("new instructions", r"\b(?:new|updated|real|actual)\s+(?:system\s+)?instructions\s*:"),
    ("system prompt",
     r"\b(?:reveal|print|show|repeat|output|leak|display|dump|ignore|override|disregard)\s+(?:me\s+)?"
     r"(?:your|the|its)\s+(?:entire\s+|full\s+|hidden\s+|original\s+)?(?:system\s+prompt|initial\s+instructions)\b"),
    ("system prompt delimiter", r"\b(?:begin|end|start)\s+(?:of\s+)?(?:the\s+)?system\s+prompt\b"),
    ("chat template token",
     r"<\s*\|\s*(?:im_start|im_end|im_sep|system|user|assistant|endoftext|begin_of_text|end_of_text|"
     r"start_header_id|end_header_id|eot_id|eom_id)\s*\|\s*>"),
    ("instruction tag", r"\[\s*/?\s*inst\s*\]|<<\s*/?\s*sys\s*>>|<\s*/?\s*start_of_turn\s*>|<\s*/?\s*end_of_turn\s*>"),
    # A line that opens a fake conversation turn ("Assistant: ...", "### Human: ..."), as Anthropic- and
    # Alpaca-style transcripts do. "system:" and "user:" are left out: logs and configs use them plainly.
    ("role line", r"(?:^|\n)[ \t>#*_-]*(?:assistant|human)[ \t*_]*:[ \t]*\S"),
    ("developer mode", r"\b(?:developer|god|jailbreak|dan)\s+mode\s+(?:enabled|activated|on)\b"),
)

# Format characters (zero-width spaces and joiners, soft hyphen, bidi controls) hide markers from a plain match.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff]")


@dataclass(frozen=True)
class GuardrailViolation:
    """``rule`` is the Guardrails field that refused (or ``guardrail_error``); ``field`` names the request
    part: ``code``, ``stdin``, ``files``, ``files[2].path``, ``files[2].content``."""

    rule: str
    field: str
    message: str


def check_inputs(
    code: str, stdin: bytes, files: Sequence[tuple[str, bytes]], rules: Guardrails
) -> list[GuardrailViolation]:
    """Check a request's inputs against ``rules``; ``files`` are (path, content) pairs in request order.
    Returns every violation found, in a stable order. Never raises."""
    violations: list[GuardrailViolation] = []
    checks: list[tuple[str, str, Callable[[], Iterator[GuardrailViolation]]]] = [
        ("max_input_files", "files", lambda: _file_count(files, rules)),
        ("max_input_file_bytes", "files", lambda: _file_bytes(files, rules)),
        ("denied_file_names", "files", lambda: _file_names(files, rules)),
        ("blocked_patterns", "code", lambda: _blocked(code, "code", rules)),
        ("blocked_patterns", "stdin", lambda: _blocked(_text(stdin), "stdin", rules)),
    ]
    if rules.prompt_injection:
        checks += [
            ("prompt_injection", "code", lambda: _injection(code[:MAX_SCAN_BYTES], "code")),
            ("prompt_injection", "stdin", lambda: _injection(_text(stdin), "stdin")),
            ("prompt_injection", "files", lambda: _file_injection(files)),
        ]
    for rule, field, check in checks:
        try:
            violations.extend(check())
        except Exception as exc:
            logger.exception("guardrail check %s on %s failed; refusing the request", rule, field)
            violations.append(GuardrailViolation(
                GUARDRAIL_ERROR, field, f"the {rule} check failed ({type(exc).__name__}); the input is refused"))
    return violations


def _text(data: bytes) -> str:
    return data[:MAX_SCAN_BYTES].decode("utf-8", errors="replace")


def _file_count(files: Sequence[tuple[str, bytes]], rules: Guardrails) -> Iterator[GuardrailViolation]:
    if len(files) > rules.max_input_files:
        yield GuardrailViolation("max_input_files", "files",
                                 f"{len(files)} input files; at most {rules.max_input_files} are allowed")


def _file_bytes(files: Sequence[tuple[str, bytes]], rules: Guardrails) -> Iterator[GuardrailViolation]:
    total = sum(len(content) for _, content in files)
    if total > rules.max_input_file_bytes:
        yield GuardrailViolation("max_input_file_bytes", "files",
                                 f"input files total {total} bytes; at most {rules.max_input_file_bytes} are allowed")


def _file_names(files: Sequence[tuple[str, bytes]], rules: Guardrails) -> Iterator[GuardrailViolation]:
    patterns = [re.compile(p) for p in rules.denied_file_names]
    for index, (path, _) in enumerate(files):
        # The path as sent and its normal form ("a/./.ssh/x" is "a/.ssh/x"): either matching refuses.
        forms = {path, posixpath.normpath(path) if path else path}
        for number, pattern in enumerate(patterns, start=1):
            if any(pattern.search(form) for form in forms):
                yield GuardrailViolation("denied_file_names", f"files[{index}].path",
                                         f"file name {path[:200]!r} is refused (denied_file_names #{number})")
                break


def _blocked(text: str, field: str, rules: Guardrails) -> Iterator[GuardrailViolation]:
    text = text[:MAX_SCAN_BYTES]
    for number, pattern in enumerate(rules.blocked_patterns, start=1):
        match = re.compile(pattern).search(text)
        if match is not None:
            line = text.count("\n", 0, match.start()) + 1
            yield GuardrailViolation("blocked_patterns", field,
                                     f"{field} matches blocked pattern #{number} (line {line})")


def _file_injection(files: Sequence[tuple[str, bytes]]) -> Iterator[GuardrailViolation]:
    for index, (_, content) in enumerate(files):
        # Every file is searched, binary or not: a NUL byte or an invalid sequence must not hide text.
        yield from _injection(_text(content), f"files[{index}].content")


def _injection(text: str, field: str) -> Iterator[GuardrailViolation]:
    normalised = _normalise(text)
    for name, pattern in _markers():
        if pattern.search(normalised) is not None:
            yield GuardrailViolation("prompt_injection", field, f"{field} carries a prompt-injection marker ({name})")
            return


def _normalise(text: str) -> str:
    """Compatibility forms folded (fullwidth letters, ligatures) and invisible format characters removed, so
    look-alike and zero-width tricks do not split a marker (the markers themselves allow any whitespace)."""
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))


@functools.cache
def _markers() -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((name, re.compile(pattern, re.IGNORECASE)) for name, pattern in PROMPT_INJECTION_MARKERS)
