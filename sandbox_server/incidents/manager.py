"""The incident manager: rules over server events, mitigations by severity, alerts, and the hot-path check.

How work flows, and why:

- The event methods (``on_execution``, ``on_violation``, ``on_call``, ``on_teardown_failure``,
  ``on_budget_exceeded``, ``on_session_loop``, ``on_egress_refusal``) run on the request path, so they only touch
  memory: each rule keeps a sliding window per key (bounded: ``max_tracked_keys`` keys per rule, least recently
  seen evicted; a few timestamps per key), and a rule that fires queues one job. Jobs for the same (rule, scope,
  subject) coalesce while queued into one store call with a count, and at most ``max_pending_events`` distinct
  jobs wait (more are dropped and logged), so neither a flood of events nor a spray of session ids grows memory
  without bound. The event methods are thread-safe and may be called before ``start`` (their jobs wait for it).
- One background task performs the jobs in order: ``store.open_or_bump`` in a thread, then the in-memory view of
  mitigations is updated from the record it returns, so ``check`` reflects a new mitigation as soon as it is
  written. A new incident is handed to the alert task (sinks run there, so a slow webhook never delays a
  mitigation); a bump does not alert again.
- ``check`` reads an immutable snapshot of the active mitigations: no lock, no I/O. The snapshot is loaded at
  ``start``, replaced after every change this manager makes, and re-read from the store every
  ``refresh_interval_s`` (replicas sharing the database see each other's mitigations that late at most).
  Expiry is checked against the clock on every call. Store writes and refreshes are serialized by one
  asyncio lock, so a refresh never brings back a mitigation this manager has just lifted.

Subjects: a tenant is its name, a session is "tenant/session_id" (executions without a session id share
"tenant/"), a language is its name, the server is "server".

Exercises (requests an admin marked as an operator's own check: the red-team corpus, an evaluation suite) are
observed by every rule, but counted apart: each event method takes ``exercise``, and exercise events fill windows
of their own and open incidents of their own (``IncidentRecord.exercise``; at most one open per rule, subject and
kind). So an exercise can neither push ordinary traffic over a threshold nor hide it inside an exercise
incident, and an operator still sees what the exercise provoked. An exercise incident carries no mitigation
(no quarantine, throttle or disabled language) and pages no one: it goes to ``exercise_sinks`` (the log, at
INFO) instead of the sinks (the webhook, the incident metric that alerting rules watch). Mitigations already in
force apply to exercises as to any request. The server's own faults (a teardown that failed, server-side errors)
are not what an exercise provokes but the server failing under it: those rules count every call as real.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from sandbox_server.incidents.config import IncidentSettings
from sandbox_server.incidents.sinks import AlertEvent, AlertSink, LogSink
from sandbox_server.stores.incidents import (
    IncidentRecord,
    IncidentStore,
    MitigationRecord,
    MitigationSpec,
    Scope,
    Severity,
)

log = logging.getLogger(__name__)

RULE_ESCAPE_ATTEMPTS = "escape_attempts"
RULE_REPEATED_TIMEOUTS = "repeated_timeouts"
RULE_TEARDOWN_FAILURE = "teardown_failure"
RULE_ERROR_RATE = "error_rate"
RULE_BUDGET_EXCEEDED = "budget_exceeded"
RULE_SESSION_LOOP = "session_loop"
RULE_EGRESS_REFUSALS = "egress_refusals"
MAX_EGRESS_THRESHOLD = 10_000  # the most refusals a window keeps per session (policies name smaller numbers)
SERVER_SUBJECT = "server"
MAX_NAME_CHARS = 256
"""Tenants, session ids and languages are cut to this length in subjects (requests already cap them lower)."""
MAX_DETAIL_CHARS = 1000
CLOSE_TIMEOUT_S = 10.0
"""How long ``aclose`` waits for queued jobs and alerts before giving up on them."""
ERROR_RATE_BUCKETS = 30
"""The error-rate window is counted in this many time buckets (a 300 s window moves in 10 s steps)."""
DROP_LOG_EVERY = 1000

Refusal = Literal["quarantine", "language_disabled"]
_WindowKey = tuple[str, bool]
"""A rule's window is kept per (subject, exercise): exercise events are counted apart."""


@dataclass(frozen=True)
class Verdict:
    """What the active mitigations say about one execution.

    ``refusal`` set: refuse it (``mitigation`` is the one that applies). Otherwise, when ``mitigation`` is a
    throttle, the caller allows at most ``throttle_per_minute`` executions per minute for ``throttle_key``
    ("session:acme/s1", "tenant:acme" or "language:python"); the caller does the counting.
    """

    refusal: Refusal | None = None
    mitigation: MitigationRecord | None = None
    throttle_per_minute: float | None = None
    throttle_key: str = ""


