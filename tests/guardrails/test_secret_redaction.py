"""redact / redact_text: every kind of secret is replaced, benign output is left alone byte for byte, the modes
do what they say, arbitrary bytes survive, and an error inside the scanner blocks."""

from __future__ import annotations

import base64
import os
import random
import time

import pytest
from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from guardrail_data import benign_log, benign_outputs, fake_jwt, fake_pem, secret_samples
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox_server.guardrails import secrets
from sandbox_server.guardrails.secrets import (
    CHUNK_OVERLAP_CHARS,
    EXCLUDED_PLUGINS,
    MAX_LINE_CHARS,
    SCANNER_ERROR,
    redact,
    redact_text,
)
from sandbox_server.policy.models import SecretAction

SAMPLES = secret_samples()
REDACT, BLOCK, OFF = SecretAction.REDACT, SecretAction.BLOCK, SecretAction.OFF


def marker(kind: str) -> str:
    return f"[REDACTED:{kind}]"


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_each_kind_is_redacted(kind: str) -> None:
    line, secret = SAMPLES[kind]
    text = f"starting\n{line}\ndone\n"
    expected = text.replace(secret, marker(kind))
    result = redact(text.encode(), REDACT)
    assert result.data.decode() == expected
    assert (result.redactions, result.kinds, result.blocked) == (1, (kind,), False)
    text_result = redact_text(text, REDACT)
    assert (text_result.text, text_result.redactions, text_result.kinds) == (expected, 1, (kind,))


def test_every_detect_secrets_plugin_is_used_or_deliberately_left_out() -> None:
    shipped = {cls.__name__ for cls in get_mapping_from_secret_type_to_class().values()}
    used = {type(detector.plugin).__name__ for detector in secrets._table().detectors}
    assert used.isdisjoint(EXCLUDED_PLUGINS)
    assert shipped == used | set(EXCLUDED_PLUGINS)


def test_every_used_plugin_has_a_sample() -> None:
    kinds = {detector.kind for detector in secrets._table().detectors}
    assert kinds - set(SAMPLES) == {"private_key"}  # covered by the PEM tests


def _assert_triggers_cover(text: str) -> None:
    """Wherever a plugin finds a secret, its triggers (and its second condition) match: the prefilter never
    hides a secret the plugin would find."""
    table = secrets._table()
    triggered = secrets._triggered(text, table)
    for index, detector in enumerate(table.detectors):
        if list(secrets._values(detector, text)):
            assert index in triggered, (detector.kind, text)
            assert detector.needs is None or detector.needs.search(text), (detector.kind, text)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_triggers_cover_each_sample(kind: str) -> None:
    line, _ = SAMPLES[kind]
    for variant in (line, line.upper(), line.lower(), line.swapcase()):
        _assert_triggers_cover(variant)


FRAGMENTS = [
    *(secret for _, secret in SAMPLES.values()),
    *(line for line, _ in SAMPLES.values()),
    "password", "PassWord", "passwd", "pwd", "secret", "api_key", "apikey", "Auth_Key", "private_key", "db_pass",
    "token", "aws", "AWS_SECRET_ACCESS_KEY", "cloudant", "cl_pw", "clou_api_token", "sl_api_key", "softlayer",
    "ibm_cos_secret_access_key", "ibm_cloud_api_key", "contraseña", "contrasena",
    " = ", "=", ":", ": ", ":=", "=>", "==", "!=", '"', "'", "`", ";", "(", ")", "[", "]", "@", "://", " ", "\t",
    "AKIA", "ASIA", "A3TX", "ghp_", "gho_", "glpat-", "glcbt-ab_", "GR1348941", "xoxb-", "xoxp-123-", "sk_live_",
    "rk_live_", "sq0csp-", "SG.", "eyJ", "pypi-AgEIcHlwaS5vcmc", "pypi-AgENdGVzdC5weXBpLm9yZw", "AccountKey=",
    "//reg/:_authToken=", "npm_", "-us1", "AC", "SK", "AKC", "AP1", "APF", "M", "N", "O", ".", "123456789:",
    "T3BlbkFJ", "sk-", "BEGIN RSA PRIVATE KEY", "PuTTY-User-Key-File-2", "https://hooks.slack.com/services/T1/B2/x",
    "\u0130", "\u0131", "\u017f", "\u212a",  # letters IGNORECASE matches to ASCII ones
]
TOKEN_CHARS = st.text(alphabet="abcdefABCDEF0123456789xyzXYZ_-+/=", min_size=1, max_size=90)
LINES = st.lists(st.one_of(st.sampled_from(FRAGMENTS), TOKEN_CHARS), max_size=10).map("".join)


@settings(max_examples=400, deadline=None)
@given(LINES)
def test_triggers_cover_generated_lines(text: str) -> None:
    _assert_triggers_cover(text)


