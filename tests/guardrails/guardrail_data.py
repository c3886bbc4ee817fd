"""Test data for the guardrails tests: fake secrets of every kind and benign, realistic inputs and outputs.

The fake secrets are correctly shaped but assembled at run time from pieces, so that no real-looking secret
sits in the repository as one literal (and secret scanners run on the repository stay quiet)."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import uuid

# Characters shaped like token bodies; none of this is a credential.
_ALNUM = "aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5zA2bC4dE6fG8hI0jK2lM4nO6pQ8rS0tU2vW4xY6zA8bC"
_HEX = "0123456789abcdef" * 8


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fake_jwt() -> str:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps({"sub": "1234567890", "name": "Fake User"}).encode())
    return ".".join((header, payload, "SflKxwRJSMeKKF2QT4fw" + "pMeJf36POk6yJV_adQssw5c"))


def fake_pem(kind: str = "RSA ", lines: int = 6, seed: int = 1) -> tuple[str, list[str]]:
    """A PEM private key block with random base64 body lines, and those lines."""
    rng = random.Random(seed)
    body = [base64.b64encode(rng.randbytes(48)).decode() for _ in range(lines)]
    label = f"{kind}PRIVATE " + "KEY"
    return "\n".join([f"-----BEGIN {label}-----", *body, f"-----END {label}-----"]), body


def secret_samples() -> dict[str, tuple[str, str]]:
    """kind -> (a line of output carrying one secret, the exact text that must be replaced)."""
    github = "ghp_" + _ALNUM[:36]
    gitlab = "glpat-" + _ALNUM[:20]
    slack = "xoxb-" + "1234567890-1234567890123-" + _ALNUM[:24]
    stripe = "sk_" + "live_" + _ALNUM[:24]
    openai = "sk-" + _ALNUM[:20] + "T3Blbk" + "FJ" + _ALNUM[20:40]
    sendgrid = "SG." + _ALNUM[:22] + "." + _ALNUM[22:65]
    discord = "M" + _ALNUM[:23] + "." + _ALNUM[23:29] + "." + _ALNUM[29:56]
    telegram = "123456789:" + _ALNUM[:35]
    npm = "npm_" + _ALNUM[:36]
    azure = "AccountKey=" + _ALNUM[:70] + _ALNUM[:16] + "=="
    pypi = "pypi-" + "AgEIcHlwaS5vcmc" + _ALNUM[:72]
    square = "sq0csp-" + _ALNUM[:43]
    jwt = fake_jwt()
    return {
        "aws_access_key": ("export AWS_ACCESS_KEY_ID=" + "AKIA" + "IOSFODNN7EXAMPLE", "AKIA" + "IOSFODNN7EXAMPLE"),
        "github_token": ("using token " + github + " for the API", github),
        "gitlab_token": ("GITLAB_TOKEN=" + gitlab, gitlab),
        "slack_token": ("slack client with " + slack, slack),
        "stripe_key": ("stripe.api_key set to " + stripe, stripe),
        "openai_token": ("OPENAI_API_KEY " + openai, openai),
        "jwt": ("Authorization: Bearer " + jwt, jwt),
        "basic_auth": ("connecting to postgres://admin:" + "s3cretPassw0rd" + "@db.internal:5432/app",
                       "s3cretPassw0rd"),
        "secret_keyword": ('settings: password = "' + "correct-horse-battery" + '"', "correct-horse-battery"),
        "twilio_key": ("twilio key " + "SK" + _HEX[:32], "SK" + _HEX[:32]),
        "sendgrid_key": ("sendgrid " + sendgrid, sendgrid),
        "discord_bot_token": ("discord bot " + discord, discord),
        "telegram_bot_token": ("telegram bot " + telegram, telegram),
        "npm_token": ("//registry.npmjs.org/:_authToken=" + npm, npm),
        "azure_storage_key": ("DefaultEndpointsProtocol=https;AccountName=acct;" + azure, azure),
        "mailchimp_key": ("mailchimp " + _HEX[:32] + "-us12", _HEX[:32] + "-us12"),
        "pypi_token": ("twine upload with " + pypi, pypi),
        "square_oauth_secret": ("square " + square, square),
        "artifactory_credentials": ("artifactory token AKC" + _ALNUM[:20] + " ok", "AKC" + _ALNUM[:20]),
        "cloudant_credentials": ("cloudant_password='" + _HEX[:64] + "'", _HEX[:64]),
        "ibm_cloud_iam_key": ('ibm_cloud_iam_api_key = "' + (_ALNUM * 2)[:44] + '"', (_ALNUM * 2)[:44]),
        "ibm_cos_hmac": ('ibm_cos_hmac_secret_access_key = "' + _HEX[:48] + '"', _HEX[:48]),
        "softlayer_credentials": ('softlayer_api_key = "' + _HEX[:64] + '"', _HEX[:64]),
    }


DATA_SCIENCE_SCRIPT = '''\
import json
import math
import statistics
from collections import Counter

import numpy as np
import pandas as pd

# Load the measurements and summarise them per sensor.
df = pd.read_csv("measurements.csv", parse_dates=["timestamp"])
df["value_z"] = (df["value"] - df["value"].mean()) / df["value"].std()
summary = df.groupby("sensor_id").agg(count=("value", "size"), mean=("value", "mean"),
                                      p95=("value", lambda s: s.quantile(0.95)))
print(summary.to_string())

key_columns = ["sensor_id", "timestamp"]  # the primary key of the table
lookup = {row.sensor_id: row.value for row in df.itertuples()}
for key, value in sorted(lookup.items())[:5]:
    print(f"{key}: {value:.3f}")

weights = np.linspace(0, 1, 11)
print("weights:", weights.round(2).tolist())
print("entropy:", -sum(p * math.log2(p) for p in weights[1:] / weights.sum()))
print(json.dumps({"rows": len(df), "sensors": df["sensor_id"].nunique(), "median": statistics.median(df["value"])}))
counts = Counter(df["status"])
print("most common status:", counts.most_common(1))
'''


def benign_csv(rows: int = 200, seed: int = 7) -> str:
    rng = random.Random(seed)
    lines = ["timestamp,sensor_id,value,status,checksum"]
    for i in range(rows):
        digest = hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest()
        lines.append(f"2024-03-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z,sensor-{i % 17},"
                     f"{rng.gauss(20, 5):.4f},{rng.choice(['ok', 'warn', 'fail'])},{digest}")
    return "\n".join(lines) + "\n"


def benign_log(lines: int = 300, seed: int = 3) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        request_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        digest = hashlib.sha256(str(i).encode()).hexdigest()
        out.append(f"2024-05-01T12:{i % 60:02d}:{i % 60:02d}.{i:03d}Z INFO request_id={request_id} "
                   f"GET https://api.example.com/v1/items/{i}?page={i % 7} status=200 took={rng.random():.3f}s "
                   f"etag=\"{digest[:16]}\"")
        if i % 50 == 0:
            out.append(f"2024-05-01T12:00:00Z DEBUG cache key={digest} sha256={digest} size={i * 1024}")
    return "\n".join(out) + "\n"


def benign_git_log(commits: int = 20, seed: int = 5) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(commits):
        sha = hashlib.sha1(rng.randbytes(16), usedforsecurity=False).hexdigest()
        parent = hashlib.sha1(rng.randbytes(16), usedforsecurity=False).hexdigest()
        out += [f"commit {sha}", f"Merge: {sha[:7]} {parent[:7]}", "Author: Jane Doe <jane@example.com>",
                "Date:   Mon Apr 1 12:00:00 2024 +0000", "", f"    Fix tokenizer edge case #{i}", ""]
    return "\n".join(out)


def benign_base64_image(size: int = 24 * 1024, seed: int = 11) -> bytes:
    """A fake PNG (signature, then random bytes) as base64: once wrapped at 76 columns, once one long line."""
    data = b"\x89PNG\r\n\x1a\n" + random.Random(seed).randbytes(size)
    wrapped = base64.encodebytes(data)
    one_line = b"data:image/png;base64," + base64.b64encode(data)
    return wrapped + b"\n" + one_line + b"\n"


def benign_outputs() -> dict[str, bytes]:
    hashes = "\n".join(f"{hashlib.sha256(str(i).encode()).hexdigest()}  file_{i}.parquet" for i in range(100))
    return {
        "data_science_stdout": (
            b"           count       mean        p95\nsensor_id\nsensor-0    12  20.114512  27.981234\n"
            b"sensor-1    12  19.871200  28.110001\nweights: [0.0, 0.1, 0.2, 0.3]\nentropy: 3.1699\n"
            b'{"rows": 200, "sensors": 17, "median": 20.0412}\nmost common status: [(\'ok\', 71)]\n'
        ),
        "csv": benign_csv().encode(),
        "log": benign_log().encode(),
        "sha256sums": hashes.encode(),
        "git_log": benign_git_log().encode(),
        "base64_image": benign_base64_image(),
        "uuids": "\n".join(str(uuid.UUID(int=i * 7919 + 1, version=4)) for i in range(200)).encode(),
        "json": json.dumps([{"id": str(uuid.UUID(int=i, version=4)), "score": i / 7, "tags": ["a", "b"],
                             "hash": hashlib.sha1(str(i).encode(), usedforsecurity=False).hexdigest()}
                            for i in range(100)]).encode(),
        "pip_freeze": b"numpy==1.26.4\npandas==2.2.1\nrequests==2.31.0\nscikit-learn==1.4.1.post1\n",
        "traceback": (
            b'Traceback (most recent call last):\n  File "/tmp/main.py", line 12, in <module>\n'
            b'    value = lookup["sensor-99"]\nKeyError: \'sensor-99\'\n'
        ),
        "progress": "".join(f"\repoch {i}/100 loss={1 / (i + 1):.5f} acc={i / 100:.2f}" for i in range(100)).encode(),
    }