ALLOW = Verdict()
"""Nothing applies."""

_Index = Mapping[tuple[str, str], tuple[MitigationRecord, ...]]
_EMPTY_INDEX: _Index = MappingProxyType({})


class _RecentEvents:
    """For each key, the times of its last ``threshold`` events; at most ``max_keys`` keys (least recently
    seen evicted). Not thread-safe: the manager holds its lock."""

    def __init__(self, threshold: int, window_s: float, max_keys: int) -> None:
        self._threshold = threshold
        self._window_s = window_s
        self._max_keys = max_keys
        self._keys: OrderedDict[_WindowKey, deque[float]] = OrderedDict()

    def add(self, key: _WindowKey, now: float) -> int:
        """Record one event; returns how many of the key's events fall within the window (at most threshold)."""
        times = self._keys.get(key)
        if times is None:
            if len(self._keys) >= self._max_keys:
                self._keys.popitem(last=False)
            times = self._keys[key] = deque(maxlen=self._threshold)
        else:
            self._keys.move_to_end(key)
        times.append(now)
        cutoff = now - self._window_s
        while times and times[0] <= cutoff:
            times.popleft()
        return len(times)

    def forget(self, key: _WindowKey) -> None:
        self._keys.pop(key, None)

    def __len__(self) -> int:
        return len(self._keys)


