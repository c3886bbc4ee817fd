"""PolicySync: servers sharing one version history (SQLite or PostgreSQL) run one policy.

Each "server" here is a PolicyRegistry over its own policy directory and its own store connection, as replicas
are; the background loop is tested once, the rest drives ``poll_once`` directly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import yaml
from store_backings import Backing

from sandbox_server.policy.loader import PolicyLoadError
from sandbox_server.policy.registry import PolicyRegistry
from sandbox_server.policy.replicas import PolicySync


def tenant_file(*names: str, description: str = "") -> str:
    return yaml.safe_dump({"version": 1, "tenants": {n: {"description": description} for n in names}})


def server(backing: Backing, root: Path, name: str, files: dict[str, str]) -> tuple[PolicyRegistry, PolicySync]:
    directory = root / name
    directory.mkdir()
    for file_name, text in files.items():
        (directory / file_name).write_text(text)
    registry = PolicyRegistry(directory)
    sync = PolicySync(registry, backing.versions())
    sync.load()
    return registry, sync


def files_in(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir()) if not p.name.startswith(".")}


def test_the_first_server_records_its_directory_and_the_next_ones_take_it(backing: Backing, tmp_path: Path) -> None:
    a, _ = server(backing, tmp_path, "a", {"a.yaml": tenant_file("alpha", description="a")})
    b, _ = server(backing, tmp_path, "b", {"b.yaml": tenant_file("beta"), "old.yml": tenant_file("gamma")})
    assert a.current().version == b.current().version == 1
    assert dict(b.current().sources) == dict(a.current().sources) == {"a.yaml": tenant_file("alpha", description="a")}
    # The second server's own files are replaced by the recorded ones, so its watcher sees what it runs.
    assert files_in(b.directory) == {"a.yaml": tenant_file("alpha", description="a")}
    recorded = backing.versions().list()
    assert [v.version for v in recorded] == [1]


def test_a_change_on_one_server_is_recorded_once_and_taken_by_the_others(backing: Backing, tmp_path: Path) -> None:
    a, _ = server(backing, tmp_path, "a", {"a.yaml": tenant_file("alpha")})
    b, b_sync = server(backing, tmp_path, "b", {})
    c, c_sync = server(backing, tmp_path, "c", {})
    applied = a.apply("t.yaml", tenant_file("tau", description="new"), actor="admin-key-1")
    assert applied.version == 2
    assert b_sync.poll_once() is not None
    assert c_sync.poll_once() is not None
    for other in (b, c):
        assert other.current().version == 2
        assert set(other.current().tenants) == {"alpha", "tau"}
        assert files_in(other.directory) == files_in(a.directory)
    assert b_sync.poll_once() is None  # nothing newer
    # An edit of another server's directory is a change like any other: numbered 3 and taken by the first.
    (c.directory / "a.yaml").unlink()
    assert c.poll_once() is not None
    assert c.current().version == 3
    versions = backing.versions()
    assert [(v.version, v.actor) for v in versions.list()] == [(3, "file change"), (2, "admin-key-1"),
                                                               (1, "initial load")]
    assert b_sync.poll_once() is not None
    assert set(b.current().tenants) == {"tau"}
    assert not (b.directory / "a.yaml").exists()


def test_the_same_change_on_two_servers_is_one_version(backing: Backing, tmp_path: Path) -> None:
    a, _ = server(backing, tmp_path, "a", {"a.yaml": tenant_file("alpha")})
    b, _ = server(backing, tmp_path, "b", {})
    # A deployment tool writes the same file on every server before any has polled the other's change.
    assert a.apply("z.yaml", tenant_file("zeta"), actor="deploy").version == 2
    assert b.apply("z.yaml", tenant_file("zeta"), actor="deploy").version == 2
    assert [v.version for v in backing.versions().list()] == [2, 1]


def test_changes_racing_on_two_servers_get_distinct_numbers_and_all_end_on_the_latest(
    backing: Backing, tmp_path: Path,
) -> None:
    a, a_sync = server(backing, tmp_path, "a", {"a.yaml": tenant_file("alpha")})
    b, b_sync = server(backing, tmp_path, "b", {})
    start = threading.Barrier(2)
    got: dict[str, int] = {}

    def change(registry: PolicyRegistry, name: str) -> None:
        start.wait()
        got[name] = registry.apply(f"{name}.yaml", tenant_file(name), actor=name).version

    threads = [threading.Thread(target=change, args=(a, "one")), threading.Thread(target=change, args=(b, "two"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got.values()) == [2, 3]
    a_sync.poll_once()
    b_sync.poll_once()
    latest = backing.versions().get(3)
    assert latest is not None
    assert a.current().version == b.current().version == 3
    assert dict(a.current().sources) == dict(b.current().sources) == dict(latest.texts)


def test_a_recorded_version_that_does_not_validate_here_is_refused_whole(backing: Backing, tmp_path: Path) -> None:
    a, a_sync = server(backing, tmp_path, "a", {"a.yaml": tenant_file("alpha")})
    store = backing.versions()
    store.record(2, {"a.yaml": "tenants: [not, a, mapping]\n"}, "someone")
    assert a_sync.poll_once() is None
    assert a.current().version == 1
    assert files_in(a.directory) == {"a.yaml": tenant_file("alpha")}
    # A name that is not a plain policy file name is never used as a path.
    store.record(3, {"../escaped.yaml": tenant_file("x")}, "someone")
    assert a_sync.poll_once() is None
    assert not (tmp_path / "escaped.yaml").exists()
    assert a.current().version == 1
    with pytest.raises(PolicyLoadError):
        a.adopt(3, {"../escaped.yaml": tenant_file("x")}, "someone")
    # A later good version is taken as usual.
    store.record(4, {"b.yaml": tenant_file("beta")}, "someone")
    assert a_sync.poll_once() is not None
    assert a.current().version == 4


def test_a_server_started_later_starts_on_the_latest_version_not_its_own_files(
    backing: Backing, tmp_path: Path,
) -> None:
    a, _ = server(backing, tmp_path, "a", {"a.yaml": tenant_file("alpha")})
    a.apply("t.yaml", tenant_file("tau"), actor="admin")
    # A fresh server (a new pod, its directory seeded with the defaults) must not bring the old policy back.
    late, _ = server(backing, tmp_path, "late", {"a.yaml": tenant_file("alpha", description="stale")})
    assert late.current().version == 2
    assert dict(late.current().sources) == dict(a.current().sources)
    assert [v.version for v in backing.versions().list()] == [2, 1]


async def test_the_sync_loop_takes_a_change_within_a_second(backing: Backing, tmp_path: Path) -> None:
    a, _ = server(backing, tmp_path, "a", {"a.yaml": tenant_file("alpha")})
    b, b_sync = server(backing, tmp_path, "b", {})
    await b_sync.start()
    try:
        await asyncio.to_thread(a.apply, "t.yaml", tenant_file("tau"), "admin")
        applied = time.monotonic()
        while b.current().version != 2:
            assert time.monotonic() - applied < 1.0, "not live on the other server within a second"
            await asyncio.sleep(0.02)
    finally:
        await b_sync.aclose()
