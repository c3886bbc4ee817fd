"""PolicyRegistry: the loaded policy set, swapped atomically on hot reload.

Readers call ``current()`` (one attribute read) and keep the ``PolicySet`` they got for as long as they need a
consistent view: a set is never modified, a reload replaces it whole. Writers (the watcher, ``reload()``,
``apply()``) are serialized by one lock, and a directory that does not validate whole never replaces the current
set: the old one stays, and the problems are kept in ``last_errors``.

``PolicySet`` is defined in ``loader`` (which builds it) and re-exported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from sandbox_server.periodic import Periodic
from sandbox_server.policy.loader import (
    PolicyError,
    PolicyLoadError,
    PolicySet,
    build_set,
    check_file_name,
    list_policy_files,
    read_directory,
    validate_text,
)
from sandbox_server.policy.models import TenantPolicy

__all__ = ["FILE_CHANGE", "MAX_VERSIONS", "PolicyRegistry", "PolicySet"]

logger = logging.getLogger(__name__)

MAX_VERSIONS = 100
"""How many (version, time, actor) entries ``PolicyRegistry.versions`` keeps; older ones are dropped."""

FILE_CHANGE = "file change"
"""The actor recorded for a version that came from the directory changing on disk."""

INITIAL_LOAD = "initial load"

# One entry per visible policy file: (name, mode, inode, size, mtime_ns, ctime_ns); or why listing failed.
_Signature = tuple[tuple[str, int, int, int, int, int], ...] | str


class PolicyRegistry:
    """The policy directory, loaded and watched.

    ``on_change(new_set)`` is called after every successful swap (the initial load included), synchronously, in
    the thread that made the change (a worker thread for the watcher); an exception from it is logged and does
    not undo the swap. ``versions`` keeps the last ``MAX_VERSIONS`` (version, time.time(), actor) entries.
    ``last_errors`` / ``last_error_at`` describe the latest failed reload; both are cleared by a successful one.
    """

    def __init__(
        self,
        directory: Path,
        *,
        on_change: Callable[[PolicySet], None] | None = None,
        poll_interval_s: float = 1.0,
        first_version: int = 1,
    ) -> None:
        """``first_version``: the version the initial load gets (one past the last recorded one, so version
        numbers keep rising across restarts)."""
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0, not {poll_interval_s}")
        self.directory = Path(directory)
        self.poll_interval_s = poll_interval_s
        self.last_errors: tuple[PolicyError, ...] = ()
        self.last_error_at: float | None = None
        self.versions: list[tuple[int, float, str]] = []
        self._on_change = on_change
        self._numbering: Callable[[PolicySet, str], int] | None = None
        self._first_version = max(1, first_version)
        self._current: PolicySet | None = None
        self._lock = threading.RLock()
        self._seen: _Signature | None = None
        self._watcher = Periodic(f"policy-watcher {self.directory}", poll_interval_s, self.poll_once,
                                 self._watch_failed)

    def set_on_change(self, on_change: Callable[[PolicySet], None] | None) -> None:
        """Replace the change hook (before ``load()``, when the hook needs the registry itself)."""
        self._on_change = on_change

    def set_numbering(self, numbering: Callable[[PolicySet, str], int] | None) -> None:
        """Let ``numbering(new_set, actor)`` give every set built from the directory its version, before the swap
        (servers sharing a version store: the store hands out the numbers). If it raises, the change is refused,
        the current set stays, and the watcher tries the same files again on its next poll."""
        self._numbering = numbering

    # -- reading ------------------------------------------------------------------------------------------------

    def current(self) -> PolicySet:
        """The current set (a consistent snapshot; keep it for the duration of a request).
        Raises RuntimeError before ``load()``."""
        current = self._current
        if current is None:
            raise RuntimeError("policies are not loaded: call PolicyRegistry.load() first")
        return current

    def tenant(self, name: str) -> TenantPolicy | None:
        """The tenant's policy in the current set, or None for an unknown tenant."""
        return self.current().tenants.get(name)

    # -- loading ------------------------------------------------------------------------------------------------

    def load(self) -> PolicySet:
        """Load the directory (version 1 the first time). Raises ``PolicyLoadError``: a server must not start
        on a policy directory that does not validate."""
        with self._lock:
            return self._reload(INITIAL_LOAD if self._current is None else FILE_CHANGE)

    def reload(self, *, actor: str = FILE_CHANGE) -> PolicySet:
        """Re-read and validate every file; swap if valid and different (the version goes up by one; identical
        texts keep the current set and version). Raises ``PolicyLoadError`` and keeps the current set if not."""
        with self._lock:
            return self._reload(actor)

    def _reload(self, actor: str) -> PolicySet:
        # The signature is taken before reading, so a change racing the read is seen again on the next poll.
        self._seen = self._signature()
        sources, read_errors = read_directory(self.directory)
        current = self._current
        if current is not None and not read_errors and sources == dict(current.sources):
            self.last_errors, self.last_error_at = (), None
            return current
        try:
            new = build_set(
                sources,
                read_errors,
                directory=str(self.directory),
                version=self._first_version if current is None else current.version + 1,
            )
        except PolicyLoadError as exc:
            self.last_errors, self.last_error_at = exc.errors, time.time()
            raise
        if self._numbering is not None:
            try:
                number = self._numbering(new, actor)
            except BaseException:
                self._seen = None  # not taken: the watcher sees these files as a change again
                raise
            if number != new.version:
                new = dataclasses.replace(new, version=number)
        self._current = new  # the swap: a single attribute store
        self.last_errors, self.last_error_at = (), None
        # A new list, not an append: a reader iterating the old one is not disturbed.
        self.versions = [*self.versions, (new.version, new.loaded_at, actor)][-MAX_VERSIONS:]
        if self._on_change is not None:
            try:
                self._on_change(new)
            except Exception:
                logger.exception("policy on_change callback failed for version %d", new.version)
        return new

    # -- changing -----------------------------------------------------------------------------------------------

    def validate(self, file_name: str, text: str) -> list[PolicyError]:
        """Every error the directory would have with ``text`` in ``file_name`` (the other files as they are on
        disk now); empty if the change would load. Writes nothing."""
        others, read_errors = read_directory(self.directory)
        return [*(e for e in read_errors if e.file != file_name), *validate_text(file_name, text, others)]

    def apply(self, file_name: str, text: str, actor: str) -> PolicySet:
        """Validate ``text`` as ``file_name`` together with the other files, write it atomically (a temporary
        file in the directory, fsync, rename, fsync of the directory), reload, and return the new set.

        Raises ``PolicyLoadError`` (nothing written) if the change would not validate, or if the directory
        changed on disk between the check and the reload (then the file is written but the set is unchanged);
        ``OSError`` if the file cannot be written (nothing is left behind but the old file).
        """
        with self._lock:
            errors = check_file_name(file_name) or self.validate(file_name, text)
            if errors:
                raise PolicyLoadError(errors)
            self._write(file_name, text)
            return self._reload(actor)

    def replace_all(self, texts: Mapping[str, str], actor: str) -> PolicySet:
        """Make ``texts`` the whole directory (a rollback to a recorded version) and reload: a new version, like
        any change, unless the texts are the current ones. Raises ``PolicyLoadError`` before writing anything if
        they would not load; ``OSError`` if a file cannot be written."""
        with self._lock:
            bad = [e for name in texts for e in check_file_name(name)]
            if bad:
                raise PolicyLoadError(bad)
            build_set(dict(texts), [], directory=str(self.directory), version=1)  # validates; nothing written yet
            self._sync_files(texts)
            return self._reload(actor)

    def _sync_files(self, texts: Mapping[str, str]) -> None:
        """The directory's policy files become exactly ``texts`` (names checked by the caller)."""
        on_disk, _ = read_directory(self.directory)
        for name in list_policy_files(self.directory):
            if name not in texts:
                os.unlink(self.directory / name)
        for name, text in texts.items():
            if on_disk.get(name) != text:
                self._write(name, text)

    def adopt(self, version: int, texts: Mapping[str, str], actor: str) -> PolicySet:
        """Make ``texts`` the directory's files and the current set as ``version``: a version another server
        recorded in a shared store. A version not above the current one changes nothing; texts that do not
        validate here raise ``PolicyLoadError`` and keep the current set and the files. The change hook is not
        called (the version is recorded already)."""
        with self._lock:
            current = self._current
            if current is not None and version <= current.version:
                return current
            # Names are checked before any is used as a path: the store is another process's word.
            bad = [e for name in texts for e in check_file_name(name)]
            if bad:
                raise PolicyLoadError(bad)
            new = build_set(dict(texts), [], directory=str(self.directory), version=version)
            self._sync_files(texts)
            self._seen = self._signature()
            self._current = new
            self.last_errors, self.last_error_at = (), None
            self.versions = [*self.versions, (new.version, new.loaded_at, actor)][-MAX_VERSIONS:]
            return new

    def _write(self, file_name: str, text: str) -> None:
        data = text.encode("utf-8")
        # A dot-file: the loader and the watcher ignore it while it is being written.
        fd, tmp = tempfile.mkstemp(prefix=f".{file_name}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.directory / file_name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)

    # -- watching -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching the directory every ``poll_interval_s`` seconds. Requires ``load()`` first."""
        self.current()
        self._watcher.start()

    async def aclose(self) -> None:
        """Stop watching; waits for a poll in progress to finish (nothing keeps running afterwards)."""
        await self._watcher.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @staticmethod
    def _watch_failed(exc: Exception, first: bool) -> None:
        logger.error("policy watcher: unexpected error (the current policy stays)", exc_info=exc)

    def poll_once(self) -> PolicySet | None:
        """One watcher step: if the directory's files changed (names, inodes, sizes, mtimes) since the last look,
        reload. Returns the new set after a swap, else None. A rejected change is logged at ERROR once (the same
        unchanged files are not re-read) and kept in ``last_errors``."""
        with self._lock:
            if self._signature() == self._seen:
                return None
            before = self._current
            try:
                new = self._reload(FILE_CHANGE)
            except PolicyLoadError as exc:
                kept = before.version if before is not None else None
                logger.error(
                    "policy change in %s rejected, keeping version %s:\n%s",
                    self.directory,
                    kept,
                    "\n".join(f"  {e}" for e in exc.errors),
                )
                return None
            return new if new is not before else None

    def _signature(self) -> _Signature:
        try:
            names = list_policy_files(self.directory)
        except OSError as exc:
            return f"cannot list: {exc}"
        entries = []
        for name in names:
            try:
                st = os.lstat(self.directory / name)
            except OSError:
                continue
            entries.append((name, st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(entries)
