"""The console's routes: sign-in, the pages, and the actions behind their buttons.

A page is a few Admin API calls with the operator's key, rendered; an action is one Admin API call, then a
redirect to a page (or, for htmx, a message fragment). The Admin API's refusals are shown in its own words
(``admin_calls.problem``); a key it no longer accepts ends the console session.
"""

from __future__ import annotations

import asyncio
import difflib
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sandbox_client import AuthenticationError, InvalidRequestError, NotFoundError, SandboxError, Status
from sandbox_client.admin import AdminClient, CostGroupBy, CostReport, Role
from sandbox_server.console import live
from sandbox_server.console.admin_calls import SignInRefused, Upstream, problem, sign_in
from sandbox_server.console.auth import (
    MAX_STREAMS_PER_SESSION,
    SIGNIN_TOKEN_LIFETIME_S,
    ConsoleSession,
    Cookies,
    Flash,
    SessionStore,
    same_origin,
    token_matches,
)
from sandbox_server.console.charts import bar_chart, day_chart
from sandbox_server.console.web import FormRefused, SecurityHeaders, Templates, read_form

log = logging.getLogger(__name__)
_T = TypeVar("_T")

STATIC_DIR = Path(__file__).parent / "static"
AUDIT_LIMIT = 200
"""Executions the audit page shows by default (the latest that match its filters; at most 1000)."""
# Outcomes an execution can have, as the Admin API's filter takes them (ERROR stands for every "ERROR:<code>").
OUTCOMES = (*(s.value for s in Status if s is not Status.UNSPECIFIED), "CANCELLED", "ERROR", "RUNNING")
_BACK = re.compile(r"^/[a-z]+(/[A-Za-z0-9_.-]{1,128})?$")
_SIGNED_OUT = {
    "out": "Signed out.",
    "expired": "Your console session ended: sign in again.",
    "key": "The Admin API no longer accepts your key (revoked?): sign in with an admin key.",
}


class BadInput(Exception):
    """A page's query the console cannot read (a malformed date, say); shown as is."""


@dataclass
class ConsoleState:
    sessions: SessionStore
    cookies: Cookies
    upstream: Upstream
    templates: Templates
    dev_mode: bool
    closing: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Ctx:
    """One signed-in request: the console, the operator's session and (for an action) the form it sent."""

    state: ConsoleState
    session: ConsoleSession
    form: Mapping[str, str]

    async def admin(self, call: Callable[[AdminClient], _T]) -> _T:
        return await self.session.calls.run(call)

    def page(self, name: str, nav: str, status: int = 200, **context: Any) -> Response:
        return self.state.templates.page(name, {
            "operator": self.session.operator, "csrf": self.session.csrf, "flashes": self.session.take_flashes(),
            "nav": nav, **context}, status)


Handler = Callable[[Request, Ctx], Awaitable[Response]]


def _state(request: Request) -> ConsoleState:
    state: ConsoleState = request.app.state.console
    return state


