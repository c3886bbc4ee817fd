"""The session agent: PID 1 of every session's sandbox, on both backends.

It runs inside the sandbox, as the sandbox user, under the same namespaces, seccomp filter, cgroup and rlimits
as any program, with the sandbox's own ``/usr/bin/python3`` (the host's, read-only, on nsjail; the image's on
Docker). The server starts it as ``python3 -I -c <this file's source> <kernel_launcher.py's source>`` and talks
to it over its stdin and stdout only: pipes (nsjail) or the container's attached stdio (Docker), never a path. It
owns, inside the sandbox:

- the session's IPython kernel (ipykernel, started ahead, driven with ``jupyter_client`` over the Jupyter
  messaging protocol on unix sockets in a directory private to the sandbox, so no network is needed);
- bash and JavaScript calls, each a fresh process in the same workspace;
- the workspace file operations (upload, download, list, delete), done with the sandbox's own rights, one
  directory component at a time without following links, so nothing outside the workspace is reachable;
- the processes: as PID 1 it reaps every orphan, and when a call ends (and again when the next one begins) it
  kills every process but itself and the kernel, so nothing a call started outlives it.

Why PID 1: the kernel does not deliver a signal sent from inside the namespace to its init unless the init
handles it, so the session's code cannot kill or stop the agent; and the agent makes itself non-dumpable
first, so the code (same user) can neither trace it nor open ``/proc/1/fd`` to forge its frames. Processes it
starts get ``oom_score_adj`` 1000: at the memory limit the kernel's OOM killer takes them, not the agent.

Protocol: frames of ``>II`` (header length, payload length), a JSON object header with an ``op``, then the
payload bytes. The server treats every frame from here as untrusted (sizes capped, fields checked), since the
agent shares its sandbox with the code it runs.

This file is a standalone program: it imports nothing of the server, and only the standard library and
``jupyter_client`` (for the kernel), which the sandbox's Python must have.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import errno
import json
import os
import queue
import re
import secrets
import shutil
import signal
import stat
import struct
import sys
import time
from collections import deque
from typing import Any

FRAME = struct.Struct(">II")
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 64 << 20
WORKDIR = "/work"
RUN_DIR = "/run/sandbox"  # the kernel's sockets and connection file, the calls' code files
READ_CHUNK = 64 * 1024
MAX_LIST_ENTRIES = 10_000
MAX_LIST_DEPTH = 16
MAX_OPEN_FILES = 16
KERNEL_START_TIMEOUT_S = 60.0
STRAY_ROUNDS = 25  # of listing and killing before every process goes at once
READ_POLL_S = 0.25
LOG_TAIL = 8192
PR_SET_DUMPABLE = 4
# The sandbox's processes start through this shell: in the workspace, and first in line for the OOM killer.
WRAPPER = 'cd /work || exit 126; echo 1000 > /proc/self/oom_score_adj 2>/dev/null; exec "$@"'
# The kernel's program (debugpy blocked, stdout and stderr with back-pressure, the fd capture drained at each
# call's end): kernel_launcher.py, package data beside this file, passed to the kernel's python3 as its -c source.
KERNEL_LAUNCHER_FILE = "kernel_launcher.py"


def _kernel_launcher() -> str:
    """kernel_launcher.py's text. On the server, this module is in its package and reads it from there. In the
    sandbox this file is ``python3 -c`` source with no package around it (and nothing of the server to read): the
    server passes that text as the agent's one argument (sessions/start.py)."""
    if not __package__:
        if len(sys.argv) != 2:
            sys.exit("usage: python3 -I -c <agent source> <kernel launcher source>")
        return sys.argv[1]
    from importlib import resources  # here only: the agent's own start in the sandbox does not pay for it

    return resources.files(__package__).joinpath(KERNEL_LAUNCHER_FILE).read_text(encoding="utf-8")


KERNEL_LAUNCHER = _kernel_launcher()
KERNEL_ARGS = (
    "--HistoryManager.enabled=False",  # no history database in the workspace or the kernel's dirs
    "--InteractiveShell.colors=NoColor",  # tracebacks as plain text
    "--IPKernelApp.quiet=True",
)
COMMANDS = {
    "bash": ("/bin/bash", "--noprofile", "--norc"),
    "javascript": ("/usr/bin/node",),
}
CODE_SUFFIX = {"bash": ".sh", "javascript": ".js"}
# Evaluated by the kernel (as a user expression: it binds no name) in the readiness probe: True once the probe's
# message, sent on the stdin channel just before, has reached the kernel's stdin socket, which proves the kernel
# can route an input request to us. The kernel drops whatever is left there before each input() anyway.
STDIN_PROBE = ("(lambda k: bool(k.stdin_socket.poll(100)) and bool(k.stdin_socket.recv_multipart()))"
               "(get_ipython().kernel)")
