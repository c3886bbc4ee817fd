"""Console sessions and CSRF protection.

A signed-in operator holds a random session token in an HTTP-only, SameSite=Strict cookie (Secure with TLS);
the admin key itself stays in this process's memory, in the session, and never reaches the browser again. The
server keeps only a hash of each token, so its memory holds nothing a browser could present. A session ends at
sign-out, after SESSION_LIFETIME_S, or as soon as the Admin API refuses its key (revoked).

Every state-changing request must come from the console's own pages: same origin (``Sec-Fetch-Site``,
``Origin``) and the session's CSRF token (a hidden form field, or the ``X-CSRF-Token`` header), compared in
constant time. The sign-in form, before any session exists, carries a token matched against a short-lived cookie
of its own (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from sandbox_server.console.admin_calls import AdminCalls, Operator

SESSION_LIFETIME_S = 8 * 3600
MAX_SESSIONS = 256
"""Signed-in sessions kept at once; beyond, the oldest is ended (memory stays bounded whatever signs in)."""
MAX_STREAMS_PER_SESSION = 8
"""Live-update streams one session may hold open (each polls the Admin API)."""
SIGNIN_TOKEN_LIFETIME_S = 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


@dataclass
class Flash:
    """A message for the next page the operator sees (kept server-side: nothing of it travels in a URL)."""

    kind: str  # "ok", "error" or "secret"
    text: str
    secret: str = ""  # a new API key's secret: shown on one page, then forgotten


@dataclass
class ConsoleSession:
    calls: AdminCalls
    operator: Operator
    csrf: str
    expires_at: float  # on the store's clock (time.monotonic)
    streams: int = 0
    flashes: list[Flash] = field(default_factory=list)

    def flash(self, kind: str, text: str, secret: str = "") -> None:
        self.flashes = [*self.flashes[-9:], Flash(kind, text, secret)]

    def take_flashes(self) -> list[Flash]:
        taken, self.flashes = self.flashes, []
        return taken


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """The signed-in sessions of this process, by the hash of their token."""

    def __init__(self, lifetime_s: float = SESSION_LIFETIME_S, max_sessions: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime_s = lifetime_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: dict[str, ConsoleSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, calls: AdminCalls, operator: Operator) -> tuple[str, ConsoleSession]:
        """A new session; returns its token (for the cookie, and nowhere else) and the session."""
        self._purge()
        while len(self._sessions) >= self.max_sessions:
            self._end(next(iter(self._sessions)))  # the oldest: dicts keep insertion order
        token = secrets.token_urlsafe(32)
        session = ConsoleSession(calls=calls, operator=operator, csrf=secrets.token_urlsafe(32),
                                 expires_at=self._clock() + self.lifetime_s)
        self._sessions[_digest(token)] = session
        return token, session

    def get(self, token: str | None) -> ConsoleSession | None:
        if not token:
            return None
        digest = _digest(token)
        session = self._sessions.get(digest)
        if session is not None and session.expires_at <= self._clock():
            self._end(digest)
            return None
        return session

    def end(self, session: ConsoleSession) -> None:
        for digest, held in list(self._sessions.items()):
            if held is session:
                self._end(digest)

    def alive(self, session: ConsoleSession) -> bool:
        return session.expires_at > self._clock() and any(s is session for s in self._sessions.values())

    def close(self) -> None:
        for digest in list(self._sessions):
            self._end(digest)

    def _end(self, digest: str) -> None:
        session = self._sessions.pop(digest, None)
        if session is not None:
            session.calls.close()

    def _purge(self) -> None:
        now = self._clock()
        for digest in [d for d, s in self._sessions.items() if s.expires_at <= now]:
            self._end(digest)


@dataclass(frozen=True)
class Cookies:
    """The console's cookie names and attributes. With TLS they are Secure, and the session cookie takes the
    ``__Host-`` prefix (a browser then refuses it unless Secure, host-only, path /)."""

    secure: bool

    @property
    def session(self) -> str:
        return "__Host-sandbox-console" if self.secure else "sandbox-console"

    @property
    def signin(self) -> str:
        return "__Host-sandbox-console-signin" if self.secure else "sandbox-console-signin"

    def set(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", secure=self.secure, httponly=True,
                            samesite="strict")

    def clear(self, response: Response, name: str) -> None:
        response.delete_cookie(name, path="/", secure=self.secure, httponly=True, samesite="strict")


def same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from the console's own pages, by what the browser says of it: a
    cross-site or cross-origin form or fetch is refused before its CSRF token is even read."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    expected = f"{request.url.scheme}://{request.url.netloc}"
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == expected
    referer = request.headers.get("referer")
    if referer is not None:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}" == expected
    return True  # a client that names no origin (not a browser's cross-site request): the token decides


def token_matches(expected: str, form: Mapping[str, str], request: Request) -> bool:
    """The request's CSRF token (form field or header) equals ``expected``, compared in constant time."""
    given = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())