def signed_in(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The session from the cookie (or the sign-in page); for a POST, a same-origin request with the session's
    CSRF token (or 403) before anything is called."""

    async def endpoint(request: Request) -> Response:
        state = _state(request)
        session = state.sessions.get(request.cookies.get(state.cookies.session))
        posted = request.method == "POST"
        if session is None:
            if posted:
                return PlainTextResponse("sign in first", status_code=403)
            return RedirectResponse("/signin", status_code=303)
        form: Mapping[str, str] = {}
        if posted:
            if not same_origin(request):
                return PlainTextResponse("refused: a request from another origin", status_code=403)
            try:
                form = await read_form(request)
            except FormRefused as refused:
                return PlainTextResponse(refused.message, status_code=refused.status)
            if not token_matches(session.csrf, form, request):
                return PlainTextResponse("refused: the form's CSRF token is missing or wrong", status_code=403)
        ctx = Ctx(state, session, form)
        try:
            return await handler(request, ctx)
        except AuthenticationError:
            state.sessions.end(session)
            response: Response = RedirectResponse("/signin?why=key", status_code=303)
            if request.headers.get("hx-request") == "true":  # htmx would swap the sign-in page into the message
                response = Response(headers={"hx-redirect": "/signin?why=key"})
            state.cookies.clear(response, state.cookies.session)
            return response
        except SandboxError as exc:
            if posted:
                return _done(request, ctx, "error", problem(exc))
            status = 404 if isinstance(exc, NotFoundError) else 400 if isinstance(exc, InvalidRequestError) else 502
            return ctx.page("problem.html", "", status=status, message=problem(exc))
        except BadInput as exc:
            return ctx.page("problem.html", "", status=400, message=str(exc))

    return endpoint


def _done(request: Request, ctx: Ctx, kind: str, text: str, default_back: str = "/live") -> Response:
    """An action's answer: for htmx, the message in place; otherwise the message kept for the next page, and a
    redirect there (to a console path only)."""
    if request.headers.get("hx-request") == "true":  # 200 either way: htmx swaps in only successful answers
        return ctx.state.templates.page("_flash.html", {"flashes": [Flash(kind, text)]})
    ctx.session.flash(kind, text)
    back = ctx.form.get("back", "")
    return RedirectResponse(back if _BACK.match(back) else default_back, status_code=303)


# --- sign-in ---------------------------------------------------------------------------------------------------


async def signin_page(request: Request) -> Response:
    state = _state(request)
    if state.sessions.get(request.cookies.get(state.cookies.session)) is not None:
        return RedirectResponse("/live", status_code=303)
    return _signin(state, notice=_SIGNED_OUT.get(request.query_params.get("why", ""), ""))


def _signin(state: ConsoleState, notice: str = "", error: str = "", status: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    response = state.templates.page("signin.html", {
        "dev_mode": state.dev_mode, "signin_token": token, "notice": notice, "error": error}, status)
    state.cookies.set(response, state.cookies.signin, token, SIGNIN_TOKEN_LIFETIME_S)
    return response


async def signin(request: Request) -> Response:
    state = _state(request)
    if not same_origin(request):
        return PlainTextResponse("refused: a request from another origin", status_code=403)
    try:
        form = await read_form(request)
    except FormRefused as refused:
        return PlainTextResponse(refused.message, status_code=refused.status)
    expected = request.cookies.get(state.cookies.signin, "")
    if not expected or not hmac.compare_digest(form.get("signin_token", "").encode(), expected.encode()):
        return _signin(state, error="The sign-in form expired: try again.", status=403)
    if state.dev_mode:
        return _signin(state, status=403)
    try:
        calls, operator = await sign_in(state.upstream, form.get("api_key", ""))
    except SignInRefused as refused:
        log.warning("console sign-in refused", extra={"event": "console_signin_refused", "why": str(refused)})
        return _signin(state, error=str(refused), status=401)
    token, _ = state.sessions.create(calls, operator)
    log.info("console sign-in", extra={"event": "console_signin", "tenant": operator.tenant,
                                       "key_id": operator.key_id})
    response = RedirectResponse("/live", status_code=303)
    state.cookies.set(response, state.cookies.session, token, int(state.sessions.lifetime_s))
    state.cookies.clear(response, state.cookies.signin)
    return response


@signed_in
async def signout(request: Request, ctx: Ctx) -> Response:
    ctx.state.sessions.end(ctx.session)
    log.info("console sign-out", extra={"event": "console_signout", "tenant": ctx.session.operator.tenant,
                                        "key_id": ctx.session.operator.key_id})
    response = RedirectResponse("/signin?why=out", status_code=303)
    ctx.state.cookies.clear(response, ctx.state.cookies.session)
    return response


async def home(request: Request) -> Response:
    return RedirectResponse("/live", status_code=303)


async def favicon(request: Request) -> Response:
    """Where browsers look on their own, for a page that names no icon."""
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")


# --- live: executions and sessions -----------------------------------------------------------------------------


@signed_in
async def live_page(request: Request, ctx: Ctx) -> Response:
    running, sessions = await live.snapshot(ctx.session.calls)
    return ctx.page("live.html", "live", running=running, sessions=sessions)


@signed_in
async def live_stream(request: Request, ctx: Ctx) -> Response:
    if ctx.session.streams >= MAX_STREAMS_PER_SESSION:
        return PlainTextResponse("too many live pages open", status_code=429)
    events = live.stream(ctx.session, ctx.state.sessions, ctx.state.templates, ctx.state.closing)
    return StreamingResponse(events, media_type="text/event-stream", headers={"x-accel-buffering": "no"})


@signed_in
async def execution_page(request: Request, ctx: Ctx) -> Response:
    execution_id = request.path_params["execution_id"]
    execution = await ctx.admin(lambda admin: admin.get_execution(execution_id))
    return ctx.page("execution.html", "audit", execution=execution)


@signed_in
async def kill_execution(request: Request, ctx: Ctx) -> Response:
    execution_id = request.path_params["execution_id"]
    await ctx.admin(lambda admin: admin.kill_execution(execution_id))
    return _done(request, ctx, "ok", f"Execution {execution_id} killed.")


@signed_in
async def session_page(request: Request, ctx: Ctx) -> Response:
    session_id = request.path_params["session_id"]
    found = await ctx.admin(lambda admin: admin.get_session(session_id))
    return ctx.page("session.html", "live", found=found)


@signed_in
async def close_session(request: Request, ctx: Ctx) -> Response:
    session_id = request.path_params["session_id"]
    await ctx.admin(lambda admin: admin.close_session(session_id))
    return _done(request, ctx, "ok", f"Session {session_id} closed.")


# --- the audit trail -------------------------------------------------------------------------------------------


def _moment(text: str, name: str) -> datetime:
    """A datetime-local field's value ("YYYY-MM-DDTHH:MM"), read as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadInput(f"{name}: not a date and time (YYYY-MM-DDTHH:MM, UTC)") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@signed_in
async def audit_page(request: Request, ctx: Ctx) -> Response:
    query = request.query_params
    tenant, session_id = query.get("tenant", ""), query.get("session", "")
    status = query.get("status", "")
    status = status if status in OUTCOMES else ""
    try:
        limit = min(max(int(query.get("limit", AUDIT_LIMIT)), 1), 1000)
    except ValueError:
        limit = AUDIT_LIMIT
    since = _moment(query["since"], "since") if query.get("since") else None
    until = _moment(query["until"], "until") if query.get("until") else None
    tenants = await ctx.admin(lambda admin: admin.list_tenants())
    # The Admin API filters (in SQL), so the latest `limit` matches are found however far back they are.
    executions = await ctx.admin(partial(
        AdminClient.list_executions, tenant=tenant or None, session_id=session_id or None, limit=limit,
        outcomes=(status,) if status else (), since=since, until=until))
    filters = {"tenant": tenant, "session": session_id, "status": status, "since": query.get("since", ""),
               "until": query.get("until", ""), "limit": limit}
    return ctx.page("audit.html", "audit", executions=executions, tenants=tenants, outcomes=OUTCOMES,
                    filters=filters)


# --- costs -----------------------------------------------------------------------------------------------------


def _day(text: str, name: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as exc:
        raise BadInput(f"{name}: not a date (YYYY-MM-DD, UTC)") from exc


@signed_in
async def costs_page(request: Request, ctx: Ctx) -> Response:
    query = request.query_params
    tenant = query.get("tenant", "")
    since = _day(query["since"], "since") if query.get("since") else None
    # "until" names the last day included: the report's end is the next midnight.
    until = _day(query["until"], "until") + timedelta(days=1) if query.get("until") else None
    tenants = await ctx.admin(lambda admin: admin.list_tenants())
    groups: tuple[CostGroupBy, ...] = ("tenant", "session", "day")
    reports: dict[str, CostReport] = {}
    for group in groups:
        reports[group] = await ctx.admin(partial(AdminClient.cost_report, group_by=group, tenant=tenant or None,
                                                 since=since, until=until))
    charts = {
        "tenant": bar_chart([(r.key, r.total) for r in reports["tenant"].rows], "cost by tenant"),
        "session": bar_chart([(r.key, r.total) for r in reports["session"].rows], "cost by session"),
        "day": day_chart([(r.key, r.total) for r in reports["day"].rows], "cost by day (UTC)"),
    }
    filters = {"tenant": tenant, "since": query.get("since", ""), "until": query.get("until", "")}
    return ctx.page("costs.html", "costs", reports=reports, charts=charts, tenants=tenants, filters=filters)


# --- incidents and quarantines ---------------------------------------------------------------------------------


@signed_in
async def incidents_page(request: Request, ctx: Ctx) -> Response:
    everything = request.query_params.get("all") == "1"
    incidents = await ctx.admin(lambda admin: admin.list_incidents(open_only=not everything, limit=200))
    quarantines = await ctx.admin(lambda admin: admin.list_quarantines(include_lifted=everything))
    return ctx.page("incidents.html", "incidents", incidents=incidents, quarantines=quarantines,
                    everything=everything)


@signed_in
async def resolve_incident(request: Request, ctx: Ctx) -> Response:
    incident_id = request.path_params["incident_id"]
    note = ctx.form.get("note", "")
    await ctx.admin(lambda admin: admin.resolve_incident(incident_id, note=note))
    return _done(request, ctx, "ok", f"Incident {incident_id} resolved; its mitigations are lifted.", "/incidents")


@signed_in
async def lift_quarantine(request: Request, ctx: Ctx) -> Response:
    mitigation_id = request.path_params["mitigation_id"]
    await ctx.admin(lambda admin: admin.lift_quarantine(mitigation_id))
    return _done(request, ctx, "ok", f"Mitigation {mitigation_id} lifted.", "/incidents")


# --- policies --------------------------------------------------------------------------------------------------


async def _policies(request: Request, ctx: Ctx, editor: Mapping[str, str], status: int = 200,
                    **result: Any) -> Response:
    listing = await ctx.admin(lambda admin: admin.list_policies())
    versions = await ctx.admin(lambda admin: admin.list_policy_versions(limit=100))
    return ctx.page("policies.html", "policies", status=status, listing=listing, versions=versions,
                    editor=editor, validated=result.get("validated"), problems=result.get("problems", ()),
                    refused=result.get("refused", ""))


@signed_in
async def policies_page(request: Request, ctx: Ctx) -> Response:
    name = request.query_params.get("edit", "")
    editor = {"file_name": "", "text": ""}
    if name:
        listing = await ctx.admin(lambda admin: admin.list_policies())
        found = listing.file(name)
        if found is not None:
            editor = {"file_name": found.name, "text": found.text}
    return await _policies(request, ctx, editor)


def _editor(ctx: Ctx) -> dict[str, str]:
    # Browsers send a textarea's line breaks as CRLF: the file is stored as the operator wrote it, with LF.
    return {"file_name": ctx.form.get("file_name", "").strip(), "text": ctx.form.get("text", "").replace("\r\n", "\n")}


@signed_in
async def validate_policy(request: Request, ctx: Ctx) -> Response:
    editor = _editor(ctx)
    problems = await ctx.admin(lambda admin: admin.validate_policy(editor["file_name"], editor["text"]))
    return await _policies(request, ctx, editor, validated=True, problems=problems)


@signed_in
async def apply_policy(request: Request, ctx: Ctx) -> Response:
    editor = _editor(ctx)
    try:
        applied = await ctx.admin(lambda admin: admin.apply_policy(editor["file_name"], editor["text"]))
    except InvalidRequestError as refused:
        return await _policies(request, ctx, editor, status=400, refused=refused.message,
                               problems=[f"{v.field}: {v.description}" for v in refused.field_violations])
    tenants = ", ".join(applied.tenants) or "none"
    return _done(request, ctx, "ok", f"Applied {editor['file_name']}: policy version {applied.version} is in force "
                                     f"(tenants: {tenants}).", "/policies")


@signed_in
async def rollback_policy(request: Request, ctx: Ctx) -> Response:
    try:
        to_version = int(ctx.form.get("to_version", ""))
    except ValueError:
        return _done(request, ctx, "error", "to_version: not a version number", "/policies")
    rolled = await ctx.admin(lambda admin: admin.rollback_policy(to_version))
    return _done(request, ctx, "ok", f"Rolled back to version {rolled.rolled_back_to}: policy version "
                                     f"{rolled.version} is in force.", "/policies")


@signed_in
async def policy_diff(request: Request, ctx: Ctx) -> Response:
    try:
        old, new = int(request.query_params.get("from", "")), int(request.query_params.get("to", ""))
    except ValueError:
        raise BadInput("from and to: two policy version numbers") from None
    before = await ctx.admin(lambda admin: admin.get_policy(old))
    after = await ctx.admin(lambda admin: admin.get_policy(new))
    files = []
    for name in sorted({f.name for f in before.files} | {f.name for f in after.files}):
        a, b = before.file(name), after.file(name)
        lines = list(difflib.unified_diff(
            a.text.splitlines() if a else [], b.text.splitlines() if b else [],
            fromfile=f"v{before.version}/{name}" if a else f"v{before.version}: no {name}",
            tofile=f"v{after.version}/{name}" if b else f"v{after.version}: no {name}", lineterm=""))
        files.append({"name": name, "lines": lines})
    versions = await ctx.admin(lambda admin: admin.list_policy_versions(limit=100))
    return ctx.page("policy_diff.html", "policies", before=before, after=after, files=files, versions=versions)


# --- API keys --------------------------------------------------------------------------------------------------


@signed_in
async def keys_page(request: Request, ctx: Ctx) -> Response:
    keys = await ctx.admin(lambda admin: admin.list_api_keys())
    tenants = await ctx.admin(lambda admin: admin.list_tenants())
    return ctx.page("keys.html", "keys", keys=keys, tenants=tenants)


@signed_in
async def create_key(request: Request, ctx: Ctx) -> Response:
    tenant, label = ctx.form.get("tenant", ""), ctx.form.get("label", "")
    role: Role = "admin" if ctx.form.get("role") == "admin" else "tenant"
    created = await ctx.admin(lambda admin: admin.create_api_key(tenant, role=role, label=label))
    # The secret is shown on the next page and then forgotten: kept server-side for that one page, never in a URL.
    ctx.session.flash("secret", f"Key {created.key.key_id} ({created.key.role} of {created.key.tenant}) made. "
                                "Copy its secret now: it is never shown again.", secret=created.secret)
    return RedirectResponse("/keys", status_code=303)


@signed_in
async def revoke_key(request: Request, ctx: Ctx) -> Response:
    key_id = request.path_params["key_id"]
    await ctx.admin(lambda admin: admin.revoke_api_key(key_id))
    return _done(request, ctx, "ok", f"Key {key_id} revoked.", "/keys")


def build_app(state: ConsoleState, console_host: str) -> SecurityHeaders:
    routes = [
        Route("/", home),
        Route("/favicon.ico", favicon),
        Route("/signin", signin_page, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/live", live_page),
        Route("/live/stream", live_stream),
        Route("/executions/{execution_id}", execution_page),
        Route("/executions/{execution_id}/kill", kill_execution, methods=["POST"]),
        Route("/sessions/{session_id}", session_page),
        Route("/sessions/{session_id}/close", close_session, methods=["POST"]),
        Route("/audit", audit_page),
        Route("/costs", costs_page),
        Route("/incidents", incidents_page),
        Route("/incidents/{incident_id}/resolve", resolve_incident, methods=["POST"]),
        Route("/quarantines/{mitigation_id}/lift", lift_quarantine, methods=["POST"]),
        Route("/policies", policies_page),
        Route("/policies/diff", policy_diff),
        Route("/policies/validate", validate_policy, methods=["POST"]),
        Route("/policies/apply", apply_policy, methods=["POST"]),
        Route("/policies/rollback", rollback_policy, methods=["POST"]),
        Route("/keys", keys_page, methods=["GET"]),
        Route("/keys", create_key, methods=["POST"]),
        Route("/keys/{key_id}/revoke", revoke_key, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.console = state
    return SecurityHeaders(app, console_host)
