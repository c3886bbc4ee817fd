"""Find secrets in program output and redact them (or block the output whole).

Contract: :func:`redact` takes any bytes and never raises. Each secret value found is replaced in place by
``[REDACTED:<kind>]``; every other byte survives exactly (the data is decoded as UTF-8 with surrogateescape
and encoded back, so invalid UTF-8 and binary data round-trip). ``SecretAction.BLOCK`` empties the data when
anything is found; ``SecretAction.OFF`` returns it untouched without scanning. An error inside the scanner
fails closed: blocked, data emptied, kind ``scanner_error``.

What counts as a secret:

- Yelp's detect-secrets plugins (the maintained pattern library), called directly through
  ``analyze_string`` on each line. We do not go through ``scan_line``: it reconfigures detect-secrets'
  process-wide settings singleton (not safe when several outputs are redacted at once in threads), and its
  false-positive filters are tuned for source code review, not for output that must not leak.
  Left out, on purpose (:data:`EXCLUDED_PLUGINS`): the two high-entropy string plugins, which flag any long
  quoted base64/hex run and so would rewrite sha256 digests, git hashes and base64 data in ordinary output;
  and the public-IPv4 plugin, since an address is not a credential and its pattern also matches version
  strings such as ``1.2.3.4``.
- PEM private key blocks (``-----BEGIN ... PRIVATE KEY-----`` through ``-----END ... PRIVATE KEY-----``,
  also PGP, SSH2 and PuTTY key files, and keys printed on one line with ``\\n`` escapes), removed whole. A
  block without an END line is removed up to the first line that cannot belong to it.

- Values the server itself holds as secrets: the credentials its egress proxy injects into requests
  (:func:`add_known_secret`), replaced wherever they appear, as ``[REDACTED:injected_credential]``.

A value a plugin finds is replaced wherever it occurs on its line; overlapping finds become one redaction.

Speed: each plugin has triggers, literal prefixes or keywords that all of its patterns imply, searched once
over the whole output (most start with a literal, so the regex engine's fast substring search does the
scan); a plugin only runs on the lines where one of its triggers matched. 1 MiB of ordinary output takes a
few tens of milliseconds. A line longer than :data:`MAX_LINE_CHARS` is analysed in chunks of that size that
overlap by :data:`CHUNK_OVERLAP_CHARS`, which bounds the work of any one regex: on such a line a secret longer
than the overlap that straddles two chunks may be missed.
"""

from __future__ import annotations

import bisect
import functools
import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from detect_secrets.plugins.artifactory import ArtifactoryDetector
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.cloudant import CloudantDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.ibm_cloud_iam import IbmCloudIamDetector
from detect_secrets.plugins.ibm_cos_hmac import IbmCosHmacDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.keyword import DENYLIST as KEYWORD_DENYLIST
from detect_secrets.plugins.keyword import KeywordDetector
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.private_key import PrivateKeyDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.softlayer import SoftlayerDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

from sandbox_server.policy.models import SecretAction

logger = logging.getLogger(__name__)

__all__ = [
    "CHUNK_OVERLAP_CHARS",
    "EXCLUDED_PLUGINS",
    "MAX_LINE_CHARS",
    "SCANNER_ERROR",
    "RedactionResult",
    "TextRedactionResult",
    "add_known_secret",
    "redact",
    "redact_text",
]

MAX_LINE_CHARS = 8 * 1024
CHUNK_OVERLAP_CHARS = 2 * 1024
# detect-secrets' keyword plugin reports only the first match of each of its patterns: the rest of the
# segment is analysed again, at most this many times per plugin and segment.
MAX_PASSES = 8

SCANNER_ERROR = "scanner_error"
PRIVATE_KEY = "private_key"
_MARKER = "[REDACTED:{}]"

EXCLUDED_PLUGINS: dict[str, str] = {
    "Base64HighEntropyString": "entropy only: flags base64 data, digests and ids in ordinary output",
    "HexHighEntropyString": "entropy only: flags sha256 digests, git hashes and UUID-like ids",
    "IPPublicDetector": "an IPv4 address is not a credential; the pattern also matches version strings",
}


@dataclass(frozen=True)
class RedactionResult:
    """``data`` is what may be returned to the caller: redacted, unchanged, or empty when ``blocked``.
    ``redactions`` counts the secrets replaced (or found, when blocked); ``kinds`` is sorted and unique."""

    data: bytes
    redactions: int
    kinds: tuple[str, ...]
    blocked: bool


@dataclass(frozen=True)
class TextRedactionResult:
    """:class:`RedactionResult` for text: ``text`` instead of ``data``."""

    text: str
    redactions: int
    kinds: tuple[str, ...]
    blocked: bool


