"""The system calls no sandbox may make, in one list for every backend: nsjail gets it as a kafel policy, Docker
as a seccomp profile (JSON), the warm path's children through libseccomp.

A deny-list on top of the other layers (no capabilities, an unprivileged user, namespaces): what a program
never needs and what has served kernel escapes — tracing other processes, new namespaces, mounting, keyrings,
BPF, io_uring, module loading, clock changes. Denied calls fail with EPERM (clone3 with ENOSYS, so libcs fall
back to clone, where namespace flags are checked), never kill, so a program sees an ordinary error.
"""

from __future__ import annotations

from typing import Any

EPERM = 1
ENOSYS = 38

DENIED: tuple[str, ...] = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "mount", "umount", "umount2", "pivot_root", "swapon", "swapoff", "reboot", "setns", "unshare",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "open_by_handle_at", "name_to_handle_at", "acct",
    "quotactl", "lookup_dcookie", "fsopen", "fsmount", "move_mount", "open_tree", "fsconfig", "fspick",
    "mount_setattr", "syslog", "vhangup", "settimeofday", "clock_settime", "adjtimex", "clock_adjtime",
)
# clone(2) flags that create namespaces: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
NAMESPACE_MASK = sum(NAMESPACE_FLAGS)  # 0x7e020000


def kafel_policy() -> str:
    """For nsjail's --seccomp_string."""
    return (
        f"ERRNO({EPERM}) {{ {', '.join(DENIED)} }}"
        f" ERRNO({ENOSYS}) {{ clone3 }}"
        f" ERRNO({EPERM}) {{ clone {{ (clone_flags & {NAMESPACE_MASK:#x}) != 0 }} }}"
        " DEFAULT ALLOW"
    )


def docker_profile() -> dict[str, Any]:
    """A Docker seccomp profile (``security_opt=["seccomp=<json>"]``) denying the same calls. It replaces
    Docker's default profile, whose version in Debian's docker.io lets io_uring through; the containers also
    drop every capability, which is what most of that profile's other rules guard."""
    rules: list[dict[str, Any]] = [
        {"names": list(DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
    ]
    # One rule per flag: rules for one call combine with OR, and MASKED_EQ tests (arg & mask) == value.
    rules += [
        {"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
         "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]}
        for flag in NAMESPACE_FLAGS
    ]
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": rules,
    }
