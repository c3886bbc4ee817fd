"""Per-execution cgroups on cgroup v1 or v2: limits in, counters out, everything killed and removed.

The server makes one cgroup per execution under ``<hierarchy>/<parent>/<execution id>`` and keeps it until the
execution is over, so the kernel's own counters (OOM kills, peak memory, CPU time) can be read after the
program has died: that is how a time kill and an OOM kill, both exit 137, are told apart.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")
CFS_PERIOD_US = 100_000


class CgroupVersion(Enum):
    V1 = "v1"
    V2 = "v2"


class CgroupsUnavailable(Exception):
    """Cgroups cannot be used on this host; the message says why."""


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int
    max_pids: int
    cpu_cores: float


@dataclass(frozen=True)
class Hierarchy:
    """Where our cgroups live: one directory per v1 controller, or one unified directory on v2."""

    version: CgroupVersion
    parents: dict[str, Path]  # controller -> our parent dir (v2: every controller maps to the same dir)

    def dirs(self) -> list[Path]:
        return sorted(set(self.parents.values()))


def unmanaged_dirs(hierarchy: Hierarchy, parent: str, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Path]:
    """``parent`` in every cgroup mount (v1 or v2) ``hierarchy`` does not use. A container runtime given a cgroup
    parent makes it in each of them (blkio, devices, freezer, name=systemd, ...), and removes only its own
    container's cgroup there: the directories between are ours to remove."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return []
    ours = {d.parent for d in hierarchy.dirs()}
    found: list[Path] = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) > 4 and rfields and rfields[0] in ("cgroup", "cgroup2"):
            mount = Path(fields[4])
            if mount not in ours:
                found.append(mount / parent)
    return sorted(set(found))


V1_NO_LIMIT = 1 << 62  # v1 says "no limit" with a page-rounded LONG_MAX


def memory_headroom(hierarchy: Hierarchy) -> tuple[int, int] | None:
    """(headroom, limit) bytes under the tightest memory limit on the way from the hierarchy's root to our parent,
    or None when none sets one. A container's or a pod's limit is one of them when the server runs in it with its
    own cgroup namespace (the mount's root is then its cgroup): the sandboxes' memory is charged to it, and its
    OOM killer acts at that limit however much the host has free."""
    tightest: tuple[int, int] | None = None
    directory = hierarchy.parents["memory"]
    chain = [directory, *directory.parents]
    for d in chain:
        if not (d / "cgroup.procs").exists():
            if d != directory:
                break  # above the mount's root (our own parent may not exist yet: its ancestors still count)
            continue
        if hierarchy.version is CgroupVersion.V2:
            try:
                raw = (d / "memory.max").read_text().strip()
            except OSError:
                continue  # the root cgroup has no limit file
            if raw == "max":
                continue
            limit, used = int(raw), _read_int(d / "memory.current")
        else:
            limit = _read_int(d / "memory.limit_in_bytes", missing=V1_NO_LIMIT)
            if limit >= V1_NO_LIMIT:
                continue
            used = _read_int(d / "memory.usage_in_bytes")
        headroom = max(0, limit - used)
        if tightest is None or headroom < tightest[0]:
            tightest = (headroom, limit)
    return tightest


def available_memory(hierarchy: Hierarchy | None) -> tuple[int, int]:
    """(available, total) bytes for sandboxes: the host's (MemAvailable, RAM), narrowed to the headroom and the
    limit of ``memory_headroom`` when a limit above our parent is tighter."""
    host = psutil.virtual_memory()
    available, total = int(host.available), int(host.total)
    limited = memory_headroom(hierarchy) if hierarchy is not None else None
    if limited is None:
        return available, total
    return min(available, limited[0]), min(total, limited[1])


def remove_empty_below(directory: Path) -> None:
    """Remove the cgroups below ``directory``, deepest first, that hold no process (rmdir refuses the others).
    cgroupfs holds directories and its own control files only: nothing a sandbox could plant."""
    if not directory.is_dir():
        return
    for sub in reversed(_tree(directory)):
        if sub != directory:
            with contextlib.suppress(OSError):
                sub.rmdir()