def redact(data: bytes, action: SecretAction) -> RedactionResult:
    """Redact or block the secrets in ``data`` as ``action`` says. Never raises (fails closed)."""
    if action == SecretAction.OFF:
        return RedactionResult(data, 0, (), blocked=False)
    try:
        text, counts = _redact(data.decode("utf-8", "surrogateescape"))
        out = text.encode("utf-8", "surrogateescape") if counts else data
    except Exception:
        logger.exception("secret scanner failed; blocking the output")
        return RedactionResult(b"", 0, (SCANNER_ERROR,), blocked=True)
    found, kinds = sum(counts.values()), tuple(sorted(counts))
    if found and action == SecretAction.BLOCK:
        return RedactionResult(b"", found, kinds, blocked=True)
    return RedactionResult(out, found, kinds, blocked=False)


def redact_text(text: str, action: SecretAction) -> TextRedactionResult:
    """:func:`redact` for a ``str``. Never raises (fails closed)."""
    if action == SecretAction.OFF:
        return TextRedactionResult(text, 0, (), blocked=False)
    try:
        out, counts = _redact(text)
    except Exception:
        logger.exception("secret scanner failed; blocking the output")
        return TextRedactionResult("", 0, (SCANNER_ERROR,), blocked=True)
    found, kinds = sum(counts.values()), tuple(sorted(counts))
    if found and action == SecretAction.BLOCK:
        return TextRedactionResult("", found, kinds, blocked=True)
    return TextRedactionResult(out, found, kinds, blocked=False)


class _Plugin(Protocol):
    def analyze_string(self, string: str) -> Iterable[str]: ...


@dataclass(frozen=True)
class _Detector:
    kind: str
    plugin: _Plugin
    # Characters the plugin's pattern takes around the value (word boundaries), trimmed off the value.
    strip: str = ""
    # What follows the value and belongs to the secret, although the plugin's pattern leaves it out.
    tail: re.Pattern[str] | None = None
    # A pattern every one of the plugin's patterns implies; the plugin is not run on a segment without it.
    needs: re.Pattern[str] | None = None
    # The plugin's capture groups hold only a token's prefix ("ghp"), not the secret: use whole matches.
    whole_match: bool = False


@dataclass(frozen=True)
class _Finder:
    """A trigger: where it matches, the detectors listed may find something on the same line."""

    pattern: re.Pattern[str]
    folded: bool  # searched in the casefolded text
    detectors: tuple[int, ...]


@dataclass(frozen=True)
class _Table:
    detectors: tuple[_Detector, ...]
    finders: tuple[_Finder, ...]


# A private key block: a BEGIN line, then whole lines of base64 or "Header: value" (blank lines allowed, real
# newlines or printed \n escapes), then the END line if there is one. Possessive, so linear in the input.
_KEY_BLOCK = re.compile(
    r"(?:-{3,5} ?BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)? ?-{3,5}|PuTTY-User-Key-File-\d+:[^\n\\]*)"
    r"(?:"
    r"\s+|\\+[nr]"
    r"|(?:(?<=\n)|(?<=\\n))[ \t]*[A-Za-z][A-Za-z0-9-]*: ?[^\n\\]*"
    r"|(?:(?<=\n)|(?<=\\n))[ \t]*[A-Za-z0-9+/=]+[ \t\r]*(?=\n|\\+[nr]|-{3,5} ?END|\Z)"
    r")*+"
    r"(?:-{3,5} ?END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)? ?-{3,5})?"
)
_KEY_BLOCK_HINTS = ("PRIVATE KEY", "PuTTY-User-Key-File-")
_LINE_BREAK = re.compile("\n")

