"""The seccomp filter of every sandbox, defined once here and rendered for each place that applies it: a kafel
policy for nsjail (cold jails and session jails), a Docker seccomp profile that replaces Docker's default (one-shot
and session containers), and libseccomp rules for the warm path's zygote (PID 1 and the program, in both modes).

An allow-list, on top of the other layers (no capabilities, an unprivileged user, namespaces), for the x86_64 and
aarch64 ABIs. It is Docker's default profile (seccomp_data.DOCKER_PROFILE, moby/profiles) as it applies to a
container with no capability:

- allowed: the calls that profile allows every container, less DENIED_SYSCALLS (what we never allow: tracing or
  reading other processes, keyrings, BPF, perf, userfaultfd, io_uring, the mount family, new namespaces, kexec,
  modules, clock setting, NUMA policy, ...; the profile itself allows ptrace from kernel 4.8, adjtimex,
  clock_adjtime and name_to_handle_at);
- refused: every call it gates on a capability (kcmp, get_mempolicy, mbind, unshare, setns, mount, chroot, bpf,
  ...) and every call it does not name (move_pages, kexec_load, keyctl, ...);
- decided by arguments, as the profile decides them but reading only the 32 bits the kernel reads of an ``int``
  (the profile compares all 64, which a raw syscall with high bits set gets past): clone only without namespace
  flags, socket without AF_ALG or AF_VSOCK, personality only to the five personas the profile names; and
  PID1_RULES: prlimit64, sched_set{affinity,scheduler,param,attr}, setpriority and ioprio_set are refused when
  aimed at PID 1 (the sandbox's init, or a session's agent) or at every process of the user;
- clone3 fails with ENOSYS (its flags are in memory, where seccomp cannot look), so libc falls back to clone.

A refused call fails with EPERM. A number that no call of the profile's kernel has (past the newest it names,
removexattrat, 466, or in a gap of the table) fails with ENOSYS, so a library falls back as on an older kernel;
on Docker, whose profile is by name, that holds past the newest call the container runtime's libseccomp knows,
and a gap below it gets EPERM, as with Docker's own profile. Nothing the native ABI calls is killed: a program
sees an ordinary error. Another ABI's calls are: i386 (int 0x80) kills the process, as do x32's numbers, which
get ENOSYS under nsjail.
"""

from __future__ import annotations

import enum
import errno
import functools
import json
import platform
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sandbox_server.backends.seccomp_data import DOCKER_PROFILE, SYSCALL_NUMBERS, ProfileEntry

__all__ = [
    "ARCHES",
    "CLONE_NAMESPACE_FLAGS",
    "DENIED_SYSCALLS",
    "ENOSYS_SYSCALLS",
    "PID1_RULES",
    "Action",
    "ArgTest",
    "Conditional",
    "Cube",
    "Filter",
    "complement",
    "docker_profile",
    "docker_security_opt",
    "host_filter",
    "kafel_policy",
    "libseccomp_config",
    "syscall_filter",
]

# Docker's names for our ABIs, and libseccomp's (Docker's profile uses both).
ARCHES = {"x86_64": ("amd64", "SCMP_ARCH_X86_64"), "aarch64": ("arm64", "SCMP_ARCH_AARCH64")}
KERNEL = (5, 12)  # the least the warm path runs on (mount_setattr); the profile's minKernel entries need 4.8

# Never allowed, whatever the profile says (most of them it does not allow either). By libseccomp's names.
DENIED_SYSCALLS: tuple[str, ...] = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "mount", "umount2", "pivot_root", "swapon", "swapoff", "reboot", "setns", "unshare", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "open_by_handle_at", "name_to_handle_at", "acct", "quotactl",
    "lookup_dcookie", "fsopen", "fsmount", "move_mount", "open_tree", "fsconfig", "fspick", "mount_setattr",
    "syslog", "vhangup", "settimeofday", "clock_settime", "adjtimex", "clock_adjtime", "kcmp", "pidfd_getfd",
    "process_madvise", "get_mempolicy", "set_mempolicy", "mbind", "move_pages", "migrate_pages",
)
ENOSYS_SYSCALLS: tuple[str, ...] = ("clone3",)  # its flags live in memory, where seccomp cannot look
# The clone(2) flags that create namespaces, each: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
CLONE_NAMESPACE_FLAGS = sum(NAMESPACE_FLAGS)  # 0x7e020000, the mask of Docker's clone rule
INT = 0xFFFFFFFF  # the bits of an int argument the kernel reads
AF_ALG, AF_VSOCK = 38, 40  # the socket families Docker's profile refuses
PERSONAS = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)  # the personality(2) values Docker's profile allows