def detect(parent: str, mountinfo: Path = Path("/proc/self/mountinfo")) -> Hierarchy:
    """Find a usable hierarchy (v2 preferred when it has the controllers, else v1); raise CgroupsUnavailable."""
    v1: dict[str, Path] = {}
    v2_mounts: list[Path] = []
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError as exc:
        raise CgroupsUnavailable(f"cannot read {mountinfo}: {exc}") from exc
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        mount_point, fstype, super_opts = Path(fields[4]), rfields[0], rfields[2].split(",")
        if fstype == "cgroup2":
            v2_mounts.append(mount_point)
        elif fstype == "cgroup":
            for controller in V1_CONTROLLERS:
                if controller in super_opts:
                    v1.setdefault(controller, mount_point)
    for mount in v2_mounts:
        try:
            available = set((mount / "cgroup.controllers").read_text().split())
        except OSError:
            continue
        if set(V2_CONTROLLERS) <= available:
            target = mount / parent
            return Hierarchy(CgroupVersion.V2, dict.fromkeys(V2_CONTROLLERS, target))
    missing = [c for c in V1_CONTROLLERS if c not in v1]
    if not missing:
        return Hierarchy(CgroupVersion.V1, {c: v1[c] / parent for c in V1_CONTROLLERS})
    seen = "v2 at " + ", ".join(map(str, v2_mounts)) if v2_mounts else "no cgroup v2 mount"
    raise CgroupsUnavailable(
        f"no usable cgroup hierarchy: {seen} without the memory, pids and cpu controllers; "
        f"cgroup v1 is missing {', '.join(missing)}"
    )


class CgroupManager:
    """Creates, reaps and removes our cgroups under one parent."""

    def __init__(self, hierarchy: Hierarchy) -> None:
        self.hierarchy = hierarchy
        self._swap_file: str | None = None  # the memory controller's swap limit file ("" if absent), once known

    @property
    def version(self) -> CgroupVersion:
        return self.hierarchy.version

    def setup(self) -> None:
        """Create the parent(s) and, on v2, delegate the controllers down to them; raise CgroupsUnavailable."""
        try:
            for d in self.hierarchy.dirs():
                d.mkdir(parents=True, exist_ok=True)
            if self.version is CgroupVersion.V2:
                parent = self.hierarchy.dirs()[0]
                chain = [p for p in reversed(parent.parents) if (p / "cgroup.subtree_control").exists()]
                for d in [*chain, parent]:
                    _enable_controllers(d)
            probe = self.create("probe-" + os.urandom(4).hex(), CgroupLimits(64 << 20, 8, 1.0))
            probe.kill_all()
            if not probe.try_remove():
                raise CgroupsUnavailable("could not remove a probe cgroup")
        except OSError as exc:
            raise CgroupsUnavailable(f"cannot manage cgroups under {self.hierarchy.dirs()}: {exc}") from exc

    def create(self, name: str, limits: CgroupLimits) -> Cgroup:
        """Make the cgroup for one execution with its limits set; raise OSError on failure (nothing left)."""
        cg = self._cgroup(name)
        try:
            for d in cg.dirs():
                os.mkdir(d, 0o755)
            cg.apply(limits)
        except OSError:
            cg.kill_all()
            cg.try_remove()
            raise
        return cg

    def _cgroup(self, name: str) -> Cgroup:
        if self._swap_file is None:  # the same for every cgroup of the hierarchy: probed once, not per execution
            mem = self.hierarchy.parents["memory"]
            swap = "memory.memsw.limit_in_bytes" if self.version is CgroupVersion.V1 else "memory.swap.max"
            self._swap_file = swap if (mem / swap).exists() else ""
        return Cgroup(self.version, {c: p / name for c, p in self.hierarchy.parents.items()}, self._swap_file)

    def reap(self) -> int:
        """Kill and remove every leftover execution cgroup (from a crash); return how many were removed."""
        names: set[str] = set()
        for d in self.hierarchy.dirs():
            with contextlib.suppress(FileNotFoundError):
                names.update(p.name for p in d.iterdir() if p.is_dir())
        removed = 0
        for name in sorted(names):
            cg = self._cgroup(name)
            cg.kill_all()
            if cg.try_remove():
                removed += 1
            else:
                log.error("could not remove leftover cgroup %s", name)
        return removed

    def remove_parents(self) -> None:
        for d in self.hierarchy.dirs():
            with contextlib.suppress(OSError):
                d.rmdir()


