"""The contract every SessionStore and SnapshotStore implementation keeps: SQLite (a file) and PostgreSQL (a
database of the test's own, on the server the tests start)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from sandbox_server.stores.postgres import PostgresDatabase
from sandbox_server.stores.postgres_sessions import (
    PostgresArchiveStore,
    PostgresSessionStore,
    PostgresSnapshotStore,
)
from sandbox_server.stores.sessions import (
    ArchiveStore,
    LocalArchiveStore,
    SessionEnd,
    SessionEvent,
    SessionRecord,
    SessionStore,
    SnapshotRecord,
    SnapshotStore,
)
from sandbox_server.stores.sqlite_sessions import SqliteSessionStore, SqliteSnapshotStore

IMPLEMENTATIONS = ["postgres", "sqlite"]
T0 = 1_700_000_000.0


def _opener(request: pytest.FixtureRequest, tmp_path: Path, sqlite: Callable[[Path], Any],
            postgres: Callable[[PostgresDatabase], Any]) -> Callable[[], Any]:
    """Opens the implementation over one durable backing; opening again (after close) is a restart."""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").create_database()
        return lambda: postgres(PostgresDatabase(url))
    return lambda: sqlite(tmp_path / "sessions.db")


@pytest.fixture(params=IMPLEMENTATIONS)
def open_sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], SessionStore]]:
    opened: list[SessionStore] = []
    make = _opener(request, tmp_path, SqliteSessionStore, lambda db: PostgresSessionStore(db, owns=True))

    def open_one() -> SessionStore:
        opened.append(make())
        return opened[-1]

    try:
        yield open_one
    finally:
        for store in opened:
            store.close()


@pytest.fixture(params=IMPLEMENTATIONS)
def snapshots(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SnapshotStore]:
    store: SnapshotStore = _opener(request, tmp_path, SqliteSnapshotStore,
                                   lambda db: PostgresSnapshotStore(db, owns=True))()
    try:
        yield store
    finally:
        store.close()


def record(session_id: str, tenant: str = "acme", owner: str = "server-a", at: float = T0) -> SessionRecord:
    return SessionRecord(session_id=session_id, tenant=tenant, key_id="k1", owner=owner, backend="nsjail",
                         languages=("python", "bash"), limits=MappingProxyType({"memory_bytes": 1 << 30}),
                         labels=MappingProxyType({"team": "a"}), snapshot_id="", created_at=at)


def event(session_id: str, name: str, at: float = T0, tenant: str = "acme", **detail: str | int) -> SessionEvent:
    return SessionEvent(session_id, tenant, "k1", name, at, MappingProxyType(detail))


def test_a_session_is_recorded_with_its_created_event(open_sessions: Callable[[], SessionStore]) -> None:
    store = open_sessions()
    store.create(record("s1"), event("s1", "created", languages="python,bash"))
    got = store.get("s1")
    assert got is not None
    assert (got.tenant, got.languages, dict(got.limits), dict(got.labels)) == (
        "acme", ("python", "bash"), {"memory_bytes": 1 << 30}, {"team": "a"})
    assert got.closed_at is None
    assert [e.event for e in store.events("s1")] == ["created"]
    assert store.events("s1")[0].detail["languages"] == "python,bash"
    with pytest.raises(ValueError, match="already recorded"):
        store.create(record("s1"), event("s1", "created"))
    assert store.get("nope") is None


def test_ending_a_session_is_once_and_durable(open_sessions: Callable[[], SessionStore]) -> None:
    store = open_sessions()
    store.create(record("s1"), event("s1", "created"))
    store.record_event(event("s1", "uploaded", T0 + 1, path="a.txt", size=3))
    end = SessionEnd(closed_at=T0 + 5, reason="idle_timeout", calls=4, cpu_time_s=1.5, cost=0.25,
                     kernel_restarts=1)
    assert store.end("s1", end, event("s1", "closed", T0 + 5, reason="idle_timeout"))
    assert not store.end("s1", end, event("s1", "closed", T0 + 6, reason="closed"))  # once
    assert not store.end("unknown", end, event("unknown", "closed"))
    store.close()
    again = open_sessions()  # a restart
    got = again.get("s1")
    assert got is not None
    assert (got.closed_at, got.close_reason, got.calls, got.cpu_time_s, got.cost, got.kernel_restarts) == (
        T0 + 5, "idle_timeout", 4, 1.5, 0.25, 1)
    assert [e.event for e in again.events("s1")] == ["created", "uploaded", "closed"]
    assert again.events("s1")[1].detail == {"path": "a.txt", "size": 3}


def test_unknown_events_are_refused(open_sessions: Callable[[], SessionStore]) -> None:
    store = open_sessions()
    store.create(record("s1"), event("s1", "created"))
    with pytest.raises(ValueError, match="unknown session event"):
        store.record_event(event("s1", "exploded"))
    with pytest.raises(ValueError, match="unknown session event"):
        store.create(record("s2"), event("s2", "exploded"))
    assert store.get("s2") is None  # the whole create is refused: no half-written record


def test_list_filters_and_orders(open_sessions: Callable[[], SessionStore]) -> None:
    store = open_sessions()
    for i, tenant in enumerate(("acme", "acme", "other")):
        store.create(record(f"s{i}", tenant=tenant, at=T0 + i), event(f"s{i}", "created", tenant=tenant))
    store.end("s0", SessionEnd(T0 + 9, "closed", 0, 0.0, 0.0, 0), event("s0", "closed"))
    assert [r.session_id for r in store.list()] == ["s2", "s1", "s0"]
    assert [r.session_id for r in store.list(tenant="acme")] == ["s1", "s0"]
    assert [r.session_id for r in store.list(open_only=True)] == ["s2", "s1"]
    assert [r.session_id for r in store.list(limit=1)] == ["s2"]


def test_a_restart_closes_its_own_orphans_only(open_sessions: Callable[[], SessionStore]) -> None:
    store = open_sessions()
    store.create(record("mine"), event("mine", "created"))
    store.create(record("theirs", owner="server-b"), event("theirs", "created"))
    store.create(record("done"), event("done", "created"))
    store.end("done", SessionEnd(T0 + 1, "closed", 0, 0.0, 0.0, 0), event("done", "closed"))
    assert store.close_orphans("server-a", "server_restart", T0 + 10) == ["mine"]
    mine, theirs = store.get("mine"), store.get("theirs")
    assert mine is not None
    assert theirs is not None
    assert (mine.close_reason, mine.closed_at) == ("server_restart", T0 + 10)
    assert theirs.closed_at is None
    assert [e.detail.get("reason") for e in store.events("mine") if e.event == "closed"] == ["server_restart"]
    assert store.close_orphans("server-a", "server_restart", T0 + 11) == []


def test_concurrent_events_are_all_kept(open_sessions: Callable[[], SessionStore]) -> None:
    store = open_sessions()
    store.create(record("s1"), event("s1", "created"))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.record_event(event("s1", "uploaded", T0 + i, n=i)), range(200)))
    assert len(store.events("s1")) == 201


def snap(snapshot_id: str, tenant: str = "acme", at: float = T0) -> SnapshotRecord:
    return SnapshotRecord(snapshot_id=snapshot_id, tenant=tenant, session_id="s1", name="n", created_at=at,
                          size_bytes=10, files=1, skipped=0, file=f"{snapshot_id}.tar", sha256="0" * 64)


def test_snapshots_are_kept_per_tenant_up_to_a_count(snapshots: SnapshotStore) -> None:
    assert snapshots.add(snap("a", at=T0), max_count=2)
    assert snapshots.add(snap("b", at=T0 + 1), max_count=2)
    assert not snapshots.add(snap("c", at=T0 + 2), max_count=2)  # the tenant keeps 2 already
    assert snapshots.add(snap("x", tenant="other"), max_count=2)
    assert snapshots.count("acme") == 2
    assert snapshots.get("c") is None
    got = snapshots.get("a")
    assert got == snap("a", at=T0)
    assert snapshots.delete("a")
    assert not snapshots.delete("a")
    assert snapshots.count("acme") == 1


def test_snapshot_listing_pages_newest_first(snapshots: SnapshotStore) -> None:
    for i in range(5):
        snapshots.add(snap(f"s{i}", at=T0 + i), max_count=10)
    first = snapshots.list("acme", limit=2)
    assert [r.snapshot_id for r in first] == ["s4", "s3"]
    rest = snapshots.list("acme", limit=10, before=(first[-1].created_at, first[-1].snapshot_id))
    assert [r.snapshot_id for r in rest] == ["s2", "s1", "s0"]
    assert snapshots.list("other") == []


# --- the archives' bytes: the data dir, or the shared database ---------------------------------------------------

@pytest.fixture(params=["local", "postgres"])
def archives(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArchiveStore]:
    if request.param == "postgres":
        store = PostgresArchiveStore(PostgresDatabase(request.getfixturevalue("postgres").create_database()),
                                     owns=True)
        try:
            yield store
        finally:
            store.close()
    else:
        (tmp_path / "kept").mkdir()
        yield LocalArchiveStore(tmp_path / "kept")


def test_an_archive_is_kept_fetched_replaced_and_deleted(archives: ArchiveStore, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    big = os.urandom(2 * 1024 * 1024 + 123)  # more than one chunk, not a whole number of them
    for name, content in (("a.tar", big), ("empty.tar", b"")):
        source = tmp_path / f"source-{name}"
        source.write_bytes(content)
        archives.put(name, source)
        with archives.fetched(name, spool) as path:
            assert path is not None
            assert path.read_bytes() == content
    with archives.fetched("missing.tar", spool) as path:
        assert path is None
    replaced = tmp_path / "replaced"
    replaced.write_bytes(b"v2")
    archives.put("a.tar", replaced)
    with archives.fetched("a.tar", spool) as path:
        assert path is not None
        assert path.read_bytes() == b"v2"
    archives.delete("a.tar")
    archives.delete("a.tar")  # idempotent
    with archives.fetched("a.tar", spool) as path:
        assert path is None
    assert not list(spool.iterdir()), "a fetched copy outlived its block"