# Calls that change another process's resource limits, scheduling or I/O priority, refused when they aim at the
# sandbox's PID 1 (its init, or a session's agent) or at every process of the user (PID 1 included). They need
# no privilege against a process of the same user, and neither the PID-1 signal rule nor non-dumpability covers
# them: lowering the agent's open-file limit would break a session. Aimed at the caller itself (0) or at its
# own processes they stay allowed. Each rule: (syscall, ((argument name, index, value), ...)), the conditions
# all holding on the argument's low 32 bits (each is an int); several rules for one call hold each on its own.
PRIO_PROCESS, PRIO_PGRP, PRIO_USER = 0, 1, 2
IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP, IOPRIO_WHO_USER = 1, 2, 3
PID1_RULES: tuple[tuple[str, tuple[tuple[str, int, int], ...]], ...] = (
    ("prlimit64", (("pid", 0, 1),)),
    ("sched_setaffinity", (("pid", 0, 1),)),
    ("sched_setscheduler", (("pid", 0, 1),)),
    ("sched_setparam", (("pid", 0, 1),)),
    ("sched_setattr", (("pid", 0, 1),)),
    ("setpriority", (("which", 0, PRIO_PROCESS), ("who", 1, 1))),
    ("setpriority", (("which", 0, PRIO_PGRP), ("who", 1, 1))),
    ("setpriority", (("which", 0, PRIO_USER),)),
    ("ioprio_set", (("which", 0, IOPRIO_WHO_PROCESS), ("who", 1, 1))),
    ("ioprio_set", (("which", 0, IOPRIO_WHO_PGRP), ("who", 1, 1))),
    ("ioprio_set", (("which", 0, IOPRIO_WHO_USER),)),
)


class Action(enum.Enum):
    ALLOW = "allow"
    EPERM = "eperm"  # refused
    ENOSYS = "enosys"  # as if the kernel had no such call

    @property
    def errno(self) -> int | None:
        return {Action.ALLOW: None, Action.EPERM: errno.EPERM, Action.ENOSYS: errno.ENOSYS}[self]


@dataclass(frozen=True, order=True)
class ArgTest:
    """(argument ``index`` & ``mask``) == ``value``, over the argument's 64 bits: libseccomp's MASKED_EQ, which
    kafel can say too. Only bits in ``mask`` may be set in ``value``."""

    index: int
    mask: int
    value: int

    def __post_init__(self) -> None:
        if self.value & ~self.mask or not 0 <= self.index < 6:
            raise ValueError(f"not a test: {self}")


Cube = tuple[ArgTest, ...]  # tests that all hold, at most one per argument, by index; () always holds


@dataclass(frozen=True)
class Conditional:
    """A call decided by its arguments: ``exception`` when one of the ``when`` cubes holds, else ``otherwise``.
    ``otherwise_cubes`` says the else as cubes too, disjoint from ``when``, for libseccomp: it gives two rules of
    one call no order (of an unconditional and a conditional one it keeps the first), so they must not overlap."""

    exception: Action
    when: tuple[Cube, ...]
    otherwise: Action
    otherwise_cubes: tuple[Cube, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "otherwise_cubes", complement(self.when))


