"""Host-side checks, for a runner on the server's own host (``--host-checks``).

What the runner does on the host, and nothing else: it plants canary files with random contents (removed at the
end), opens loopback listeners for the cases that ask, reads the host's hostname, machine id and password
hashes to recognise them in output, looks for processes whose command line carries a case's token, and removes
the test-owned paths (names carrying a case's token) that a breached case managed to create.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sandbox_client.redteam.schema import HostSecret

__all__ = ["DEFAULT_CANARY_DIRS", "HostChecks", "HostProbe", "Listener"]

# The host's shared directories on purpose: a sandbox must not see what the host keeps there.
DEFAULT_CANARY_DIRS: tuple[Path, ...] = (
    Path("/tmp"), Path("/var/tmp"), Path("/root"), Path("/dev/shm"),  # noqa: S108
)
"""Host directories the runner plants a canary in (those that exist and are writable)."""
CANARY_PREFIX = "redteam-canary-"
DEFAULT_PROCESS_GRACE_S = 5.0
"""How long a case's processes may take to disappear after its last result (a deferred container removal)."""
SANDBOX_HOSTNAMES = frozenset({"sandbox", "localhost"})
_WORD = rb"[A-Za-z0-9_.$/-]"  # a secret matches only where it is not part of a longer word


@dataclass(frozen=True)
class HostChecks:
    """Host checks to run (the runner must be on the server's host).

    ``secrets`` are extra values (label -> value) that must never appear in any case's output, e.g. an
    environment variable planted in the server's own process.
    """

    canary_dirs: tuple[Path, ...] = DEFAULT_CANARY_DIRS
    secrets: Mapping[str, str] = field(default_factory=dict)
    process_grace_s: float = DEFAULT_PROCESS_GRACE_S