# Per plugin: its kind, its triggers (searched as is, and in the folded text), and the characters to trim.
# A plugin's triggers must together match wherever any of its patterns does: a plugin never runs on a line
# none of them matches. Each trigger starts with a literal where possible, so the regex engine's fast
# substring search does the scanning. tests/guardrails checks every plugin's positive examples against its
# triggers, and that every plugin detect-secrets ships is either used here or in EXCLUDED_PLUGINS.
_IBM_ASSIGNED = r"[\"']?\]?[ =:]"  # what build_assignment_regex puts right after its keyword
_SPECS: tuple[tuple[type, str, tuple[str, ...], tuple[str, ...], str], ...] = (
    (ArtifactoryDetector, "artifactory_credentials", (r"AKC|AP[\dA-F]",), (), ' \t\r\n\f\v=:"'),
    (AWSKeyDetector, "aws_access_key", (r"A(?:3T|BIA|CCA|KIA|SIA)",), ("aws",), ""),
    (AzureStorageKeyDetector, "azure_storage_key", ("AccountKey=",), (), ""),
    (BasicAuthDetector, "basic_auth", ("://",), (), ""),
    (CloudantDetector, "cloudant_credentials", (),
     (r"cl(?:oudant|ou)?[-_]?(?:api)?(?:key|pw|pass|token)", r"cloudant\.com"), ""),
    (DiscordBotTokenDetector, "discord_bot_token", (r"\.[a-zA-Z\d_-]{6}\.",), (), ""),
    (GitHubTokenDetector, "github_token", (r"gh[pousr]_",), (), ""),
    (GitLabTokenDetector, "gitlab_token", (r"gl(?:pat|dt|ft|soat|rt|cbt|imt|ptt|agent|oas)-", "GR1348941"), (), ""),
    (IbmCloudIamDetector, "ibm_cloud_iam_key", (),
     tuple(k + _IBM_ASSIGNED for k in ("key", "pwd", "pass(?:word)?", "token")), ""),
    (IbmCosHmacDetector, "ibm_cos_hmac", (), (r"secret[-_]?(?:access)?[-_]?key",), ""),
    (JwtTokenDetector, "jwt", ("eyJ",), (), ""),
    (MailchimpDetector, "mailchimp_key", (r"-us\d",), (), ""),
    (NpmDetector, "npm_token", ("_authToken=",), (), ""),
    (OpenAIDetector, "openai_token", ("T3BlbkFJ",), (), ""),
    (PrivateKeyDetector, PRIVATE_KEY, ("BEGIN", "PuTTY-User-Key-File-2"), (), ""),
    (PypiTokenDetector, "pypi_token", ("pypi-AgE",), (), ""),
    (SendGridDetector, "sendgrid_key", (r"SG\.",), (), ""),
    (SlackDetector, "slack_token", (), (r"xox[abposr]-", r"hooks\.slack\.com"), ""),
    (SoftlayerDetector, "softlayer_credentials", (),
     (r"sl[-_]?(?:api)?[-_]?(?:key|pwd|pass|token)", "softlayer"), ""),
    (SquareOAuthDetector, "square_oauth_secret", ("sq0csp-",), (), ""),
    (StripeDetector, "stripe_key", ("k_live_",), (), ""),
    (TelegramBotTokenDetector, "telegram_bot_token", (r":(?<=\d{8}:)",), (), ""),
    (TwilioKeyDetector, "twilio_key", (r"AC[a-z0-9]{32}", r"SK[a-z0-9]{32}"), (), ""),
    # Last, so that when it and a specific plugin find the same value, the redaction is named after the specific
    # one. Triggered by the plugin's own keyword list; its patterns also all need a quote (checked in _NEEDS).
    (KeywordDetector, "secret_keyword", (), ("|".join(KEYWORD_DENYLIST),), ""),
)
# A second condition on the segment a plugin runs on: every pattern of the keyword plugin needs a quote.
_NEEDS = {"secret_keyword": re.compile("[\"'`]")}
_WHOLE_MATCH = frozenset({"github_token", "gitlab_token"})
# The JWT plugin's pattern ends lazily and so leaves the signature out of the value.
_TAILS = {"jwt": re.compile(r"[A-Za-z0-9_\-+/=]*")}


@functools.cache
def _table() -> _Table:
    detectors = tuple(
        _Detector(kind, cls(), strip, _TAILS.get(kind), _NEEDS.get(kind), kind in _WHOLE_MATCH)
        for cls, kind, _, _, strip in _SPECS
    )
    users: dict[tuple[str, bool], list[int]] = {}  # a trigger several plugins share is searched once
    for index, (_, _, exact, folded, _) in enumerate(_SPECS):
        for pattern, is_folded in [*((p, False) for p in exact), *((p, True) for p in folded)]:
            users.setdefault((pattern, is_folded), []).append(index)
    finders = tuple(_Finder(re.compile(p), f, tuple(ds)) for (p, f), ds in users.items())
    return _Table(detectors, finders)


INJECTED_CREDENTIAL = "injected_credential"
MIN_KNOWN_SECRET_CHARS = 8  # shorter values would redact ordinary words
_known_secrets: tuple[str, ...] = ()
_known_lock = threading.Lock()


def add_known_secret(value: str) -> None:
    """A value the server itself holds as a secret (a credential the egress proxy injects): redacted wherever it
    appears in any output, whatever the patterns say. Kept for the process's life; longest first, so that a
    value containing another is replaced whole."""
    global _known_secrets
    if len(value) < MIN_KNOWN_SECRET_CHARS:
        return
    with _known_lock:
        if value not in _known_secrets:
            _known_secrets = tuple(sorted({*_known_secrets, value}, key=len, reverse=True))


