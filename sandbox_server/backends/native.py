"""Build the warm zygote's native fork loop and PID 1 (zygote_native.c) into a shared object the zygote loads.

Compiled once per source and host: the object is kept as ``zygote-native-<hash>.so`` in CACHE_DIR (every server
on the host shares it), or under the state directory where that cannot be used; made in a private temporary
file and renamed into place, in a directory only root can write, and used only if root owns it and no one else
can write it. Without a C compiler, or if the build fails, the zygote keeps its Python fork loop and PID 1
(zygote._serve, zygote._sandbox), which do the same work with more copy-on-write faults; the reason is logged
and shown in the backend's description.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("zygote_native.c")
CACHE_DIR = Path("/var/cache/sandbox-server/native")
COMPILERS = ("cc", "gcc", "clang")
# -fno-stack-protector etc. are not wanted: the defaults of the distribution's compiler (hardening included) hold
CFLAGS = ("-O2", "-shared", "-fPIC", "-std=gnu11", "-Wall", "-Wextra", "-Werror")
BUILD_TIMEOUT_S = 120.0


def _root_only(path: Path, kind: Callable[[int], bool] = stat.S_ISDIR) -> bool:
    """``path`` itself (not a link) is of ``kind``, root's, and no one else may write it."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return kind(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022


def _out_dir(state_dir: Path) -> Path | None:
    for directory in (CACHE_DIR, state_dir / "native"):
        try:
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError:
            continue
        if _root_only(directory) and _root_only(directory.parent):
            return directory
    return None


async def build(state_dir: Path) -> tuple[Path | None, str]:
    """The shared object's path (built now if needed), or None and why not."""
    try:
        source = SOURCE.read_bytes()
    except OSError as exc:
        return None, f"no native source ({exc})"
    digest = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:16]
    out_dir = _out_dir(state_dir)
    if out_dir is None:
        return None, f"no directory only root can write for the native PID 1 ({CACHE_DIR}, {state_dir / 'native'})"
    target = out_dir / f"zygote-native-{digest}.so"
    if _root_only(target, stat.S_ISREG):
        return target, ""
    compiler = next((c for c in (shutil.which(name) for name in COMPILERS) if c is not None), None)
    if compiler is None:
        return None, "no C compiler (cc) on this host"
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        proc = await asyncio.create_subprocess_exec(
            compiler, *CFLAGS, "-o", tmp, str(SOURCE),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), BUILD_TIMEOUT_S)
        except TimeoutError:
            proc.kill()  # our own child, by its pid
            await proc.wait()
            return None, f"building the native PID 1 took over {BUILD_TIMEOUT_S:.0f} s"
        if proc.returncode != 0:
            text = output.decode(errors="replace").strip()[-2000:]
            return None, f"building the native PID 1 failed ({compiler} exited {proc.returncode}): {text}"
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as exc:
        return None, f"could not build the native PID 1: {exc}"
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # renamed into place already, unless the build failed
    log.info("built the warm zygote's native PID 1: %s", target)
    return target, ""

