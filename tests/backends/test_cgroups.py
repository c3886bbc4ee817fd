"""Cgroup removal on the real hierarchy: the usual empty cgroup goes with one rmdir per controller; one holding a
child cgroup (nothing in our jails can make one, but a removal must not depend on that) goes deepest first; one
holding a live process stays until the process is gone."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from sandbox_server.backends.cgroups import (
    CgroupLimits,
    CgroupManager,
    CgroupVersion,
    Hierarchy,
    available_memory,
    detect,
    memory_headroom,
)

MIB = 1 << 20


@pytest.fixture
def manager() -> Iterator[CgroupManager]:
    m = CgroupManager(detect(f"sandbox-test-cgroups-{uuid.uuid4().hex[:8]}"))
    m.setup()
    yield m
    m.reap()
    m.remove_parents()


def test_an_empty_cgroup_is_removed(manager: CgroupManager) -> None:
    cg = manager.create("empty", CgroupLimits(64 * MIB, 8, 1.0))
    assert all(d.is_dir() for d in cg.dirs())
    assert cg.try_remove()
    assert not any(d.exists() for d in cg.dirs())
    assert cg.try_remove(), "removing it again is no error"


def test_child_cgroups_are_removed_deepest_first(manager: CgroupManager) -> None:
    cg = manager.create("nested", CgroupLimits(64 * MIB, 8, 1.0))
    for d in cg.dirs():
        (d / "child" / "grandchild").mkdir(parents=True)
    assert cg.try_remove()
    assert not any(d.exists() for d in cg.dirs())


def test_a_cgroup_with_a_process_stays_until_it_is_gone(manager: CgroupManager) -> None:
    cg = manager.create("busy", CgroupLimits(64 * MIB, 8, 1.0))
    joins = " ".join(f"echo $$ > {f};" for f in cg.procs_files())
    proc = subprocess.Popen(["/bin/sh", "-c", f"{joins} exec sleep 30"])
    try:
        for _ in range(100):
            if cg.pids():
                break
            time.sleep(0.02)
        assert cg.pids() == {proc.pid}
        assert not cg.try_remove()
        assert all(d.is_dir() for d in cg.dirs())
    finally:
        proc.kill()
        proc.wait()
    for _ in range(200):
        if cg.try_remove():
            break
        time.sleep(0.01)
    assert not any(d.exists() for d in cg.dirs())


def _tree(root: Path, version: CgroupVersion, limits: dict[str, tuple[str, int]]) -> Hierarchy:
    """A cgroup hierarchy's files as the kernel shows them, for memory_headroom: ``root/mnt`` is the mount (the
    root cgroup, no limit file on v2), ``limits`` maps a path below it to (limit as the kernel writes it, usage).
    Our parent is ``mnt/pod/server/sandbox``, not made yet (its ancestors still count)."""
    mount = root / "mnt"
    for d in (mount, mount / "pod", mount / "pod" / "server"):
        d.mkdir(parents=True)
        (d / "cgroup.procs").write_text("")
    if version is CgroupVersion.V1:
        (mount / "memory.limit_in_bytes").write_text(f"{2**63 - 4096}\n")  # the root: no limit
        (mount / "memory.usage_in_bytes").write_text("123456789\n")
    for path, (limit, used) in limits.items():
        names = ("memory.max", "memory.current") if version is CgroupVersion.V2 else (
            "memory.limit_in_bytes", "memory.usage_in_bytes")
        (mount / path / names[0]).write_text(f"{limit}\n")
        (mount / path / names[1]).write_text(f"{used}\n")
    return Hierarchy(version, {"memory": mount / "pod" / "server" / "sandbox"})


@pytest.mark.parametrize("version", list(CgroupVersion))
def test_memory_headroom_is_the_tightest_limit_above_our_parent(tmp_path: Path, version: CgroupVersion) -> None:
    gib = 1 << 30
    no_limit = "max" if version is CgroupVersion.V2 else str(2**63 - 4096)
    hierarchy = _tree(tmp_path, version, {"pod": (str(4 * gib), 3 * gib), "pod/server": (str(2 * gib), gib // 2)})
    # The pod has 1 GiB left under its 4 GiB; the server's cgroup 1.5 GiB under its 2: the pod's is tighter.
    assert memory_headroom(hierarchy) == (gib, 4 * gib)
    assert memory_headroom(_tree(tmp_path / "b", version, {"pod": (no_limit, gib)})) is None
    over = _tree(tmp_path / "c", version, {"pod/server": (str(gib), 2 * gib)})  # usage past the limit: none left
    assert memory_headroom(over) == (0, gib)
    available, total = available_memory(hierarchy)
    assert (available, total) == (gib, 4 * gib)  # this host has more than that
    assert available_memory(None)[1] == psutil.virtual_memory().total


def test_memory_headroom_looks_no_higher_than_the_mount(tmp_path: Path) -> None:
    """A directory above the mount (no cgroup.procs) is not a cgroup, whatever files it holds."""
    hierarchy = _tree(tmp_path, CgroupVersion.V2, {})
    (tmp_path / "memory.max").write_text("1\n")
    (tmp_path / "memory.current").write_text("0\n")
    assert memory_headroom(hierarchy) is None
