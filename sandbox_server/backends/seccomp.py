"""The system calls no sandbox may make, in one list for every path: nsjail gets it as a kafel policy, Docker
as a seccomp profile (JSON), the warm path's children through libseccomp.

A deny-list on top of the other layers (no capabilities, an unprivileged user, namespaces): what a program
never needs and what kernel escapes love — tracing other processes, new namespaces, mounting, keyrings, BPF,
io_uring, module loading, clock changes. Denied calls fail with EPERM (clone3 with ENOSYS, so libc falls back
to clone, whose namespace flags are then denied), never kill, so a program sees an ordinary error.
"""

from __future__ import annotations

import errno
from typing import Any

# Names as kafel (nsjail's policy language) spells them; libseccomp_name() translates.
DENIED_SYSCALLS: tuple[str, ...] = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "mount", "umount", "pivot_root", "swapon", "swapoff", "reboot", "setns", "unshare", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "open_by_handle_at", "name_to_handle_at", "acct", "quotactl",
    "lookup_dcookie", "fsopen", "fsmount", "move_mount", "open_tree", "fsconfig", "fspick", "mount_setattr",
    "syslog", "vhangup", "settimeofday", "clock_settime", "adjtimex", "clock_adjtime",
)
ENOSYS_SYSCALLS: tuple[str, ...] = ("clone3",)
# The clone(2) flags that create namespaces, each: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
CLONE_NAMESPACE_FLAGS = sum(NAMESPACE_FLAGS)  # 0x7e020000
KAFEL_TO_LIBSECCOMP = {"umount": "umount2"}  # x86_64 has only umount2; kafel calls it umount

# Calls that change another process's resource limits, scheduling or I/O priority, refused when they aim at the
# sandbox's PID 1 (its init, or a session's agent) or at every process of the user (PID 1 included). They need
# no privilege against a process of the same user, and neither the PID-1 signal rule nor non-dumpability covers
# them: lowering the agent's open-file limit would break a session. Aimed at the caller itself (0) or at its
# own processes they stay allowed. Each rule: (syscall, ((argument name, index, value), ...)), the conditions
# all holding; several rules for one call hold each on its own.
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


def libseccomp_name(name: str) -> str:
    return KAFEL_TO_LIBSECCOMP.get(name, name)


def kafel_policy() -> str:
    """For nsjail's --seccomp_string."""
    return (
        f"ERRNO({errno.EPERM}) {{ {', '.join(DENIED_SYSCALLS)} }}"
        f" ERRNO({errno.ENOSYS}) {{ {', '.join(ENOSYS_SYSCALLS)} }}"
        f" ERRNO({errno.EPERM}) {{ clone {{ (clone_flags & {CLONE_NAMESPACE_FLAGS:#x}) != 0 }} }}"
        f" ERRNO({errno.EPERM}) {{ {_kafel_pid1_rules()} }}"
        " DEFAULT ALLOW"
    )


def _kafel_pid1_rules() -> str:
    """PID1_RULES in kafel: one entry per call, its rules joined with ||."""
    by_call: dict[str, list[str]] = {}
    for name, conditions in PID1_RULES:
        by_call.setdefault(name, []).append(" && ".join(f"{arg} == {value}" for arg, _, value in conditions))
    return ", ".join(f"{name} {{ {' || '.join(f'({rule})' for rule in rules)} }}" for name, rules in by_call.items())


def docker_profile() -> dict[str, Any]:
    """A Docker seccomp profile (``security_opt=["seccomp=<json>"]``) denying the same calls. It replaces
    Docker's default profile, whose version in Debian's docker.io lets io_uring through; the containers also
    drop every capability, which is what most of that profile's other rules guard."""
    rules: list[dict[str, Any]] = [
        {"names": [libseccomp_name(n) for n in DENIED_SYSCALLS], "action": "SCMP_ACT_ERRNO",
         "errnoRet": errno.EPERM},
        {"names": list(ENOSYS_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
    ]
    # One rule per flag: rules for one call combine with OR, and MASKED_EQ tests (arg & mask) == value.
    rules += [
        {"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
         "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]}
        for flag in NAMESPACE_FLAGS
    ]
    rules += [
        {"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
         "args": [{"index": index, "value": value, "op": "SCMP_CMP_EQ"} for _, index, value in conditions]}
        for name, conditions in PID1_RULES
    ]
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": rules,
    }
