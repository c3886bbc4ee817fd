"""A circuit breaker per client: stop calling a server that keeps failing, and probe it now and then.

    closed ──(failure_threshold failed attempts in a row)──▶ open ──(reset_timeout_s)──▶ half-open
      ▲                                                        ▲                             │
      └───────────────── the probe succeeds ───────────────────┼──── the probe fails ────────┘

- Closed: every attempt goes out. A failure that says the server is unhealthy (UNAVAILABLE, DEADLINE_EXCEEDED,
  INTERNAL, UNKNOWN) adds one; any other answer, an error included (a bad request, a quota refusal: the server
  is answering), resets the count.
- Open: every attempt fails at once with ``CircuitOpenError``, whose ``retry_after`` says when a probe may go.
- Half-open: once ``reset_timeout_s`` has passed, one attempt (the probe) goes out; the others still fail fast.
  The probe's success closes the breaker, its failure opens it again for another ``reset_timeout_s``.

A cancelled attempt (the caller went away) tells nothing about the server and changes nothing. A probe that
never reports (its caller dropped a stream without closing it) stops counting at its deadline, when another
probe may go.

Counted per attempt, not per call: a call that retries against a dead server counts each failed attempt, and
the breaker opening during a call ends its retries.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from sandbox_client._errors import SandboxError, circuit_open_error

logger = logging.getLogger(__name__)

_UNHEALTHY = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
})


@dataclass(frozen=True)
class BreakerPolicy:
    """When a client's circuit breaker opens, and when it probes again (see ``sandbox_client._breaker``).

    Raises:
        TypeError: a field has the wrong type.
        ValueError: a field is out of range.
    """

    failure_threshold: int = 5
    """Failed attempts in a row (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN) that open the breaker."""
    reset_timeout_s: float = 10.0
    """Seconds the breaker stays open before it lets one probe through."""

    def __post_init__(self) -> None:
        if isinstance(self.failure_threshold, bool) or not isinstance(self.failure_threshold, int):
            raise TypeError(
                f"BreakerPolicy.failure_threshold must be an int, not {type(self.failure_threshold).__name__}"
            )
        if self.failure_threshold < 1:
            raise ValueError(f"BreakerPolicy.failure_threshold must be at least 1, got {self.failure_threshold}")
        value = self.reset_timeout_s
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"BreakerPolicy.reset_timeout_s must be a number, not {type(value).__name__}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"BreakerPolicy.reset_timeout_s must be positive and finite, got {value!r}")


DEFAULT_BREAKER_POLICY = BreakerPolicy()
"""What both clients use unless given ``breaker=``: open after 5 failed attempts in a row, probe after 10 s."""


class Outcome(enum.Enum):
    """What one attempt says about the server's health."""

    SUCCESS = "success"
    """The server answered: OK, or an error that is about the request or the caller."""
    FAILURE = "failure"
    """UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN."""
    NEUTRAL = "neutral"
    """Nothing learned: the caller cancelled, or stopped reading a stream early."""


def outcome_of(error: SandboxError | None) -> Outcome:
    """The outcome of an attempt that ended with ``error`` (None: it succeeded)."""
    if error is None:
        return Outcome.SUCCESS
    if error.code is grpc.StatusCode.CANCELLED:
        return Outcome.NEUTRAL
    return Outcome.FAILURE if error.code in _UNHEALTHY else Outcome.SUCCESS


@dataclass(frozen=True)
class Permit:
    """Leave for one attempt to go out; hand it back to ``CircuitBreaker.record``."""

    probe: int | None = None
    """The probe's number when this attempt is the half-open probe, else None."""


class CircuitBreaker:
    """The breaker's state, shared by every call of one client.

    Thread-safe (the sync client is used from many threads) and task-safe (no method awaits: each one runs
    whole under a lock that is never held across an await).
    """

    def __init__(
        self, policy: BreakerPolicy | None, *, target: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``policy`` None: a breaker that never opens."""
        self._policy = policy
        self._target = target
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._last_failure = ""
        self._opened_at: float | None = None  # None: closed
        self._probe: int | None = None  # the probe under way, if any
        self._probe_until = 0.0  # when the probe under way stops counting
        self._probes = 0

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (open, and a probe may go or is under way)."""
        with self._lock:
            if self._policy is None or self._opened_at is None:
                return "closed"
            return "open" if self._clock() < self._opened_at + self._policy.reset_timeout_s else "half_open"

    def blocked_for(self) -> float:
        """Seconds until the breaker may admit an attempt: 0 when closed or ready to probe, inf while a probe is
        under way (its outcome decides)."""
        with self._lock:
            if self._policy is None or self._opened_at is None:
                return 0.0
            now = self._clock()
            if self._probe is not None and now < self._probe_until:
                return math.inf
            return max(0.0, self._opened_at + self._policy.reset_timeout_s - now)

    def admit(self, lease_s: float) -> Permit:
        """Leave for one attempt. ``lease_s``: how long it may take (its deadline); a probe that has not reported
        by then stops counting.

        Raises:
            CircuitOpenError: the breaker is open, or half-open with its probe under way.
        """
        with self._lock:
            policy = self._policy
            if policy is None or self._opened_at is None:
                return Permit()
            now = self._clock()
            probe_at = self._opened_at + policy.reset_timeout_s
            if now < probe_at:
                raise circuit_open_error(self._target, self._failures, self._last_failure, probe_at - now)
            if self._probe is not None and now < self._probe_until:
                # Should the probe fail now, the next one goes after a whole reset timeout; should it succeed,
                # calls go through sooner.
                raise circuit_open_error(self._target, self._failures, self._last_failure, policy.reset_timeout_s,
                                         probing=True)
            self._probes += 1
            self._probe = self._probes
            self._probe_until = now + lease_s
            logger.info("circuit breaker for %s half-open: probing with one call", self._target)
            return Permit(probe=self._probe)

    def record(self, permit: Permit, error: SandboxError | None) -> None:
        """Report how an admitted attempt ended: ``error`` None for success."""
        outcome = outcome_of(error)
        with self._lock:
            policy = self._policy
            if policy is None:
                return
            current_probe = permit.probe is not None and permit.probe == self._probe
            if outcome is Outcome.SUCCESS:
                if self._opened_at is not None:
                    logger.info("circuit breaker for %s closed: the server answered", self._target)
                self._failures, self._opened_at, self._probe = 0, None, None
            elif outcome is Outcome.FAILURE:
                self._last_failure = str(error)
                if current_probe:
                    self._failures += 1
                    self._opened_at, self._probe = self._clock(), None
                    logger.warning("circuit breaker for %s open again: the probe failed (%s)", self._target, error)
                elif self._opened_at is None:
                    self._failures += 1
                    if self._failures >= policy.failure_threshold:
                        self._opened_at = self._clock()
                        logger.warning("circuit breaker for %s open after %d failures in a row (last: %s)",
                                       self._target, self._failures, error)
            elif current_probe:
                self._probe = None  # nothing learned: the next attempt probes instead

    def release(self, permit: Permit) -> None:
        """Hand back a permit whose attempt ended without telling anything (cancelled, abandoned)."""
        with self._lock:
            if permit.probe is not None and permit.probe == self._probe:
                self._probe = None
