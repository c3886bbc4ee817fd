"""Cgroup removal on the real hierarchy: the usual empty cgroup goes with one rmdir per controller; one holding a
child cgroup (nothing in our jails can make one, but a removal must not depend on that) goes deepest first; one
holding a live process stays until the process is gone."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from sandbox_server.backends.cgroups import CgroupLimits, CgroupManager, detect

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