@dataclass(frozen=True)
class Filter:
    """The filter for one ABI: every call of its table (``numbers``, libseccomp's names) is in exactly one of
    ``allowed``, ``refused`` (EPERM), ``enosys`` or ``conditional``; any other number gets ENOSYS."""

    arch: str
    numbers: dict[str, int]
    allowed: tuple[str, ...]
    refused: tuple[str, ...]
    enosys: tuple[str, ...]
    conditional: dict[str, Conditional]

    def rules(self) -> list[tuple[Action, str, Cube]]:
        """Every rule, for libseccomp and Docker: unconditional ones with the cube (), a conditional call's
        cubes for both of its actions. No two rules of one call can both match."""
        out: list[tuple[Action, str, Cube]] = [(Action.ALLOW, name, ()) for name in self.allowed]
        out += [(Action.EPERM, name, ()) for name in self.refused]
        out += [(Action.ENOSYS, name, ()) for name in self.enosys]
        for name, cond in self.conditional.items():
            out += [(cond.exception, name, cube) for cube in cond.when]
            out += [(cond.otherwise, name, cube) for cube in cond.otherwise_cubes]
        return out


# ---- the definition -------------------------------------------------------------------------------------------
def _applies(entry: ProfileEntry, docker_arch: str) -> bool:
    """Whether a profile entry applies to a container with no capability on ``docker_arch``."""
    if entry.arches and docker_arch not in entry.arches:
        return False
    if entry.caps or docker_arch in entry.not_arches:
        return False
    return entry.min_kernel is None or tuple(int(p) for p in entry.min_kernel.split(".")) <= KERNEL


def _conditionals() -> dict[str, Conditional]:
    """Our argument rules, each call once: Docker's three (32-bit) and PID1_RULES."""
    refuse_if: dict[str, list[Cube]] = {
        "clone": [(ArgTest(0, flag, flag),) for flag in NAMESPACE_FLAGS],
        "socket": [(ArgTest(0, INT, AF_ALG),), (ArgTest(0, INT, AF_VSOCK),)],
    }
    for name, conditions in PID1_RULES:
        refuse_if.setdefault(name, []).append(tuple(sorted(ArgTest(i, INT, v) for _, i, v in conditions)))
    out = {name: Conditional(Action.EPERM, tuple(cubes), Action.ALLOW) for name, cubes in refuse_if.items()}
    out["personality"] = Conditional(Action.ALLOW, tuple((ArgTest(0, INT, p),) for p in PERSONAS), Action.EPERM)
    return out


def syscall_filter(arch: str) -> Filter:
    """The filter for ``arch`` (``x86_64`` or ``aarch64``). Names the ABI does not have are left out.

    Raises:
        ValueError: another architecture.
    """
    if arch not in ARCHES:
        raise ValueError(f"no seccomp filter for {arch}: only {', '.join(ARCHES)}")
    return _filter(arch)


@functools.cache
def _filter(arch: str) -> Filter:
    numbers = SYSCALL_NUMBERS[arch]
    docker_arch = ARCHES[arch][0]
    profile_allows: set[str] = set()
    for entry in DOCKER_PROFILE:
        if _applies(entry, docker_arch) and entry.action == "SCMP_ACT_ALLOW" and not entry.args:
            profile_allows.update(entry.names)
    conditional = {name: c for name, c in _conditionals().items() if name in numbers}
    enosys = tuple(name for name in ENOSYS_SYSCALLS if name in numbers)
    allowed = sorted((profile_allows - set(DENIED_SYSCALLS) - set(conditional) - set(enosys)) & set(numbers))
    decided = set(allowed) | set(conditional) | set(enosys)
    refused = sorted(set(numbers) - decided)
    return Filter(arch=arch, numbers=dict(numbers), allowed=tuple(sorted(allowed, key=numbers.__getitem__)),
                  refused=tuple(sorted(refused, key=numbers.__getitem__)), enosys=enosys, conditional=conditional)


def host_filter() -> Filter:
    """The filter for this machine's architecture (the sandboxes run the host's).

    Raises:
        ValueError: an architecture we have no filter for.
    """
    return syscall_filter(platform.machine())


# ---- argument cubes -------------------------------------------------------------------------------------------
def _intersect(a: Cube, b: Cube) -> Cube | None:
    """The cube where both hold, or None when they cannot."""
    tests = {t.index: t for t in a}
    for t in b:
        if (mine := tests.get(t.index)) is None:
            tests[t.index] = t
        elif (mine.value ^ t.value) & mine.mask & t.mask:
            return None
        else:
            tests[t.index] = ArgTest(t.index, mine.mask | t.mask, mine.value | t.value)
    return tuple(sorted(tests.values()))


