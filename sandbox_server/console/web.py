"""What every console response shares: templates (escaped by default), security headers, form bodies."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox_server.settings import is_loopback

# Self only: no inline script or style, nothing from another origin, never framed; SVG charts are inline markup.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
)
STATIC_PREFIX = "/static/"
MAX_FORM_BYTES = 2 * 1024 * 1024
"""A form body at most: a pasted policy file, with room."""
MAX_FORM_FIELDS = 64
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


class SecurityHeaders:
    """Adds the security headers to every response and ``Cache-Control: no-store`` to every one but the static
    assets (pages carry data). On a loopback console, refuses requests for any other host name: a page of
    another site whose name was made to resolve to this address (DNS rebinding) gets nothing."""

    def __init__(self, app: ASGIApp, console_host: str) -> None:
        self.app = app
        self.hosts = frozenset(LOOPBACK_NAMES) if is_loopback(console_host) else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.hosts is not None and _host_name(scope) not in self.hosts:
            await _plain(send, 421, b"this console answers to its loopback address only")
            return
        static = str(scope.get("path", "")).startswith(STATIC_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                headers += SECURITY_HEADERS
                headers.append((b"cache-control", b"no-cache" if static else b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _host_name(scope: Scope) -> str:
    host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if ":" in host else host


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), *SECURITY_HEADERS,
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


class FormRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (what the console's forms and htmx send), bounded in size and
    fields; the last value of a repeated field wins."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormRefused(413, f"a form of at most {MAX_FORM_BYTES // (1024 * 1024)} MiB")
    if body and content_type != "application/x-www-form-urlencoded":
        raise FormRefused(415, "expected a form (application/x-www-form-urlencoded)")
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormRefused(400, "a malformed form") from exc


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "—"


def _size(count: float) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


class Templates:
    def __init__(self) -> None:
        self.env = Environment(loader=PackageLoader("sandbox_server.console", "templates"), autoescape=True,
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(when=_when, size=_size, money=lambda value: f"{value:.4f}")

    def text(self, name: str, context: Mapping[str, Any]) -> str:
        return self.env.get_template(name).render(context)

    def page(self, name: str, context: Mapping[str, Any], status: int = 200) -> HTMLResponse:
        return HTMLResponse(self.text(name, context), status_code=status)
