"""The shapes of session and snapshot ids: a prefix and 160 random bits in lowercase base 32.

An ``ExecuteRequest.session_id`` of exactly the session shape is a handle (it runs in that session); any other
value stays the free label it always was. Ids come from ``secrets``: unguessable, so knowing one is the only
way to name a session, and a tenant check still stands behind every lookup.
"""

from __future__ import annotations

import base64
import re
import secrets

SESSION_PREFIX = "ses_"
SNAPSHOT_PREFIX = "snap_"
_RANDOM_BYTES = 20  # 160 bits: 32 base-32 characters
_SESSION_RE = re.compile(r"ses_[a-z2-7]{32}")
_SNAPSHOT_RE = re.compile(r"snap_[a-z2-7]{32}")


def _token() -> str:
    return base64.b32encode(secrets.token_bytes(_RANDOM_BYTES)).decode().lower()


def new_session_id() -> str:
    return SESSION_PREFIX + _token()


def new_snapshot_id() -> str:
    return SNAPSHOT_PREFIX + _token()


def is_session_id(value: str) -> bool:
    """True for a value of a session id's exact shape (whether or not that session exists)."""
    return _SESSION_RE.fullmatch(value) is not None


def is_snapshot_id(value: str) -> bool:
    return _SNAPSHOT_RE.fullmatch(value) is not None