def test_several_secrets_counts_and_kinds() -> None:
    aws = SAMPLES["aws_access_key"][1]
    github = SAMPLES["github_token"][1]
    jwt = fake_jwt()
    text = f"a={aws} b={aws}\nnothing here\ntoken {github} and {jwt}\n{aws}\n"
    result = redact_text(text, REDACT)
    assert result.text == (
        f"a={marker('aws_access_key')} b={marker('aws_access_key')}\nnothing here\n"
        f"token {marker('github_token')} and {marker('jwt')}\n{marker('aws_access_key')}\n"
    )
    assert result.redactions == 5
    assert result.kinds == ("aws_access_key", "github_token", "jwt")


def test_jwt_signature_is_redacted_too() -> None:
    jwt = fake_jwt()
    result = redact_text(f"token={jwt};", REDACT)
    assert result.text == f"token={marker('jwt')};"
    assert jwt.rsplit(".", 1)[1] not in result.text


def test_basic_auth_keeps_the_url_readable() -> None:
    result = redact_text("GET https://alice:hunter2hunter2@example.com/x", REDACT)
    assert result.text == f"GET https://alice:{marker('basic_auth')}@example.com/x"


def test_keyword_detector_finds_every_assignment_on_a_line() -> None:
    result = redact_text("password = 'first-value'; secret = 'second-value'", REDACT)
    assert result.text == f"password = '{marker('secret_keyword')}'; secret = '{marker('secret_keyword')}'"
    assert result.redactions == 2


@pytest.mark.parametrize("kind", ["RSA ", "EC ", "OPENSSH ", "ENCRYPTED ", "DSA ", ""])
def test_pem_private_key_blocks_are_removed_whole(kind: str) -> None:
    pem, body = fake_pem(kind)
    text = f"loading key\n{pem}\nkey loaded.\n"
    result = redact_text(text, REDACT)
    assert result.text == f"loading key\n{marker('private_key')}\nkey loaded.\n"
    assert (result.redactions, result.kinds) == (1, ("private_key",))
    assert not any(line in result.text for line in body)


def test_pem_blocks_in_other_shapes() -> None:
    pem, body = fake_pem(seed=2)
    other, other_body = fake_pem("EC ", seed=3)
    crlf = pem.replace("\n", "\r\n")
    printed = repr(pem + "\n")  # a key printed on one line with \n escapes
    encrypted = pem.replace("KEY-----\n", "KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,0A1B2C3D\n\n", 1)
    unterminated = pem.rsplit("\n", 1)[0]
    text = "\n".join([crlf, "between.", printed, encrypted, other, unterminated, "Traceback (most recent call last):"])
    result = redact_text(text, REDACT)
    assert result.redactions == 5
    assert result.kinds == ("private_key",)
    assert "PRIVATE" not in result.text
    assert not any(line in result.text for line in body + other_body)
    assert result.text.endswith(f"{marker('private_key')}\nTraceback (most recent call last):")
    assert "between." in result.text


def test_pgp_ssh2_and_putty_keys_are_removed() -> None:
    _, body = fake_pem(seed=4)
    lines = "\n".join(body)
    text = "\n".join([
        "-----BEGIN PGP PRIVATE KEY BLOCK-----", "Version: GnuPG v2", "", lines, "=abcd",
        "-----END PGP PRIVATE KEY BLOCK-----", "one.",
        "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----", 'Comment: "rsa-key"', lines,
        "---- END SSH2 ENCRYPTED PRIVATE KEY ----", "two.",
        "PuTTY-User-Key-File-2: ssh-rsa", "Encryption: none", "Comment: rsa-key-20240101", "Public-Lines: 6", lines,
        "Private-Lines: 6", lines, "Private-MAC: 0123456789abcdef", "three.",
    ])
    result = redact_text(text, REDACT)
    pk = marker("private_key")
    assert result.text == f"{pk}\none.\n{pk}\ntwo.\n{pk}\nthree."
    assert result.redactions == 3


def test_public_keys_and_certificates_are_left_alone() -> None:
    _, body = fake_pem(seed=5)
    text = "\n".join(["-----BEGIN PUBLIC KEY-----", *body, "-----END PUBLIC KEY-----",
                      "-----BEGIN CERTIFICATE-----", *body, "-----END CERTIFICATE-----", ""])
    result = redact(text.encode(), REDACT)
    assert (result.data, result.redactions) == (text.encode(), 0)


@pytest.mark.parametrize("name", sorted(benign_outputs()))
def test_benign_output_is_untouched(name: str) -> None:
    data = benign_outputs()[name]
    for action in (REDACT, BLOCK):
        result = redact(data, action)
        assert (result.data, result.redactions, result.kinds, result.blocked) == (data, 0, (), False)


def test_block_mode_empties_the_output_and_reports_what_it_found() -> None:
    line, _ = SAMPLES["stripe_key"]
    pem, _ = fake_pem()
    result = redact(f"{line}\n{pem}\n".encode(), BLOCK)
    assert (result.data, result.redactions, result.kinds, result.blocked) == (b"", 2, ("private_key", "stripe_key"),
                                                                              True)
    text_result = redact_text(line, BLOCK)
    assert (text_result.text, text_result.blocked) == ("", True)


