"""gRPC statuses -> typed exceptions: the mapping table, the details decoding, and both clients over a real gRPC
connection to the scripted server of fake_sandbox.py (not the sandbox server: it aborts with whatever rich status
a case names, which the sandbox server does not send on demand)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest
from fake_sandbox import FakeSandbox
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from sandbox_client import (
    AsyncSandboxClient,
    AuthenticationError,
    DeadlineExceededError,
    DisplayData,
    ErrorDetails,
    FieldViolation,
    InvalidRequestError,
    NotFoundError,
    OutputChunk,
    PermissionDeniedError,
    QuotaViolation,
    RequestCancelledError,
    ResourceExhaustedError,
    SandboxClient,
    SandboxError,
    ServerError,
    SessionBusyError,
    SessionNotFoundError,
    UnavailableError,
)
from sandbox_client._errors import (
    _ERROR_CLASSES,
    _rich_status_from_trailers,
    details_from_status,
    error_for_status,
    stream_interrupted_error,
)
from sandbox_client._retry import is_retryable


def rich_status(code: int, message: str, *details: object) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return status


def error_info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain="sandbox.v1", metadata=metadata)


def retry_info(seconds: int, nanos: int = 0) -> error_details_pb2.RetryInfo:
    return error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos))


# --- the table ----------------------------------------------------------------------------------------

EXPECTED_CLASSES: dict[grpc.StatusCode, type[SandboxError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
    grpc.StatusCode.UNKNOWN: ServerError,
    grpc.StatusCode.INTERNAL: ServerError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: ServerError,
    grpc.StatusCode.FAILED_PRECONDITION: ServerError,
    grpc.StatusCode.ABORTED: ServerError,
    grpc.StatusCode.OUT_OF_RANGE: ServerError,
    grpc.StatusCode.UNIMPLEMENTED: ServerError,
    grpc.StatusCode.DATA_LOSS: ServerError,
}


def test_every_error_code_is_mapped() -> None:
    """Fails when grpc grows a status code this table (and the client's) does not list."""
    assert set(EXPECTED_CLASSES) == set(grpc.StatusCode) - {grpc.StatusCode.OK}
    assert dict(_ERROR_CLASSES) == EXPECTED_CLASSES


@pytest.mark.parametrize(("code", "cls"), EXPECTED_CLASSES.items(), ids=lambda v: getattr(v, "name", ""))
def test_each_code_becomes_its_class(code: grpc.StatusCode, cls: type[SandboxError]) -> None:
    error = error_for_status(code, "went wrong")
    assert type(error) is cls
    assert (error.code, error.message, error.reason) == (code, "went wrong", None)
    assert str(error) == f"{code.name}: went wrong"


# --- details decoding ---------------------------------------------------------------------------------


def test_details_are_decoded() -> None:
    status = rich_status(
        code_pb2.RESOURCE_EXHAUSTED,
        "slow down",
        error_details_pb2.QuotaFailure(
            violations=[error_details_pb2.QuotaFailure.Violation(subject="tenant:acme", description="10/s")]
        ),
        retry_info(2, 500_000_000),
        error_info("RATE_LIMITED", limit="10"),
        error_info("SECOND_INFO_IS_IGNORED"),
        retry_info(99),
        error_details_pb2.DebugInfo(detail="an unknown kind of detail is skipped"),
    )
    assert details_from_status(status) == ErrorDetails(
        reason="RATE_LIMITED",
        domain="sandbox.v1",
        metadata={"limit": "10"},
        quota_violations=(QuotaViolation("tenant:acme", "10/s"),),
        retry_after=2.5,
    )


def test_a_status_without_details_decodes_to_empty_details() -> None:
    assert details_from_status(status_pb2.Status(code=code_pb2.INTERNAL, message="x")) == ErrorDetails()


def test_rich_message_wins_over_the_status_line() -> None:
    error = error_for_status(grpc.StatusCode.INTERNAL, "status line", rich_status(code_pb2.INTERNAL, "rich message"))
    assert error.message == "rich message"


def test_details_for_another_code_or_undecodable_are_dropped() -> None:
    key = "grpc-status-details-bin"
    good = rich_status(code_pb2.UNAVAILABLE, "down", retry_info(1)).SerializeToString()
    assert _rich_status_from_trailers(grpc.StatusCode.UNAVAILABLE, [(key, good)]) is not None
    assert _rich_status_from_trailers(grpc.StatusCode.INTERNAL, [(key, good)]) is None
    assert _rich_status_from_trailers(grpc.StatusCode.UNAVAILABLE, [(key, b"\xff\xff not a proto")]) is None
    assert _rich_status_from_trailers(grpc.StatusCode.UNAVAILABLE, None) is None


def test_errors_survive_pickling() -> None:
    error = error_for_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad",
        rich_status(
            code_pb2.INVALID_ARGUMENT,
            "bad",
            error_details_pb2.BadRequest(
                field_violations=[error_details_pb2.BadRequest.FieldViolation(field="code", description="empty")]
            ),
        ),
    )
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own bytes)
    assert type(copy) is InvalidRequestError
    assert (copy.code, copy.message, copy.field_violations) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad",
        (FieldViolation("code", "empty"),),
    )


