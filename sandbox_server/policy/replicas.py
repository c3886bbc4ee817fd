"""PolicySync: one policy for every server sharing a version store (replicas on one ``database_url``).

The shared version history is the truth. A server starts on its latest recorded version (writing those files into
its own policy directory), or, on an empty history, records its directory as version 1. A change made on any
server (``ApplyPolicy``, or an edit of its directory) is numbered by the store before it goes live there: the
next number is recorded with the files (a change equal to the latest version takes that version's number, so
servers editing the same files in turn record it once). Every server polls the history's latest number every
``interval_s`` and adopts a newer version whole, so a change is live on all within about that interval plus one
store round trip.

Two servers changing the policy at the same instant both try the same number; the store takes one, the other
takes the next, and the later of the two versions is what every server ends on.
"""

from __future__ import annotations

import logging

from sandbox_server.periodic import Periodic
from sandbox_server.policy.loader import PolicyLoadError
from sandbox_server.policy.registry import PolicyRegistry, PolicySet
from sandbox_server.stores.base import PolicyVersion, PolicyVersionStore

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 0.25
NUMBERING_ATTEMPTS = 8


class PolicySync:
    def __init__(self, registry: PolicyRegistry, store: PolicyVersionStore,
                 interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.registry = registry
        self.store = store
        self.interval_s = interval_s
        self._poller = Periodic("policy-sync", interval_s, self.poll_once, self._poll_failed)
        self._refused: int | None = None  # the latest version this server could not adopt (logged once)
        registry.set_numbering(self.number)

    def load(self) -> PolicySet:
        """The start: the latest recorded version, else the directory recorded as the first. Raises
        ``PolicyLoadError`` (the latest version does not validate on this server) or the store's error."""
        latest = self._latest()
        if latest is None:
            return self.registry.load()
        return self.registry.adopt(latest.version, latest.texts, f"{latest.actor} (recorded version)")

    def number(self, new: PolicySet, actor: str) -> int:
        """The registry's numbering hook: record ``new`` as the next version (or find it is the latest one)."""
        for _ in range(NUMBERING_ATTEMPTS):
            latest = self._latest()
            if latest is not None and dict(latest.texts) == dict(new.sources):
                return latest.version
            number = (latest.version if latest is not None else 0) + 1
            try:
                self.store.record(number, dict(new.sources), actor)
            except ValueError:
                continue  # another server recorded this number first: look again
            return number
        raise RuntimeError(f"could not record a policy version after {NUMBERING_ATTEMPTS} attempts")

    def poll_once(self) -> PolicySet | None:
        """Adopt the latest recorded version if it is newer than this server's; the new set, else None."""
        found = self.store.list(1)
        if not found or found[0].version <= self.registry.current().version:
            return None
        latest = self.store.get(found[0].version)
        if latest is None:
            return None
        try:
            new = self.registry.adopt(latest.version, latest.texts, f"{latest.actor} (on another server)")
        except PolicyLoadError as exc:
            if self._refused != latest.version:
                self._refused = latest.version
                log.error("policy version %d from the shared history does not validate on this server; keeping "
                          "version %d:\n%s", latest.version, self.registry.current().version,
                          "\n".join(f"  {e}" for e in exc.errors))
            return None
        log.info("policy version %d adopted from the shared history (by %s)", new.version, latest.actor)
        return new

    def _latest(self) -> PolicyVersion | None:
        found = self.store.list(1)
        return self.store.get(found[0].version) if found else None

    async def start(self) -> None:
        self._poller.start()

    async def aclose(self) -> None:
        await self._poller.aclose()

    @staticmethod
    def _poll_failed(exc: Exception, first: bool) -> None:
        if first:  # the store is unreachable: the current policy stays in force; said once per outage
            log.warning("policy sync: the shared version history cannot be read", exc_info=exc)