def _sharp(c: Cube, d: Cube) -> list[Cube]:
    """``c`` less ``d``, as disjoint cubes: for each bit ``d`` tests and ``c`` does not, the part of ``c`` that
    agrees with ``d`` on the bits before it and differs on it."""
    if _intersect(c, d) is None:
        return [c]
    out: list[Cube] = []
    fixed = {t.index: (t.mask, t.value) for t in c}
    for t in d:
        mask, value = fixed.get(t.index, (0, 0))
        for bit in (1 << i for i in range(64) if (t.mask & ~mask) >> i & 1):
            flipped = dict(fixed)
            flipped[t.index] = (mask | bit, value | (~t.value & bit))
            out.append(tuple(ArgTest(i, m, v) for i, (m, v) in sorted(flipped.items())))
            mask, value = mask | bit, value | (t.value & bit)
            fixed[t.index] = (mask, value)
    return out


def complement(cubes: Iterable[Cube]) -> tuple[Cube, ...]:
    """Cubes covering exactly the argument values none of ``cubes`` holds for (they may overlap each other).
    The disjoint pieces the sharp operation leaves are each widened as far as they stay clear of ``cubes``,
    and the ones another covers dropped: what is a few hundred pieces becomes a few dozen rules."""
    avoid = tuple(cubes)
    pieces: list[Cube] = [()]
    for d in avoid:
        pieces = [part for c in pieces for part in _sharp(c, d)]
    widened = {_widen(c, avoid) for c in pieces}
    return tuple(sorted(c for c in widened if not any(o != c and _covers(o, c) for o in widened)))


def _widen(cube: Cube, avoid: tuple[Cube, ...]) -> Cube:
    """``cube`` with every bit it tests dropped that can be, keeping it disjoint from each of ``avoid``."""
    tests = {t.index: (t.mask, t.value) for t in cube}
    for index in sorted(tests, reverse=True):
        mask = tests[index][0]
        for bit in (1 << i for i in range(64) if mask >> i & 1):
            m, v = tests[index]
            trial = dict(tests)
            trial[index] = (m & ~bit, v & ~bit)
            candidate = tuple(ArgTest(i, tm, tv) for i, (tm, tv) in sorted(trial.items()) if tm)
            if all(_intersect(candidate, a) is None for a in avoid):
                tests = trial
    return tuple(ArgTest(i, m, v) for i, (m, v) in sorted(tests.items()) if m)


def _covers(outer: Cube, inner: Cube) -> bool:
    """Whether every argument value ``inner`` holds for ``outer`` holds for too."""
    fixed = {t.index: t for t in inner}
    for t in outer:
        mine = fixed.get(t.index)
        if mine is None or t.mask & ~mine.mask or (mine.value ^ t.value) & t.mask:
            return False
    return True


# ---- renderings -----------------------------------------------------------------------------------------------
def kafel_policy(arch: str | None = None) -> str:
    """For nsjail's --seccomp_string: kafel takes the first rule that matches, so each conditional call's
    exception comes before its other action. Calls by number (kafel's own table may lack the newest names, and
    names differ), each with its name in a comment."""
    return _kafel(platform.machine() if arch is None else arch)


