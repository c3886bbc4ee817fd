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


def libseccomp_name(name: str) -> str:
    return KAFEL_TO_LIBSECCOMP.get(name, name)


def kafel_policy() -> str:
    """For nsjail's --seccomp_string."""
    return (
        f"ERRNO({errno.EPERM}) {{ {', '.join(DENIED_SYSCALLS)} }}"
        f" ERRNO({errno.ENOSYS}) {{ {', '.join(ENOSYS_SYSCALLS)} }}"
        f" ERRNO({errno.EPERM}) {{ clone {{ (clone_flags & {CLONE_NAMESPACE_FLAGS:#x}) != 0 }} }}"
        " DEFAULT ALLOW"
    )


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
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": rules,
    }