PROBE_WAIT_S = 0.5
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
UPLOAD_TEMP_RE = re.compile(r"\.upload-[0-9a-f]{16}")
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(Exception):
    """A request the agent will not carry out; its message goes back to the server."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def harden() -> None:
    """Non-dumpable (no ptrace, no /proc/1/fd for the session's code), and the signals a PID 1 must own."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        sys.exit(125)
    # Python installs a SIGINT handler: as PID 1 that would let the session's code interrupt the agent.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # A write past the file-size limit is then an error (EFBIG) for the agent, never its death.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


# ---------------------------------------------------------------------------------------------- the channel
class Channel:
    """Frames to and from the server over the agent's stdin and stdout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.lock = asyncio.Lock()

    async def read(self) -> tuple[dict[str, Any], bytes] | None:
        try:
            head = await self.reader.readexactly(FRAME.size)
            hlen, plen = FRAME.unpack(head)
            if hlen > MAX_HEADER or plen > MAX_PAYLOAD:
                raise ValueError("frame too large")
            header = json.loads(await self.reader.readexactly(hlen))
            payload = await self.reader.readexactly(plen) if plen else b""
        except asyncio.IncompleteReadError:
            return None
        if not isinstance(header, dict):
            raise ValueError("a frame header must be a JSON object")
        return header, payload

    async def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        data = json.dumps(header, separators=(",", ":")).encode()
        async with self.lock:
            self.writer.write(FRAME.pack(len(data), len(payload)) + data + payload)
            await self.writer.drain()


# ---------------------------------------------------------------------------------------------- processes
class Processes:
    """PID 1's duties: reap every child and orphan, start processes, kill what a call left behind."""

    def __init__(self) -> None:
        self.waiters: dict[int, asyncio.Future[int]] = {}
        self.keep: set[int] = set()  # besides PID 1: the kernel

    def on_sigchld(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            waiter = self.waiters.pop(pid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(status)

    def spawn(self, argv: list[str], env: dict[str, str], fds: tuple[int, int, int]) -> tuple[int, asyncio.Future[int]]:
        """Start ``argv`` through WRAPPER with ``fds`` as its stdin, stdout and stderr, in a process group of
        its own; returns its pid and a future of its wait status."""
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)]
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", WRAPPER, "sandbox-exec", *argv], env,
                             file_actions=actions, setpgroup=0, setsigmask=(),
                             setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM))
        self.waiters[pid] = waiter
        self.on_sigchld()  # it may have ended already
        return pid, waiter

    async def kill_strays(self) -> tuple[int, bool]:
        """SIGKILL every process but PID 1 and the ones kept, until none is left; (how many, purged). A process
        is always seen while it lives (a child exists before its parent can exit), so one listing without a
        stray means there is none. Processes that keep forking can outrun kills by pid, though: still there
        after STRAY_ROUNDS rounds, everything goes at once with kill(-1) (which a fork cannot escape), the
        kernel included (purged: True; the kernel is then restarted)."""
        killed = 0
        for _ in range(STRAY_ROUNDS):
            strays = [pid for pid in _live_pids() if pid != 1 and pid not in self.keep]
            if not strays:
                return killed, False
            for pid in strays:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # a zombie leader's live threads die with it
                    killed += 1
            await asyncio.sleep(0.002)
            self.on_sigchld()
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)  # from PID 1: every other process of the namespace
        for _ in range(500):
            self.on_sigchld()
            if not [pid for pid in _live_pids() if pid != 1]:
                break
            await asyncio.sleep(0.002)
        return killed, True


def _live_pids() -> list[int]:
    """Every process of this PID namespace with a thread still running: a zombie whose threads are all gone is
    dead, but a thread-group leader that called pthread_exit is a zombie whose other threads run on."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (_running(f"/proc/{name}/stat") or any(
                _running(f"/proc/{name}/task/{tid}/stat") for tid in _tasks(name))):
            out.append(int(name))
    return out


def _running(stat_path: str) -> bool:
    try:
        with open(stat_path, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return False
    return bool(fields) and fields[0] not in (b"Z", b"X")


def _tasks(pid: str) -> list[str]:
    try:
        return [tid for tid in os.listdir(f"/proc/{pid}/task") if tid != pid]
    except OSError:
        return []


def wait_outcome(status: int) -> tuple[int, int]:
    """(exit code, signal) of a wait status; exit code -1 when a signal ended it."""
    if os.WIFSIGNALED(status):
        return -1, os.WTERMSIG(status)
    return os.WEXITSTATUS(status), 0


async def _pump(fd: int, emit: Any, sink: list[bytes] | None = None) -> None:
    """Forward what a pipe carries until its writers are all gone."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", 0))
    try:
        while chunk := await reader.read(READ_CHUNK):
            if sink is not None:
                sink.append(chunk)
            await emit(chunk)
    finally:
        transport.close()


