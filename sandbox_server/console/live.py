"""Live executions and sessions, pushed to the page as server-sent events.

A stream polls the Admin API every POLL_S with the operator's key, like every other console page: ListExecutions
(running ones), ListSessions, and ListExecutions again for the audit trail's latest records. It sends a table only
when what it lists changed, and each execution that ended since the page opened once, with its outcome (found in
the audit trail, so one that ran between two polls is shown too).

Polling the Admin API rather than hooking into the servicer's objects keeps one path for authorization and data:
a revoked key stops the stream at the next poll, and the stream shows what ``sandbox-admin`` would. Its cost is
three local calls per open page every half second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from sandbox_client import AuthenticationError, SandboxError
from sandbox_client.admin import AdminSession, Execution
from sandbox_server.console.admin_calls import AdminCalls, problem
from sandbox_server.console.auth import ConsoleSession, SessionStore
from sandbox_server.console.web import Templates

POLL_S = 0.5
HEARTBEAT_S = 15.0
"""A comment line at least this often, so proxies and browsers keep an idle stream open."""
RECONNECT_MS = 2000
LISTED = 1000
RECENT = 50
"""Audit records read per poll to find what ended: more ending within one poll are not all shown."""
SHOWN_ENDED = 1000


async def snapshot(calls: AdminCalls) -> tuple[tuple[Execution, ...], tuple[AdminSession, ...]]:
    """The running executions (newest first) and the live sessions."""
    running = await calls.run(lambda admin: admin.list_executions(running_only=True, limit=LISTED))
    sessions = await calls.run(lambda admin: admin.list_sessions(limit=LISTED))
    return running, sessions


def event(name: str, data: str) -> str:
    """One server-sent event; every line of ``data`` its own ``data:`` line."""
    return f"event: {name}\n" + "".join(f"data: {line}\n" for line in data.splitlines() or [""]) + "\n"


async def stream(session: ConsoleSession, store: SessionStore, templates: Templates,
                 closing: asyncio.Event) -> AsyncIterator[str]:
    session.streams += 1
    try:
        yield f"retry: {RECONNECT_MS}\n\n"
        opened = datetime.now(UTC)
        shown_running: tuple[str, ...] | None = None
        shown_sessions: tuple[tuple[str, str], ...] | None = None
        shown_ended: dict[str, None] = {}  # ordered: the oldest are forgotten first
        failing = False
        last_sent = time.monotonic()
        while store.alive(session) and not closing.is_set():
            out: list[str] = []
            try:
                running, sessions = await snapshot(session.calls)
                # The audit trail's latest: what ended since the page opened, even between two polls.
                recent = await session.calls.run(lambda admin: admin.list_executions(limit=RECENT))
            except AuthenticationError:
                store.end(session)  # the key was revoked: this console session is over
                break
            except SandboxError as exc:
                failing = True
                out.append(event("problem", templates.text("_problem.html", {"message": problem(exc)})))
            else:
                if failing:
                    failing = False
                    out.append(event("problem", ""))
                for record in reversed(recent):  # oldest first: each new row goes on top
                    if record.running or record.execution_id in shown_ended:
                        continue
                    if record.ended_at is not None and record.ended_at >= opened:
                        shown_ended[record.execution_id] = None
                        out.append(event("ended", templates.text("_ended.html", {"execution": record})))
                while len(shown_ended) > SHOWN_ENDED:
                    del shown_ended[next(iter(shown_ended))]
                if tuple(e.execution_id for e in running) != shown_running:
                    shown_running = tuple(e.execution_id for e in running)
                    out.append(event("executions", templates.text(
                        "_running.html", {"running": running, "csrf": session.csrf})))
                listed = tuple((s.session.id, s.session.state.value) for s in sessions)
                if listed != shown_sessions:
                    shown_sessions = listed
                    out.append(event("sessions", templates.text(
                        "_sessions.html", {"sessions": sessions, "csrf": session.csrf})))
            if out:
                last_sent = time.monotonic()
                yield "".join(out)
            elif time.monotonic() - last_sent >= HEARTBEAT_S:
                last_sent = time.monotonic()
                yield ": still here\n\n"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), POLL_S)
        if not store.alive(session):
            yield event("signin", "")  # the page goes to the sign-in page
    finally:
        session.streams -= 1
