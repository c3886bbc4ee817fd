"""Private scratch directories: one fresh size-capped tmpfs per execution, made by the server.

A tmpfs of its own per execution gives three guarantees for free: the size cap is the kernel's, a hard link
inside it can only point at another file of the same execution (links never cross file systems), and cleanup
is one lazy unmount (or closing the last fd of it), never a walk that could follow something the sandbox planted.

Two kinds: mounted under ``<state_dir>/scratch/<name>`` (a cold jail and a session's jail bind that path), or
detached (``create_detached``: fsopen/fsmount, in no mount namespace at all until the warm sandbox's PID 1 moves
it to /work in its own). A detached one never touches the server's mount table: no mkdir, mount, umount or
rmdir per execution, and it is gone when the sandbox's namespace and the server's fd are.

Reading output files never follows a path the sandbox could have planted: every open is relative to a
directory fd, with O_NOFOLLOW, O_NONBLOCK (a FIFO cannot block us), and only regular, singly-linked files on
the scratch file system itself are read.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sandbox_server.backends.zygote import MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, syscall
from sandbox_server.execution.output import select_outputs
from sandbox_server.execution.spec import ExecutionSpec, OutputFile

log = logging.getLogger(__name__)

MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_DETACH = 0x2
# Stops a program from exhausting the server's patience with millions of tiny files.
MAX_SCAN_ENTRIES = 10_000
MAX_SCAN_DEPTH = 16
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The new mount API (Linux 5.2), for a detached scratch
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(eq=False)
class DetachedScratch:
    """A scratch tmpfs in no mount namespace: ``fd`` is its root (as open_tree or fsmount give it), for reads,
    writes and move_mount; closing the last fd of it (ours, and the sandbox's mount) frees it."""

    fd: int

    def __str__(self) -> str:
        return f"detached scratch (fd {self.fd})"


Scratch = Path | DetachedScratch


def _mount(source: str, target: Path, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode(), bytes(target), fstype.encode(), flags, data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def _umount_detach(target: Path) -> None:
    if _libc.umount2(bytes(target), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not a mount point (already gone)
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


@dataclass(frozen=True)
class CollectedFiles:
    files: tuple[OutputFile, ...]
    truncated: bool


class ScratchManager:
    """Owns ``<state_dir>/scratch``: creates, fills, reads back and destroys per-execution tmpfs mounts."""

    def __init__(self, root: Path, uid: int, gid: int) -> None:
        self.root = root
        self.uid = uid
        self.gid = gid

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o711)  # noqa: S103 - the sandbox user must traverse it to reach its bind source; not list it
        os.chown(self.root, 0, 0)

    def _options(self, size_bytes: int) -> dict[str, str]:
        inodes = max(1024, min(size_bytes // 4096, 1 << 20))
        return {"size": str(size_bytes), "nr_inodes": str(inodes), "mode": "0700", "uid": str(self.uid),
                "gid": str(self.gid)}

    def create(self, name: str, size_bytes: int) -> Path:
        """Mount a fresh tmpfs for one execution; raise OSError (nothing left behind) on failure."""
        path = self.root / name
        path.mkdir(mode=0o700)
        opts = ",".join(f"{key}={value}" for key, value in self._options(size_bytes).items())
        try:
            _mount("sandbox-scratch", path, "tmpfs", MS_NOSUID | MS_NODEV, opts)
        except OSError:
            path.rmdir()
            raise
        return path

    def create_detached(self, size_bytes: int) -> DetachedScratch:
        """A fresh tmpfs mounted nowhere (fsopen, fsconfig, fsmount); raise OSError (nothing left) on failure."""
        fs = syscall("fsopen", b"tmpfs", FSOPEN_CLOEXEC)
        try:
            syscall("fsconfig", fs, FSCONFIG_SET_STRING, b"source", b"sandbox-scratch", 0)
            for key, value in self._options(size_bytes).items():
                syscall("fsconfig", fs, FSCONFIG_SET_STRING, key.encode(), value.encode(), 0)
            syscall("fsconfig", fs, FSCONFIG_CMD_CREATE, None, None, 0)
            return DetachedScratch(syscall("fsmount", fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV))
        finally:
            os.close(fs)

    def populate(self, scratch: Scratch, spec: ExecutionSpec) -> None:
        """Write the code and input files into a fresh scratch (nothing else has touched it yet)."""
        with _root(scratch) as root_fd:
            self._write(root_fd, spec.runtime.file_name, spec.code)
            for f in spec.files:
                self._write(root_fd, f.path, f.content)

    def _write(self, root_fd: int, rel: str, content: bytes) -> None:
        *dirs, name = rel.split("/")
        opened: list[int] = []
        dir_fd = root_fd
        try:
            for part in dirs:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=dir_fd)
                    os.chown(part, self.uid, self.gid, dir_fd=dir_fd, follow_symlinks=False)
                dir_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
                opened.append(dir_fd)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=dir_fd)
            try:
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view):]
                os.fchown(fd, self.uid, self.gid)
            finally:
                os.close(fd)
        finally:
            for fd in opened:
                os.close(fd)

    def collect(self, scratch: Scratch, spec: ExecutionSpec) -> CollectedFiles:
        """Read back the regular files the program left (see select_outputs for which, and how many)."""
        with _root(scratch) as top:
            root_fd = os.open(".", _DIR_FLAGS, dir_fd=top)
        try:
            dev = os.fstat(root_fd).st_dev
            found, scan_truncated = _scan(root_fd)

            def reader(rel: str) -> Callable[[int], bytes | None]:
                return lambda limit: _read_regular(root_fd, rel, dev, limit)

            files, truncated = select_outputs(((rel, size, reader(rel)) for rel, size in found), spec)
        finally:
            os.close(root_fd)
        return CollectedFiles(files=files, truncated=truncated or scan_truncated)

    def destroy(self, scratch: Scratch) -> None:
        """Lazily unmount and remove one scratch dir, or let go of a detached one; never walks its contents."""
        if isinstance(scratch, DetachedScratch):
            if scratch.fd >= 0:
                fd, scratch.fd = scratch.fd, -1
                os.close(fd)
            return
        _umount_detach(scratch)
        with contextlib.suppress(FileNotFoundError):
            scratch.rmdir()

    def reap(self) -> int:
        """Destroy every scratch dir left by a previous run; return how many."""
        count = 0
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self.root.iterdir()):
                try:
                    self.destroy(path)
                    count += 1
                except OSError as exc:
                    log.error("could not remove leftover scratch dir %s: %s", path, exc)
        return count