def _redact(text: str) -> tuple[str, Counter[str]]:
    """Replace each secret in ``text``; return the new text and how many secrets of each kind it replaced."""
    counts: Counter[str] = Counter()
    for known in _known_secrets:
        if known in text:
            counts[INJECTED_CREDENTIAL] += text.count(known)
            text = text.replace(known, _MARKER.format(INJECTED_CREDENTIAL))
    if any(hint in text for hint in _KEY_BLOCK_HINTS):
        text = _KEY_BLOCK.sub(lambda m: _block_marker(m, counts), text)
    table = _table()
    folded = _fold(text)  # folding never adds or removes a line break: line numbers stay the same
    breaks: dict[bool, list[int]] = {}
    triggered: dict[int, set[int]] = {}  # line number -> detectors to run on it
    for finder in table.finders:
        haystack = folded if finder.folded else text
        for hit in finder.pattern.finditer(haystack):
            if finder.folded not in breaks:
                breaks[finder.folded] = [m.start() for m in _LINE_BREAK.finditer(haystack)]
            line = bisect.bisect_left(breaks[finder.folded], hit.start())
            triggered.setdefault(line, set()).update(finder.detectors)
    if not triggered:
        return text, counts
    lines = text.split("\n")
    for number, detectors in triggered.items():
        lines[number] = _redact_line(lines[number], detectors, table, counts)
    return "\n".join(lines), counts


def _block_marker(match: re.Match[str], counts: Counter[str]) -> str:
    counts[PRIVATE_KEY] += 1
    block = match.group()
    body = block.rstrip()
    return _MARKER.format(PRIVATE_KEY) + block[len(body):]  # keep the line break an unterminated block took


def _redact_line(line: str, triggered: set[int], table: _Table, counts: Counter[str]) -> str:
    found: dict[str, _Detector] = {}
    if len(line) <= MAX_LINE_CHARS:
        segments: Iterable[tuple[str, Iterable[int]]] = [(line, sorted(triggered))]
    else:
        segments = ((chunk, _triggered(chunk, table)) for chunk in _chunks(line))
    for segment, detectors in segments:
        for index in detectors:
            detector = table.detectors[index]
            if detector.needs is not None and detector.needs.search(segment) is None:
                continue
            for value in _values(detector, segment):
                found.setdefault(value, detector)
    if not found:
        return line
    spans: list[tuple[int, int, str]] = []
    for value, detector in found.items():
        at = line.find(value)
        while at >= 0:
            end = at + len(value)
            if detector.tail is not None and (tail := detector.tail.match(line, end)) is not None:
                end = tail.end()
            spans.append((at, end, detector.kind))
            at = line.find(value, at + 1)
    spans.sort(key=lambda s: (s[0], -s[1]))
    out: list[str] = []
    done = 0
    for start, end, kind in spans:  # overlapping occurrences become one redaction, named by the first
        if start < done:
            done = max(done, end)
            continue
        out += (line[done:start], _MARKER.format(kind))
        counts[kind] += 1
        done = end
    out.append(line[done:])
    return "".join(out)


def _chunks(line: str) -> Iterator[str]:
    """Overlapping pieces of a long line: a secret up to CHUNK_OVERLAP_CHARS long lies whole in one of them."""
    step = MAX_LINE_CHARS - CHUNK_OVERLAP_CHARS
    for start in range(0, max(1, len(line) - CHUNK_OVERLAP_CHARS), step):
        yield line[start:start + MAX_LINE_CHARS]


def _fold(text: str) -> str:
    """Casefolded, plus the letters IGNORECASE matches to ASCII i that casefold() keeps apart (dotless i;
    capital I with dot folds to i and a combining dot, which goes): so a folded trigger sees all it must."""
    return text.casefold().replace("\u0131", "i").replace("\u0307", "")


def _triggered(segment: str, table: _Table) -> list[int]:
    folded = _fold(segment)
    found: set[int] = set()
    for finder in table.finders:
        if finder.pattern.search(folded if finder.folded else segment) is not None:
            found.update(finder.detectors)
    return sorted(found)


def _values(detector: _Detector, segment: str) -> Iterator[str]:
    """Every secret value the plugin finds in the segment, trimmed; never empty."""
    if detector.whole_match:
        denylist: Iterable[re.Pattern[str]] = getattr(detector.plugin, "denylist", ())
        yield from (m.group() for pattern in denylist for m in pattern.finditer(segment) if m.group())
        return
    rest = segment
    for _ in range(MAX_PASSES):
        values = [v for raw in detector.plugin.analyze_string(rest) if (v := raw.strip(detector.strip))]
        if not values:
            return
        yield from values
        rest = rest[max(rest.find(v) + len(v) for v in values):]