# --- the session errors: refined from the details ---------------------------------------------------


def resource_info(resource_type: str, name: str) -> error_details_pb2.ResourceInfo:
    return error_details_pb2.ResourceInfo(resource_type=resource_type, resource_name=name, description="gone")


def test_resource_info_is_decoded() -> None:
    status = rich_status(code_pb2.NOT_FOUND, "no incident", resource_info("incident", "inc-1"),
                         resource_info("second", "ignored"))
    assert details_from_status(status) == ErrorDetails(resource_type="incident", resource_name="inc-1")
    error = error_for_status(grpc.StatusCode.NOT_FOUND, "x", status)
    assert type(error) is NotFoundError
    assert (error.resource_type, error.resource_name) == ("incident", "inc-1")


def test_a_closed_session_is_a_session_not_found_error_that_says_why() -> None:
    """What the server sends its own tenant for a session that closed: ResourceInfo + ErrorInfo."""
    status = rich_status(code_pb2.NOT_FOUND, "session ses_1 is closed (idle_timeout)",
                         resource_info("session", "ses_1"),
                         error_info("SESSION_CLOSED", resource_type="session", resource_name="ses_1",
                                    close_reason="idle_timeout"))
    error = error_for_status(grpc.StatusCode.NOT_FOUND, "x", status)
    assert type(error) is SessionNotFoundError
    assert isinstance(error, NotFoundError)
    assert (error.session_id, error.close_reason, error.reason, error.resource_type) == (
        "ses_1", "idle_timeout", "SESSION_CLOSED", "session")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own bytes)
    assert type(copy) is SessionNotFoundError
    assert (copy.session_id, copy.close_reason) == ("ses_1", "idle_timeout")


def test_an_unknown_session_is_a_session_not_found_error_without_reason() -> None:
    only_metadata = rich_status(code_pb2.NOT_FOUND, "no session",
                                error_info("SESSION_NOT_FOUND", resource_type="session", resource_name="ses_2"))
    error = error_for_status(grpc.StatusCode.NOT_FOUND, "x", only_metadata)
    assert type(error) is SessionNotFoundError
    assert (error.session_id, error.close_reason) == ("ses_2", "")


@pytest.mark.parametrize(
    "status",
    [
        rich_status(code_pb2.NOT_FOUND, "no file", resource_info("file", "a.txt"),
                    error_info("NOT_FOUND", resource_type="file", resource_name="a.txt")),
        rich_status(code_pb2.NOT_FOUND, "no snapshot", resource_info("snapshot", "snap_1")),
        rich_status(code_pb2.NOT_FOUND, "bare"),
    ],
    ids=["file", "snapshot", "bare"],
)
def test_other_not_founds_stay_not_found_errors(status: status_pb2.Status) -> None:
    assert type(error_for_status(grpc.StatusCode.NOT_FOUND, "x", status)) is NotFoundError
    assert type(error_for_status(grpc.StatusCode.NOT_FOUND, "x")) is NotFoundError


