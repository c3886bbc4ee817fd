"""The retry and breaker policies on their own: validation, the backoff, which errors are retried, a call's
attempts under its budget and deadline, and the breaker's states (a fake clock; real threads for its lock).
Through real servers: test_client_resilience.py."""

from __future__ import annotations

import pickle
import random
import threading

import grpc
import pytest

from sandbox_client import (
    BreakerPolicy,
    CircuitOpenError,
    ErrorDetails,
    OutputChunk,
    RetryPolicy,
    SandboxClient,
    SandboxError,
    StreamInterruptedError,
    TLSConfig,
)
from sandbox_client._breaker import CircuitBreaker, Outcome, Permit, outcome_of
from sandbox_client._errors import circuit_open_error, error_for_status, stream_interrupted_error
from sandbox_client._retry import Attempts, is_retryable

Code = grpc.StatusCode


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def failed(code: grpc.StatusCode, retry_after: float | None = None) -> SandboxError:
    error = error_for_status(code, "went wrong")
    if retry_after is not None:
        error.details = ErrorDetails(retry_after=retry_after)
    return error


# --- RetryPolicy --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "exception"),
    [
        ({"max_attempts": 0}, ValueError),
        ({"max_attempts": 2.0}, TypeError),
        ({"max_attempts": True}, TypeError),
        ({"initial_backoff_s": -0.1}, ValueError),
        ({"initial_backoff_s": float("nan")}, ValueError),
        ({"max_backoff_s": float("inf")}, ValueError),
        ({"initial_backoff_s": 2.0, "max_backoff_s": 1.0}, ValueError),
        ({"multiplier": 0.5}, ValueError),
        ({"jitter": 1.5}, ValueError),
        ({"jitter": "full"}, TypeError),
        ({"budget_s": -1}, ValueError),
    ],
)
def test_a_retry_policy_validates_its_fields(fields: dict[str, object], exception: type[Exception]) -> None:
    with pytest.raises(exception):
        RetryPolicy(**fields)  # type: ignore[arg-type]


def test_an_unbounded_budget_is_allowed() -> None:
    assert RetryPolicy(budget_s=float("inf")).budget_s == float("inf")


def test_the_backoff_grows_to_its_cap_with_full_jitter() -> None:
    policy = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=3.0, multiplier=2.0, jitter=1.0)
    ceilings = [policy.backoff_s(n, 0.0) for n in range(1, 6)]
    assert ceilings == [0.5, 1.0, 2.0, 3.0, 3.0]
    rng = random.Random(7)
    waits = [policy.backoff_s(3, rng.random()) for _ in range(2000)]
    assert all(0.0 < w <= 2.0 for w in waits)
    assert min(waits) < 0.1
    assert max(waits) > 1.9  # spread over the whole range: full jitter
    assert policy.backoff_s(10_000, 0.5) == 1.5  # no overflow, however many retries


def test_no_jitter_waits_the_ceiling() -> None:
    policy = RetryPolicy(initial_backoff_s=0.25, jitter=0.0)
    assert [policy.backoff_s(n, 0.99) for n in (1, 2, 3)] == [0.25, 0.5, 1.0]


# --- what is retried ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (failed(Code.UNAVAILABLE), True),
        (failed(Code.UNAVAILABLE, retry_after=2.0), True),
        (failed(Code.RESOURCE_EXHAUSTED, retry_after=1.0), True),
        (failed(Code.RESOURCE_EXHAUSTED), False),  # no RetryInfo: e.g. a spent session budget
        (failed(Code.INVALID_ARGUMENT), False),
        (failed(Code.PERMISSION_DENIED), False),
        (failed(Code.UNAUTHENTICATED), False),
        (failed(Code.INTERNAL), False),
        (failed(Code.UNKNOWN), False),
        (failed(Code.DEADLINE_EXCEEDED), False),
        (failed(Code.CANCELLED), False),
        (failed(Code.NOT_FOUND), False),
        (circuit_open_error("t", 5, "x", 3.0), False),
        (stream_interrupted_error(failed(Code.UNAVAILABLE), (), "k"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, SandboxError) else str(v),
)
def test_only_safe_failures_are_retryable(error: SandboxError, retryable: bool) -> None:
    assert is_retryable(error) is retryable


def test_attempts_stop_at_max_attempts() -> None:
    clock = Clock()
    attempts = Attempts(RetryPolicy(max_attempts=3, jitter=0.0), 60.0, random.Random(0), clock)
    waits = []
    while True:
        attempts.start()
        wait = attempts.next_wait(failed(Code.UNAVAILABLE))
        if wait is None:
            break
        waits.append(wait)
        clock.now += wait
    assert (attempts.made, waits) == (3, [0.25, 0.5])


def test_retry_info_is_the_least_wait() -> None:
    attempts = Attempts(RetryPolicy(jitter=0.0), 60.0, random.Random(0), Clock())
    attempts.start()
    assert attempts.next_wait(failed(Code.RESOURCE_EXHAUSTED, retry_after=1.5)) == 1.5
    attempts.start()
    assert attempts.next_wait(failed(Code.UNAVAILABLE, retry_after=0.1)) == 0.5  # the backoff is longer