class Listener:
    """A TCP (IPv4 and IPv6 when available) and UDP listener on the host's loopback that nothing may reach."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []
        self.ports: list[int] = []
        try:
            for family, kind, address in (
                (socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1"),
                (socket.AF_INET6, socket.SOCK_STREAM, "::1"),
                (socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1"),
            ):
                try:
                    sock = socket.socket(family, kind)
                except OSError:  # no IPv6 on this host
                    continue
                self._sockets.append(sock)
                sock.bind((address, 0))
                if kind == socket.SOCK_STREAM:
                    sock.listen(8)
                sock.setblocking(False)
                self.ports.append(sock.getsockname()[1])
        except BaseException:
            self.close()
            raise

    def reached(self) -> list[str]:
        """What reached the listener since it opened (nothing, for a contained case)."""
        found: list[str] = []
        for sock in self._sockets:
            name = sock.getsockname()
            with contextlib.suppress(BlockingIOError):
                if sock.type == socket.SOCK_STREAM:
                    conn, peer = sock.accept()
                    conn.close()
                    found.append(f"a TCP connection from {peer[0]} reached the host's listener {name[0]}:{name[1]}")
                else:
                    _, peer = sock.recvfrom(65536)
                    found.append(f"a UDP datagram from {peer[0]} reached the host's listener {name[0]}:{name[1]}")
        return found

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()


class HostProbe:
    """The host side of one run: canaries, known host secrets, and per-case checks.

    Without ``checks`` it only names the canary paths (for ``@@CANARY_PATHS@@``) and checks nothing.
    """

    def __init__(self, checks: HostChecks | None, run_token: str) -> None:
        self.checks = checks
        dirs = checks.canary_dirs if checks is not None else DEFAULT_CANARY_DIRS
        self.canary_paths: tuple[str, ...] = tuple(str(d / f"{CANARY_PREFIX}{run_token}") for d in dirs)
        self._planted: list[Path] = []
        self._global: dict[str, bytes] = {}
        self._optional: dict[HostSecret, dict[str, bytes]] = {}

    @property
    def enabled(self) -> bool:
        return self.checks is not None

    def plant(self) -> None:
        """Plant the canaries and read the host's secrets. Directories that are missing or not writable are
        skipped; call ``cleanup`` afterwards even when this raises."""
        if self.checks is None:
            return
        for path_text in self.canary_paths:
            path = Path(path_text)
            content = f"redteam-canary-content-{secrets.token_hex(16)}"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except OSError:
                continue
            self._planted.append(path)
            with os.fdopen(fd, "w") as f:
                f.write(content + "\n")
            self._global[f"canary {path}"] = content.encode()
        for label, value in self.checks.secrets.items():
            if value:
                self._global[label] = value.encode()
        self._optional = {
            HostSecret.HOSTNAME: _hostname(),
            HostSecret.MACHINE_ID: _machine_id(),
            HostSecret.SHADOW: _shadow_hashes(),
        }

    def cleanup(self) -> None:
        for path in self._planted:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._planted.clear()

    def planted(self) -> tuple[str, ...]:
        return tuple(str(p) for p in self._planted)

    def leaks(self, outputs: Mapping[str, bytes], kinds: tuple[HostSecret, ...]) -> list[str]:
        """Host secrets found in ``outputs`` (name -> bytes): the canaries and given secrets always (anywhere),
        the ``kinds`` asked for by the case (as whole words). Reports name the secret, never show it."""
        if self.checks is None:
            return []
        patterns = [(label, re.compile(re.escape(value))) for label, value in self._global.items()]
        for kind in kinds:
            patterns += [(label, re.compile(rb"(?<!" + _WORD + rb")" + re.escape(value) + rb"(?!" + _WORD + rb")"))
                         for label, value in self._optional.get(kind, {}).items()]
        return [f"{label} appears in {where}" for label, pattern in patterns
                for where, data in outputs.items() if pattern.search(data)]

    def skipped(self, kinds: tuple[HostSecret, ...]) -> list[str]:
        """The asked-for secrets this host has none of (e.g. no readable /etc/shadow)."""
        if self.checks is None:
            return []
        return [f"host secret {kind} not checked: none found on this host" for kind in kinds
                if not self._optional.get(kind)]

    def present_paths(self, paths: tuple[str, ...]) -> list[str]:
        """Which of the test-owned ``paths`` exist on the host; each one found is removed."""
        found: list[str] = []
        for text in paths:
            path = Path(text)
            if not os.path.lexists(path):
                continue
            found.append(f"{path} exists on the host")
            _remove(path)
        return found

    def processes(self, token: str) -> list[str]:
        """Host processes whose command line carries ``token``, once the grace period has passed."""
        if self.checks is None:
            return []
        deadline = time.monotonic() + self.checks.process_grace_s
        while True:
            found = list(_processes_with(token.encode()))
            if not found or time.monotonic() >= deadline:
                return found
            time.sleep(0.2)

    @contextlib.contextmanager
    def listener(self, wanted: bool) -> Iterator[Listener | None]:
        if self.checks is None or not wanted:
            yield None
            return
        listener = Listener()
        try:
            yield listener
        finally:
            listener.close()


def _hostname() -> dict[str, bytes]:
    name = socket.gethostname()
    if len(name) < 2 or name in SANDBOX_HOSTNAMES:
        return {}
    values = {"host hostname": name.encode()}
    short = name.split(".")[0]
    if short != name and len(short) >= 2 and short not in SANDBOX_HOSTNAMES:
        values["host short hostname"] = short.encode()
    return values


def _machine_id() -> dict[str, bytes]:
    try:
        value = Path("/etc/machine-id").read_text().strip()
    except OSError:
        return {}
    return {"host machine-id": value.encode()} if len(value) >= 16 else {}


def _shadow_hashes() -> dict[str, bytes]:
    try:
        lines = Path("/etc/shadow").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    found: dict[str, bytes] = {}
    for line in lines:
        parts = line.split(":")
        if len(parts) > 1 and parts[1].startswith("$") and len(parts[1]) >= 13:
            found[f"host password hash of {parts[0]}"] = parts[1].encode()
    return found


def _processes_with(token: bytes) -> Iterator[str]:
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if token in cmdline:
            shown = cmdline.replace(b"\0", b" ").decode("utf-8", "replace").strip()[:200]
            yield f"host process {entry.name} is still running: {shown}"


def _remove(path: Path) -> None:
    """Remove a test-owned path a breached case created (its name carries the case's token)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
