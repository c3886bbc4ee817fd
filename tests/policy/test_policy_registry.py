"""PolicyRegistry: atomic swaps, a bad change never replacing a good set, atomic apply, the watcher."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from policy_helpers import dump, tenant_file, write_atomically

from sandbox_server.policy import registry as registry_module
from sandbox_server.policy.loader import PolicyError, PolicyLoadError, PolicySet
from sandbox_server.policy.registry import FILE_CHANGE, PolicyRegistry

POLL_S = 0.02


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(POLL_S)


@pytest.fixture
def registry(policy_dir: Path) -> PolicyRegistry:
    reg = PolicyRegistry(policy_dir, poll_interval_s=POLL_S)
    reg.load()
    return reg


@pytest.fixture
def changes() -> list[PolicySet]:
    return []


@pytest.fixture
def watched(policy_dir: Path, changes: list[PolicySet]) -> PolicyRegistry:
    """A loaded registry whose on_change records every new set (the watcher is started by the test)."""
    reg = PolicyRegistry(policy_dir, on_change=changes.append, poll_interval_s=POLL_S)
    reg.load()
    return reg


# -- loading and reading ----------------------------------------------------------------------------------------


def test_current_before_load_is_an_error(policy_dir: Path) -> None:
    reg = PolicyRegistry(policy_dir)
    with pytest.raises(RuntimeError, match="not loaded"):
        reg.current()


def test_poll_interval_must_be_positive(policy_dir: Path) -> None:
    with pytest.raises(ValueError, match="poll_interval_s"):
        PolicyRegistry(policy_dir, poll_interval_s=0)


def test_load(watched: PolicyRegistry, changes: list[PolicySet]) -> None:
    policies = watched.current()
    assert policies.version == 1
    assert list(policies.tenants) == ["alpha"]
    assert watched.tenant("alpha") is policies.tenants["alpha"]
    assert watched.tenant("nobody") is None
    assert changes == [policies]
    assert [(v, actor) for v, _, actor in watched.versions] == [(1, "initial load")]
    assert watched.last_errors == ()


def test_load_refuses_a_bad_directory(policy_dir: Path) -> None:
    (policy_dir / "b.yaml").write_text("tenants: {beta: {bogus: 1}}\n")
    reg = PolicyRegistry(policy_dir)
    with pytest.raises(PolicyLoadError) as info:
        reg.load()
    assert info.value.errors == (PolicyError("b.yaml", "tenants.beta.bogus", "Extra inputs are not permitted"),)
    with pytest.raises(RuntimeError):
        reg.current()


# -- reload -----------------------------------------------------------------------------------------------------


def test_reload_swaps_a_valid_change(watched: PolicyRegistry, changes: list[PolicySet], policy_dir: Path) -> None:
    old = watched.current()
    (policy_dir / "b.yaml").write_text(tenant_file("beta"))
    new = watched.reload()
    assert (new.version, list(new.tenants)) == (2, ["alpha", "beta"])
    assert watched.current() is new
    assert changes == [old, new]
    assert list(old.tenants) == ["alpha"]  # a reader holding the old set keeps its snapshot
    assert watched.versions[-1][::2] == (2, FILE_CHANGE)


def test_reload_of_unchanged_files_keeps_the_version(watched: PolicyRegistry, policy_dir: Path) -> None:
    before = watched.current()
    os.utime(policy_dir / "a.yaml")
    assert watched.reload() is before
    assert len(watched.versions) == 1


def test_a_bad_change_is_rejected_whole_and_the_old_set_stays(
    watched: PolicyRegistry, changes: list[PolicySet], policy_dir: Path
) -> None:
    old = watched.current()
    (policy_dir / "b.yaml").write_text(tenant_file("beta"))  # valid on its own...
    (policy_dir / "c.yaml").write_text("tenants: {gamma: {languages: [cobol]}}\n")  # ...but this one is not
    with pytest.raises(PolicyLoadError):
        watched.reload()
    assert watched.current() is old
    assert changes == [old]
    assert [(e.file, e.location) for e in watched.last_errors] == [("c.yaml", "tenants.gamma.languages.0")]
    assert watched.last_error_at is not None

    (policy_dir / "c.yaml").write_text(tenant_file("gamma"))
    new = watched.reload()
    assert (new.version, list(new.tenants)) == (2, ["alpha", "beta", "gamma"])
    assert watched.last_errors == ()
    assert watched.last_error_at is None


def test_an_on_change_failure_is_logged_and_does_not_undo_the_swap(
    policy_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(_: PolicySet) -> None:
        raise RuntimeError("store is down")

    reg = PolicyRegistry(policy_dir, on_change=explode)
    with caplog.at_level(logging.ERROR):
        assert reg.load().version == 1
    assert reg.current().version == 1
    assert "on_change callback failed" in caplog.text


def test_versions_are_bounded(watched: PolicyRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "MAX_VERSIONS", 3)
    for i in range(5):
        watched.apply("a.yaml", tenant_file("alpha", description=f"v{i + 2}"), actor=f"admin{i}")
    assert [(v, actor) for v, _, actor in watched.versions] == [(4, "admin2"), (5, "admin3"), (6, "admin4")]


# -- validate and apply -----------------------------------------------------------------------------------------


def test_validate_uses_the_files_on_disk(registry: PolicyRegistry, policy_dir: Path) -> None:
    assert registry.validate("b.yaml", tenant_file("beta")) == []
    assert registry.validate("b.yaml", tenant_file("alpha")) == [
        PolicyError("b.yaml", "tenants.alpha", "tenant 'alpha' is already defined in a.yaml")
    ]
    assert registry.validate("a.yaml", tenant_file("alpha", description="changed")) == []
    assert sorted(p.name for p in policy_dir.iterdir()) == ["a.yaml"]  # nothing written


def test_apply_writes_atomically_and_reloads(
    watched: PolicyRegistry, changes: list[PolicySet], policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        renames.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    text = tenant_file("alpha", description="v2")
    new = watched.apply("a.yaml", text, actor="alice")
    [(src, dst)] = renames
    assert Path(src).parent == policy_dir
    assert Path(src).name.startswith(".a.yaml.")
    assert dst == str(policy_dir / "a.yaml")
    assert (policy_dir / "a.yaml").read_text() == text
    assert stat.S_IMODE((policy_dir / "a.yaml").stat().st_mode) == 0o644
    assert sorted(p.name for p in policy_dir.iterdir()) == ["a.yaml"]
    assert (new.version, new.tenants["alpha"].description, new.sources["a.yaml"]) == (2, "v2", text)
    assert watched.current() is new
    assert changes[-1] is new
    assert watched.versions[-1][::2] == (2, "alice")


def test_apply_adds_a_new_file(registry: PolicyRegistry, policy_dir: Path) -> None:
    new = registry.apply("b.yml", tenant_file("beta"), actor="alice")
    assert list(new.tenants) == ["alpha", "beta"]
    assert (policy_dir / "b.yml").exists()


def test_apply_of_identical_text_changes_nothing(registry: PolicyRegistry, policy_dir: Path) -> None:
    before = registry.current()
    assert registry.apply("a.yaml", (policy_dir / "a.yaml").read_text(), actor="alice") is before


@pytest.mark.parametrize(
    ("name", "text", "location"),
    [
        ("b.yaml", tenant_file("alpha"), "tenants.alpha"),
        ("a.yaml", "tenants: {alpha: {bogus: 1}}\n", "tenants.alpha.bogus"),
        ("a.yaml", "tenants: [\n", "line 2, column 1"),
        ("a.yaml", "tenants: {}\n", ""),
        ("../b.yaml", tenant_file("beta"), ""),
        ("sub/b.yaml", tenant_file("beta"), ""),
        (".b.yaml", tenant_file("beta"), ""),
        ("b.json", tenant_file("beta"), ""),
    ],
)
def test_a_rejected_apply_writes_nothing(
    registry: PolicyRegistry, policy_dir: Path, name: str, text: str, location: str
) -> None:
    before, content = registry.current(), (policy_dir / "a.yaml").read_text()
    with pytest.raises(PolicyLoadError) as info:
        registry.apply(name, text, actor="mallory")
    assert [(e.file, e.location) for e in info.value.errors] == [(name, location)]
    assert sorted(p.name for p in policy_dir.parent.rglob("*")) == ["a.yaml", "policies"]
    assert (policy_dir / "a.yaml").read_text() == content
    assert registry.current() is before
    assert registry.last_errors == ()  # the directory itself is still fine


def test_apply_is_refused_while_another_file_is_broken(registry: PolicyRegistry, policy_dir: Path) -> None:
    (policy_dir / "z.yaml").symlink_to(policy_dir / "a.yaml")
    with pytest.raises(PolicyLoadError) as info:
        registry.apply("b.yaml", tenant_file("beta"), actor="alice")
    assert [e.file for e in info.value.errors] == ["z.yaml"]
    assert not (policy_dir / "b.yaml").exists()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    registry: PolicyRegistry, policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    content = (policy_dir / "a.yaml").read_text()
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        registry.apply("a.yaml", tenant_file("alpha", description="v2"), actor="alice")
    assert sorted(p.name for p in policy_dir.iterdir()) == ["a.yaml"]
    assert (policy_dir / "a.yaml").read_text() == content
    assert registry.current().version == 1


# -- the watcher ------------------------------------------------------------------------------------------------


async def test_the_watcher_keeps_the_old_set_on_a_bad_file_then_takes_the_fix(
    watched: PolicyRegistry, changes: list[PolicySet], policy_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = watched.current()
    caplog.set_level(logging.ERROR, logger=registry_module.__name__)
    await watched.start()
    try:
        write_atomically(policy_dir / "a.yaml", "tenants: {alpha: {ceilings: {memory_bytes: lots}}}\n")
        await wait_until(lambda: bool(watched.last_errors))
        assert watched.current() is old
        [error] = watched.last_errors
        assert (error.file, error.location) == ("a.yaml", "tenants.alpha.ceilings.memory_bytes")
        await asyncio.sleep(10 * POLL_S)  # more polls of the same bad files: logged once, not re-read
        records = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(records) == 1
        assert "a.yaml: tenants.alpha.ceilings.memory_bytes" in records[0].getMessage()
        assert "keeping version 1" in records[0].getMessage()

        write_atomically(policy_dir / "a.yaml", tenant_file("alpha", description="fixed"))
        await wait_until(lambda: watched.current().version == 2)
        assert watched.current().tenants["alpha"].description == "fixed"
        assert watched.last_errors == ()
        assert [c.version for c in changes] == [1, 2]
        assert watched.versions[-1][::2] == (2, FILE_CHANGE)
    finally:
        await watched.aclose()


async def test_the_watcher_sees_added_and_removed_files(watched: PolicyRegistry, policy_dir: Path) -> None:
    async with watched:
        write_atomically(policy_dir / "b.yaml", tenant_file("beta"))
        await wait_until(lambda: "beta" in watched.current().tenants)
        (policy_dir / "b.yaml").unlink()
        await wait_until(lambda: "beta" not in watched.current().tenants)
        assert watched.current().version == 3


async def test_the_watcher_does_not_bump_the_version_after_an_apply(watched: PolicyRegistry) -> None:
    async with watched:
        await asyncio.to_thread(watched.apply, "a.yaml", tenant_file("alpha", description="v2"), "alice")
        await asyncio.sleep(10 * POLL_S)
        assert watched.current().version == 2
        assert [actor for _, _, actor in watched.versions] == ["initial load", "alice"]


async def test_start_and_aclose(registry: PolicyRegistry, policy_dir: Path) -> None:
    with pytest.raises(RuntimeError, match="not loaded"):
        await PolicyRegistry(policy_dir).start()
    await registry.start()
    with pytest.raises(RuntimeError, match="already running"):
        await registry.start()
    await registry.aclose()
    await registry.aclose()  # idempotent
    (policy_dir / "b.yaml").write_text(tenant_file("beta"))
    await asyncio.sleep(5 * POLL_S)
    assert registry.current().version == 1  # stopped means stopped


# -- concurrency ------------------------------------------------------------------------------------------------


def version_text(i: int) -> str:
    """Version i of v.yaml: i % 4 + 1 tenants, all described "v{i}"."""
    return dump({"version": 1, "tenants": {f"t{j}": {"description": f"v{i}"} for j in range(i % 4 + 1)}})


def check_snapshot(snapshot: PolicySet) -> None:
    """One snapshot is exactly one written version: tenants, sources and version agree with each other."""
    mine = {name: t.description for name, t in snapshot.tenants.items() if name != "alpha"}
    assert "alpha" in snapshot.tenants
    if not mine:
        assert "v.yaml" not in snapshot.sources
        return
    [description] = set(mine.values())
    i = int(description.removeprefix("v"))
    assert sorted(mine) == [f"t{j}" for j in range(i % 4 + 1)]
    assert snapshot.sources["v.yaml"] == version_text(i)


async def test_readers_always_see_a_complete_consistent_set(watched: PolicyRegistry) -> None:
    done = threading.Event()
    problems: list[BaseException] = []
    seen_versions: list[int] = []

    def read_in_thread() -> None:
        last = 0
        while not done.is_set():
            snapshot = watched.current()
            try:
                check_snapshot(snapshot)
                assert snapshot.version >= last
            except BaseException as exc:
                problems.append(exc)
                return
            last = snapshot.version
            seen_versions.append(last)
            time.sleep(0.0005)  # a spinning reader would starve the writer of the GIL (convoy effect)

    async def read_in_task() -> None:
        while not done.is_set():
            check_snapshot(watched.current())
            await asyncio.sleep(0.0005)

    def write() -> None:
        for i in range(50):
            new = watched.apply("v.yaml", version_text(i), actor=f"writer{i}")
            check_snapshot(new)

    async with watched:  # the watcher polls (and takes the lock) throughout
        reader = threading.Thread(target=read_in_thread)
        reader.start()
        task = asyncio.create_task(read_in_task())
        try:
            await asyncio.to_thread(write)
        finally:
            done.set()
            reader.join()
            await task
    assert not problems, problems
    assert watched.current().version == 51
    assert len(set(seen_versions)) > 1
    assert [v for v, _, _ in watched.versions] == list(range(1, 52))
