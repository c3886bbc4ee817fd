"""Page tokens and sizes of the session listings, and the protos' timestamps: shared by the session servicer
and the forward link, which merges the listings of several servers (so neither imports the other)."""

from __future__ import annotations

import base64
import json

from google.protobuf.timestamp_pb2 import Timestamp

from sandbox_server.errors import FieldViolation, InvalidRequest

DEFAULT_PAGE = 50
MAX_PAGE = 500


def timestamp(epoch: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(nanoseconds(epoch))
    return ts


def nanoseconds(epoch: float) -> int:
    return int(epoch * 1e9)


def session_page_token(created: float | Timestamp, session_id: str) -> str:
    """ListSessions' page token after a session: its creation in whole nanoseconds (exactly what its proto's
    created_at holds, so that replicas merging their pages (interceptors/forward.py) make the same token) and
    its id."""
    ns = created.ToNanoseconds() if isinstance(created, Timestamp) else nanoseconds(created)
    return encode_token((ns, session_id))


def session_position(token: str) -> tuple[int, str] | None:
    """A ListSessions page token's (created, id), created in nanoseconds; an older token held seconds."""
    found = _position(token)
    if found is None:
        return None
    created, ident = found
    return (created if isinstance(created, int) else nanoseconds(created)), ident


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidRequest([FieldViolation("page_size", "must not be negative")])
    return min(requested or DEFAULT_PAGE, MAX_PAGE)


def encode_token(position: tuple[float, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode()


def decode_token(token: str) -> tuple[float, str] | None:
    """A page token's (created, id), created in seconds (ListSnapshots')."""
    found = _position(token)
    return None if found is None else (float(found[0]), found[1])


def _position(token: str) -> tuple[int | float, str] | None:
    if not token:
        return None
    try:
        created, ident = json.loads(base64.urlsafe_b64decode(token.encode()))
        if isinstance(created, bool) or not isinstance(created, int | float) or not isinstance(ident, str):
            raise ValueError(token)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidRequest([FieldViolation("page_token", "not a token this server gave")]) from exc
    return created, ident
