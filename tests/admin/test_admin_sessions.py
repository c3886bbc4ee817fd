"""The Admin service's session calls (``AdminClient.list_sessions``, ``get_session``, ``close_session``) through
a real server with real sessions (nsjail, API keys required: serve_ops of test_admin_ops.py).

One server serves the whole module (a session starts in about a second; the server, not much more). Every test
closes the sessions it opens, so each starts with no live session (checked by the module's teardown); closed
ones pile up in the session records, so tests look for their own there rather than compare whole lists.
``acme_session`` and ``NEVER_EXISTED`` are shared with test_admin_sessions_cli.py.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import grpc
import pytest
from test_admin_ops import OpsServer, poll, serve_ops

from sandbox_client import (
    ExecutionResult,
    InvalidRequestError,
    Limits,
    PermissionDeniedError,
    Session,
    SessionNotFoundError,
    SessionState,
    Status,
    UnavailableError,
)
from sandbox_client.admin import AdminClient, AdminSession, NotFoundError, SessionEvent

NEVER_EXISTED = "ses_" + "a" * 32
"""A well-formed session id that no session has."""
SLEEP = "import time\ntime.sleep(60)\n"


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsServer]:
    with serve_ops(tmp_path_factory.mktemp("admin-sessions")) as server:
        yield server


@pytest.fixture(scope="module")
def ops_admin(ops: OpsServer) -> Iterator[AdminClient]:
    with ops.admin() as client:
        yield client
        assert client.list_sessions() == (), "a test left a session open"


@contextlib.contextmanager
def acme_session(ops: OpsServer, **labels: str) -> Iterator[Session]:
    """A session of tenant acme for the block, closed at its end (unless it is gone already)."""
    with ops.sandbox("acme") as sbx, sbx.session(labels=labels or None, idle_timeout_s=600) as session:
        yield session


@contextlib.contextmanager
def running_in(session: Session, code: str) -> Iterator[Callable[[], ExecutionResult]]:
    """Run ``code`` in ``session`` on a thread; the block gets a function that waits for its result."""
    box: dict[str, ExecutionResult | BaseException] = {}

    def run() -> None:
        try:
            box["result"] = session.run(code, limits=Limits(wall_time_s=60))
        except BaseException as exc:  # handed to the test thread
            box["result"] = exc

    thread = threading.Thread(target=run, name="session-call")
    thread.start()

    def result() -> ExecutionResult:
        thread.join(timeout=90)
        assert not thread.is_alive(), "the call did not end"
        outcome = box["result"]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    try:
        yield result
    finally:
        thread.join(timeout=90)


def tenant_key_id(admin: AdminClient, tenant: str) -> str:
    [key] = [k for k in admin.list_api_keys(tenant) if k.role == "tenant"]
    return key.key_id


@pytest.fixture
def acme(ops: OpsServer) -> Iterator[Session]:
    with acme_session(ops, job="nightly") as session:
        yield session


# --- list ------------------------------------------------------------------------------------------------------


def test_list_shows_the_live_sessions_of_every_tenant(ops: OpsServer, ops_admin: AdminClient, acme: Session) -> None:
    assert acme.run("x = 41").status is Status.OK
    with ops.sandbox("globex") as globex_client, globex_client.session() as globex:
        listed = ops_admin.list_sessions()
        assert [s.session.id for s in listed] == [acme.id, globex.id]  # oldest first
        assert [s.tenant for s in listed] == ["acme", "globex"]
        assert all(isinstance(s, AdminSession) for s in listed)

        [mine] = ops_admin.list_sessions(tenant="acme")
        assert mine.session.id == acme.id
        assert mine.key_id == tenant_key_id(ops_admin, "acme")
        assert mine.events == ()  # only get_session fills them
        info = mine.session
        assert info.state is SessionState.READY
        assert info.close_reason == ""
        assert info.closed_at is None
        assert info.expires_at is not None
        assert info.expires_at > datetime.now(UTC)
        assert info.created_at <= info.last_used_at
        assert info.labels == {"job": "nightly"}
        assert info.idle_timeout_s == 600
        assert info.languages == ("python",)
        assert info.usage.calls == 1
        assert info.usage.memory_bytes > 0
        assert info.limits == acme.info.limits
        assert info.backend == acme.info.backend

        assert [s.session.id for s in ops_admin.list_sessions(tenant="globex")] == [globex.id]
        assert [s.session.id for s in ops_admin.list_sessions(limit=1)] == [acme.id]
        assert ops_admin.list_sessions(tenant="initech") == ()
    # globex's session closed with its block: no longer listed.
    assert [s.session.id for s in ops_admin.list_sessions()] == [acme.id]


def test_include_closed_lists_closed_sessions_with_their_close_reason(
    ops: OpsServer, ops_admin: AdminClient, acme: Session
) -> None:
    with ops.sandbox("acme") as sbx:
        done = sbx.session()
        assert done.run("1 + 1").value == "2"
        final = done.close()
    assert final is not None
    assert final.close_reason == "closed"

    assert [s.session.id for s in ops_admin.list_sessions(tenant="acme")] == [acme.id]  # live only
    listed = ops_admin.list_sessions(tenant="acme", include_closed=True)
    assert listed[0].session.id == acme.id  # the live ones first
    [closed] = [s for s in listed if s.session.id == done.id]
    assert closed.tenant == "acme"
    assert closed.key_id == tenant_key_id(ops_admin, "acme")
    assert closed.session.state is SessionState.CLOSED
    assert closed.session.close_reason == "closed"
    assert closed.session.closed_at is not None
    assert closed.session.closed_at >= closed.session.created_at
    assert closed.session.expires_at is None
    assert closed.session.usage.calls == 1
    assert closed.session.limits == final.limits
    assert closed.session.languages == final.languages
    assert all(s.tenant == "acme" for s in listed)  # no other tenant's, live or closed
    assert [s.session.id for s in ops_admin.list_sessions(tenant="acme", include_closed=True, limit=1)] == [acme.id]


# --- get -------------------------------------------------------------------------------------------------------


def test_get_session_shows_its_lifecycle_events_in_order(ops: OpsServer, ops_admin: AdminClient) -> None:
    with ops.sandbox("acme") as sbx:
        session = sbx.session()
        try:
            session.files.upload("data.csv", b"a,b\n1,2\n")
            live = ops_admin.get_session(session.id)
            assert live.tenant == "acme"
            assert live.session.state is SessionState.READY
            assert [e.event for e in live.events] == ["created", "uploaded"]
            assert live.events[1].detail["path"] == "data.csv"
            assert live.events[1].detail["size"] == "8"
        finally:
            session.close()

    shown = ops_admin.get_session(session.id)
    assert shown.tenant == "acme"
    assert shown.key_id == tenant_key_id(ops_admin, "acme")
    assert shown.session.id == session.id
    assert shown.session.state is SessionState.CLOSED
    assert shown.session.close_reason == "closed"
    assert [e.event for e in shown.events] == ["created", "uploaded", "closed"]
    assert shown.events[-1].detail["reason"] == "closed"
    assert shown.events[0].detail["languages"] == "python"
    assert all(isinstance(e, SessionEvent) for e in shown.events)
    times = [e.at for e in shown.events]
    assert times == sorted(times)
    assert all(t.tzinfo is not None for t in times)
    assert shown.session.created_at <= times[0]
    assert shown.events[:2] == live.events  # the trail only grows
    assert hash(shown.events[0])  # frozen all the way down


# --- close -----------------------------------------------------------------------------------------------------


def test_close_session_closes_a_live_one_for_good(ops: OpsServer, ops_admin: AdminClient, acme: Session) -> None:
    assert acme.run("x = 1").status is Status.OK
    closed = ops_admin.close_session(acme.id)
    assert closed.tenant == "acme"
    assert closed.session.id == acme.id
    assert closed.session.state is SessionState.CLOSED
    assert closed.session.close_reason == "admin"
    assert closed.session.closed_at is not None
    assert closed.session.expires_at is None
    assert closed.session.usage.calls == 1

    with pytest.raises(SessionNotFoundError) as gone:
        acme.run("x")
    assert gone.value.close_reason == "admin"
    assert gone.value.session_id == acme.id
    assert acme.close() is None  # the tenant's own close: already gone

    assert ops_admin.list_sessions(tenant="acme") == ()
    shown = ops_admin.get_session(acme.id)
    assert shown.session.close_reason == "admin"
    assert [e.event for e in shown.events] == ["created", "closed"]
    assert shown.events[-1].detail["reason"] == "admin"
    [listed] = [s for s in ops_admin.list_sessions(tenant="acme", include_closed=True) if s.session.id == acme.id]
    assert listed.session.close_reason == "admin"

    with pytest.raises(NotFoundError) as again:  # closed already: nothing to close
        ops_admin.close_session(acme.id)
    assert again.value.code is grpc.StatusCode.NOT_FOUND
    assert again.value.resource_name == acme.id


def test_close_session_kills_a_running_call(ops: OpsServer, ops_admin: AdminClient, acme: Session) -> None:
    with running_in(acme, SLEEP) as result:
        [running] = poll("the call to be running",
                         lambda: ops_admin.list_executions(running_only=True, session_id=acme.id) or None)
        assert ops_admin.get_session(acme.id).session.state is SessionState.BUSY
        assert ops_admin.close_session(acme.id).session.close_reason == "admin"
        outcome = result()
    assert outcome.execution_id == running.execution_id
    assert outcome.status is Status.KILLED
    assert outcome.message == "the session was closed while this call ran (admin)"
    poll("the call's audit record", lambda: True if ops_admin.get_execution(running.execution_id).outcome == "KILLED"
         else None)


# --- errors and access -----------------------------------------------------------------------------------------


def test_unknown_ids_are_not_found(ops_admin: AdminClient) -> None:
    calls: list[tuple[Callable[[str], AdminSession], str]] = [
        (ops_admin.get_session, NEVER_EXISTED),
        (ops_admin.close_session, NEVER_EXISTED),
        (ops_admin.get_session, "nope"),  # not even a session id's shape
        (ops_admin.close_session, "nope"),
    ]
    for call, session_id in calls:
        with pytest.raises(NotFoundError) as missing:
            call(session_id)
        assert missing.value.code is grpc.StatusCode.NOT_FOUND
        assert missing.value.resource_type == "session"
        assert missing.value.resource_name == session_id


def test_bad_requests_are_invalid_argument(ops_admin: AdminClient) -> None:
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: ops_admin.list_sessions(limit=1001), "limit"),
        (lambda: ops_admin.list_sessions(limit=-1), "limit"),
        (lambda: ops_admin.list_sessions("x" * 500), "tenant"),
        (lambda: ops_admin.get_session(""), "session_id"),
        (lambda: ops_admin.close_session(""), "session_id"),
        (lambda: ops_admin.get_session("s" * 500), "session_id"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidRequestError) as refused:
            call()
        assert [v.field for v in refused.value.field_violations] == [field]
    assert ops_admin.list_sessions(limit=1000) == ()  # the bounds themselves are fine


def test_a_tenant_key_may_not_use_them(ops: OpsServer, acme: Session) -> None:
    with AdminClient(ops.target, api_key=ops.keys["acme"]) as tenant:
        for call in (
            tenant.list_sessions,
            lambda: tenant.list_sessions("acme", include_closed=True),
            lambda: tenant.get_session(acme.id),
            lambda: tenant.close_session(acme.id),
        ):
            with pytest.raises(PermissionDeniedError):
                call()
    assert acme.run("1").status is Status.OK  # still live


def test_without_sessions_they_are_unavailable(admin: AdminClient) -> None:
    """A server built for policies and keys alone (conftest's ``admin``: no Operations, so no sessions) answers
    UNAVAILABLE, not UNIMPLEMENTED."""
    for call in (
        admin.list_sessions,
        lambda: admin.get_session(NEVER_EXISTED),
        lambda: admin.close_session(NEVER_EXISTED),
    ):
        with pytest.raises(UnavailableError) as unavailable:
            call()
        assert unavailable.value.retry_after is not None