@functools.cache
def _kafel(arch: str) -> str:
    filt = syscall_filter(arch)

    def call(name: str) -> str:
        return f"SYSCALL[{filt.numbers[name]}] /* {name} */"

    def block(action: Action, entries: list[str]) -> str:
        target = "ALLOW" if action is Action.ALLOW else f"ERRNO({action.errno})"
        return f"{target} {{\n  " + ",\n  ".join(entries) + "\n}"

    def conditional(name: str, cubes: tuple[Cube, ...]) -> str:
        args = sorted({t.index for cube in cubes for t in cube})
        names = ", ".join(f"a{i}" for i in range(max(args) + 1))
        expr = " || ".join("(" + " && ".join(f"(a{t.index} & {t.mask:#x}) == {t.value:#x}" for t in cube) + ")"
                           for cube in cubes)
        return f"SYSCALL[{filt.numbers[name]}]({names}) /* {name} */ {{ {expr} }}"

    blocks: dict[Action, list[str]] = {action: [] for action in Action}
    exceptions: dict[Action, list[str]] = {action: [] for action in Action}
    for name, cond in filt.conditional.items():
        exceptions[cond.exception].append(conditional(name, cond.when))
        blocks[cond.otherwise].append(call(name))
    blocks[Action.ALLOW] += [call(name) for name in filt.allowed]
    blocks[Action.EPERM] += [call(name) for name in filt.refused]
    blocks[Action.ENOSYS] += [call(name) for name in filt.enosys]
    parts = [block(action, entries) for action, entries in exceptions.items() if entries]
    parts += [block(action, entries) for action, entries in blocks.items() if entries]
    return "\n".join(parts) + f"\nDEFAULT ERRNO({errno.ENOSYS})\n"


def docker_profile(arch: str | None = None) -> dict[str, Any]:
    """A Docker seccomp profile (``security_opt=["seccomp=<json>"]``) for the same filter; it replaces Docker's
    default profile. Shaped as Docker's own is, which every Docker version runs as written: EPERM is the
    default (Docker 20.10 drops ``defaultErrnoRet``, so a default of ENOSYS cannot be had), so the refused
    calls need no rule; clone3's ENOSYS is a rule. Numbers past the newest call the container runtime's
    libseccomp knows get ENOSYS from runc (its stub for newer syscalls), names it does not know are skipped
    (they get that ENOSYS too); a number inside that range that no call has gets EPERM, as with Docker's own
    profile. Only the native ABI is listed, so no other ABI's call gets through."""
    filt = host_filter() if arch is None else syscall_filter(arch)
    rules: list[dict[str, Any]] = [{"names": list(filt.allowed), **_docker_action(Action.ALLOW)},
                                   {"names": list(filt.enosys), **_docker_action(Action.ENOSYS)}]
    # Calls with the same cube share an entry (PID1_RULES' calls test the same pid). None with the default's
    # action: runc drops such a rule, and libseccomp would refuse it.
    shared: dict[tuple[Action, Cube], list[str]] = {}
    for action, name, cube in filt.rules():
        if cube and action is not Action.EPERM:
            shared.setdefault((action, cube), []).append(name)
    rules += [{"names": names, **_docker_action(action),
               "args": [{"index": t.index, "value": t.mask, "valueTwo": t.value, "op": "SCMP_CMP_MASKED_EQ"}
                        for t in cube]}
              for (action, cube), names in shared.items()]
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        "architectures": [ARCHES[filt.arch][1]],
        "syscalls": rules,
    }


@functools.cache
def docker_security_opt() -> str:
    """This machine's profile as a ``security_opt`` entry."""
    return "seccomp=" + json.dumps(docker_profile(), separators=(",", ":"))


def _docker_action(action: Action) -> dict[str, Any]:
    if action is Action.ALLOW:
        return {"action": "SCMP_ACT_ALLOW"}
    return {"action": "SCMP_ACT_ERRNO", "errnoRet": action.errno}


def libseccomp_config(arch: str | None = None) -> dict[str, Any]:
    """What the zygote compiles with libseccomp (zygote._compile_seccomp): the ABI it is for, and the rules by
    number (libseccomp's own tables may predate the newest calls): [errno or None for allow, number,
    [[index, mask, value], ...]]. Every other number gets ``default_errno``."""
    filt = host_filter() if arch is None else syscall_filter(arch)
    return {
        "arch": filt.arch,
        "default_errno": errno.ENOSYS,
        # Not the ENOSYS ones: a rule with the default's action is redundant, and libseccomp refuses it
        "rules": [[action.errno, filt.numbers[name], [[t.index, t.mask, t.value] for t in cube]]
                  for action, name, cube in filt.rules() if action is not Action.ENOSYS],
    }