# ---------------------------------------------------------------------------------------------- the kernel
class PythonCall:
    """One execute_request in flight: forwards its outputs, answers its input requests, collects its end."""

    def __init__(self, agent: Agent, call_id: int, msg_id: str, stdin: bytes) -> None:
        self.agent = agent
        self.id = call_id
        self.msg_id = msg_id
        self.lines = deque(stdin.decode("utf-8", "replace").splitlines()) if stdin else deque()
        self.reply: dict[str, Any] | None = None
        self.idle = False
        self.value = ""
        self.error: dict[str, Any] | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def check_done(self) -> None:
        if self.reply is not None and self.idle and not self.done.done():
            self.done.set_result(None)


class Kernel:
    """The session's IPython kernel and its jupyter_client client."""

    def __init__(self, agent: Agent, generation: int) -> None:
        self.agent = agent
        self.generation = generation
        self.base = f"{RUN_DIR}/kernel-{secrets.token_hex(8)}"
        self.pid = 0
        self.exited: asyncio.Future[int] | None = None
        self.client: Any = None
        self.tasks: list[asyncio.Task[None]] = []
        self.calls: dict[str, PythonCall] = {}
        self.log: deque[bytes] = deque()
        self.log_size = 0

    async def start(self, env: dict[str, str]) -> None:
        from jupyter_client.asynchronous import AsyncKernelClient

        # An unguessable name: the session's code (the agent's user) could plant files at a predictable one.
        base = self.base
        info = {
            "transport": "ipc", "ip": base, "shell_port": 1, "iopub_port": 2, "stdin_port": 3,
            "control_port": 4, "hb_port": 5, "key": secrets.token_hex(32), "signature_scheme": "hmac-sha256",
            "kernel_name": "python3",
        }
        conn_file = f"{base}.json"
        fd = os.open(conn_file, O_CREATE, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        out_r, out_w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.pid, self.exited = self.agent.procs.spawn(
                ["/usr/bin/python3", "-c", KERNEL_LAUNCHER, "-f", conn_file, *KERNEL_ARGS], env, (null, out_w, out_w))
        finally:
            os.close(null)
            os.close(out_w)
        self.agent.procs.keep.add(self.pid)
        self.tasks.append(asyncio.create_task(_pump(out_r, self._log)))
        client = AsyncKernelClient()
        client.load_connection_info(info)
        client.start_channels(hb=False)
        self.client = client
        for reader in (self._iopub, self._shell, self._stdin):
            self.tasks.append(asyncio.create_task(reader()))
        await self._wait_ready()
        await self._wait_connected()

    async def _log(self, chunk: bytes) -> None:
        self.log.append(chunk)
        self.log_size += len(chunk)
        while self.log_size > LOG_TAIL and len(self.log) > 1:
            self.log_size -= len(self.log.popleft())

    def log_tail(self) -> str:
        return b"".join(self.log).decode("utf-8", "replace")[-LOG_TAIL:]

    async def _wait_ready(self) -> None:
        exited = self.exited
        if exited is None:
            raise Refused("kernel_failed", "the Python kernel was not started")
        deadline = time.monotonic() + KERNEL_START_TIMEOUT_S
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready = ready
        while not ready.done():
            if exited.done():
                raise Refused("kernel_failed", "the Python kernel exited while starting: " + self.log_tail())
            if time.monotonic() > deadline:
                raise Refused("kernel_failed", "the Python kernel did not start in time: " + self.log_tail())
            self.client.kernel_info()
            either: list[asyncio.Future[Any]] = [ready, exited]
            await asyncio.wait(either, timeout=0.25)

    async def _wait_connected(self) -> None:
        """ZeroMQ connects in the background, each channel on its own (re)connect timer: answering on the shell
        channel does not mean the kernel can reach us on the others yet. A kernel publishing to iopub before our
        subscription has reached it drops the message (a call's output, or its idle status, and the call would
        never end); one sending an input request before our stdin connection is known drops it too (and input()
        waits forever). So: silent probes until one's idle status arrives on iopub and its reply says the stdin
        message sent just before it arrived."""
        exited = self.exited
        if exited is None:
            raise Refused("kernel_failed", "the Python kernel was not started")
        deadline = time.monotonic() + KERNEL_START_TIMEOUT_S
        while True:
            self.client.stdin_channel.send(self.client.session.msg("sandbox_probe", {}))
            msg_id = self.client.execute("", silent=True, store_history=False, allow_stdin=False,
                                         user_expressions={"stdin": STDIN_PROBE}, stop_on_error=False)
            probe = PythonCall(self.agent, 0, msg_id, b"")
            self.calls[msg_id] = probe
            try:
                either: list[asyncio.Future[Any]] = [probe.done, exited]
                await asyncio.wait(either, timeout=PROBE_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
            finally:
                del self.calls[msg_id]
            if probe.done.done():
                found = (probe.reply or {}).get("user_expressions", {}).get("stdin", {})
                if isinstance(found, dict) and found.get("data", {}).get("text/plain") == "True":
                    return
            if exited.done():
                raise Refused("kernel_failed", "the Python kernel exited while starting: " + self.log_tail())
            if time.monotonic() > deadline:
                raise Refused("kernel_failed", "the Python kernel's channels did not connect in time")

    async def _next(self, get: Any) -> dict[str, Any]:
        """The channel's next message. Each wait ends after READ_POLL_S and starts over: ZeroMQ signals a socket's
        readiness by an edge that a send on the same socket can consume, and a lost wakeup must not leave a
        message unread (a call that never ends)."""
        while True:
            try:
                msg: dict[str, Any] = await get(timeout=READ_POLL_S)
            except queue.Empty:
                continue
            return msg

    async def _iopub(self) -> None:
        while True:
            msg = await self._next(self.client.get_iopub_msg)
            call = self.calls.get(msg.get("parent_header", {}).get("msg_id", ""))
            if call is not None:
                await self._on_iopub(call, msg)

    async def _on_iopub(self, call: PythonCall, msg: dict[str, Any]) -> None:
        kind = msg.get("msg_type", "")
        content = msg.get("content", {})
        send = self.agent.channel.send
        if kind == "stream":
            stream = 2 if content.get("name") == "stderr" else 1
            await send({"op": "out", "id": call.id, "s": stream}, str(content.get("text", "")).encode())
        elif kind in ("display_data", "execute_result", "update_display_data"):
            data = content.get("data", {})
            if kind == "execute_result" and isinstance(data, dict):
                call.value = str(data.get("text/plain", ""))
            await self._send_display(call, kind, content)
        elif kind == "error":
            call.error = {"name": str(content.get("ename", "")), "value": str(content.get("evalue", "")),
                          "traceback": [ANSI_RE.sub("", str(line)) for line in content.get("traceback", [])]}
        elif kind == "clear_output":
            await send({"op": "clear", "id": call.id, "wait": bool(content.get("wait"))})
        elif kind == "status" and content.get("execution_state") == "idle":
            call.idle = True
            call.check_done()

    async def _send_display(self, call: PythonCall, kind: str, content: dict[str, Any]) -> None:
        data = content.get("data")
        if not isinstance(data, dict):
            return
        mimes: list[list[Any]] = []
        parts: list[bytes] = []
        for mime, value in data.items():
            raw = _mime_bytes(str(mime), value)
            if raw is None:
                continue
            mimes.append([str(mime), len(raw)])
            parts.append(raw)
        if kind == "execute_result" and [m for m, _ in mimes] in ([], ["text/plain"]):
            return  # a plain value: it is the result's value, not a rich output
        transient = content.get("transient") or {}
        display_id = str(transient.get("display_id", "")) if isinstance(transient, dict) else ""
        await self.agent.channel.send({"op": "display", "id": call.id, "mimes": mimes,
                                       "result": kind == "execute_result", "update": kind == "update_display_data",
                                       "display_id": display_id}, b"".join(parts))

    async def _shell(self) -> None:
        while True:
            msg = await self._next(self.client.get_shell_msg)
            kind = msg.get("msg_type")
            if kind == "kernel_info_reply" and not self.ready.done():
                self.ready.set_result(None)
                continue
            call = self.calls.get(msg.get("parent_header", {}).get("msg_id", ""))
            if call is not None and kind == "execute_reply":
                call.reply = msg.get("content", {})
                call.check_done()

    async def _stdin(self) -> None:
        while True:
            msg = await self._next(self.client.get_stdin_msg)
            if msg.get("msg_type") != "input_request":
                continue
            call = self.calls.get(msg.get("parent_header", {}).get("msg_id", ""))
            # Lines of the call's stdin, in order; then end of file (ipykernel raises EOFError for "\x04").
            self.client.input(call.lines.popleft() if call is not None and call.lines else "\x04")

    async def execute(self, call_id: int, code: str, stdin: bytes, silent: bool = False) -> dict[str, Any]:
        exited = self.exited
        if exited is None:
            raise Refused("kernel_failed", "the Python kernel was not started")
        msg_id = self.client.execute(code, silent=silent, store_history=not silent, allow_stdin=not silent,
                                     stop_on_error=False)
        call = PythonCall(self.agent, call_id, msg_id, stdin)
        self.calls[msg_id] = call
        try:
            either: list[asyncio.Future[Any]] = [call.done, exited]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            del self.calls[msg_id]
        if not call.done.done():  # the kernel died under it
            code_, sig = wait_outcome(exited.result())
            return {"kernel_died": True, "exit_code": code_, "signal": sig, "log": self.log_tail()[-2000:]}
        reply = call.reply or {}
        error = call.error
        if error is None and reply.get("status") == "error":
            error = {"name": str(reply.get("ename", "")), "value": str(reply.get("evalue", "")),
                     "traceback": [ANSI_RE.sub("", str(line)) for line in reply.get("traceback", [])]}
        out: dict[str, Any] = {"status": str(reply.get("status", "")), "value": call.value,
                               "execution_count": reply.get("execution_count") or 0}
        if error is not None:
            out["error"] = error
        return out

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGINT)

    async def stop(self) -> None:
        self.agent.procs.keep.discard(self.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if self.exited is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.exited), 10)
        for task in self.tasks:
            task.cancel()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.stop_channels()
        for suffix in (".json", "-1", "-2", "-3", "-4", "-5"):
            with contextlib.suppress(OSError):
                os.unlink(f"{self.base}{suffix}")


