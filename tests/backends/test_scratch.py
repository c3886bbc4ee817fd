"""Scratch tmpfs on the real kernel, both kinds: mounted under the state dir (cold jails bind the path) and
detached (fsmount: a warm sandbox's PID 1 attaches it). Files go in and come back through an fd of the root,
never through a link the sandbox could plant; a detached one never appears in the server's mount table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox_server.backends.scratch import DetachedScratch, Scratch, ScratchManager
from sandbox_server.execution.runtimes import find_runtime
from sandbox_server.execution.spec import ExecutionSpec, InputFile, Limits
from sandbox_server.settings import Settings

UID = GID = 65534


def _spec(files: tuple[InputFile, ...] = ()) -> ExecutionSpec:
    runtime = find_runtime("python")
    assert runtime is not None
    limits = Limits(**Settings().defaults.model_dump())
    return ExecutionSpec("e1", runtime, b"print(1)\n", b"", files, (), limits, 1.0, 16, 1 << 20)


@pytest.fixture
def manager(tmp_path: Path) -> ScratchManager:
    m = ScratchManager(tmp_path / "scratch", UID, GID)
    m.setup()
    return m


def _mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


@pytest.mark.parametrize("kind", ["path", "detached"])
def test_files_go_in_and_come_back_through_the_root(manager: ScratchManager, kind: str) -> None:
    scratch: Scratch = (manager.create("e1", 1 << 20) if kind == "path" else manager.create_detached(1 << 20))
    try:
        manager.populate(scratch, _spec((InputFile("data/in.txt", b"abc"),)))
        if isinstance(scratch, DetachedScratch):
            root = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=scratch.fd)
        else:
            root = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
        try:
            st = os.stat("main.py", dir_fd=root)
            assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (UID, GID, 0o644)
            assert os.stat("data", dir_fd=root).st_uid == UID
            # what a program would leave: an output file, and a link to a host file that must not be followed
            out = os.open("out.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=root)
            os.write(out, b"result")
            os.close(out)
            os.symlink("/etc/hostname", "link.txt", dir_fd=root)
        finally:
            os.close(root)
        collected = manager.collect(scratch, _spec())
        files = {f.path: f.content for f in collected.files}
        assert files["out.txt"] == b"result"
        assert files["data/in.txt"] == b"abc"
        assert "link.txt" not in files
    finally:
        manager.destroy(scratch)


def test_a_detached_scratch_is_in_no_mount_table_and_is_freed(manager: ScratchManager) -> None:
    scratch = manager.create_detached(1 << 20)
    # Its own device, looked for in the mount table: other tests running beside this one mount scratches of
    # their own, so a count of sandbox-scratch lines is not this one's to judge.
    dev = os.fstat(scratch.fd).st_dev
    device = f"{os.major(dev)}:{os.minor(dev)}"
    assert [line for line in _mounts().splitlines() if line.split()[2] == device] == []
    assert not any(manager.root.iterdir())
    fd = scratch.fd
    manager.destroy(scratch)
    assert scratch.fd == -1
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # closed: the tmpfs goes with its last fd
    manager.destroy(scratch)  # idempotent


def test_the_size_cap_is_the_kernels(manager: ScratchManager) -> None:
    scratch = manager.create_detached(64 * 1024)
    try:
        with pytest.raises(OSError, match="No space left"):
            manager.populate(scratch, _spec((InputFile("big.bin", b"x" * (256 * 1024)),)))
    finally:
        manager.destroy(scratch)