def test_a_busy_session_is_a_session_busy_error_that_is_retried() -> None:
    status = rich_status(
        code_pb2.RESOURCE_EXHAUSTED, "session ses_1 is running a call and 4 more are waiting",
        error_details_pb2.QuotaFailure(violations=[error_details_pb2.QuotaFailure.Violation(
            subject="session:ses_1/max_waiting_calls", description="at most 4 calls may wait")]),
        retry_info(1), error_info("SESSION_BUSY"))
    error = error_for_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "x", status)
    assert type(error) is SessionBusyError
    assert isinstance(error, ResourceExhaustedError)
    assert (error.retry_after, error.quota_violations[0].subject) == (1.0, "session:ses_1/max_waiting_calls")
    assert is_retryable(error)
    other = rich_status(code_pb2.RESOURCE_EXHAUSTED, "queue full", retry_info(1), error_info("QUEUE_FULL"))
    assert type(error_for_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "x", other)) is ResourceExhaustedError


def test_an_interrupted_stream_keeps_its_rich_outputs_through_pickling() -> None:
    cause = error_for_status(grpc.StatusCode.UNAVAILABLE, "cut")
    error = stream_interrupted_error(cause, (OutputChunk("stdout", b"a"),), "key",
                                     (DisplayData("image/png", b"png"),))
    assert "1 rich output" in error.message
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own bytes)
    assert (copy.chunks, copy.outputs, copy.idempotency_key) == (
        (OutputChunk("stdout", b"a"),), (DisplayData("image/png", b"png"),), "key")


# --- over gRPC, from the scripted server (fake_sandbox.py) ----------------------------------------------


@dataclass(frozen=True)
class Case:
    """A status the fake aborts with, and what the client must raise for it."""

    status: status_pb2.Status
    cls: type[SandboxError]
    code: grpc.StatusCode
    attributes: dict[str, object] = field(default_factory=dict)


CASES = {
    "invalid": Case(
        rich_status(
            code_pb2.INVALID_ARGUMENT,
            "invalid request: limits.memory_bytes: too large",
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field="limits.memory_bytes", description="must be at most 1073741824"
                    ),
                    error_details_pb2.BadRequest.FieldViolation(field="files[0].path", description="must be relative"),
                ]
            ),
            error_info("INVALID_REQUEST"),
        ),
        InvalidRequestError,
        grpc.StatusCode.INVALID_ARGUMENT,
        {
            "reason": "INVALID_REQUEST",
            "message": "invalid request: limits.memory_bytes: too large",
            "field_violations": (
                FieldViolation("limits.memory_bytes", "must be at most 1073741824"),
                FieldViolation("files[0].path", "must be relative"),
            ),
        },
    ),
    "queue-full": Case(
        rich_status(
            code_pb2.RESOURCE_EXHAUSTED,
            "the queue is full",
            error_details_pb2.QuotaFailure(
                violations=[error_details_pb2.QuotaFailure.Violation(subject="queue", description="32 queued, max 32")]
            ),
            retry_info(1, 500_000_000),
            error_info("QUEUE_FULL"),
        ),
        ResourceExhaustedError,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        {
            "reason": "QUEUE_FULL",
            "quota_violations": (QuotaViolation("queue", "32 queued, max 32"),),
            "retry_after": 1.5,
        },
    ),
    "backend-down": Case(
        rich_status(
            code_pb2.UNAVAILABLE,
            "the docker daemon is not answering",
            retry_info(2),
            error_info("BACKEND_UNAVAILABLE", backend="docker"),
        ),
        UnavailableError,
        grpc.StatusCode.UNAVAILABLE,
        {"reason": "BACKEND_UNAVAILABLE", "retry_after": 2.0, "message": "the docker daemon is not answering"},
    ),
    "unauthenticated": Case(
        rich_status(code_pb2.UNAUTHENTICATED, "unknown api key", error_info("UNAUTHENTICATED")),
        AuthenticationError,
        grpc.StatusCode.UNAUTHENTICATED,
        {"reason": "UNAUTHENTICATED"},
    ),
    "denied": Case(
        rich_status(code_pb2.PERMISSION_DENIED, "bash is not allowed", error_info("LANGUAGE_NOT_ALLOWED")),
        PermissionDeniedError,
        grpc.StatusCode.PERMISSION_DENIED,
        {"reason": "LANGUAGE_NOT_ALLOWED", "message": "bash is not allowed"},
    ),
    "internal": Case(
        rich_status(code_pb2.INTERNAL, "sandbox setup failed", error_info("SANDBOX_FAILURE", stage="mount")),
        ServerError,
        grpc.StatusCode.INTERNAL,
        {"reason": "SANDBOX_FAILURE"},
    ),
}