def _mime_bytes(mime: str, value: Any) -> bytes | None:
    """A MIME bundle entry as bytes: base64 images decoded, JSON types serialised, text as UTF-8."""
    if mime.endswith("json") or mime == "application/json":
        return json.dumps(value).encode("utf-8")
    if not isinstance(value, str):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = "".join(value)
        else:
            return None
    if mime.startswith("image/") and mime != "image/svg+xml":
        try:
            decoded: bytes = base64.b64decode(value, validate=False)
        except ValueError:
            return None
        return decoded
    text: str = value
    return text.encode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------- the workspace
class Workspace:
    """File operations inside /work with the sandbox's own rights: every path is walked one component at a
    time from a directory fd with O_NOFOLLOW, so a link, FIFO or device planted by the session's code is
    refused, never followed."""

    def __init__(self) -> None:
        self.root = os.open(WORKDIR, O_DIR)
        self.open: dict[int, tuple[str, int, int, str]] = {}  # handle -> (mode, fd, parent fd, temp name)
        self.next_handle = 1

    def _parent(self, path: str, create: bool) -> tuple[int, str]:
        parts = _parts(path)
        fd = os.dup(self.root)
        try:
            for part in parts[:-1]:
                try:
                    sub = os.open(part, O_DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise Refused("not_found", f"{path}: no such directory") from None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    sub = os.open(part, O_DIR, dir_fd=fd)
                except OSError as exc:
                    raise _refusal(path, exc) from exc
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    def open_write(self, path: str) -> int:
        if len(self.open) >= MAX_OPEN_FILES:
            raise Refused("busy", "too many files open at once")
        parent, name = self._parent(path, create=True)
        temp = f".upload-{secrets.token_hex(8)}"
        try:
            fd = os.open(temp, O_CREATE, 0o644, dir_fd=parent)
        except OSError as exc:
            os.close(parent)
            raise _refusal(path, exc) from exc
        handle = self._handle()
        self.open[handle] = ("w:" + name, fd, parent, temp)
        return handle

    def write(self, handle: int, data: bytes) -> None:
        mode, fd, _, _ = self._get(handle, "w")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            self.close(handle, commit=False)
            raise _refusal(mode[2:], exc) from exc

    def close(self, handle: int, commit: bool) -> dict[str, Any]:
        mode, fd, parent, temp = self.open.pop(handle, ("", -1, -1, ""))
        if fd < 0:
            raise Refused("bad_handle", "no such open file")
        try:
            st = os.fstat(fd)
            os.close(fd)
            if mode.startswith("w:"):
                if commit:
                    try:
                        os.rename(temp, mode[2:], src_dir_fd=parent, dst_dir_fd=parent)
                    except OSError as exc:
                        raise _refusal(mode[2:], exc) from exc
                    return {"size": st.st_size, "mtime": st.st_mtime}
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=parent)
            return {}
        finally:
            if mode.startswith("w:"):
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=parent)
                os.close(parent)

    def open_read(self, path: str) -> tuple[int, dict[str, Any]]:
        if len(self.open) >= MAX_OPEN_FILES:
            raise Refused("busy", "too many files open at once")
        parent, name = self._parent(path, create=False)
        try:
            fd = os.open(name, O_READ, dir_fd=parent)
        except OSError as exc:
            raise _refusal(path, exc) from exc
        finally:
            os.close(parent)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise Refused("not_regular", f"{path}: not a regular file with a single link")
        handle = self._handle()
        self.open[handle] = ("r", fd, -1, "")
        return handle, {"size": st.st_size, "mtime": st.st_mtime}

    def read(self, handle: int, size: int) -> bytes:
        _, fd, _, _ = self._get(handle, "r")
        return os.read(fd, max(0, min(size, 4 << 20)))

    def list(self, path: str, recursive: bool) -> dict[str, Any]:
        fd = os.dup(self.root)
        if path:
            parent, name = self._parent(path, create=False)
            try:
                sub = os.open(name, O_DIR, dir_fd=parent)
            except OSError as exc:
                os.close(fd)
                raise _refusal(path, exc) from exc
            finally:
                os.close(parent)
            os.close(fd)
            fd = sub
        entries: list[list[Any]] = []
        truncated = False
        stack = [(fd, path + "/" if path else "", 0)]
        try:
            while stack:
                dir_fd, prefix, depth = stack.pop()
                try:
                    with os.scandir(dir_fd) as it:
                        for entry in it:
                            if len(entries) >= MAX_LIST_ENTRIES:
                                truncated = True
                                break
                            if UPLOAD_TEMP_RE.fullmatch(entry.name):
                                continue  # an upload in progress: not there until it is whole
                            try:
                                st = entry.stat(follow_symlinks=False)
                            except OSError:
                                continue
                            kind = ("d" if stat.S_ISDIR(st.st_mode) else "f" if stat.S_ISREG(st.st_mode)
                                    else "l" if stat.S_ISLNK(st.st_mode) else "o")
                            rel = prefix + entry.name
                            entries.append([rel, kind, st.st_size if kind == "f" else 0, st.st_mtime,
                                            st.st_nlink])
                            if kind == "d" and recursive:
                                if depth + 1 >= MAX_LIST_DEPTH:
                                    truncated = True
                                    continue
                                with contextlib.suppress(OSError):
                                    stack.append((os.open(entry.name, O_DIR, dir_fd=dir_fd), rel + "/", depth + 1))
                finally:
                    os.close(dir_fd)
                if truncated:
                    break
        finally:
            for dir_fd, _, _ in stack:
                os.close(dir_fd)
        return {"entries": entries, "truncated": truncated, **self.usage()}

    def delete(self, path: str, recursive: bool) -> None:
        parent, name = self._parent(path, create=False)
        try:
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except OSError as exc:
                raise _refusal(path, exc) from exc
            if stat.S_ISDIR(st.st_mode):
                if not recursive:
                    raise Refused("is_directory", f"{path}: a directory (delete it recursively)")
                shutil.rmtree(name, dir_fd=parent)  # fd-based on Linux: never follows a link out
            else:
                os.unlink(name, dir_fd=parent)
        except OSError as exc:
            raise _refusal(path, exc) from exc
        finally:
            os.close(parent)

    def usage(self) -> dict[str, int]:
        st = os.statvfs(WORKDIR)
        return {"used": (st.f_blocks - st.f_bfree) * st.f_frsize, "total": st.f_blocks * st.f_frsize}

    def _handle(self) -> int:
        handle = self.next_handle
        self.next_handle += 1
        return handle

    def _get(self, handle: int, kind: str) -> tuple[str, int, int, str]:
        found = self.open.get(handle)
        if found is None or not found[0].startswith(kind):
            raise Refused("bad_handle", "no such open file")
        return found