class Cgroup:
    """One execution's cgroup. Files are our own kernel interface; nothing the sandbox writes is read here."""

    def __init__(self, version: CgroupVersion, paths: dict[str, Path], swap_file: str = "") -> None:
        self.version = version
        self.paths = paths
        # v1 memory.memsw.limit_in_bytes or v2 memory.swap.max; "" without swap accounting
        self.swap_file = swap_file

    def dirs(self) -> list[Path]:
        return sorted(set(self.paths.values()))

    def procs_files(self) -> list[Path]:
        """The cgroup.procs files a process writes "0" into to join (one per hierarchy)."""
        return [d / "cgroup.procs" for d in self.dirs()]

    def single_thread_join_files(self) -> list[Path]:
        """Files a single-threaded process writes "0" into to join, cheaply: on v1 the per-thread ``tasks``,
        which moves the writer without taking the global threadgroup lock for writing (cgroup.procs does, and
        so waits for an RCU grace period, 5-20 ms); on v2 cgroup.procs. Only for a process with one thread:
        on v1 other threads would stay behind."""
        name = "tasks" if self.version is CgroupVersion.V1 else "cgroup.procs"
        return [d / name for d in self.dirs()]

    def apply(self, limits: CgroupLimits) -> None:
        mem, pids, cpu = self.paths["memory"], self.paths["pids"], self.paths["cpu"]
        quota = max(1000, int(limits.cpu_cores * CFS_PERIOD_US))
        if self.version is CgroupVersion.V1:
            _write(mem / "memory.limit_in_bytes", limits.memory_bytes)
            if self.swap_file:  # absent without swap accounting; then keep the kernel from swapping us
                _write(mem / self.swap_file, limits.memory_bytes)
            else:
                _write(mem / "memory.swappiness", 0)
            _write(pids / "pids.max", limits.max_pids)
            _write(cpu / "cpu.cfs_period_us", CFS_PERIOD_US)
            _write(cpu / "cpu.cfs_quota_us", quota)
        else:
            _write(mem / "memory.max", limits.memory_bytes)
            if self.swap_file:
                _write(mem / self.swap_file, 0)
            _write(pids / "pids.max", limits.max_pids)
            _write(cpu / "cpu.max", f"{quota} {CFS_PERIOD_US}")

    def update(self, old: CgroupLimits, new: CgroupLimits) -> None:
        """Change the limits of a cgroup made with ``old`` to ``new``, writing only what differs, in the order
        cgroup v1 needs (its memory+swap limit may never be below its memory limit). Raises OSError."""
        mem, pids, cpu = self.paths["memory"], self.paths["pids"], self.paths["cpu"]
        if new.memory_bytes != old.memory_bytes:
            if self.version is CgroupVersion.V1:
                files = [mem / "memory.limit_in_bytes", *([mem / self.swap_file] if self.swap_file else [])]
                for f in reversed(files) if new.memory_bytes > old.memory_bytes else files:
                    _write(f, new.memory_bytes)
            else:
                _write(mem / "memory.max", new.memory_bytes)
        if new.max_pids != old.max_pids:
            _write(pids / "pids.max", new.max_pids)
        if new.cpu_cores != old.cpu_cores:
            quota = max(1000, int(new.cpu_cores * CFS_PERIOD_US))
            if self.version is CgroupVersion.V1:
                _write(cpu / "cpu.cfs_quota_us", quota)
            else:
                _write(cpu / "cpu.max", f"{quota} {CFS_PERIOD_US}")

    # ---- counters -------------------------------------------------------------------------------------
    def oom_kills(self, nested: bool = True) -> int:
        """Processes the kernel's OOM killer killed in this cgroup and the ones below it (a Docker container's own
        cgroup sits below ours and hits the limit first). v2's memory.events counts the subtree already; v1's
        memory.oom_control counts its own cgroup only, so the children are added, unless the caller knows no
        cgroup can be below (``nested=False``: nothing in its sandbox may make one)."""
        mem = self.paths["memory"]
        if self.version is CgroupVersion.V2:
            return _keyed(mem / "memory.events").get("oom_kill", 0)
        if not nested:
            return _keyed(mem / "memory.oom_control").get("oom_kill", 0)
        total = 0
        for directory, subdirs, _ in os.walk(mem):  # cgroupfs: directories the kernel made; no links followed
            try:
                total += _keyed(Path(directory) / "memory.oom_control").get("oom_kill", 0)
            except OSError as exc:
                # A cgroup below ours being removed (ENODEV: a container runtime tearing its own down as its
                # processes end); a container's OOM kill there is also in dockerd's OOMKilled.
                if exc.errno != errno.ENODEV or Path(directory) == mem:
                    raise
            del subdirs[64:]  # a bound, should a cgroup ever hold many
        return total

    def peak_memory_bytes(self) -> int:
        mem = self.paths["memory"]
        if self.version is CgroupVersion.V1:
            return _read_int(mem / "memory.max_usage_in_bytes")
        peak = _read_int(mem / "memory.peak", -1)  # Linux >= 5.19; before that the current usage is the best
        return peak if peak >= 0 else _read_int(mem / "memory.current")

    def memory_bytes(self) -> int:
        """What the cgroup holds now."""
        mem = self.paths["memory"]
        return _read_int(mem / ("memory.usage_in_bytes" if self.version is CgroupVersion.V1 else "memory.current"))

    def reset_peak_memory(self) -> None:
        """Restart the peak from the current usage (v1: writing max_usage_in_bytes; v2 has no such reset before
        Linux 6.12, so its peak stays the cgroup's whole life)."""
        if self.version is CgroupVersion.V1:
            with contextlib.suppress(OSError):
                _write(self.paths["memory"] / "memory.max_usage_in_bytes", 0)

    def cpu_time_ns(self) -> int:
        if self.version is CgroupVersion.V1:
            return _read_int(self.paths["cpuacct"] / "cpuacct.usage")
        return _keyed(self.paths["cpu"] / "cpu.stat").get("usage_usec", 0) * 1000

    def pids(self) -> set[int]:
        """Every process in this cgroup and in any cgroup below it (a container runtime nests its own)."""
        out: set[int] = set()
        for d in self.dirs():
            for sub in _tree(d):
                try:
                    out.update(int(x) for x in (sub / "cgroup.procs").read_text().split())
                except OSError as exc:
                    # Gone, or being removed (ENODEV: a container runtime tearing its nested cgroup down).
                    if exc.errno not in (errno.ENOENT, errno.ENODEV):
                        raise
        return out

    # ---- teardown -------------------------------------------------------------------------------------
    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup (v2: cgroup.kill; v1: by pid, repeated to catch forks)."""
        if self.version is CgroupVersion.V2:
            kill_file = self.dirs()[0] / "cgroup.kill"
            if kill_file.exists():
                with contextlib.suppress(FileNotFoundError):
                    _write(kill_file, 1)
                return
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def try_remove(self) -> bool:
        """Remove the cgroup and any below it, deepest first; False while processes (or zombies) hold one."""
        done = True
        for d in self.dirs():
            # Usually empty with no child cgroup: one rmdir, without listing its ~30 control files first
            try:
                d.rmdir()
                continue
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
            for sub in reversed(_tree(d)):
                try:
                    sub.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                    done = False
        return done


def _tree(root: Path) -> list[Path]:
    """``root`` and every cgroup directory below it, parents before children (kernel files only; scandir's
    d_type avoids a stat per control file)."""
    out: list[Path] = []
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                subdirs = [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        out.append(d)
        stack.extend(subdirs)
    return out


def _enable_controllers(d: Path) -> None:
    wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS)
    enabled = set((d / "cgroup.subtree_control").read_text().split())
    if not set(V2_CONTROLLERS) <= enabled:
        _write(d / "cgroup.subtree_control", wanted)


# Control files are read and written with plain fds: several per execution, and a text file object's set-up
# (buffer, decoder) costs more than the read itself.
def _write(path: Path, value: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    """A control file's whole text (they are small: one page at most)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536).decode()
    finally:
        os.close(fd)


def _read_int(path: Path, missing: int = 0) -> int:
    try:
        return int(_read(path).strip() or 0)
    except FileNotFoundError:
        return missing
    except ValueError:
        return 0


def _keyed(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in _read(path).splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[key] = int(value)
    return out
