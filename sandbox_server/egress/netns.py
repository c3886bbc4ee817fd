"""The proxy's door into a sandbox: a listening socket made inside the sandbox's own network namespace.

A socket keeps the network namespace it was created in. The server enters the sandbox's namespace on a thread
of its own (setns(2) with CLONE_NEWNET changes only the calling thread), makes and binds the socket there,
goes back, and accepts on it from the host side. So the sandbox keeps a namespace with only loopback, no veth
pair, no route out and no iptables rule: a program there can reach the proxy's port on its own loopback and
nothing else. The thread is a fresh one each time and ends right after, so that a failed return to the host's
namespace cannot leave a pooled thread in the sandbox's.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
import time
from pathlib import Path

CLONE_NEWNET = 0x40000000
PROXY_PORT = 3128  # inside the sandbox's own namespace, so a fixed number collides with nothing
_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(OSError):
    """The sandbox's network namespace could not be entered or the socket not made in it."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(err, f"setns: {os.strerror(err)}")


def listen_in(pid: int, port: int = PROXY_PORT, backlog: int = 128) -> socket.socket:
    """A non-blocking TCP socket listening on ``port`` (every address of the namespace, which has only loopback)
    inside the network namespace of process ``pid``. Raises NamespaceError when the process is gone, shares the
    server's namespace, or the socket cannot be made."""
    result: list[socket.socket] = []
    problem: list[BaseException] = []

    def work() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            problem.append(exc)
            return
        try:
            try:
                target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise NamespaceError(exc.errno or errno.ESRCH, f"process {pid}: {exc.strerror}") from exc
            try:
                if os.fstat(own).st_ino == os.fstat(target).st_ino:
                    # Never listen on the host's own network: that would open the proxy to the whole host.
                    raise NamespaceError(errno.EINVAL, f"process {pid} shares the server's network namespace")
                _setns(target)
                try:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        sock.bind(("0.0.0.0", port))  # noqa: S104 - the sandbox's namespace: loopback only
                        sock.listen(backlog)
                        sock.setblocking(False)
                    except BaseException:
                        sock.close()
                        raise
                    result.append(sock)
                finally:
                    _setns(own)
            finally:
                os.close(target)
        except BaseException as exc:
            problem.append(exc)
        finally:
            os.close(own)

    thread = threading.Thread(target=work, name=f"netns-{pid}", daemon=True)
    thread.start()
    thread.join()
    if problem:
        exc = problem[0]
        if result:
            result[0].close()
        if isinstance(exc, NamespaceError):
            raise exc
        raise NamespaceError(getattr(exc, "errno", None) or errno.EIO, f"socket in the sandbox's network: {exc}")
    return result[0]


def net_namespace(pid: int) -> int | None:
    """The inode of process ``pid``'s network namespace, or None when it is gone."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def child_in_other_netns(parent: int, timeout_s: float = 10.0) -> int:
    """The first child of ``parent`` (nsjail) that lives in a network namespace other than the server's: the
    jail's first process. Polled: nsjail clones it within milliseconds of starting."""
    own = net_namespace(os.getpid())
    deadline = time.monotonic() + timeout_s
    children = Path(f"/proc/{parent}/task/{parent}/children")
    delay = 0.0005
    while True:
        try:
            pids = [int(p) for p in children.read_text().split()]
        except (OSError, ValueError):
            pids = []
            if not Path(f"/proc/{parent}").exists():
                raise NamespaceError(errno.ESRCH, f"process {parent} ended before its jail started") from None
        for pid in pids:
            ns = net_namespace(pid)
            if ns is not None and ns != own:
                return pid
        if time.monotonic() > deadline:
            raise NamespaceError(errno.ETIMEDOUT, f"no jail under process {parent} after {timeout_s} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.01)
