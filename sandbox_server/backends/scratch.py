"""Private scratch directories: one fresh size-capped tmpfs per execution, mounted by the server.

A tmpfs of its own per execution gives three guarantees for free: the size cap is the kernel's, a hard link
inside it can only point at another file of the same execution (links never cross file systems), and cleanup
is one lazy unmount, never a walk that could follow something the sandbox planted.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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

_libc = ctypes.CDLL(None, use_errno=True)


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

    def create(self, name: str, size_bytes: int) -> Path:
        """Mount a fresh tmpfs for one execution; raise OSError (nothing left behind) on failure."""
        path = self.root / name
        path.mkdir(mode=0o700)
        inodes = max(1024, min(size_bytes // 4096, 1 << 20))
        opts = f"size={size_bytes},nr_inodes={inodes},mode=0700,uid={self.uid},gid={self.gid}"
        try:
            _mount("sandbox-scratch", path, "tmpfs", MS_NOSUID | MS_NODEV, opts)
        except OSError:
            path.rmdir()
            raise
        return path

    def populate(self, path: Path, spec: ExecutionSpec) -> None:
        """Write the code and input files into a fresh scratch (nothing else has touched it yet)."""
        self._write(path, spec.runtime.file_name, spec.code)
        for f in spec.files:
            self._write(path, f.path, f.content)

    def _write(self, root: Path, rel: str, content: bytes) -> None:
        target = root
        for part in rel.split("/")[:-1]:
            target = target / part
            with contextlib.suppress(FileExistsError):
                target.mkdir(mode=0o755)
                os.chown(target, self.uid, self.gid)
        fd = os.open(target / rel.split("/")[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fchown(fd, self.uid, self.gid)
        finally:
            os.close(fd)

    def collect(self, path: Path, spec: ExecutionSpec) -> CollectedFiles:
        """Read back the regular files the program left (see select_outputs for which, and how many)."""
        root_fd = os.open(path, _DIR_FLAGS)
        try:
            dev = os.fstat(root_fd).st_dev
            found, scan_truncated = _scan(root_fd)

            def reader(rel: str) -> Callable[[int], bytes | None]:
                return lambda limit: _read_regular(root_fd, rel, dev, limit)

            files, truncated = select_outputs(((rel, size, reader(rel)) for rel, size in found), spec)
        finally:
            os.close(root_fd)
        return CollectedFiles(files=files, truncated=truncated or scan_truncated)

    def destroy(self, path: Path) -> None:
        """Lazily unmount and remove one scratch dir; never walks its contents."""
        _umount_detach(path)
        with contextlib.suppress(FileNotFoundError):
            path.rmdir()

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