def _parts(path: str) -> list[str]:
    """The components of a relative, normalised path (the server validated it; checked again here)."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in path:
        raise Refused("bad_path", f"{path!r}: not a relative, normalised path")
    return parts


def _refusal(path: str, exc: OSError) -> Refused:
    codes = {errno.ENOENT: "not_found", errno.ELOOP: "symlink", errno.ENOTDIR: "not_directory",
             errno.EISDIR: "is_directory", errno.ENOSPC: "no_space", errno.EDQUOT: "no_space",
             errno.EFBIG: "too_large", errno.EEXIST: "exists", errno.ENOTEMPTY: "not_empty",
             errno.EACCES: "denied", errno.EPERM: "denied"}
    code = codes.get(exc.errno or 0, "os_error")
    if code == "symlink":
        return Refused(code, f"{path}: a symbolic link is in the way (links are never followed)")
    return Refused(code, f"{path}: {os.strerror(exc.errno or 0)}")


def _code_file(lang: str, code: bytes) -> str:
    """The code of a bash or JavaScript call in a file of its own, under an unguessable name (the session's
    code shares the agent's user and could plant a file at a predictable one)."""
    directory = f"{RUN_DIR}/code"
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        path = f"{directory}/call-{secrets.token_hex(8)}{CODE_SUFFIX[lang]}"
        fd = os.open(path, O_CREATE, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(code)
    except OSError as exc:
        raise Refused("code_file", f"the call's code could not be written ({os.strerror(exc.errno or 0)})") from exc
    return path


# ---------------------------------------------------------------------------------------------- the agent
class Agent:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.procs = Processes()
        self.env: dict[str, str] = {}
        self.kernel: Kernel | None = None
        self.kernel_wanted = False
        self.kernel_ready: asyncio.Future[None] | None = None
        self.generations = 0
        self.workspace = Workspace()
        self.commands: dict[int, int] = {}  # call id -> process group of a running command
        self.tasks: set[asyncio.Task[None]] = set()
        self.restarts = 0

    # -- the kernel's life ----------------------------------------------------------------------------------
    def kernel_env(self) -> dict[str, str]:
        private = f"{RUN_DIR}/home"
        return {**self.env, "IPYTHONDIR": f"{private}/ipython", "JUPYTER_CONFIG_DIR": f"{private}/jupyter",
                "JUPYTER_DATA_DIR": f"{private}/jupyter-data", "JUPYTER_RUNTIME_DIR": f"{private}/jupyter-run",
                "JUPYTER_PLATFORM_DIRS": "1", "PYTHONDONTWRITEBYTECODE": "1",
                "PYDEVD_DISABLE_FILE_VALIDATION": "1"}

    def start_kernel(self) -> asyncio.Future[None]:
        """Start a kernel in the background; the future resolves when it answers (or holds why not)."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.kernel_ready = ready

        async def go() -> None:
            self.generations += 1
            kernel = Kernel(self, self.generations)
            self.kernel = kernel
            try:
                target = self.env.get("PIP_TARGET")
                if target:
                    # On PYTHONPATH: it must exist when the kernel starts, or Python caches it as missing and
                    # the packages a later call installs there do not import.
                    os.makedirs(target, mode=0o755, exist_ok=True)
                await kernel.start(self.kernel_env())
            except BaseException as exc:
                await kernel.stop()
                if not ready.done():
                    ready.set_exception(exc if isinstance(exc, Refused)
                                        else Refused("kernel_failed", f"the Python kernel failed to start: {exc}"))
                if not isinstance(exc, Exception):
                    raise
                return
            ready.set_result(None)
            if kernel.exited is not None:
                kernel.exited.add_done_callback(lambda _: self._kernel_exited(kernel))

        self._spawn_task(go())
        return ready

    def _kernel_exited(self, kernel: Kernel) -> None:
        """The kernel died on its own (out of memory, os._exit, a crash): start a new one at once."""
        if self.kernel is kernel:
            self.procs.keep.discard(kernel.pid)
            self.restarts += 1
            self._spawn_task(kernel.stop())
            self.start_kernel()

    async def restart_kernel(self) -> float:
        began = time.monotonic()
        old = self.kernel
        self.kernel = None
        if old is not None:
            await old.stop()
        await self.procs.kill_strays()
        self.restarts += 1
        await self.start_kernel()
        return time.monotonic() - began

    async def ready_kernel(self) -> Kernel:
        """The running kernel; waits for one being (re)started."""
        deadline = time.monotonic() + KERNEL_START_TIMEOUT_S
        while True:
            ready = self.kernel_ready
            if ready is None:
                raise Refused("no_kernel", "this session has no Python kernel")
            await ready
            kernel = self.kernel
            if kernel is None:
                raise Refused("kernel_failed", "the Python kernel is not running")
            if kernel.exited is None or not kernel.exited.done():
                return kernel
            if time.monotonic() > deadline:
                raise Refused("kernel_failed", "the Python kernel did not come back")
            await asyncio.sleep(0.01)  # it has just died: its exit watch is starting another

    # -- requests ---------------------------------------------------------------------------------------------
    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def serve(self) -> None:
        while True:
            frame = await self.channel.read()
            if frame is None:
                return  # the server is gone: so is the session
            header, payload = frame
            op = header.get("op")
            if op == "shutdown":
                return
            self._spawn_task(self.handle(str(op), header, payload))

    async def handle(self, op: str, header: dict[str, Any], payload: bytes) -> None:
        rid = header.get("id", 0)
        try:
            reply = await self.dispatch(op, header, payload)
        except Refused as exc:
            await self.channel.send({"op": "error", "id": rid, "code": exc.code, "message": exc.message})
            return
        except Exception as exc:
            await self.channel.send({"op": "error", "id": rid, "code": "agent_error",
                                     "message": f"{type(exc).__name__}: {exc}"})
            return
        if reply is not None:
            data = reply.pop("_payload", b"")
            await self.channel.send({"op": "reply", "id": rid, **reply}, data)

    async def dispatch(self, op: str, h: dict[str, Any], payload: bytes) -> dict[str, Any] | None:
        if op == "init":
            self.env = {str(k): str(v) for k, v in dict(h.get("env", {})).items()}
            self.kernel_wanted = bool(h.get("kernel"))
            os.makedirs(f"{RUN_DIR}/home", mode=0o700, exist_ok=True)
            os.makedirs(f"{RUN_DIR}/code", mode=0o700, exist_ok=True)
            if self.kernel_wanted:
                began = time.monotonic()
                await self.start_kernel()
                return {"kernel": True, "kernel_ms": round((time.monotonic() - began) * 1000, 1)}
            return {"kernel": False}
        if op == "configure":  # new session variables (a sandbox started ahead, handed to a session)
            env = {str(k): str(v) for k, v in dict(h.get("env", {})).items()}
            self.env.update(env)
            if env and self.kernel_ready is not None:
                kernel = await self.ready_kernel()
                code = "import os as _o\n_o.environ.update(" + json.dumps(env) + ")\ndel _o\n"
                result = await kernel.execute(0, code, b"", silent=True)
                if result.get("error"):
                    raise Refused("configure_failed", "could not set the kernel's environment")
            return {}
        if op == "exec":
            return await self.exec_python(int(h["id"]), payload, int(h.get("code_len", len(payload))))
        if op == "run":
            return await self.run_command(int(h["id"]), str(h.get("lang")), dict(h.get("env", {})), payload,
                                          int(h.get("code_len", len(payload))))
        if op == "interrupt":
            target = int(h.get("call", 0))
            if target in self.commands:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.commands[target], signal.SIGKILL)
            elif self.kernel is not None:
                self.kernel.interrupt()
            return None
        if op == "restart":
            seconds = await self.restart_kernel()
            return {"restart_ms": round(seconds * 1000, 1)}
        if op == "stat":
            return {"restarts": self.restarts, "kernel": self.kernel is not None, **self.workspace.usage()}
        return await self.file_op(op, h, payload)

    async def file_op(self, op: str, h: dict[str, Any], payload: bytes) -> dict[str, Any]:
        ws = self.workspace
        if op == "fopen_w":
            return {"handle": ws.open_write(str(h["path"]))}
        if op == "fwrite":
            ws.write(int(h["handle"]), payload)
            return {}
        if op == "fclose":
            return ws.close(int(h["handle"]), bool(h.get("commit")))
        if op == "fopen_r":
            handle, info = ws.open_read(str(h["path"]))
            return {"handle": handle, **info}
        if op == "fread":
            data = ws.read(int(h["handle"]), int(h.get("size", READ_CHUNK)))
            return {"_payload": data}
        if op == "list":
            return ws.list(str(h.get("path", "")), bool(h.get("recursive")))
        if op == "delete":
            ws.delete(str(h["path"]), bool(h.get("recursive")))
            return {}
        raise Refused("unknown_op", f"unknown operation {op!r}")

    # -- calls ------------------------------------------------------------------------------------------------
    async def exec_python(self, call_id: int, payload: bytes, code_len: int) -> dict[str, Any]:
        # Calls run one at a time: anything alive now was started since the last call ended (by a thread the
        # kernel keeps), and must not watch this one.
        purged = await self.sweep()
        kernel = await self.ready_kernel()
        code = payload[:code_len].decode("utf-8", "replace")
        result = await kernel.execute(call_id, code, payload[code_len:])
        killed, purged_after = await self.procs.kill_strays()
        result.update(stray_processes=killed, restarts=self.restarts, purged=purged or purged_after)
        return result

    async def sweep(self) -> bool:
        """Kill what runs besides the agent and the kernel; True when the kernel had to go too (its exit
        watch starts another: ready_kernel waits for it)."""
        _, purged = await self.procs.kill_strays()
        return purged

    async def run_command(self, call_id: int, lang: str, env: dict[str, Any], payload: bytes,
                          code_len: int) -> dict[str, Any]:
        command = COMMANDS.get(lang)
        if command is None:
            raise Refused("bad_language", f"no command runtime for {lang!r}")
        purged = await self.sweep()  # as for a Python call: nothing started since the last call may watch
        path = _code_file(lang, payload[:code_len])
        stdin = payload[code_len:]
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            pid, exited = self.procs.spawn([*command, path], {**self.env, **{str(k): str(v) for k, v in env.items()}},
                                           (in_r, out_w, err_w))
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        self.commands[call_id] = pid
        send = self.channel.send

        async def emit_out(chunk: bytes) -> None:
            await send({"op": "out", "id": call_id, "s": 1}, chunk)

        async def emit_err(chunk: bytes) -> None:
            await send({"op": "out", "id": call_id, "s": 2}, chunk)

        pumps = [asyncio.create_task(_pump(out_r, emit_out)), asyncio.create_task(_pump(err_r, emit_err))]
        feeder = asyncio.create_task(self._feed(in_w, stdin))
        try:
            status = await exited
        finally:
            del self.commands[call_id]
            # What it left running (a background job holding the pipes open) ends with it, as in a one-shot run.
            strays, purged_after = await self.procs.kill_strays()
            feeder.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            with contextlib.suppress(OSError):
                os.unlink(path)
        exit_code, sig = wait_outcome(status)
        return {"exit_code": exit_code, "signal": sig, "stray_processes": strays, "purged": purged or purged_after}

    async def _feed(self, fd: int, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            os.set_blocking(fd, False)
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    waiter = loop.create_future()
                    loop.add_writer(fd, waiter.set_result, None)
                    try:
                        await waiter
                    finally:
                        loop.remove_writer(fd)
        except (BrokenPipeError, OSError):
            pass
        finally:
            os.close(fd)


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
                                 os.fdopen(0, "rb", 0))
    w_transport, w_protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), loop=loop), os.fdopen(1, "wb", 0))
    writer = asyncio.StreamWriter(w_transport, w_protocol, None, loop)
    agent = Agent(Channel(reader, writer))
    loop.add_signal_handler(signal.SIGCHLD, agent.procs.on_sigchld)
    try:
        await agent.serve()
    finally:
        if agent.kernel is not None:
            await agent.kernel.stop()
        await agent.procs.kill_strays()


if __name__ == "__main__":
    harden()
    os.umask(0o022)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