def test_no_wait_goes_past_the_deadline() -> None:
    clock = Clock()
    attempts = Attempts(RetryPolicy(max_attempts=100, jitter=0.0), 2.0, random.Random(0), clock)
    assert attempts.start() == 2.0  # the first attempt may use the whole deadline
    clock.now += 1.0
    assert attempts.next_wait(failed(Code.RESOURCE_EXHAUSTED, retry_after=0.9)) == 0.9
    clock.now += 0.9
    assert attempts.start() == pytest.approx(0.1)  # what is left
    assert attempts.next_wait(failed(Code.RESOURCE_EXHAUSTED, retry_after=0.5)) is None  # would end past it


def test_the_budget_caps_the_waits_of_one_call() -> None:
    clock = Clock()
    attempts = Attempts(RetryPolicy(max_attempts=100, budget_s=2.0), 600.0, random.Random(0), clock)
    attempts.start()
    assert attempts.next_wait(failed(Code.RESOURCE_EXHAUSTED, retry_after=1.5)) == 1.5
    attempts.start()
    assert attempts.next_wait(failed(Code.RESOURCE_EXHAUSTED, retry_after=1.0)) is None  # 2.5 s > 2.0 s


def test_no_retry_without_a_policy_or_with_one_attempt() -> None:
    for policy in (None, RetryPolicy(max_attempts=1)):
        attempts = Attempts(policy, 60.0, random.Random(0), Clock())
        attempts.start()
        assert attempts.next_wait(failed(Code.UNAVAILABLE)) is None


def test_an_open_breaker_is_not_waited_out() -> None:
    attempts = Attempts(RetryPolicy(jitter=0.0), 60.0, random.Random(0), Clock())
    attempts.start()
    assert attempts.next_wait(failed(Code.UNAVAILABLE), blocked_for=9.0) is None
    assert attempts.next_wait(failed(Code.UNAVAILABLE), blocked_for=0.1) == 0.25  # open no longer than the wait