class _CallRate:
    """Calls and failures over a sliding window, in ``ERROR_RATE_BUCKETS`` buckets: constant memory."""

    def __init__(self, window_s: float) -> None:
        self._width = window_s / ERROR_RATE_BUCKETS
        self._buckets: deque[list[int]] = deque()  # [bucket number, calls, failures], oldest first
        self._calls = 0
        self._failures = 0

    def add(self, failed: bool, now: float) -> tuple[int, int]:
        """Record one call; returns (calls, failures) within the window."""
        number = int(now // self._width)
        while self._buckets and self._buckets[0][0] <= number - ERROR_RATE_BUCKETS:
            _, calls, failures = self._buckets.popleft()
            self._calls -= calls
            self._failures -= failures
        # A clock that stepped back counts into the newest bucket rather than reordering them.
        if not self._buckets or self._buckets[-1][0] < number:
            self._buckets.append([number, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        self._calls += 1
        if failed:
            bucket[2] += 1
            self._failures += 1
        return self._calls, self._failures

    def reset(self) -> None:
        self._buckets.clear()
        self._calls = self._failures = 0


@dataclass(frozen=True)
class _Firing:
    """A rule that fired: what ``open_or_bump`` needs."""

    rule: str
    severity: Severity
    scope: Scope
    subject: str
    tenant: str
    summary: str
    details: Mapping[str, str]
    mitigation: MitigationSpec | None
    at: float
    exercise: bool


@dataclass
class _Job:
    firing: _Firing
    count: int


class IncidentManager:
    """Runs the incident rules and answers ``check`` (see the module docstring).

    Args:
        store: where incidents and mitigations are kept (owned by the caller: ``aclose`` does not close it).
        settings: the rules, the response to each severity, the bounds.
        sinks: alerted for every incident opened or resolved (``build_sinks`` makes the usual ones), exercise
            incidents excepted.
        clock: epoch seconds; windows, expiry and the store's timestamps all use it (tests pass their own).
        exercise_sinks: alerted for exercise incidents instead; None: the log only, at INFO (an exercise pages no
            one).
    """

    def __init__(
        self,
        store: IncidentStore,
        settings: IncidentSettings,
        sinks: Sequence[AlertSink],
        clock: Callable[[], float] = time.time,
        exercise_sinks: Sequence[AlertSink] | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._sinks = tuple(sinks)
        self._exercise_sinks: tuple[AlertSink, ...] = (LogSink(),) if exercise_sinks is None else tuple(exercise_sinks)
        self._clock = clock
        rules = settings.rules
        on = settings.enabled
        self._escape_on = on and rules.escape_attempts.enabled
        self._timeouts_on = on and rules.repeated_timeouts.enabled
        self._teardown_on = on and rules.teardown_failure.enabled
        self._error_rate_on = on and rules.error_rate.enabled
        self._budget_on = on and rules.budget_exceeded.enabled
        self._loop_on = on and rules.session_loop.enabled
        self._egress_on = on and rules.egress_refusals.enabled
        self._escape_rules = frozenset(rules.escape_attempts.rules)
        self._timeout_statuses = frozenset(rules.repeated_timeouts.statuses)

        # Guards the windows, the pending jobs and the counters below (event methods may run in any thread).
        self._lock = threading.Lock()
        self._escapes = _RecentEvents(
            rules.escape_attempts.threshold, rules.escape_attempts.window_s, settings.max_tracked_keys
        )
        self._timeouts = _RecentEvents(
            rules.repeated_timeouts.threshold, rules.repeated_timeouts.window_s, settings.max_tracked_keys
        )
        self._calls = _CallRate(rules.error_rate.window_s)
        self._egress = _RecentEvents(MAX_EGRESS_THRESHOLD, rules.egress_refusals.window_s, settings.max_tracked_keys)
        self._pending: OrderedDict[tuple[str, str, str, bool], _Job] = OrderedDict()
        self._submitted = 0  # events queued (coalesced ones included), ever
        self._done = 0  # of those, the ones performed (or failed)
        self._dropped = 0
        self._closed = False

        # The view of active mitigations: written on the event loop only, published as an immutable snapshot.
        self._view: dict[str, MitigationRecord] = {}
        self._index: _Index = _EMPTY_INDEX

        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._store_lock = asyncio.Lock()
        self._alerts: asyncio.Queue[tuple[IncidentRecord, AlertEvent]] = asyncio.Queue(settings.max_pending_alerts)
        self._tasks: builtins.list[asyncio.Task[None]] = []

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the active mitigations and start the background tasks.

        Raises:
            RuntimeError: already started.
            Exception: whatever the store raises while loading (the server must not run blind to quarantines).
        """
        if self._loop is not None:
            raise RuntimeError("IncidentManager is already started")
        await self._refresh()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._tasks = [
            asyncio.create_task(self._work(), name="incidents-jobs"),
            asyncio.create_task(self._send_alerts(), name="incidents-alerts"),
            asyncio.create_task(self._refresh_forever(), name="incidents-refresh"),
        ]
        self._wake.set()  # events may have been queued before start

    async def aclose(self) -> None:
        """Stop taking events, perform the queued jobs and send the queued alerts (``CLOSE_TIMEOUT_S`` at
        most), then stop the background tasks. Idempotent; ``check`` keeps answering from the last view."""
        with self._lock:
            already = self._closed
            self._closed = True
        if already or self._loop is None:
            return
        try:
            await asyncio.wait_for(self.drain(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("incidents: gave up on queued jobs or alerts after %.0f s at close", CLOSE_TIMEOUT_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until every event queued before this call has been performed and its alerts sent.

        Raises:
            RuntimeError: not started.
        """
        if self._loop is None:
            raise RuntimeError("IncidentManager is not started")
        with self._lock:
            target = self._submitted
        while True:
            # Cleared before the check, so a job finishing in between still wakes the wait below.
            self._progress.clear()
            with self._lock:
                if self._done >= target:
                    break
            await self._progress.wait()
        await self._alerts.join()

    # --- events (any thread; memory only) -------------------------------------------------------------------

    def on_execution(self, *, tenant: str, session_id: str, language: str, status: str,
                     exercise: bool = False) -> None:
        """An execution ended with ``status`` ("OK", "TIMEOUT", "CPU_LIMIT", ... or "ERROR:<grpc code>");
        ``exercise``: it was marked as an exercise (so are the other event methods' events)."""
        if not self._timeouts_on or status not in self._timeout_statuses:
            return
        rule = self._settings.rules.repeated_timeouts
        now = self._clock()
        subject = _session_subject(tenant, session_id)
        with self._lock:
            seen = self._timeouts.add((subject, exercise), now)
        if seen >= rule.threshold:
            self._fire(
                RULE_REPEATED_TIMEOUTS, rule.severity, "session", subject, _name(tenant),
                f"session {subject}: {seen} executions ended {'/'.join(sorted(self._timeout_statuses))}"
                f" within {rule.window_s:g} s",
                {"session_id": session_id, "language": language, "last_status": status,
                 "threshold": str(rule.threshold), "window_s": f"{rule.window_s:g}"},
                now, exercise,
            )

    def on_violation(self, *, tenant: str, session_id: str, language: str, rules: Sequence[str],
                     exercise: bool = False) -> None:
        """An execution was refused by static validation or guardrails for ``rules`` (rule names)."""
        if not self._escape_on:
            return
        escapes = sorted(self._escape_rules.intersection(rules))
        if not escapes:
            return
        rule = self._settings.rules.escape_attempts
        now = self._clock()
        subject = _name(tenant)
        with self._lock:
            seen = self._escapes.add((subject, exercise), now)
        if seen >= rule.threshold:
            self._fire(
                RULE_ESCAPE_ATTEMPTS, rule.severity, "tenant", subject, subject,
                f"tenant {subject}: {seen} executions refused for escape-like code within {rule.window_s:g} s",
                {"rules": ",".join(escapes), "session_id": session_id, "language": language,
                 "threshold": str(rule.threshold), "window_s": f"{rule.window_s:g}"},
                now, exercise,
            )

    def on_call(self, *, failed: bool) -> None:
        """An Execute or ExecuteStream call ended; ``failed``: with a server-side error (INTERNAL, UNAVAILABLE,
        UNKNOWN, DATA_LOSS). Only a failed call can fire the rule, so its count is the failures while open."""
        if not self._error_rate_on:
            return
        rule = self._settings.rules.error_rate
        now = self._clock()
        with self._lock:
            calls, failures = self._calls.add(failed, now)
        if failed and calls >= rule.min_calls and failures / calls > rule.max_failure_ratio:
            self._fire(
                RULE_ERROR_RATE, rule.severity, "server", SERVER_SUBJECT, "",
                f"{failures} of {calls} Execute calls failed with a server-side error within {rule.window_s:g} s",
                {"calls": str(calls), "failures": str(failures), "max_failure_ratio": f"{rule.max_failure_ratio:g}",
                 "window_s": f"{rule.window_s:g}"},
                now, False,
            )

    def on_teardown_failure(self, *, tenant: str, session_id: str, language: str, detail: str) -> None:
        """A sandbox of ``language`` could not be torn down (``detail``: what failed)."""
        if not self._teardown_on:
            return
        rule = self._settings.rules.teardown_failure
        subject = _name(language)
        self._fire(
            RULE_TEARDOWN_FAILURE, rule.severity, "language", subject, "",
            f"a {subject} sandbox could not be torn down",
            {"tenant": tenant, "session_id": session_id, "detail": detail},
            self._clock(), False,
        )

    def on_budget_exceeded(self, *, tenant: str, session_id: str, budget: str, exercise: bool = False) -> None:
        """A ``budget`` ("session", "day" or "month") refused one of the tenant's executions."""
        if not self._budget_on:
            return
        rule = self._settings.rules.budget_exceeded
        scope: Scope
        if budget == "session":
            scope, subject = "session", _session_subject(tenant, session_id)
        else:
            scope, subject = "tenant", _name(tenant)
        self._fire(
            RULE_BUDGET_EXCEEDED, rule.severity, scope, subject, _name(tenant),
            f"{scope} {subject}: the {budget} budget is exceeded",
            {"budget": budget, "session_id": session_id},
            self._clock(), exercise,
        )

    def on_session_loop(self, *, tenant: str, session_id: str, language: str, repeats: int, failure: str,
                        exercise: bool = False) -> None:
        """A session ran the same failing call ``repeats`` times in a row (``failure``: how it failed)."""
        if not self._loop_on:
            return
        rule = self._settings.rules.session_loop
        subject = _session_subject(tenant, session_id)
        self._fire(
            RULE_SESSION_LOOP, rule.severity, "session", subject, _name(tenant),
            f"session {subject}: the same {language} call failed the same way {repeats} times in a row",
            {"repeats": str(repeats), "failure": failure[:300], "language": language},
            self._clock(), exercise,
        )

    def on_egress_refusal(self, *, tenant: str, session_id: str, host: str, port: int, reason: str,
                          threshold: int, exercise: bool = False) -> None:
        """The egress proxy refused a connection of one of the session's sandboxes (``threshold``: the tenant's
        ``network.refusals_before_incident``)."""
        if not self._egress_on:
            return
        rule = self._settings.rules.egress_refusals
        now = self._clock()
        subject = _session_subject(tenant, session_id)
        with self._lock:
            seen = self._egress.add((subject, exercise), now)
        if seen >= min(threshold, MAX_EGRESS_THRESHOLD):
            self._fire(
                RULE_EGRESS_REFUSALS, rule.severity, "session", subject, _name(tenant),
                f"session {subject}: {seen} connections refused by the egress proxy within {rule.window_s:g} s",
                {"session_id": session_id, "last_host": f"{host[:200]}:{port}", "last_reason": reason,
                 "threshold": str(threshold), "window_s": f"{rule.window_s:g}"},
                now, exercise,
            )

    # --- the hot path ---------------------------------------------------------------------------------------

    def check(self, *, tenant: str, session_id: str, language: str) -> Verdict:
        """What applies to an execution now: a disabled language, then a quarantine (of the session, then of
        the tenant), then the tightest throttle (session, tenant or language). Memory only."""
        index = self._index
        if not index:
            return ALLOW
        now = self._clock()
        for record in index.get(("language", _name(language)), ()):
            if record.action != "throttle" and record.active(now):
                return Verdict("language_disabled", record)
        session = ("session", _session_subject(tenant, session_id))
        whole = ("tenant", _name(tenant))
        for key in (session, whole):
            for record in index.get(key, ()):
                if record.action == "quarantine" and record.active(now):
                    return Verdict("quarantine", record)
        tightest: MitigationRecord | None = None
        for key in (session, whole, ("language", _name(language))):
            for record in index.get(key, ()):
                if (
                    record.action == "throttle"
                    and record.active(now)
                    and (tightest is None or record.throttle_per_minute < tightest.throttle_per_minute)
                ):
                    tightest = record
        if tightest is None:
            return ALLOW
        return Verdict(None, tightest, tightest.throttle_per_minute, f"{tightest.scope}:{tightest.subject}")

    # --- admin ----------------------------------------------------------------------------------------------

    async def list(self, open_only: bool, tenant: str | None, limit: int) -> builtins.list[IncidentRecord]:
        """Newest first, with their mitigations. Raises ValueError for ``limit`` < 1."""
        return await asyncio.to_thread(self._store.list, open_only, tenant, limit)

    async def get(self, incident_id: str) -> IncidentRecord | None:
        return await asyncio.to_thread(self._store.get, incident_id)

    async def resolve(self, incident_id: str, actor: str, note: str) -> IncidentRecord | None:
        """Resolve the incident and lift its mitigations; ``check`` reflects it on return. The sinks hear
        "resolved" once (not for an incident that was already resolved). None for an unknown id."""
        now = self._clock()
        async with self._store_lock:
            record = await asyncio.to_thread(self._store.resolve, incident_id, actor, note, now)
            if record is None:
                return None
            self._update_view(record.mitigations)
        if record.resolved_at == now and record.resolved_by == actor:  # this call resolved it
            self._forget_window(record)
            self._alert(record, "resolved")
        return record

    async def mitigations(self, include_lifted: bool) -> builtins.list[MitigationRecord]:
        """Active mitigations (every one with ``include_lifted``), newest first."""
        return await asyncio.to_thread(self._store.mitigations, include_lifted, self._clock())

    async def lift(self, mitigation_id: str, actor: str) -> MitigationRecord | None:
        """Lift one mitigation (idempotent); ``check`` reflects it on return. None for an unknown id."""
        async with self._store_lock:
            record = await asyncio.to_thread(self._store.lift, mitigation_id, actor, self._clock())
            if record is not None:
                self._update_view((record,))
        return record

    # --- internals ------------------------------------------------------------------------------------------

    def _fire(
        self,
        rule: str,
        severity: Severity,
        scope: Scope,
        subject: str,
        tenant: str,
        summary: str,
        details: Mapping[str, str],
        now: float,
        exercise: bool,
    ) -> None:
        """Queue one open-or-bump for (rule, scope, subject, exercise), coalescing with a job already queued for
        it. An exercise's incident gets no mitigation."""
        key = (rule, scope, subject, exercise)
        dropped = 0
        with self._lock:
            if self._closed:
                return
            job = self._pending.get(key)
            if job is not None:
                job.count += 1
            elif len(self._pending) < self._settings.max_pending_events:
                firing = _Firing(
                    rule, severity, scope, subject, tenant, summary[:MAX_DETAIL_CHARS],
                    MappingProxyType({k: v[:MAX_DETAIL_CHARS] for k, v in details.items()}),
                    None if exercise else self._mitigation_for(severity, scope, subject, now), now, exercise,
                )
                self._pending[key] = _Job(firing, 1)
            else:
                self._dropped += 1
                dropped = self._dropped
            if not dropped:
                self._submitted += 1
        if dropped:
            if dropped % DROP_LOG_EVERY == 1:
                log.warning("incidents: %d jobs queued already; %d events dropped so far (latest: %s for %s)",
                            self._settings.max_pending_events, dropped, rule, subject)
            return
        self._wake_worker()

    def _mitigation_for(self, severity: Severity, scope: Scope, subject: str, now: float) -> MitigationSpec | None:
        response = self._settings.severities.of(severity)
        if response.action == "alert" or scope == "server":
            return None
        expires_at = None if response.duration_s is None else now + response.duration_s
        if response.action == "quarantine":
            # Quarantining a language means refusing it altogether.
            return MitigationSpec("disable_language" if scope == "language" else "quarantine", scope, subject,
                                  expires_at)
        return MitigationSpec("throttle", scope, subject, expires_at, response.throttle_per_minute)

    def _wake_worker(self) -> None:
        loop = self._loop
        if loop is None:
            return  # start() wakes the worker
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            try:
                loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the loop is closed: the manager is gone with it
                log.debug("incidents: event after the event loop closed")

    def _take(self) -> _Job | None:
        with self._lock:
            if not self._pending:
                return None
            return self._pending.popitem(last=False)[1]

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (job := self._take()) is not None:
                try:
                    await self._perform(job)
                except Exception:
                    f = job.firing
                    log.exception("incidents: could not record %s for %s %s (%d events)", f.rule, f.scope,
                                  f.subject, job.count)
                finally:
                    with self._lock:
                        self._done += job.count
                    self._progress.set()

    async def _perform(self, job: _Job) -> None:
        f = job.firing
        async with self._store_lock:
            record, opened = await asyncio.to_thread(
                self._store.open_or_bump, f.rule, f.severity, f.scope, f.subject, f.tenant, f.summary, f.details,
                f.mitigation, f.at, job.count, f.exercise,
            )
            self._update_view(record.mitigations)
        if opened:
            self._alert(record, "opened")

    def _alert(self, incident: IncidentRecord, event: AlertEvent) -> None:
        try:
            self._alerts.put_nowait((incident, event))
        except asyncio.QueueFull:
            log.error("incidents: alert queue full; incident %s (%s) not alerted: %s", incident.id, event,
                      incident.summary)

    async def _send_alerts(self) -> None:
        while True:
            incident, event = await self._alerts.get()
            sinks = self._exercise_sinks if incident.exercise else self._sinks
            try:
                await asyncio.gather(*(self._send_one(sink, incident, event) for sink in sinks))
            finally:
                self._alerts.task_done()

    @staticmethod
    async def _send_one(sink: AlertSink, incident: IncidentRecord, event: AlertEvent) -> None:
        try:
            await sink.send(incident, event)
        except Exception:  # sinks must not raise; one that does loses this alert only
            log.exception("incidents: alert sink %r failed for incident %s", sink, incident.id)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.refresh_interval_s)
            try:
                await self._refresh()
            except Exception:  # keep the last view: quarantines stay enforced while the store is unreachable
                log.warning("incidents: could not refresh mitigations from the store", exc_info=True)

    async def _refresh(self) -> None:
        async with self._store_lock:
            active = await asyncio.to_thread(self._store.mitigations, False, self._clock())
            self._view = {record.id: record for record in active}
            self._publish()

    def _update_view(self, records: Iterable[MitigationRecord]) -> None:
        now = self._clock()
        for record in records:
            if record.active(now):
                self._view[record.id] = record
            else:
                self._view.pop(record.id, None)
        self._publish()

    def _publish(self) -> None:
        now = self._clock()
        index: dict[tuple[str, str], builtins.list[MitigationRecord]] = {}
        for record in builtins.list(self._view.values()):
            if record.active(now):
                index.setdefault((record.scope, record.subject), []).append(record)
            else:
                del self._view[record.id]
        self._index = MappingProxyType({key: tuple(value) for key, value in index.items()})

    def _forget_window(self, incident: IncidentRecord) -> None:
        """A resolved incident starts its rule afresh for its subject (old events do not reopen it at once)."""
        key = (incident.subject, incident.exercise)
        with self._lock:
            if incident.rule == RULE_ESCAPE_ATTEMPTS:
                self._escapes.forget(key)
            elif incident.rule == RULE_REPEATED_TIMEOUTS:
                self._timeouts.forget(key)
            elif incident.rule == RULE_ERROR_RATE:
                self._calls.reset()


def _name(value: str) -> str:
    """A subject part: cut to ``MAX_NAME_CHARS``; "-" for an empty one (a subject is never empty)."""
    return value[:MAX_NAME_CHARS] or "-"


def _session_subject(tenant: str, session_id: str) -> str:
    return f"{_name(tenant)}/{session_id[:MAX_NAME_CHARS]}"
