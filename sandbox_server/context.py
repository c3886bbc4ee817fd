"""Per-request state, passed through a ContextVar (never by rewriting metadata)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field


@dataclass
class RequestContext:
    method: str
    request_id: str
    principal: str = "anonymous"
    attributes: dict[str, str] = field(default_factory=dict)


current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("sandbox_request", default=None)


def get() -> RequestContext | None:
    return current.get()