def check(error: SandboxError, case: Case) -> None:
    assert type(error) is case.cls
    assert error.code == case.code
    assert error.message == case.status.message
    for name, expected in case.attributes.items():
        assert getattr(error, name) == expected, name
    assert isinstance(error.__cause__, grpc.RpcError)  # the grpc error stays reachable


def test_backend_down_carries_the_error_info_metadata(client: SandboxClient, fake: FakeSandbox) -> None:
    fake.script.abort = CASES["backend-down"].status
    with pytest.raises(UnavailableError) as caught:
        client.execute("1")
    assert caught.value.details.metadata == {"backend": "docker"}
    assert caught.value.details.domain == "sandbox.v1"


@pytest.mark.parametrize("name", CASES)
def test_sync_execute_raises_the_typed_error(client: SandboxClient, fake: FakeSandbox, name: str) -> None:
    fake.script.abort = CASES[name].status
    with pytest.raises(SandboxError) as caught:
        client.execute("1")
    check(caught.value, CASES[name])


@pytest.mark.parametrize("name", CASES)
async def test_async_execute_raises_the_typed_error(aclient: AsyncSandboxClient, fake: FakeSandbox, name: str) -> None:
    fake.script.abort = CASES[name].status
    with pytest.raises(SandboxError) as caught:
        await aclient.execute("1")
    check(caught.value, CASES[name])


def test_sync_runtimes_raises_the_typed_error(client: SandboxClient, fake: FakeSandbox) -> None:
    fake.script.abort = CASES["unauthenticated"].status
    with pytest.raises(SandboxError) as caught:
        client.runtimes()
    check(caught.value, CASES["unauthenticated"])


async def test_async_runtimes_raises_the_typed_error(aclient: AsyncSandboxClient, fake: FakeSandbox) -> None:
    fake.script.abort = CASES["denied"].status
    with pytest.raises(SandboxError) as caught:
        await aclient.runtimes()
    check(caught.value, CASES["denied"])


def test_sync_stream_raises_after_the_chunks(client: SandboxClient, fake: FakeSandbox) -> None:
    fake.script.abort = CASES["queue-full"].status
    seen: list[object] = []
    with pytest.raises(SandboxError) as caught:
        seen.extend(client.execute_stream("1"))
    assert len(seen) == 4
    assert all(isinstance(item, OutputChunk) for item in seen)
    check(caught.value, CASES["queue-full"])


async def test_async_stream_raises_after_the_chunks(aclient: AsyncSandboxClient, fake: FakeSandbox) -> None:
    fake.script.abort = CASES["invalid"].status
    seen: list[object] = []

    async def consume() -> None:
        async for item in aclient.execute_stream("1"):
            seen.append(item)

    with pytest.raises(SandboxError) as caught:
        await consume()
    assert len(seen) == 4
    assert all(isinstance(item, OutputChunk) for item in seen)
    check(caught.value, CASES["invalid"])


@pytest.mark.parametrize(
    "run",
    [lambda sbx: sbx.execute("1"), lambda sbx: list(sbx.execute_stream("1"))],
    ids=["execute", "execute_stream"],
)
def test_a_status_without_details_still_maps(
    client: SandboxClient, fake: FakeSandbox, run: Callable[[SandboxClient], object]
) -> None:
    fake.script.plain_abort = (grpc.StatusCode.RESOURCE_EXHAUSTED, "no details here")
    with pytest.raises(ResourceExhaustedError) as caught:
        run(client)
    assert caught.value.message == "no details here"
    assert (caught.value.reason, caught.value.retry_after, caught.value.quota_violations) == (None, None, ())


async def test_async_status_without_details_still_maps(aclient: AsyncSandboxClient, fake: FakeSandbox) -> None:
    fake.script.plain_abort = (grpc.StatusCode.UNAVAILABLE, "try later")
    with pytest.raises(UnavailableError) as caught:
        await aclient.execute("1")
    assert (caught.value.message, caught.value.reason, caught.value.retry_after) == ("try later", None, None)