def test_off_mode_returns_the_data_untouched() -> None:
    data = "\n".join(line for line, _ in SAMPLES.values()).encode() + b"\xff"
    result = redact(data, OFF)
    assert (result.data, result.redactions, result.kinds, result.blocked) == (data, 0, (), False)
    assert redact_text("x", OFF).text == "x"


def test_non_utf8_bytes_around_secrets_survive_byte_exact() -> None:
    aws = SAMPLES["aws_access_key"][1].encode()
    rng = random.Random(9)
    noise = [bytes(rng.getrandbits(8) for _ in range(200)).replace(b"\n", b"") for _ in range(4)]
    data = b"".join([noise[0], b"\n\xff\xfe", aws, b"\x80\xc3(\n", noise[1], b" ", aws, b"\x00", noise[2], b"\n",
                     noise[3]])
    result = redact(data, REDACT)
    assert result.data == data.replace(aws, marker("aws_access_key").encode())
    assert result.redactions == 2


def test_lone_surrogates_in_text_survive() -> None:
    text = "\ud800 ok \udcff " + SAMPLES["github_token"][0]
    result = redact_text(text, REDACT)
    assert result.text.startswith("\ud800 ok \udcff ")
    assert result.kinds == ("github_token",)


def test_secrets_in_long_lines_are_found_across_chunk_boundaries() -> None:
    step = MAX_LINE_CHARS - CHUNK_OVERLAP_CHARS
    github = SAMPLES["github_token"][1]
    jwt = fake_jwt()
    rng = random.Random(1)
    filler = "".join(rng.choice("0123456789abcdef") for _ in range(20 * MAX_LINE_CHARS))
    at = (MAX_LINE_CHARS - 10, 3 * step - 5, 10 * step + 100)
    line, expected = list(filler), list(filler)
    # Back to front, so that the offsets still point where they should in the expected text.
    for offset, secret, kind in sorted([*((o, github, "github_token") for o in at),
                                        (15 * step - 50, jwt, "jwt")], reverse=True):
        line[offset:offset + len(secret) + 2] = f" {secret} "
        expected[offset:offset + len(secret) + 2] = f" {marker(kind)} "
    result = redact_text("".join(line), REDACT)
    assert result.text == "".join(expected)
    assert (result.redactions, result.kinds) == (4, ("github_token", "jwt"))


def test_an_error_inside_the_scanner_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> secrets._Table:
        raise RuntimeError("plugin blew up")

    monkeypatch.setattr(secrets, "_table", broken)
    for action in (REDACT, BLOCK):
        result = redact(b"harmless output\n", action)
        assert (result.data, result.redactions, result.kinds, result.blocked) == (b"", 0, (SCANNER_ERROR,), True)
        text_result = redact_text("harmless", action)
        assert (text_result.text, text_result.kinds, text_result.blocked) == ("", (SCANNER_ERROR,), True)
    assert redact(b"harmless", OFF).data == b"harmless"  # off never scans


def _timed(data: bytes) -> float:
    start = time.perf_counter()
    result = redact(data, REDACT)
    elapsed = time.perf_counter() - start
    assert result.redactions == 0
    return elapsed


def test_one_mebibyte_of_ordinary_output_is_fast() -> None:
    log = benign_log(lines=4000).encode()
    data = (log * (2**20 // len(log) + 1))[: 2**20]
    redact(data[:1000], REDACT)  # build the plugin table first
    assert _timed(data) < 0.5


def test_one_mebibyte_line_of_base64_is_fast() -> None:
    data = base64.b64encode(random.Random(2).randbytes(3 * 2**18))
    assert _timed(data) < 0.5


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise_and_survive_when_nothing_is_found(data: bytes) -> None:
    result = redact(data, REDACT)
    assert SCANNER_ERROR not in result.kinds
    if result.redactions == 0:
        assert result.data == data
        assert not result.blocked


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=2048), st.sampled_from(sorted(SAMPLES)))
def test_a_secret_in_random_bytes_is_redacted_and_the_rest_kept(noise: bytes, kind: str) -> None:
    line, secret = SAMPLES[kind]
    noise = noise.replace(b"\n", b" ")
    data = noise + b"\n" + line.encode() + b"\n" + noise
    result = redact(data, REDACT)
    assert secret.encode() not in result.data
    assert result.data.startswith(noise + b"\n")
    assert result.data.endswith(b"\n" + noise)
    assert kind in result.kinds


def test_random_bytes_of_a_mebibyte() -> None:
    data = os.urandom(2**20)
    result = redact(data, REDACT)
    assert SCANNER_ERROR not in result.kinds
    if result.redactions == 0:
        assert result.data == data
