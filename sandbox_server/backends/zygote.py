"""The warm Python zygote: a clean interpreter that forks, per request, a sandbox which runs the request's code
in-process, with the isolation of a cold nsjail jail (see nsjail.build_command) at a fraction of the cost.

Run by the server (sandbox_server.backends.warm) with the host's /usr/bin/python3, the interpreter cold jails
run. Uses only the standard library and Debian's ``python3-seccomp`` (libseccomp's bindings); never imports
sandbox_server (the server's code does not exist in the zygote's file-system view). The server imports this
module only for the protocol constants and syscall helpers below; nothing runs at import.

One file, four roles:

bootstrap  ``python3 -I -S zygote.py --bootstrap CONFIG`` (root, host view, empty environment): a private mount
           namespace whose root is a read-only tmpfs "template" holding exactly what a jail sees of the host
           (the server's plan, from nsjail.host_view: read-only /usr, the top-level links, a few /etc files, the
           generated passwd/group/hosts, device nodes, and empty mount points), pivot_root into it, then exec
           the runtime's own interpreter and flags with this program on stdin (a memfd). The zygote's start-up
           (site, .pth files) so runs in the view a cold ``python3 -B -s main.py`` has in its jail, and neither
           the zygote nor anything it forks can see the host: no state dir, server code, /etc, /proc or /sys.
zygote     imports a few stdlib modules to warm them, compiles the seccomp filter once, freezes its heap
           (gc.freeze), reports ready, then loops: receive one fd (a fresh per-request socket) on the control
           socket, fork the sandbox's PID 1 into a new PID namespace, hand the server a pidfd of it, close the
           fd. It never reads a request, so no request's data (env values, code) is ever in its memory for a
           later fork to inherit; it runs no user code and holds no secret.
sandbox    forked ahead of requests (the server keeps a few ready), so that all that does not depend on a
           request is done before one arrives. PID 1 (root) joins its own fresh cgroup first (through fds the
           server opened), starts a session, unshares mount, network, IPC, UTS and cgroup namespaces, mounts a
           fresh /proc, sets the hostname, brings lo up, lowers the hard rlimits to the soft ones as nsjail
           does, and forks the program process; both then wait. The program process takes all of the sandbox
           user but its uid (no supplementary groups, the sandbox gid, no_new_privs, the seccomp filter every
           sandbox gets, from seccomp.py) and a cold interpreter's state as far as no request decides (a
           fresh ``__main__``, sys.argv and sys.path, the standard streams, ``random`` reseeded from os.urandom,
           no cache of the zygote's).
           At the request, PID 1 mounts the scratch (a tmpfs the server made with fsmount, in no namespace: an fd),
           /tmp and /dev/shm, drops to the sandbox user as well, tells the program to go and becomes the minimal
           init (the perl init's semantics, sandbox_init.py): reaps orphans, reports the program's raw wait
           status on the status pipe (which the program never holds), kills what is left, and kills everything
           at the wall-time backstop. The program sets the request's rlimits, takes the sandbox uid (no
           capability survives: checked), its stdio, a cold start's /proc cmdline and environ, the environment,
           closes every other fd, lowers itself to nice 19 (nsjail's default) and runs the code at the top of
           this stack as ``python3 -B -s main.py`` would, ending as that interpreter ends (_finalize).
program    in the "fresh" mode, the program process does not stay a fork: it takes the sandbox
           user for good (uid included), restores its signal mask and execs the runtime's interpreter with a
           cold start's environment on this program, compiled once by the zygote and kept in a sealed memfd
           (BOOT). That interpreter (its own address-space layout and hash seed) then waits for its request and
           runs it exactly as a forked program process does (_take_request). Everything it imports before the
           program runs is imported at the top of this file, so that list is kept to C modules and a few small
           ones; the zygote's and PID 1's own needs are imported where they are used.

Protocol (AF_UNIX SOCK_SEQPACKET; one message per datagram; JSON from the server, a tag byte towards it):
  control socket  server -> zygote: CONFIG, then FORK + [sandbox socket]; EOF: drain and exit.
                  zygote -> server: READY + JSON, or ERROR + text before it exits.
  sandbox socket  server -> PID 1: PREPARE + [cgroup join files...]; later RUN {time limit, /tmp and /dev/shm sizes}
                  + [status pipe, scratch].
                  zygote -> server: FORKED + pid + [pidfd of PID 1].
                  PID 1 -> server: WAITING + [program socket] (ready for a request), or ERROR + text.
  program socket  server -> program: RUN {argv, env, rlimits} (marshal, not JSON: no json module to import in
                  a fresh interpreter) + [stdin, stdout, stderr].
                  program -> server: STARTED (user code runs next), or ERROR + text (nothing of it ran).
  EOF on either socket before RUN: the server has given up on the sandbox; its processes exit.
"""

from __future__ import annotations

# Only what a program process needs, and of that the C modules where Python's wrap them (_socket, _signal): a
# fresh interpreter (the "fresh" mode) imports all of this before its program runs, so every import here costs
# each execution. What only the zygote and PID 1 use (json, socket, select, fcntl) is imported where used.
import _socket
import atexit
import builtins
import ctypes
import errno
import gc
import io
import itertools
import marshal
import os
import resource
import struct
import sys
import time

TYPE_CHECKING = False  # typing costs a fresh interpreter ~1.5 ms: imported for the type checker only
if TYPE_CHECKING:
    import signal
    import socket
    from collections.abc import Sequence
    from typing import Any, NoReturn
else:
    import _signal as signal  # signal's own functions and numbers, without the enums signal.py adds (and imports)

# ---- protocol ---------------------------------------------------------------------------------------------
MSG_FORK = b"F"
MSG_READY = b"R"
MSG_ERROR = b"E"
MSG_FORKED = b"P"
MSG_WAITING = b"W"
MSG_STARTED = b"S"
MAX_MESSAGE = 1 << 20  # a request: env (capped far lower by validation), argv and a few numbers
RECEIVE_BUFFER_BYTES = 64 * 1024  # enough for any request within the default caps; larger ones are peeked at
MAX_FDS = 16
# The fds sent with PID 1's RUN, and with the program's.
FD_STATUS, FD_SCRATCH = range(2)
FD_STDIN, FD_STDOUT, FD_STDERR = range(3)
GO = b"G"  # PID 1 to the program: your /work, /tmp and /dev/shm are mounted
# PID 1's RUN in a Python zygote (the native PID 1 reads it as a C struct): time limit (s), /tmp and /dev/shm
# sizes (bytes). A node zygote's PID 1 gets JSON, with the program's part of the request besides.
INIT_RUN = struct.Struct("=dQQ")