# --- the breaker --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "exception"),
    [
        ({"failure_threshold": 0}, ValueError),
        ({"failure_threshold": 1.5}, TypeError),
        ({"reset_timeout_s": 0}, ValueError),
        ({"reset_timeout_s": float("inf")}, ValueError),
        ({"reset_timeout_s": "10"}, TypeError),
    ],
)
def test_a_breaker_policy_validates_its_fields(fields: dict[str, object], exception: type[Exception]) -> None:
    with pytest.raises(exception):
        BreakerPolicy(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (Code.UNAVAILABLE, Outcome.FAILURE),
        (Code.DEADLINE_EXCEEDED, Outcome.FAILURE),
        (Code.INTERNAL, Outcome.FAILURE),
        (Code.UNKNOWN, Outcome.FAILURE),
        (Code.INVALID_ARGUMENT, Outcome.SUCCESS),  # the caller's mistake: the server is fine
        (Code.RESOURCE_EXHAUSTED, Outcome.SUCCESS),  # a quota refusal: the server is answering
        (Code.PERMISSION_DENIED, Outcome.SUCCESS),
        (Code.UNAUTHENTICATED, Outcome.SUCCESS),
        (Code.CANCELLED, Outcome.NEUTRAL),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_what_counts_against_the_server(code: grpc.StatusCode, outcome: Outcome) -> None:
    assert outcome_of(failed(code)) is outcome
    assert outcome_of(None) is Outcome.SUCCESS


def _breaker(threshold: int = 3, reset_s: float = 10.0) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(BreakerPolicy(threshold, reset_s), target="127.0.0.1:9", clock=clock), clock


def _fail(breaker: CircuitBreaker, code: grpc.StatusCode = Code.UNAVAILABLE) -> None:
    breaker.record(breaker.admit(5.0), failed(code))


def test_the_breaker_opens_after_consecutive_failures_only() -> None:
    breaker, _ = _breaker(threshold=3)
    _fail(breaker)
    _fail(breaker, Code.INTERNAL)
    breaker.record(breaker.admit(5.0), failed(Code.INVALID_ARGUMENT))  # an answer: the count starts again
    _fail(breaker)
    _fail(breaker, Code.DEADLINE_EXCEEDED)
    breaker.record(breaker.admit(5.0), failed(Code.CANCELLED))  # tells nothing: the count stays
    assert breaker.state == "closed"
    _fail(breaker, Code.UNKNOWN)
    assert breaker.state == "open"


def test_an_open_breaker_fails_fast_and_says_when_it_probes() -> None:
    breaker, clock = _breaker(threshold=1, reset_s=10.0)
    _fail(breaker)
    clock.now += 4.0
    with pytest.raises(CircuitOpenError) as caught:
        breaker.admit(5.0)
    error = caught.value
    assert error.retry_after == pytest.approx(6.0)
    assert error.reason == "CIRCUIT_OPEN"
    assert error.code is Code.UNAVAILABLE
    assert "127.0.0.1:9" in error.message
    assert "UNAVAILABLE: went wrong" in error.message  # the last failure
    assert breaker.blocked_for() == pytest.approx(6.0)


def test_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    breaker, clock = _breaker(threshold=1, reset_s=10.0)
    _fail(breaker)
    clock.now += 10.0
    assert breaker.state == "half_open"
    probe = breaker.admit(5.0)
    assert probe.probe is not None
    with pytest.raises(CircuitOpenError) as caught:  # one probe at a time
        breaker.admit(5.0)
    assert caught.value.retry_after == 10.0  # the soonest another probe could go, should this one fail
    assert "probe call is under way" in caught.value.message
    assert breaker.blocked_for() == float("inf")
    breaker.record(probe, None)
    assert breaker.state == "closed"
    assert breaker.admit(5.0).probe is None


def test_a_failed_probe_opens_it_again_for_the_whole_timeout() -> None:
    breaker, clock = _breaker(threshold=2, reset_s=10.0)
    _fail(breaker)
    _fail(breaker)
    clock.now += 10.0
    breaker.record(breaker.admit(5.0), failed(Code.UNAVAILABLE))
    assert breaker.state == "open"
    clock.now += 9.9
    with pytest.raises(CircuitOpenError):
        breaker.admit(5.0)
    clock.now += 0.1
    assert breaker.admit(5.0).probe is not None


def test_a_probe_that_tells_nothing_or_never_reports_frees_the_slot() -> None:
    breaker, clock = _breaker(threshold=1, reset_s=1.0)
    _fail(breaker)
    clock.now += 1.0
    breaker.release(breaker.admit(5.0))  # e.g. the caller cancelled
    forgotten = breaker.admit(5.0)  # e.g. a stream dropped without being closed
    clock.now += 5.0  # its lease (the call's deadline) is over: another probe may go
    probe = breaker.admit(5.0)
    assert probe.probe != forgotten.probe
    breaker.release(forgotten)  # a stale permit changes nothing
    with pytest.raises(CircuitOpenError):
        breaker.admit(5.0)
    breaker.record(probe, None)
    assert breaker.state == "closed"


def test_a_breaker_without_a_policy_never_opens() -> None:
    breaker = CircuitBreaker(None, target="t")
    for _ in range(100):
        breaker.record(breaker.admit(1.0), failed(Code.UNAVAILABLE))
    assert breaker.state == "closed"


def test_half_open_admits_one_probe_among_many_threads() -> None:
    breaker, clock = _breaker(threshold=1, reset_s=1.0)
    _fail(breaker)
    clock.now += 1.0
    start = threading.Barrier(32)
    admitted: list[object] = []
    refused: list[CircuitOpenError] = []

    def call() -> None:
        start.wait()
        try:
            admitted.append(breaker.admit(5.0))
        except CircuitOpenError as error:
            refused.append(error)

    threads = [threading.Thread(target=call) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(admitted), len(refused)) == (1, 31)


def test_many_threads_failing_at_once_open_it_once() -> None:
    breaker, _ = _breaker(threshold=50)
    permits = [breaker.admit(5.0) for _ in range(80)]  # all admitted while closed, failing together
    start = threading.Barrier(8)

    def fail(mine: list[Permit]) -> None:
        start.wait()
        for permit in mine:
            breaker.record(permit, failed(Code.UNAVAILABLE))

    threads = [threading.Thread(target=fail, args=(permits[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert breaker.state == "open"
    assert breaker._failures == 50  # counting stopped when it opened: no update lost or doubled


# --- the errors the client raises itself ---------------------------------------------------------------


def test_a_stream_interrupted_error_carries_the_partial_output_and_pickles() -> None:
    chunks = (OutputChunk("stdout", b"one\n"), OutputChunk("stderr", b"warn\n"), OutputChunk("stdout", b"tw"))
    error = stream_interrupted_error(failed(Code.UNAVAILABLE), chunks, "key-1")
    assert isinstance(error, StreamInterruptedError)
    assert (error.stdout, error.stderr, error.stdout_bytes) == ("one\ntw", "warn\n", b"one\ntw")
    assert error.idempotency_key == "key-1"
    assert "key-1" in error.message
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own bytes)
    assert (type(copy), copy.chunks, copy.idempotency_key, copy.code) == (
        StreamInterruptedError, chunks, "key-1", Code.UNAVAILABLE)


# --- TLSConfig ----------------------------------------------------------------------------------------


def test_tls_config_checks_its_fields_and_hides_the_key() -> None:
    with pytest.raises(ValueError, match="go together"):
        TLSConfig(client_certificate=b"cert")
    with pytest.raises(TypeError, match="PEM bytes"):
        TLSConfig(root_certificates="ca.pem")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="server_name"):
        TLSConfig(server_name="")
    config = TLSConfig(client_certificate=b"cert", client_private_key=b"-----BEGIN PRIVATE KEY----- secret")
    assert "secret" not in repr(config)


def test_tls_and_credentials_are_one_or_the_other() -> None:
    with pytest.raises(ValueError, match="not both"):
        SandboxClient("127.0.0.1:1", credentials=grpc.ssl_channel_credentials(), tls=TLSConfig())
