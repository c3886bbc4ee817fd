"""Idempotency keys through a real server: a retried request never runs twice, even when the first attempt's
caller went away mid-run; a reused key with another request is refused; a refused request keeps nothing."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from production_helpers import server_with_policy

from sandbox_client import (
    DeadlineExceededError,
    InvalidRequestError,
    SandboxClient,
)
from sandbox_client._proto.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from sandbox_server.testing import RunningServer

PRICED = "pricing: {per_execution: 1.0}"


def _audit_count(srv: RunningServer) -> int:
    assert srv.app.stores is not None
    return srv.app.stores.audit.count()


def test_a_retry_gets_the_first_response_and_nothing_runs_twice(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, PRICED) as srv, SandboxClient(srv.target) as sbx:
        code = "import random; print(random.random())"
        first = sbx.execute(code, idempotency_key="k-1", session_id="s")
        again = sbx.execute(code, idempotency_key="k-1", session_id="s")
        assert again == first  # the same execution id, output, cost and trace id
        other = sbx.execute(code, idempotency_key="k-2", session_id="s")
        assert other.execution_id != first.execution_id
        assert _audit_count(srv) == 2
        assert srv.app.stores is not None
        assert srv.app.stores.costs.spent("default", "s").session == 2.0  # charged once per key


def test_a_key_reused_for_another_request_is_refused(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, "") as srv, SandboxClient(srv.target) as sbx:
        sbx.execute("print(1)", idempotency_key="same")
        with pytest.raises(InvalidRequestError) as info:
            sbx.execute("print(2)", idempotency_key="same")
        (violation,) = info.value.field_violations
        assert (violation.field, violation.reason) == ("idempotency_key", "idempotency_key_reused")


def test_concurrent_duplicates_share_one_execution(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, "") as srv:

        def one(_: int) -> str:
            with SandboxClient(srv.target) as sbx:
                return sbx.execute("import time, os; time.sleep(0.5); print(os.getpid())",
                                   idempotency_key="dup").execution_id

        with ThreadPoolExecutor(4) as pool:
            ids = set(pool.map(one, range(4)))
        assert len(ids) == 1
        assert _audit_count(srv) == 1


def _start_then_drop(srv: RunningServer, request: sandbox_pb2.ExecuteRequest) -> None:
    """Send the request and go away before it ends, with time left on the deadline (like a broken connection)."""
    with grpc.insecure_channel(srv.target) as channel:
        call = sandbox_pb2_grpc.SandboxStub(channel).Execute.future(request, timeout=60)
        time.sleep(0.4)  # it runs
        call.cancel()


def test_a_retry_takes_over_a_run_whose_caller_went_away(tmp_path: Path) -> None:
    code = b"import time; time.sleep(1); print('done once')"
    request = sandbox_pb2.ExecuteRequest(language="python", code=code, idempotency_key="gone")
    with server_with_policy(tmp_path, "") as srv, SandboxClient(srv.target) as sbx:
        _start_then_drop(srv, request)
        retried = sbx.execute(code.decode(), idempotency_key="gone")  # within the grace period
        assert retried.stdout == "done once\n"
        assert srv.app.stores is not None
        (record,) = srv.app.stores.audit.list(limit=10)
        assert (record.execution_id, record.outcome) == (retried.execution_id, "OK")  # recorded once, as it ended


def test_a_run_nobody_comes_back_for_is_cancelled_after_the_grace(tmp_path: Path) -> None:
    request = sandbox_pb2.ExecuteRequest(language="python", code=b"import time; time.sleep(30)",
                                         idempotency_key="abandoned")
    with server_with_policy(tmp_path, "", idempotency_grace_s=0.5) as srv:
        _start_then_drop(srv, request)
        assert srv.app.stores is not None
        deadline = time.monotonic() + 10
        while not srv.app.stores.audit.list(limit=1):
            assert time.monotonic() < deadline, "the abandoned run was not cancelled"
            time.sleep(0.05)
        (record,) = srv.app.stores.audit.list(limit=1)
        assert record.outcome == "CANCELLED"
        assert srv.app.admission.running == 0


def test_a_call_whose_deadline_passed_is_cancelled_at_once(tmp_path: Path) -> None:
    code = "import time; time.sleep(30)"
    with server_with_policy(tmp_path, "") as srv, SandboxClient(srv.target, retry=None) as sbx:
        with pytest.raises(DeadlineExceededError):
            sbx.execute(code, idempotency_key="late", timeout=0.5)
        assert srv.app.stores is not None
        deadline = time.monotonic() + 3  # well inside the grace: the deadline, not the grace, ended it
        while not srv.app.stores.audit.list(limit=1):
            assert time.monotonic() < deadline, "the run outlived its caller's deadline"
            time.sleep(0.05)
        assert srv.app.stores.audit.list(limit=1)[0].outcome == "CANCELLED"


def test_streams_replay_and_both_methods_share_a_key(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, "") as srv, grpc.insecure_channel(srv.target) as channel:
        stub = sandbox_pb2_grpc.SandboxStub(channel)
        request = sandbox_pb2.ExecuteRequest(
            language="python", code=b"import sys; print('out'); print('err', file=sys.stderr)",
            idempotency_key="streamed")

        def streamed() -> tuple[bytes, bytes, sandbox_pb2.ExecuteResult]:
            out, err, result = b"", b"", None
            for event in stub.ExecuteStream(request, timeout=30):
                if event.HasField("output"):
                    if event.output.stream == sandbox_pb2.STREAM_STDOUT:
                        out += event.output.data
                    else:
                        err += event.output.data
                else:
                    result = event.result
            assert result is not None
            return out, err, result

        first = streamed()
        replayed = streamed()
        assert (first[0], first[1]) == (replayed[0], replayed[1]) == (b"out\n", b"err\n")
        assert replayed[2].execution_id == first[2].execution_id
        unary = stub.Execute(request, timeout=30)
        assert (unary.execution_id, unary.stdout, unary.stderr) == (first[2].execution_id, b"out\n", b"err\n")
        assert _audit_count(srv) == 1


def test_a_refused_request_keeps_nothing(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, "", max_running=1, max_queued=0) as srv, ThreadPoolExecutor(1) as pool, \
            SandboxClient(srv.target) as sbx:
        busy = pool.submit(sbx.execute, "import time; time.sleep(1)")
        time.sleep(0.3)
        request = sandbox_pb2.ExecuteRequest(language="python", code=b"print('later')",
                                             idempotency_key="after-queue-full")
        with grpc.insecure_channel(srv.target) as channel:  # the bare stub: no client-side retries
            stub = sandbox_pb2_grpc.SandboxStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Execute(request, timeout=30)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            busy.result()
            assert stub.Execute(request, timeout=30).stdout == b"later\n"


def test_a_kept_response_holds_nothing_of_its_run(tmp_path: Path) -> None:
    """The window keeps every keyed response (the client keys every call): each entry must be the response
    alone. A finished run's task still holds its context (the call's span and attributes), ~5 KiB a call."""
    from sandbox_server.interceptors.idempotency import ENTRY_OVERHEAD_BYTES

    with server_with_policy(tmp_path, PRICED) as srv, SandboxClient(srv.target) as client:
        for i in range(5):
            assert client.execute(f"print({i})").status == "OK"
        table = srv.app.idempotency
        assert table is not None
        entries = list(table._entries.values())
        assert len(entries) == 5
        assert all(e.task is None and e.done.done() for e in entries)
        assert not table._tasks
        # the cap counts what an entry costs beyond its response, so it bounds the table's memory
        assert table._bytes == sum(e.size for e in entries) >= 5 * ENTRY_OVERHEAD_BYTES