class _Suppress:
    """contextlib.suppress, without importing contextlib (and collections and functools with it)."""

    def __init__(self, *exceptions: type[BaseException]) -> None:
        self.exceptions = exceptions

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, value: object, traceback: object) -> bool:
        return kind is not None and issubclass(kind, self.exceptions)


# ---- Linux ------------------------------------------------------------------------------------------------
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_MM = 35
PR_SET_NO_NEW_PRIVS = 38
PR_SET_MM_MAP = 14
SECCOMP_MODE_FILTER = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
# Syscalls without a glibc wrapper Python 3.11 can reach: (x86_64, aarch64). The mount API's numbers are the
# same on every architecture; pivot_root's are not. fsopen, fsconfig and fsmount are the server's (scratch.py).
_MOUNT_API = {"move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "mount_setattr": 442}
SYSCALLS = {
    "x86_64": {"pivot_root": 155, "capget": 125, **_MOUNT_API},
    "aarch64": {"pivot_root": 41, "capget": 90, **_MOUNT_API},
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.sbrk.restype = ctypes.c_void_p
# Where a sandbox receives its messages: allocated once in the zygote, so that a fork only copies the pages a
# message touches.
_RECEIVE_BUFFER = bytearray(0)
_modules_at_start = 0  # len(sys.modules) when the program starts
# This program compiled and marshalled, in a sealed memfd, for the fresh interpreters a zygote in "fresh" mode
# has its program processes exec: BOOT reads it through the fd named by the last argument (no compiling of the
# source, no decoding of a long argument in each)
_COMPILED_FD = -1
BOOT = "import marshal,os,sys;exec(marshal.loads(os.pread(int(sys.argv.pop()),1<<26,0)))"
# Buffers the kernel points at for the life of the process (/proc/self/cmdline and environ): never freed.
_PINNED: list[ctypes.Array[ctypes.c_char]] = []
_PINNED_OBJECTS: list[object] = []  # the native loop's library handle and the structures it reads


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _MmMap(ctypes.Structure):
    """struct prctl_mm_map (PR_SET_MM_MAP: checkpoint/restore's, needs no capability for these fields)."""

    _fields_ = [(name, ctypes.c_uint64) for name in (
        "start_code", "end_code", "start_data", "end_data", "start_brk", "brk", "start_stack",
        "arg_start", "arg_end", "env_start", "env_end", "auxv")] + [
        ("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def syscall_number(name: str) -> int:
    """This machine's number for one of the SYSCALLS; OSError(ENOSYS) on an architecture we do not know."""
    table = SYSCALLS.get(os.uname().machine)
    if table is None:
        raise OSError(errno.ENOSYS, f"the warm path does not know the syscalls of {os.uname().machine}")
    return table[name]


def syscall(name: str, *args: Any) -> int:
    """One of SYSCALLS by name (ints passed as longs, bytes and None as pointers); OSError when it fails."""
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return _check(_libc.syscall(ctypes.c_long(syscall_number(name)), *converted), name)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    _check(_libc.mount(enc(source), target.encode(), enc(fstype), flags, enc(data)), f"mount {target}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, 0), f"prctl({option})")


def move_mount(tree_fd: int, target: str) -> None:
    """Attach a detached mount (the server's fsmount of the scratch) at ``target`` in this mount namespace."""
    syscall("move_mount", tree_fd, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH)


def _make_readonly(path: str) -> None:
    """Read-only, nosuid, nodev: the mount at ``path`` and every mount below it."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    syscall("mount_setattr", AT_FDCWD, path.encode(), AT_RECURSIVE,
             ctypes.c_void_p(ctypes.addressof(attr)), ctypes.sizeof(attr))


def send(sock: _socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """One message, with ``fds`` passed along (SCM_RIGHTS)."""
    anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    sock.sendmsg([data], anc)


def received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds of a received message's SCM_RIGHTS (the caller owns them)."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            n = len(data) // 4
            fds += struct.unpack(f"{n}i", data[: n * 4])
    return fds


def _error_text(exc: BaseException) -> bytes:
    return f"{type(exc).__name__}: {exc}".encode(errors="replace")[:4096]


def _report_error(sock: _socket.socket | int, exc: BaseException) -> None:
    """Best effort: the server learns why, from the failure's own message."""
    try:
        s = sock if isinstance(sock, _socket.socket) else _socket.socket(fileno=os.dup(sock))
        s.send(MSG_ERROR + _error_text(exc))
    except OSError:
        pass


# ---- stage 1: bootstrap -----------------------------------------------------------------------------------
def _bootstrap(config: dict[str, Any]) -> NoReturn:
    ctl_fd = int(config["ctl_fd"])
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the server is gone: so are we (kept across the exec below)
        _probe_proc_strings()
        with open(__file__, "rb") as f:
            source = f.read()
        native = _copy_to_memfd(str(config["native"]), "sandbox-zygote-native") if config.get("native") else -1
        unshare(CLONE_NEWNS)
        mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount reaches the host, nor the host's us
        root = str(config["root"])
        _build_template(root, config)
        os.chdir(root)
        syscall("pivot_root", b".", b".")  # the old root is stacked on the new one...
        _check(_libc.umount2(b".", MNT_DETACH), "umount old root")  # ...and detached: unreachable
        os.chdir("/")
        memfd = _memfd("sandbox-zygote", source)
        os.lseek(memfd, 0, os.SEEK_SET)
        os.dup2(memfd, 0)  # inheritable: the interpreter reads this program from its stdin
        os.close(memfd)
        extra = [str(native)] if native >= 0 else []
        python = [str(a) for a in config["python"]]
        # -X utf8=0: the zygote starts with an empty environment (the C locale), where Python would turn on
        # UTF-8 mode; a cold start has LANG=C.UTF-8 and does not. Locale coercion gives both LC_CTYPE=C.UTF-8.
        os.execve(python[0], [*python, "-X", "utf8=0", "-", str(ctl_fd), *extra], {})  # noqa: S606
    except BaseException as exc:
        _report_error(ctl_fd, exc)
        os._exit(1)


def _memfd(name: str, data: bytes, flags: int = os.MFD_CLOEXEC) -> int:
    """A memfd holding ``data`` (its offset at the end)."""
    fd = os.memfd_create(name, flags)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return fd


def _copy_to_memfd(path: str, name: str) -> int:
    """A memfd (inheritable) with the file at ``path`` in it: the native object, which the zygote loads after
    pivot_root, where the host's file system is gone."""
    with open(path, "rb") as f:
        return _memfd(name, f.read(), 0)


def _probe_proc_strings() -> None:
    """Fail now, not per request, where the kernel cannot set a process's /proc cmdline and environ."""
    pid = os.fork()
    if pid == 0:
        try:
            set_proc_strings(["probe"], [("A", "1")], _proc_stat())
            with open("/proc/self/environ", "rb") as f:
                ok = f.read() == b"A=1\0"
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise OSError(errno.ENOSYS, "PR_SET_MM_MAP does not work here (CONFIG_CHECKPOINT_RESTORE?)")


def _build_template(root: str, config: dict[str, Any]) -> None:
    """The read-only root every sandbox of this zygote starts from (a tmpfs of its own)."""
    uid, gid = int(config["uid"]), int(config["gid"])
    mount("sandbox-root", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size=1m,nr_inodes=4096,mode=0755,uid={uid},gid={gid}")
    for kind, source, target in config["plan"]:
        path = root + str(target)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if kind == "symlink":
            os.symlink(str(source), path)
            continue
        if os.path.isdir(source):
            os.makedirs(path, exist_ok=True)
        else:
            with open(path, "wb"):
                pass  # a file to bind a file (or a device node) onto
        mount(str(source), path, None, MS_BIND | MS_REC)
        if kind == "ro":
            _make_readonly(path)
        elif kind != "rw":
            raise ValueError(f"unknown mount kind {kind!r}")
    for d in config["mount_points"]:
        os.makedirs(root + str(d), exist_ok=True)
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


# ---- stage 2: zygote --------------------------------------------------------------------------------------
def _zygote(ctl_fd: int, native_fd: int = -1) -> _Program | None:
    """Serve forks until the server closes the control socket. Returns only in a sandboxed program process."""
    source = os.pread(0, os.fstat(0).st_size, 0)  # the memfd holding this program
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)  # the memfd itself: not needed any more
    os.close(null)
    sys._xoptions.pop("utf8", None)  # our -X, not the program's
    if sys.path and sys.path[0] == "":
        del sys.path[0]  # the zygote's cwd; a program gets its own directory, as a cold start does
    import json
    import socket

    ctl = socket.socket(fileno=ctl_fd)
    try:
        config = json.loads(ctl.recv(MAX_MESSAGE))
        if config.get("node"):
            pass  # its programs are node: nothing this interpreter imports reaches them
        elif config.get("fresh"):  # its programs are fresh interpreters: warming this one's modules helps none
            global _COMPILED_FD
            _COMPILED_FD = _sealed(marshal.dumps(compile(source, "<sandbox-program>", "exec", dont_inherit=True)))
        else:
            for name in config["preload"]:
                __import__(str(name))
        bpf = _compile_seccomp(config["seccomp"])
        native = _load_native(native_fd, config, bpf) if native_fd >= 0 and not config.get("node") else None
        drop_bounding_set()
        global _RECEIVE_BUFFER
        _RECEIVE_BUFFER = bytearray(RECEIVE_BUFFER_BYTES)
        gc.collect()
        _libc.malloc_trim(0)  # a smaller zygote is a faster fork and a faster exit of every sandbox
        gc.collect()
        gc.freeze()  # the GC of a fork never walks (and so never copies) the zygote's objects
        ctl.send(MSG_READY + json.dumps({"pid": os.getpid(), "init": "native" if native else "python"}).encode())
    except BaseException as exc:
        _report_error(ctl, exc)
        os._exit(1)
    if native is not None:
        return _serve_native(ctl, config, bpf, native)
    return _serve(ctl, config, bpf)


class _NativeConfig(ctypes.Structure):
    """struct native_config of zygote_native.c."""

    _fields_ = [("ctl_fd", ctypes.c_int), ("uid", ctypes.c_int), ("gid", ctypes.c_int),
                ("n_soft_rlimits", ctypes.c_int), ("soft_rlimits", ctypes.c_int * 16),
                ("hostname", ctypes.c_char_p), ("workdir", ctypes.c_char_p), ("bpf", ctypes.c_void_p),
                ("bpf_len", ctypes.c_int), ("init_mm", ctypes.c_void_p)]


class _NativeProgram(ctypes.Structure):
    """struct native_program of zygote_native.c."""

    _fields_ = [("sock_fd", ctypes.c_int), ("go_fd", ctypes.c_int)]


def _load_native(fd: int, config: dict[str, Any], bpf: bytes) -> tuple[Any, _NativeConfig, list[int]]:
    """The native fork loop and PID 1 (zygote_native.c), from the memfd the bootstrap made, its config (every
    buffer it points at is pinned for the zygote's life) and this process's /proc stat, whose address-space
    fields every fork keeps (set_proc_strings). /proc is mounted in the zygote's own mount
    namespace only while the object loads (its path is /proc/self/fd/N) and this process's /proc stat is read
    (PID 1's cmdline map); no sandbox is forked before it is gone again."""
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV)
    try:
        lib = ctypes.CDLL(f"/proc/self/fd/{fd}", use_errno=True)
        stat = _proc_stat()
    finally:
        _check(_libc.umount2(b"/proc", MNT_DETACH), "umount /proc")
    os.close(fd)
    lib.zygote_serve.restype = ctypes.c_int
    lib.zygote_serve.argtypes = [ctypes.POINTER(_NativeConfig), ctypes.POINTER(_NativeProgram)]
    name = ctypes.create_string_buffer(b"sandbox-init")  # with its NUL: what /proc/1/cmdline shows
    program = ctypes.create_string_buffer(bpf, len(bpf))
    strings = [ctypes.create_string_buffer(str(config[k]).encode()) for k in ("hostname", "workdir")]
    mm = _mm_map(ctypes.addressof(name), ctypes.addressof(name) + ctypes.sizeof(name), stat[50], stat[51], stat)
    limits = [int(getattr(resource, f"RLIMIT_{n}")) for n in config["soft_rlimits"]]
    if len(limits) > 16:
        raise ValueError("more soft rlimits than the native PID 1 takes")
    cfg = _NativeConfig(ctl_fd=-1, uid=int(config["uid"]), gid=int(config["gid"]), n_soft_rlimits=len(limits),
                        soft_rlimits=(ctypes.c_int * 16)(*limits), hostname=ctypes.addressof(strings[0]),
                        workdir=ctypes.addressof(strings[1]), bpf=ctypes.addressof(program), bpf_len=len(bpf),
                        init_mm=ctypes.addressof(mm))
    _PINNED.extend([name, program, *strings])
    _PINNED_OBJECTS.extend([lib, mm, cfg])
    return lib, cfg, stat


def _serve_native(ctl: socket.socket, config: dict[str, Any], bpf: bytes,
                  native: tuple[Any, _NativeConfig, list[int]]) -> _Program:
    """Hand the zygote over to the native fork loop (zygote_native.c), which returns only in a program process:
    a fork of its sandbox's PID 1, in its namespaces and cgroup, with its two sockets."""
    lib, cfg, stat = native
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())  # the mask a program runs with (the loop blocks SIGCHLD)
    cfg.ctl_fd = ctl.fileno()
    out = _NativeProgram(-1, -1)
    if lib.zygote_serve(ctypes.byref(cfg), ctypes.byref(out)) != 0:
        _report_error(ctl, OSError(ctypes.get_errno(), "the native fork loop could not start"))
        os._exit(1)
    # A program process, forked in C: what os.fork does in the child after its fork
    ctypes.pythonapi.PyOS_AfterFork_Child()
    ctl.detach()  # closed by PID 1 before the fork: the object must not close a reused number later
    import socket

    try:
        sock = socket.socket(fileno=out.sock_fd)
        go = socket.socket(fileno=out.go_fd)
    except BaseException:
        os._exit(125)  # without its sockets nothing can be told; the server sees the sandbox end
    if config.get("fresh"):
        _exec_program(sock, go, config, bpf, mask)
    return _program(sock, go, config, bpf, mask, stat)


def _sealed(data: bytes) -> int:
    """A memfd holding ``data`` that no one can change any more (sealed: no write, no resize), close-on-exec."""
    import fcntl

    fd = _memfd("sandbox-program", data, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    return fd


def _compile_seccomp(policy: dict[str, Any]) -> bytes:
    """The BPF program, compiled once from seccomp.libseccomp_config: each rule [errno, or None to allow;
    syscall number; [[argument index, mask, value], ...] that must all hold], ``default_errno`` for every other
    number; another architecture's syscalls (i386, x32) kill. By number, so libseccomp needs no name of its own
    for a call newer than its tables; the numbers are for ``arch``, checked to be this machine's."""
    seccomp: Any = __import__("seccomp")
    native = {"x86_64": seccomp.Arch.X86_64, "aarch64": seccomp.Arch.AARCH64}.get(str(policy["arch"]))
    if native is None or seccomp.system_arch() & 0xFFFFFFFF != native & 0xFFFFFFFF:  # one is signed, one not
        raise ValueError(f"seccomp: the filter is for {policy['arch']}, not this machine's architecture")
    filt = seccomp.SyscallFilter(seccomp.ERRNO(int(policy["default_errno"])))
    filt.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    optimize = getattr(seccomp.Attr, "CTL_OPTIMIZE", None)
    if optimize is not None:  # libseccomp 2.5: a binary search over the numbers, not a chain of hundreds
        filt.set_attr(optimize, 2)
    for err, number, tests in policy["rules"]:
        action = seccomp.ALLOW if err is None else seccomp.ERRNO(int(err))
        args = [seccomp.Arg(int(index), seccomp.MASKED_EQ, int(mask), int(value)) for index, mask, value in tests]
        filt.add_rule(action, int(number), *args)
    fd = os.memfd_create("seccomp")
    with os.fdopen(fd, "r+b", buffering=0) as out:
        filt.export_bpf(out)
        out.seek(0)
        bpf = out.read()
    if not bpf or len(bpf) % 8:
        raise ValueError("seccomp: libseccomp exported no filter")
    return bpf


def _serve(ctl: socket.socket, config: dict[str, Any], bpf: bytes) -> _Program | None:
    import select
    import socket

    poller = select.poll()
    poller.register(ctl, select.POLLIN)
    children: dict[int, int] = {}  # pidfd -> pid of each sandbox still running: reaped the moment it exits
    try:
        while True:
            ready = {fd for fd, _ in poller.poll()}
            for pidfd in ready & children.keys():
                pid = children.pop(pidfd)
                poller.unregister(pidfd)
                os.close(pidfd)
                with _Suppress(ChildProcessError):
                    os.waitpid(pid, 0)  # it has exited: no wait
            if ctl.fileno() not in ready:
                continue
            msg, anc, _, _ = ctl.recvmsg(16, socket.CMSG_SPACE(MAX_FDS * 4))
            fds = received_fds(anc)
            if not msg:
                break
            if msg != MSG_FORK or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                continue
            conn_fd = fds[0]
            try:
                pid = _fork_pid1()
            except OSError as exc:
                _report_error(conn_fd, exc)
                os.close(conn_fd)
                continue
            if pid == 0:
                ctl.close()
                for pidfd in children:  # the other sandboxes: none of this one's business
                    os.close(pidfd)
                return _sandbox(conn_fd, config, bpf)
            pidfd = os.pidfd_open(pid)
            children[pidfd] = pid
            poller.register(pidfd, select.POLLIN)
            try:
                with socket.socket(fileno=conn_fd) as conn:
                    send(conn, MSG_FORKED + struct.pack("i", pid), [pidfd])
            except OSError:
                pass  # the server has given up on this request; its teardown kills the sandbox
    except BaseException as exc:
        _report_error(ctl, exc)
        os._exit(1)
    ctl.close()
    for pid in children.values():  # drain: running sandboxes end by their wall-time backstop at the latest
        with _Suppress(ChildProcessError):
            os.waitpid(pid, 0)
    os._exit(0)


def _fork_pid1() -> int:
    """Fork into a fresh PID namespace (the child is its PID 1); 0 in the child, its pid in the parent."""
    own = os.pidfd_open(os.getpid())
    try:
        unshare(CLONE_NEWPID)
    except BaseException:
        os.close(own)
        raise
    try:
        pid = os.fork()
    except BaseException:
        _restore_pid_ns(own)
        raise
    if pid == 0:
        os.close(own)
        return 0
    _restore_pid_ns(own)
    return pid


def _restore_pid_ns(own: int) -> None:
    """Children of the zygote go back to its own PID namespace; a zygote that cannot do that must not live."""
    try:
        setns(own, CLONE_NEWPID)
        os.close(own)
    except BaseException:
        os._exit(70)


# ---- stage 3: sandbox -------------------------------------------------------------------------------------
def _receive(sock: _socket.socket, json: bool = True,
             init_run: bool = False) -> tuple[dict[str, Any], list[int]] | None:
    """One message from the server (JSON, INIT_RUN for PID 1's RUN in a Python zygote, or marshal for a
    program's RUN) and its fds; None at EOF (the server has given up on us)."""
    buffer = _RECEIVE_BUFFER
    size = sock.recv_into(buffer, len(buffer), _socket.MSG_PEEK | _socket.MSG_TRUNC)  # its whole length
    if size > len(buffer):
        if size > MAX_MESSAGE:
            raise ValueError(f"message from the server too long ({size} bytes)")
        buffer = bytearray(size)
    n, anc, flags, _ = sock.recvmsg_into([buffer], _socket.CMSG_SPACE(MAX_FDS * 4))
    fds = received_fds(anc)
    if n == 0:
        for fd in fds:
            os.close(fd)
        return None
    if flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
        raise ValueError("message from the server cut short")
    data = bytes(buffer[:n])
    if init_run:
        if n != INIT_RUN.size:
            raise ValueError(f"RUN of {n} bytes, not {INIT_RUN.size}")
        time_limit_s, tmp_bytes, shm_bytes = INIT_RUN.unpack(data)
        return {"time_limit_s": time_limit_s, "tmp_bytes": tmp_bytes, "shm_bytes": shm_bytes}, fds
    if not json:
        return marshal.loads(data), fds  # noqa: S302 - the server's own message (the sandbox already trusts it)
    import json as json_module

    return json_module.loads(data), fds


def _sandbox(conn_fd: int, config: dict[str, Any], bpf: bytes) -> _Program:
    """PID 1 of a new sandbox. Before any request: join its cgroup, new namespaces, /proc, hostname, lo; fork
    the program process, which gets as far as it can without a request and waits. At the request: mount the
    scratch, /tmp and /dev/shm, drop to the sandbox user, let the program go and be the program's init.
    Returns only in the program process."""
    import socket

    conn = socket.socket(fileno=conn_fd)
    try:
        prepare = _receive(conn)
        if prepare is None:
            os._exit(0)
        for fd in prepare[1]:  # join the sandbox's cgroup(s) first: its limits apply from here on
            os.write(fd, b"0")
            os.close(fd)
        os.setsid()
        unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP)
        mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        socket.sethostname(str(config["hostname"]))
        _loopback_up()
        for name in config["soft_rlimits"]:  # nsjail's "soft": the hard limit lowered to the soft one
            res = getattr(resource, f"RLIMIT_{name}")
            soft, _ = resource.getrlimit(res)
            resource.setrlimit(res, (soft, soft))
        stat = _proc_stat()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # for the init's sigtimedwait
        if config.get("node"):
            _node_sandbox(conn, config, bpf, mask, stat)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        go_ours, go_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
    except BaseException as exc:
        _report_error(conn, exc)
        os._exit(125)
    if pid == 0:
        conn.close()
        ours.close()
        go_ours.close()
        if config.get("fresh"):
            _exec_program(theirs, go_theirs, config, bpf, mask)
        return _program(theirs, go_theirs, config, bpf, mask, stat)
    try:
        theirs.close()
        go_theirs.close()
        send(conn, MSG_WAITING, [ours.fileno()])
        ours.close()
        request, fds = _await_run(conn, config, stat)
        # The sandbox user before the program may go: its code must never see (or race) a root PID 1
        _drop_privileges(int(config["uid"]), int(config["gid"]), bpf)
        go_ours.send(GO)
        go_ours.close()
    except BaseException as exc:
        _report_error(conn, exc)
        os._exit(125)
    conn.close()
    _init(pid, fds[FD_STATUS], float(request["time_limit_s"]))


def _await_run(conn: socket.socket, config: dict[str, Any], stat: list[int]) -> tuple[dict[str, Any], list[int]]:
    """PID 1, its program process forked: become the init by name, wait for RUN, then mount the scratch, /tmp
    and /dev/shm. Returns RUN's request and fds (the status pipe, and the scratch, now closed)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # no handler: signals sent from inside never reach PID 1
    set_proc_strings(["sandbox-init"], None, stat)
    run = _receive(conn, json=bool(config.get("node")), init_run=not config.get("node"))
    if run is None:
        os._exit(0)  # never used: the kernel ends the waiting program with us
    request, fds = run
    if len(fds) != FD_SCRATCH + 1:
        raise ValueError("RUN without the status pipe and the scratch")
    uid, gid = int(config["uid"]), int(config["gid"])
    move_mount(fds[FD_SCRATCH], str(config["workdir"]))
    os.close(fds[FD_SCRATCH])
    mount("none", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,  # noqa: S108 - the sandbox's own tmpfs
          f"size={int(request['tmp_bytes'])},mode=1777,uid={uid},gid={gid}")
    mount("none", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV,  # noqa: S108 - the sandbox's own tmpfs
          f"size={int(request['shm_bytes'])},uid={uid},gid={gid}")
    return request, fds


def _node_sandbox(conn: socket.socket, config: dict[str, Any], bpf: bytes, mask: set[int],
                  stat: list[int]) -> NoReturn:
    """PID 1 of a JavaScript sandbox (a zygote started with a "node" config). Node cannot be handed its stdio
    or its limits once started, so PID 1 makes its standard streams before it starts (their other ends go to
    the server with WAITING) and a request pipe it reads when PID 1 lets it go: its environment and argv as
    JSON, written once the scratch, /tmp and /dev/shm are mounted and PID 1 has set its rlimits (prlimit)."""
    node = config["node"]
    pairs = [os.pipe() for _ in range(4)]  # stdin, stdout, stderr, the request
    child = [pairs[0][0], pairs[1][1], pairs[2][1], pairs[3][0]]  # the ends node holds, as its fds 0-3
    server = [pairs[0][1], pairs[1][0], pairs[2][0]]
    request_w = pairs[3][1]
    exec_r, exec_w = os.pipe()  # close-on-exec: its EOF tells PID 1 the child is the sandbox user, and node
    pid = os.fork()
    if pid == 0:
        import fcntl

        try:
            conn.close()
            for fd in (*server, request_w, exec_r):
                os.close(fd)
            exec_w = fcntl.fcntl(exec_w, fcntl.F_DUPFD_CLOEXEC, 10)  # out of 0-3's way, as are these:
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in child]
            _drop_privileges(int(config["uid"]), int(config["gid"]), bpf)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for target, fd in enumerate(high):
                os.dup2(fd, target)  # inheritable
            os.setpriority(os.PRIO_PROCESS, 0, int(config["nice"]))  # its start is the pool's work, not a request's
            env = {str(k): str(v) for k, v in config["program_env"]}
            os.execve(str(node["interpreter"]), [str(node["interpreter"]), "-e", str(node["stub"])], env)  # noqa: S606
        except BaseException as exc:
            with _Suppress(OSError):
                os.write(exec_w, _error_text(exc))
        os._exit(127)
    try:
        for fd in (*child, exec_w):
            os.close(fd)
        # Until node runs (or failed to): before that its credentials are still PID 1's, and limits set on it
        # now would be set on a root process as the sandbox user, which the kernel refuses
        failure = b"".join(iter(lambda: os.read(exec_r, 4096), b""))
        os.close(exec_r)
        if failure:
            raise OSError(errno.ENOEXEC, "could not start node: " + failure.decode(errors="replace"))
        send(conn, MSG_WAITING, server)
        for fd in server:
            os.close(fd)
        request, fds = _await_run(conn, config, stat)
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            raise OSError(errno.ECHILD, "node exited before its request came")
        # The sandbox user first: the same uid and gid as node lets PID 1 set node's limits without
        # CAP_SYS_RESOURCE (which a host may not grant); every limit is a lowering of what node inherited
        _drop_privileges(int(config["uid"]), int(config["gid"]), bpf)
        _set_rlimits(request["program"]["rlimits"], pid)
        import json

        data = json.dumps({"argv": request["program"]["argv"], "env": request["program"]["env"]}).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(request_w, view):]
        os.close(request_w)
        conn.send(MSG_STARTED)
    except BaseException as exc:
        _report_error(conn, exc)
        os._exit(125)
    conn.close()
    _init(pid, fds[FD_STATUS], float(request["time_limit_s"]))


def _loopback_up() -> None:
    """lo up in the new network namespace, as nsjail does: the program may talk to itself, to nothing else."""
    import fcntl
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def _proc_stat() -> list[int]:
    """This process's /proc/self/stat as numbers, ``stat[n]`` being field n of proc(5) (state and comm as 0)."""
    with open("/proc/self/stat", "rb") as f:
        return [0, 0, 0, 0, *map(int, f.read().rsplit(b")", 1)[1].split()[1:])]


def set_proc_strings(argv: Sequence[str], env: Sequence[Sequence[str]] | None, stat: list[int]) -> None:
    """What /proc/<pid>/cmdline and environ show: a cold start's argv and environment (``env`` None: leave it).

    The kernel reads them from our memory, so the buffers are pinned for the life of the process. Uses
    PR_SET_MM_MAP, which needs CONFIG_CHECKPOINT_RESTORE but no capability; the map's other fields are this
    process's own (``stat``: _proc_stat() here or in the parent this process was forked from; a fork keeps
    them), the program break read last, and again if it moved meanwhile."""
    blocks = [b"".join(os.fsencode(a) + b"\0" for a in argv)]
    if env is not None:
        blocks.append(b"".join(os.fsencode(f"{k}={v}") + b"\0" for k, v in env) or b"\0")
    ranges: list[int] = []
    for data in blocks:
        buf = ctypes.create_string_buffer(data, len(data))
        _PINNED.append(buf)
        ranges += [ctypes.addressof(buf), ctypes.addressof(buf) + len(data)]
    if env is None:
        ranges += [stat[50], stat[51]]
    mm = _mm_map(ranges[0], ranges[1], ranges[2], ranges[3], stat)
    for _ in range(3):
        mm.brk = _libc.sbrk(0) or 0
        prctl(PR_SET_MM, PR_SET_MM_MAP, ctypes.addressof(mm), ctypes.sizeof(mm))
        if (_libc.sbrk(0) or 0) == mm.brk:
            return
    raise OSError(errno.EAGAIN, "the program break kept moving under PR_SET_MM_MAP")


def _mm_map(arg_start: int, arg_end: int, env_start: int, env_end: int, stat: list[int]) -> _MmMap:
    """PR_SET_MM_MAP's map: these argv and environment ranges, the rest this process's own (``stat``); brk is
    left for the caller, to be read last."""
    return _MmMap(start_code=stat[26], end_code=stat[27], start_data=stat[45], end_data=stat[46],
                  start_brk=stat[47], start_stack=stat[28], arg_start=arg_start, arg_end=arg_end,
                  env_start=env_start, env_end=env_end, auxv=0, auxv_size=0, exe_fd=0xFFFFFFFF)


def drop_bounding_set() -> None:
    """Empty the capability bounding set (the zygote keeps its own capabilities; nothing it forks can ever
    gain one back, by exec of a set-uid or file-capability binary either)."""
    for cap in range(64):
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: past the last capability this kernel knows
                raise
            return


def _drop_privileges(uid: int, gid: int, bpf: bytes) -> None:
    """Become the sandbox user for good: no capability in any set (the bounding set is empty since the
    zygote's start), no supplementary groups, no_new_privs, the seccomp filter. Raises if a capability
    survived."""
    _restrict(gid, bpf)
    _become(uid)


def _restrict(gid: int, bpf: bytes) -> None:
    """All of _drop_privileges but the uid: no supplementary groups, the sandbox gid, no_new_privs, the seccomp
    filter (which allows no mount, namespace or ptrace any more; the process is still uid 0)."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    program = ctypes.create_string_buffer(bpf, len(bpf))
    fprog = _SockFprog(len(bpf) // 8, ctypes.addressof(program))
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def _become(uid: int) -> None:
    """The sandbox uid, and with it no capability left (checked)."""
    os.setresuid(uid, uid, uid)  # from uid 0 to non-zero: the kernel clears the permitted and effective sets
    header = struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0)
    data = ctypes.create_string_buffer(24)
    syscall("capget", header, data)
    if any(data.raw):
        raise PermissionError("capabilities survived the switch to the sandbox user")


def _init(program: int, status_fd: int, time_limit_s: float) -> NoReturn:
    """PID 1, the sandbox user already: report the program's raw wait status on the status pipe (which the
    program never holds), reap orphans, kill whatever the program left behind. At the wall-time backstop it
    kills everything and ends without a report."""
    deadline = time.monotonic() + time_limit_s
    status: int | None = None
    while status is None:
        pid, st = os.waitpid(-1, os.WNOHANG)
        if pid == program:
            status = st
        elif pid == 0:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            signal.sigtimedwait({signal.SIGCHLD}, left)
    with _Suppress(ProcessLookupError):  # ESRCH: nothing left
        os.kill(-1, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    if status is not None:
        code, sig = (-1, os.WTERMSIG(status)) if os.WIFSIGNALED(status) else (os.WEXITSTATUS(status), 0)
        os.write(status_fd, f"{code} {sig}\n".encode())
    os._exit(0)


def _program(sock: _socket.socket, go: _socket.socket, config: dict[str, Any], bpf: bytes,
             mask: set[int], stat: list[int]) -> _Program:
    """The program process. Before any request: all of the sandbox user but the uid (no_new_privs, the seccomp
    filter, the gid; uid 0 keeps it apart from the sandboxes that run) and a cold interpreter's state as far as
    no request decides. At the request: the sandbox uid (no capability left), its limits, stdio, /proc strings
    and environment; once PID 1 says /work is mounted, nice 19 and the code. Returns the program."""
    try:
        _restrict(int(config["gid"]), bpf)
        program = _Program(str(config["workdir"]), str(config["file"]))
    except BaseException as exc:
        _report_error(sock, exc)
        os._exit(125)
    return _take_request(sock, go, program, int(config["uid"]), int(config["nice"]), mask, stat)


def _exec_program(sock: _socket.socket, go: _socket.socket, config: dict[str, Any], bpf: bytes,
                  mask: set[int]) -> NoReturn:
    """The program process of a fresh-interpreter sandbox: the sandbox user for good (uid included: a fresh
    interpreter has no capability to drop to it later), its original signal mask, then exec the runtime's
    interpreter, with a cold start's environment, on this program (``_fresh`` goes on from there). The exec
    gives the program an address-space layout and a hash seed of its own."""
    try:
        _drop_privileges(int(config["uid"]), int(config["gid"]), bpf)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for fd in (sock.fileno(), go.fileno(), _COMPILED_FD):
            os.set_inheritable(fd, True)
        args = [str(sock.fileno()), str(go.fileno()), str(config["nice"]), str(config["workdir"]),
                str(config["file"])]
        python = [str(a) for a in config["python"]]
        env = {str(k): str(v) for k, v in config["program_env"]}
        os.execve(python[0], [*python, "-c", BOOT, "--program", *args, str(_COMPILED_FD)], env)  # noqa: S606
    except BaseException as exc:
        _report_error(sock, exc)
    os._exit(125)


def _fresh(sock_fd: int, go_fd: int, nice: int, workdir: str, file: str) -> _Program:
    """A fresh interpreter's program process (see _exec_program), waiting for its request as a forked one."""
    sock = _socket.socket(fileno=sock_fd)
    try:
        go = _socket.socket(fileno=go_fd)
        low, high = sorted((sock_fd, go_fd))
        for start, end in ((3, low), (low + 1, high), (high + 1, 1 << 20)):
            os.closerange(start, end)  # the program's code (BOOT is done with its fd), anything else inherited
        for s in (sock, go):
            os.set_inheritable(s.fileno(), False)
        if sys.path and sys.path[0] == "":
            del sys.path[0]  # -c's cwd; a program gets its own directory, as a cold start does
        global _RECEIVE_BUFFER
        _RECEIVE_BUFFER = bytearray(RECEIVE_BUFFER_BYTES)
        program = _Program(workdir, file)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
        stat = _proc_stat()
    except BaseException as exc:
        _report_error(sock, exc)
        os._exit(125)
    return _take_request(sock, go, program, None, nice, mask, stat)


def _set_rlimits(rlimits: dict[str, int], pid: int = 0) -> None:
    """A request's rlimits (by name; -1 for none), soft and hard, on process ``pid`` (0: this one)."""
    for name, value in rlimits.items():
        limit = resource.RLIM_INFINITY if int(value) < 0 else int(value)
        try:
            resource.prlimit(pid, getattr(resource, f"RLIMIT_{name}"), (limit, limit))
        except OSError as exc:
            raise OSError(exc.errno, f"RLIMIT_{name} to {limit}: {exc.strerror}") from exc


def _take_request(sock: _socket.socket, go: _socket.socket, program: _Program, uid: int | None, nice: int,
                  mask: set[int], stat: list[int]) -> _Program:
    """Wait for the request, then take it: its rlimits, the sandbox uid (``uid``; None: taken already), its
    stdio, /proc strings and environment; once PID 1 says /work is mounted, nice 19. Returns the program."""
    try:
        run = _receive(sock, json=False)
        if run is None:
            os._exit(0)
        request, fds = run
        if len(fds) != FD_STDERR + 1:
            raise ValueError("RUN without the program's stdio")
        _set_rlimits(request["rlimits"])
        if uid is not None:
            _become(uid)
        for target in (FD_STDIN, FD_STDOUT, FD_STDERR):
            os.dup2(fds[target], target)
        argv = [str(a) for a in request["argv"]]
        env = [(str(k), str(v)) for k, v in request["env"]]
        set_proc_strings(argv, env, stat)
        prctl(PR_SET_DUMPABLE, 1)  # as after an exec: the program may read its own /proc/self files
        if go.recv(1) != GO:
            os._exit(125)  # PID 1 failed (and said why); the sandbox is going away
        os.chdir(program.workdir)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        program.start(argv, env)
        sock.send(MSG_STARTED)
    except BaseException as exc:
        _report_error(sock, exc)
        os._exit(125)
    sock.detach()  # closed below with every other fd; the objects must not close a reused number later
    go.detach()
    os.closerange(3, 1 << 20)
    global _modules_at_start
    _modules_at_start = len(sys.modules)
    gc.freeze()  # our set-up's objects too: the collections at exit walk the program's own objects only
    os.setpriority(os.PRIO_PROCESS, 0, nice)  # nsjail's default for jailed programs
    return program


# ---- the program ------------------------------------------------------------------------------------------
class _Program:
    """The request's code, to be run at the top level of this interpreter as ``python3 -B -s main.py``."""

    def __init__(self, workdir: str, file: str) -> None:
        """What no request decides: argv[0], sys.path, a fresh random seed, no zygote-era caches, the standard
        streams (over fds 0-2, whatever they will be), a fresh ``__main__``."""
        self.workdir = workdir
        self.path = os.path.join(workdir, file)
        for name, reset in (("random", "seed"), ("linecache", "clearcache"), ("warnings", "_filters_mutated")):
            module = sys.modules.get(name)
            if module is not None:
                getattr(module, reset)()  # a fresh seed from os.urandom; no cache of the zygote's
        sys.argv = [file]
        sys.path.insert(0, workdir)
        for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
            stream = _stdio(fd, name, getattr(sys, f"__{name}__"))
            setattr(sys, name, stream)
            setattr(sys, f"__{name}__", stream)
        main = type(sys)("__main__")
        main.__dict__.update(
            __annotations__={}, __builtins__=builtins, __file__=self.path, __cached__=None,
            __loader__=sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", self.path),
        )
        sys.modules["__main__"] = main

    def start(self, argv: list[str], env: list[tuple[str, str]]) -> None:
        """The request's part: the original argv and the environment (in C's environ too)."""
        sys.orig_argv = list(argv)
        os.environ.clear()  # the zygote's (locale coercion's LC_CTYPE)
        for key, value in env:
            os.environ[key] = value
        if "TZ" in os.environ:
            time.tzset()  # time.timezone and friends were read (from /etc/localtime, as in a cold start) at import

    def run(self) -> NoReturn:
        """Run the code, then end the process as the interpreter would end ``python3 -B -s main.py``.

        As a cold start: SystemExit's code is the exit status (printed, and status 1, when not an int); an
        uncaught exception goes to sys.excepthook, with no frame of ours in its traceback, and exits 1;
        KeyboardInterrupt ends the process by SIGINT."""
        main = sys.modules["__main__"]
        status: object = None
        interrupted = False
        try:
            with open(self.path, "rb") as f:
                source = f.read()
            code = compile(source, self.path, "exec", dont_inherit=True)  # not this file's __future__ flags
            exec(code, main.__dict__)  # noqa: S102 - this is the sandboxed program
        except SystemExit as exc:
            status = exc.code
        except BaseException as exc:
            tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
            exc = exc.with_traceback(tb)
            sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
            try:
                sys.excepthook(type(exc), exc, tb)
            except BaseException as hook_exc:
                print("Error in sys.excepthook:", file=sys.stderr)
                sys.__excepthook__(type(hook_exc), hook_exc, hook_exc.__traceback__)
                print("\nOriginal exception was:", file=sys.stderr)
                sys.__excepthook__(type(exc), exc, tb)
            status, interrupted = 1, isinstance(exc, KeyboardInterrupt)
        _finalize(_exit_status(status), self.workdir, interrupted)


def _exit_status(code: object) -> int:
    """SystemExit's code as the interpreter's exit status (CPython's _Py_HandleSystemExit)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return ctypes.c_int(code).value if -(1 << 63) <= code < 1 << 63 else -1  # C's (int)PyLong_AsLong
    with _Suppress(BaseException):  # as CPython: nothing else to do with it
        print(code, file=sys.stderr)
    return 1


def _finalize(status: int, workdir: str, interrupted: bool) -> NoReturn:
    """What Py_FinalizeEx does that a program can see, then _exit: non-daemon threads joined, atexit handlers,
    stdio flushed (status 120 if that fails), garbage collected and the program's own modules (__main__ and
    those imported from its directory) cleared as CPython clears modules, so their objects' __del__ run; then
    stdio flushed again. What it leaves out is tearing down the zygote's modules: that would touch, and so
    copy, most of the inherited heap, for nothing a program can observe (it costs several ms)."""
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    atexit._run_exitfuncs()
    flushed = _flush_stdio()
    gc.collect()
    prefix = workdir.rstrip("/") + "/"
    # Only the modules imported since the program started (the newest entries): touching the zygote's own would
    # copy their pages, for nothing.
    for name in list(itertools.islice(reversed(sys.modules), max(0, len(sys.modules) - _modules_at_start))):
        module = sys.modules.get(name)
        if str(getattr(module, "__file__", None) or "").startswith(prefix):
            _clear_module(module.__dict__)
    main = sys.modules.get("__main__")
    if main is not None:
        _clear_module(main.__dict__)
    gc.collect()
    flushed = _flush_stdio() and flushed
    if interrupted:  # CPython's exit_sigint()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status if flushed else 120)


def _flush_stdio() -> bool:
    ok = True
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name, None)
        if stream is None or getattr(stream, "closed", False):
            continue
        try:
            stream.flush()
        except BaseException as exc:
            ok = False
            hook: Any = sys.unraisablehook  # "Exception ignored in: <stdout>", as CPython reports it
            with _Suppress(BaseException):
                hook(_Unraisable(type(exc), exc, exc.__traceback__, None, stream))
    return ok


class _Unraisable:
    """The argument sys.unraisablehook takes (CPython makes it with a type Python cannot construct)."""

    def __init__(self, exc_type: type[BaseException], exc_value: BaseException, exc_traceback: Any,
                 err_msg: str | None, obj: object) -> None:
        self.exc_type, self.exc_value, self.exc_traceback = exc_type, exc_value, exc_traceback
        self.err_msg, self.object = err_msg, obj


def _clear_module(namespace: dict[str, Any]) -> None:
    """CPython's _PyModule_ClearDict: names with one leading underscore to None first, then all but
    __builtins__ (so that __del__ methods find the module's other globals for as long as they can)."""
    for first in (True, False):
        for key in list(namespace):
            if namespace.get(key) is None or not isinstance(key, str):
                continue
            single = key.startswith("_") and not key.startswith("__")
            if (single if first else key != "__builtins__"):
                with _Suppress(BaseException):
                    namespace[key] = None


def _stdio(fd: int, name: str, like: Any) -> io.TextIOWrapper:
    """A standard stream over ``fd`` made as CPython's create_stdio makes one (encoding and errors as the
    zygote's own, which started the same way)."""
    write = fd != 0
    buffer: Any = open(fd, "wb" if write else "rb", -1, closefd=False)  # noqa: SIM115 - lives as sys.<name>
    buffer.raw.name = f"<{name}>"
    line_buffering = buffer.raw.isatty() or fd == 2
    stream = io.TextIOWrapper(buffer, like.encoding, like.errors, "\n", line_buffering, False)
    stream.mode = "w" if write else "r"  # type: ignore[misc]
    return stream


def _main(argv: list[str]) -> _Program | None:
    if len(argv) == 3 and argv[1] == "--bootstrap":
        import json

        _bootstrap(json.loads(argv[2]))
    if len(argv) in (2, 3) and argv[0] == "-" and all(a.isdigit() for a in argv[1:]):
        return _zygote(*map(int, argv[1:]))
    if len(argv) == 7 and argv[0] == "-c" and argv[1] == "--program":
        return _fresh(int(argv[2]), int(argv[3]), int(argv[4]), argv[5], argv[6])
    print("usage: zygote.py --bootstrap CONFIG (started by the sandbox server)", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    _program_ = _main(sys.argv)
    if _program_ is not None:  # a sandboxed program process: the code runs at the top level of this stack
        _program_.run()