@contextlib.contextmanager
def _root(scratch: Scratch) -> Iterator[int]:
    """An fd of the scratch's root: a detached one's own, or a path's, opened without following a link."""
    if isinstance(scratch, DetachedScratch):
        yield scratch.fd
        return
    fd = os.open(scratch, _PATH_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def _scan(root_fd: int) -> tuple[list[tuple[str, int]], bool]:
    """(relative path, size) of every regular file under root_fd, never following links; bounded walk."""
    found: list[tuple[str, int]] = []
    truncated = False
    scanned = 0
    stack: list[tuple[int, str, int]] = [(os.dup(root_fd), "", 0)]
    try:
        while stack:
            dir_fd, prefix, depth = stack.pop()
            try:
                with os.scandir(dir_fd) as it:
                    for entry in it:
                        scanned += 1
                        if scanned > MAX_SCAN_ENTRIES:
                            return found, True
                        st = entry.stat(follow_symlinks=False)
                        if stat.S_ISDIR(st.st_mode):
                            if depth + 1 > MAX_SCAN_DEPTH:
                                truncated = True
                                continue
                            with contextlib.suppress(OSError):
                                sub = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
                                stack.append((sub, prefix + entry.name + "/", depth + 1))
                        elif stat.S_ISREG(st.st_mode):
                            found.append((prefix + entry.name, st.st_size))
            finally:
                os.close(dir_fd)
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    return found, truncated


def _read_regular(root_fd: int, rel: str, dev: int, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of a regular, singly-linked file on ``dev``, opened one component at a time
    with O_NOFOLLOW from ``root_fd``; None for anything else (link, FIFO, device, gone)."""
    parts = rel.split("/")
    fds: list[int] = []
    try:
        dir_fd = root_fd
        for part in parts[:-1]:
            dir_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            fds.append(dir_fd)
        fd = os.open(parts[-1], _READ_FLAGS, dir_fd=dir_fd)
        fds.append(fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_dev != dev:
            return None
        chunks: list[bytes] = []
        want = max(0, limit)
        while want > 0:
            chunk = os.read(fd, min(want, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            want -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        for fd in fds:
            os.close(fd)
