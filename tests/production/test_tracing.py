"""Tracing through a real server: a span per call joining the caller's W3C trace, a child span per phase,
attributes for tenant, session, language, status, limits and usage; OTLP export to a loopback collector."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sandbox_client import SandboxClient
from sandbox_client._proto.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from sandbox_server.testing import RunningServer, server_in_thread

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
PHASES = {"auth", "mitigations", "rate_limit", "validation", "policy", "budget", "queue", "sandbox.start",
          "sandbox.run", "sandbox.teardown", "guardrails.output"}


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[RunningServer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    with server_in_thread(span_exporters=[exporter]) as srv:
        yield srv, exporter


def _spans_of(exporter: InMemorySpanExporter, trace_id: int, *also: str) -> list[ReadableSpan]:
    """The spans of one trace, once its call span (and the spans named in ``also``) have ended (an aborted
    call's status can reach the client a moment before the server's span ends; a sandbox's teardown may end
    after the reply)."""
    deadline = time.monotonic() + 10
    while True:
        spans = [s for s in exporter.get_finished_spans()
                 if s.context is not None and s.context.trace_id == trace_id]
        names = {s.name for s in spans}
        done = any(n.startswith("sandbox.v1.") for n in names) and names.issuperset(also)
        if done or time.monotonic() > deadline:
            return spans
        time.sleep(0.02)


def _call(target: str, request: sandbox_pb2.ExecuteRequest, metadata: tuple[tuple[str, str], ...]) -> object:
    with grpc.insecure_channel(target) as channel:
        return sandbox_pb2_grpc.SandboxStub(channel).Execute(request, metadata=metadata, timeout=30)


def test_the_call_span_joins_the_callers_trace_with_a_span_per_phase(
    traced: tuple[RunningServer, InMemorySpanExporter],
) -> None:
    srv, exporter = traced
    request = sandbox_pb2.ExecuteRequest(language="py", code=b"print('traced')", session_id="sess-t",
                                         limits=sandbox_pb2.Limits(wall_time_ms=4000))
    result = _call(srv.target, request, (("traceparent", TRACEPARENT),))
    assert isinstance(result, sandbox_pb2.ExecuteResult)
    assert result.trace_id == TRACE_ID
    spans = _spans_of(exporter, int(TRACE_ID, 16), "sandbox.teardown")
    (root,) = [s for s in spans if s.name == "sandbox.v1.Sandbox/Execute"]
    assert root.parent is not None
    assert format(root.parent.span_id, "016x") == PARENT_SPAN  # the agent's own span is the parent
    assert root.parent.is_remote
    attributes = dict(root.attributes or {})
    assert attributes["sandbox.tenant"] == "default"
    assert attributes["sandbox.session_id"] == "sess-t"
    assert attributes["sandbox.language"] == "python"
    assert attributes["sandbox.execution_id"] == result.execution_id
    assert attributes["sandbox.status"] == "OK"
    assert attributes["sandbox.limits.wall_time_ms"] == 4000
    assert attributes["sandbox.usage.wall_time_s"] == pytest.approx(result.usage.wall_time_s)
    assert attributes["sandbox.usage.peak_memory_bytes"] == result.usage.peak_memory_bytes
    assert attributes["rpc.grpc.status_code"] == 0
    assert root.context is not None
    children = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id}
    assert set(children) == PHASES
    start, run, teardown = children["sandbox.start"], children["sandbox.run"], children["sandbox.teardown"]
    assert start.end_time is not None
    assert run.start_time is not None
    assert run.end_time is not None
    assert teardown.start_time is not None
    assert start.end_time <= run.start_time <= run.end_time <= teardown.start_time  # in order, no overlap
    assert root.start_time is not None
    assert root.end_time is not None
    assert all(root.start_time <= s.start_time and s.end_time <= root.end_time  # type: ignore[operator]
               for s in children.values() if s is not teardown)
    assert teardown.start_time <= root.end_time  # begun within the call; the reply does not wait for its end


def test_a_call_without_trace_context_starts_its_own_trace(
    traced: tuple[RunningServer, InMemorySpanExporter],
) -> None:
    srv, exporter = traced
    with SandboxClient(srv.target) as sbx:
        result = sbx.execute("print(2)")
    spans = _spans_of(exporter, int(result.trace_id, 16))
    (root,) = [s for s in spans if s.name == "sandbox.v1.Sandbox/Execute"]
    assert root.parent is None


def test_a_refused_call_is_traced_with_why(traced: tuple[RunningServer, InMemorySpanExporter]) -> None:
    srv, exporter = traced
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    request = sandbox_pb2.ExecuteRequest(language="python", code=b"import ctypes", session_id="bad")
    with pytest.raises(grpc.RpcError) as info:
        _call(srv.target, request, (("traceparent", f"00-{trace_id}-b7ad6b7169203331-01"),))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    spans = _spans_of(exporter, int(trace_id, 16))
    (root,) = [s for s in spans if s.name == "sandbox.v1.Sandbox/Execute"]
    attributes = dict(root.attributes or {})
    assert attributes["sandbox.rejection"] == "validation"
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert attributes["sandbox.session_id"] == "bad"
    assert {s.name for s in spans} == {"sandbox.v1.Sandbox/Execute", "auth", "mitigations", "rate_limit",
                                       "validation"}  # it never reached the budget, queue or a sandbox


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A loopback OTLP/gRPC trace receiver."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.arrived = threading.Event()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        self.arrived.set()
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, str, dict[str, str]]]:
        out: list[tuple[str, str, dict[str, str]]] = []
        for request in self.requests:
            for resource in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource.resource.attributes}
                for scope in resource.scope_spans:
                    out.extend((s.name, s.trace_id.hex(), service) for s in scope.spans)
        return out


def test_spans_are_exported_over_otlp_to_the_configured_collector() -> None:
    collector = _Collector()
    receiver = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    try:
        with server_in_thread(otlp_endpoint=f"http://127.0.0.1:{port}", service_name="sandbox-under-test") as srv:
            with SandboxClient(srv.target) as sbx:
                result = sbx.execute("print(3)")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not any(
                    t == result.trace_id and n.endswith("/Execute") for n, t, _ in collector.spans()):
                time.sleep(0.1)
    finally:
        receiver.stop(None)
    exported = [(name, service) for name, trace_id, service in collector.spans() if trace_id == result.trace_id]
    names = {name for name, _ in exported}
    assert "sandbox.v1.Sandbox/Execute" in names
    assert {"queue", "sandbox.run"} <= names
    assert all(service["service.name"] == "sandbox-under-test" for _, service in exported)


def test_phase_spans_are_made_only_when_something_exports_them() -> None:
    """With no exporter nothing could read a phase span, so none is made (each costs tens of microseconds);
    the call keeps its trace id. With one, every phase is there (the tests above)."""
    from sandbox_server.settings import load_settings
    from sandbox_server.telemetry import build_telemetry, current_telemetry, phase

    quiet = build_telemetry(load_settings())
    loud = build_telemetry(load_settings(), span_exporters=[InMemorySpanExporter()])
    try:
        assert (quiet.exports_spans, loud.exports_spans) == (False, True)
        for telemetry, made in ((quiet, False), (loud, True)):
            token = current_telemetry.set(telemetry)
            try:
                with phase("queue") as span:
                    assert (span is not None) is made
            finally:
                current_telemetry.reset(token)
    finally:
        quiet.shutdown()
        loud.shutdown()
    with server_in_thread() as srv, SandboxClient(srv.target) as sbx:
        assert len(sbx.execute("print(1)").trace_id) == 32
