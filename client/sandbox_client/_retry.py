"""Retries: which failed attempts are tried again, and how long to wait before each new attempt.

Only failures that a new attempt cannot make worse are retried:

- UNAVAILABLE: the server, its sandbox backend or the connection is down, including a connection that broke
  after the request was sent. That is safe for Execute, ExecuteStream (before it yielded anything) and
  RecordUsage because every such call carries an idempotency key, the same on every attempt: the server answers
  a retry of a request it already took with that request's own response, and runs nothing twice.
- RESOURCE_EXHAUSTED *with* RetryInfo (a full queue, a rate limit): the server says when to come back, and that
  delay is the least the client waits. Without RetryInfo (e.g. a session's budget is spent) it is final.

Nothing else is retried: INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED, INTERNAL, UNKNOWN,
DEADLINE_EXCEEDED (the call's deadline covers all its attempts, so it has passed), CANCELLED, ...; nor the errors
the client raises itself (an open circuit breaker, a stream cut after it yielded output).

Session calls follow the same rules where a repeat is harmless (``Retrying.SAFE``): creating one (it carries an
idempotency key), reading (GetSession, ListSessions, ListFiles, a download before anything of the file arrived),
closing, writing a whole file again from bytes (UploadFile puts it in place whole), deleting a file. A call whose
repeat would do the work twice retries only the refusals that did nothing, RESOURCE_EXHAUSTED with RetryInfo
(``Retrying.REFUSALS``: SnapshotSession, whose repeat would save a second snapshot). An upload read from a
stream is not retried at all (``Retrying.NEVER``): what the first attempt read is gone.

The wait before retry *n* is "full jitter" exponential backoff: uniform in
``(0, min(max_backoff_s, initial_backoff_s * multiplier ** (n - 1))]``, raised to the server's RetryInfo delay
when there is one. A call never waits past its deadline (its ``timeout`` bounds every attempt and every wait),
nor more than ``budget_s`` in all.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import grpc

from sandbox_client._errors import CircuitOpenError, SandboxError, StreamInterruptedError

logger = logging.getLogger(__name__)

# Each attempt gets the time left before the call's deadline; should a wait overshoot it slightly, the attempt
# still goes out with this much rather than a non-positive timeout (it then ends DEADLINE_EXCEEDED).
_MIN_ATTEMPT_TIMEOUT_S = 0.001


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries the failures that are safe to retry (see ``sandbox_client._retry``).

    ``RetryPolicy(max_attempts=1)`` (or ``retry=None`` on the client) never retries.

    Raises:
        TypeError: a field has the wrong type.
        ValueError: a field is out of range.
    """

    max_attempts: int = 4
    """Attempts per call, the first included."""
    initial_backoff_s: float = 0.25
    """Seconds: the backoff ceiling before the first retry."""
    max_backoff_s: float = 5.0
    """Seconds: the backoff ceiling never grows past this (the server's RetryInfo may still ask for more)."""
    multiplier: float = 2.0
    """The ceiling grows by this factor with each retry."""
    jitter: float = 1.0
    """How much of the ceiling is random: the wait is ``ceiling * (1 - jitter * U[0, 1))``. 1.0 is full jitter
    (anywhere up to the ceiling), 0.0 none (always the ceiling)."""
    budget_s: float = 10.0
    """Seconds: the most one call waits between its attempts, in all. A retry whose wait would go past it, or
    past the call's deadline, is not made: the call raises the last error instead. It keeps a call from sitting
    silently through a long RetryInfo delay (a per-minute rate limit, a backend that is down for a while): the
    caller gets the error, with its ``retry_after``, and decides."""

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError(f"RetryPolicy.max_attempts must be an int, not {type(self.max_attempts).__name__}")
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("initial_backoff_s", "max_backoff_s", "multiplier", "jitter", "budget_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"RetryPolicy.{name} must be a number, not {type(value).__name__}")
            if math.isnan(value) or value < 0 or (math.isinf(value) and name != "budget_s"):
                raise ValueError(f"RetryPolicy.{name} must be non-negative and finite, got {value!r}")
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("RetryPolicy.max_backoff_s must be at least initial_backoff_s")
        if self.multiplier < 1:
            raise ValueError(f"RetryPolicy.multiplier must be at least 1, got {self.multiplier!r}")
        if self.jitter > 1:
            raise ValueError(f"RetryPolicy.jitter must be between 0 and 1, got {self.jitter!r}")

    def backoff_s(self, retry: int, draw: float) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first), for a random ``draw`` in [0, 1)."""
        try:
            ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        except OverflowError:
            ceiling = self.max_backoff_s
        return ceiling * (1.0 - self.jitter * draw)


DEFAULT_RETRY_POLICY = RetryPolicy()
"""What both clients use unless given ``retry=``: 4 attempts, backoff from 0.25 s up to 5 s, full jitter, at most
10 s of waiting per call."""


class Retrying(Enum):
    """Which failures of one call may be retried (this module's docstring says which calls take which)."""

    SAFE = "safe"
    """Every failure ``is_retryable`` allows: the call may be repeated whole, even after it took effect."""
    REFUSALS = "refusals"
    """Only refusals that did nothing (RESOURCE_EXHAUSTED with RetryInfo): a repeat after UNAVAILABLE might do
    the call's work a second time."""
    NEVER = "never"
    """No retry: a new attempt could not send the same request (an upload read from a stream)."""


def is_retryable(error: SandboxError, retrying: Retrying = Retrying.SAFE) -> bool:
    """Whether a new attempt after ``error`` is safe and may succeed (the rules in this module's docstring)."""
    if retrying is Retrying.NEVER or isinstance(error, CircuitOpenError | StreamInterruptedError):
        return False
    if error.code is grpc.StatusCode.UNAVAILABLE:
        return retrying is Retrying.SAFE
    return error.code is grpc.StatusCode.RESOURCE_EXHAUSTED and error.details.retry_after is not None


class Attempts:
    """The attempts of one call: its deadline, how many were made and how long it has waited so far.

    Not shared between calls, so it needs no lock.
    """

    def __init__(
        self,
        policy: RetryPolicy | None,
        timeout: float,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
        *,
        retrying: Retrying = Retrying.SAFE,
    ) -> None:
        self._policy = policy
        self._retrying = retrying
        self._rng = rng
        self._clock = clock
        self._deadline = clock() + timeout
        self._waited = 0.0
        self.made = 0
        """Attempts started so far."""

    def remaining(self) -> float:
        """Seconds left before the call's deadline (may be negative)."""
        return self._deadline - self._clock()

    def start(self) -> float:
        """Count a new attempt; returns its timeout in seconds: the time left before the call's deadline."""
        self.made += 1
        return max(_MIN_ATTEMPT_TIMEOUT_S, self.remaining())

    def next_wait(self, error: SandboxError, blocked_for: float = 0.0) -> float | None:
        """Seconds to wait before retrying after ``error``; None when the call must raise it instead: not
        retryable, no attempts left, the wait would break the budget or the deadline, or the circuit breaker
        stays open past it (``blocked_for``: seconds until the breaker admits an attempt; a call does not wait
        out an open breaker, it fails fast)."""
        policy = self._policy
        if policy is None or self.made >= policy.max_attempts or not is_retryable(error, self._retrying):
            return None
        wait = policy.backoff_s(self.made, self._rng.random())
        advice = error.details.retry_after
        if advice is not None:
            wait = max(wait, advice)
        if self._waited + wait > policy.budget_s or wait >= self.remaining() or blocked_for > wait:
            return None
        self._waited += wait
        logger.debug("attempt %d of %d failed (%s); retrying in %.3f s", self.made, policy.max_attempts, error, wait)
        return wait
