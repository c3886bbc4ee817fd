"""Where alerts go: the log (always) and, when configured, one webhook.

A sink is anything with ``async send(incident, event)``. Sinks never raise into their caller: a failure is
logged and the alert is dropped (alerting must not take the server down, nor hold up mitigations).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import urllib.error
import urllib.request
from http.client import HTTPMessage
from typing import IO, Literal, Protocol
from urllib.parse import urlsplit

from sandbox_server.incidents.config import DEFAULT_WEBHOOK_RETRIES, DEFAULT_WEBHOOK_TIMEOUT_S, IncidentSettings
from sandbox_server.stores.incidents import IncidentRecord, MitigationRecord

log = logging.getLogger(__name__)

AlertEvent = Literal["opened", "resolved"]
DEFAULT_WEBHOOK_BACKOFF_S = 0.5
"""The wait before the first retry; it doubles after each failed attempt."""
MAX_RESPONSE_BYTES = 64 * 1024
"""How much of a webhook's reply is read (and thrown away) before the connection is closed."""
USER_AGENT = "sandbox-server-incidents/1"


class AlertSink(Protocol):
    """Receives every incident opened (and every one resolved). Must not raise; must not block the event loop."""

    async def send(self, incident: IncidentRecord, event: AlertEvent) -> None: ...


def mitigation_json(mitigation: MitigationRecord) -> dict[str, object]:
    return {
        "id": mitigation.id,
        "incident_id": mitigation.incident_id,
        "action": mitigation.action,
        "scope": mitigation.scope,
        "subject": mitigation.subject,
        "created_at": mitigation.created_at,
        "expires_at": mitigation.expires_at,
        "lifted_at": mitigation.lifted_at,
        "lifted_by": mitigation.lifted_by,
        "throttle_per_minute": mitigation.throttle_per_minute,
    }


def incident_json(incident: IncidentRecord) -> dict[str, object]:
    """The incident as a JSON-ready dict (times in epoch seconds, None while unset), with its mitigations."""
    return {
        "id": incident.id,
        "rule": incident.rule,
        "severity": incident.severity,
        "scope": incident.scope,
        "subject": incident.subject,
        "tenant": incident.tenant,
        "summary": incident.summary,
        "details": dict(incident.details),
        "count": incident.count,
        "opened_at": incident.opened_at,
        "resolved_at": incident.resolved_at,
        "resolved_by": incident.resolved_by,
        "mitigations": [mitigation_json(m) for m in incident.mitigations],
        "exercise": incident.exercise,
    }


def alert_json(incident: IncidentRecord, event: AlertEvent) -> dict[str, object]:
    """The webhook body: ``{"event": "opened" | "resolved", "incident": {...}}``."""
    return {"event": event, "incident": incident_json(incident)}


class LogSink:
    """One log record per alert: an opened incident at WARNING (low, medium) or ERROR (high, critical), a
    resolved one at INFO; an exercise incident (which pages no one) at INFO, said to be one. The incident's fields
    ride in ``extra`` (``incident_id``, ``incident_rule``, ..., ``incident_event``, ``incident_mitigations``,
    ``incident_exercise``) for structured log handlers."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger if logger is not None else log

    async def send(self, incident: IncidentRecord, event: AlertEvent) -> None:
        try:
            if event == "resolved" or incident.exercise:
                level = logging.INFO
            else:
                level = logging.ERROR if incident.severity in ("high", "critical") else logging.WARNING
            extra: dict[str, object] = {f"incident_{k}": v for k, v in incident_json(incident).items()}
            extra["incident_event"] = event
            self._log.log(
                level,
                "%s %s %s: %s [%s, %s %s, count %d]",
                "exercise incident" if incident.exercise else "incident", incident.id, event, incident.summary,
                incident.severity, incident.scope, incident.subject, incident.count, extra=extra,
            )
        except Exception:  # a broken handler must not break alerting
            log.exception("could not log incident %s", incident.id)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Alerts go to the configured URL only: a redirect is a failed delivery, never followed."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


class WebhookSink:
    """POSTs every alert as JSON (``alert_json``) to one http(s) URL.

    Each attempt waits at most ``timeout_s`` per network operation. A connection error, a timeout, a 5xx or a
    429 is retried ``retries`` times, waiting ``backoff_s``, then twice as long each time; any other reply but
    2xx (redirects included: they are not followed) fails at once. Environment proxies are ignored: the server
    talks to the configured URL itself. Failures are logged with the URL's scheme, host and port only (its
    path or query may hold a token).

    Raises:
        ValueError: (constructor) a URL that is not http(s) with a host, or a negative timeout or retry count.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = DEFAULT_WEBHOOK_TIMEOUT_S,
        *,
        retries: int = DEFAULT_WEBHOOK_RETRIES,
        backoff_s: float = DEFAULT_WEBHOOK_BACKOFF_S,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the webhook URL must be http or https, with a host")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError("timeout_s must be positive, retries and backoff_s at least 0")
        self._url = url
        self._where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self._timeout_s = timeout_s
        self._retries = retries
        self._backoff_s = backoff_s
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())

    def __repr__(self) -> str:
        return f"WebhookSink({self._where})"

    async def send(self, incident: IncidentRecord, event: AlertEvent) -> None:
        try:
            body = json.dumps(alert_json(incident, event)).encode()
            for attempt in range(self._retries + 1):
                failure, retryable = await asyncio.to_thread(self._post, body)
                if failure is None:
                    return
                if not retryable or attempt == self._retries:
                    log.warning(
                        "webhook %s: incident %s (%s) not delivered after %d attempt(s): %s",
                        self._where, incident.id, event, attempt + 1, failure,
                    )
                    return
                await asyncio.sleep(self._backoff_s * 2**attempt)
        except Exception:  # never into the caller: an alert lost is logged, not raised
            log.exception("webhook %s: incident %s (%s) not delivered", self._where, incident.id, event)

    def _post(self, body: bytes) -> tuple[str | None, bool]:
        """One attempt, blocking: (None, _) when delivered, else (why, whether to retry)."""
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked to be http(s) in __init__
            self._url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        )
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                response.read(MAX_RESPONSE_BYTES)
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"HTTP {exc.code}", exc.code >= 500 or exc.code == 429
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", True
        if 200 <= status < 300:
            return None, False
        return f"HTTP {status}", status >= 500


def build_sinks(settings: IncidentSettings) -> list[AlertSink]:
    """The log sink, and the webhook sink when ``settings.webhook_url`` is set."""
    sinks: list[AlertSink] = [LogSink()]
    if settings.webhook_url is not None:
        sinks.append(
            WebhookSink(settings.webhook_url, settings.webhook_timeout_s, retries=settings.webhook_retries)
        )
    return sinks
