"""Trace context: a call made inside the agent's span carries W3C ``traceparent``, and the server's spans join
that trace. The tests use an OpenTelemetry SDK TracerProvider of their own, never the global one (a span made
current through it is current for the client, whichever provider made it). What goes on the wire is read from
the scripted server of fake_sandbox.py; the joined trace, from the sandbox server itself."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from fake_sandbox import FakeSandbox, FakeServer
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from sandbox_client import AsyncSandboxClient, ExecutionResult, SandboxClient
from sandbox_server.testing import RunningServer, server_in_thread


@pytest.fixture(scope="module")
def tracer() -> trace.Tracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    return provider.get_tracer("agent")


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[RunningServer, InMemorySpanExporter]]:
    """A real server exporting its spans to memory."""
    exporter = InMemorySpanExporter()
    with server_in_thread(span_exporters=[exporter]) as srv:
        yield srv, exporter


def _hex(span: trace.Span) -> tuple[str, str]:
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def test_the_server_joins_the_callers_trace(
    traced: tuple[RunningServer, InMemorySpanExporter], tracer: trace.Tracer
) -> None:
    srv, exporter = traced
    with SandboxClient(srv.target) as sbx, tracer.start_as_current_span("agent-step") as span:
        result = sbx.execute("print('traced')")
    trace_id, span_id = _hex(span)
    assert result.trace_id == trace_id
    server_spans = [s for s in exporter.get_finished_spans() if s.context is not None
                    and format(s.context.trace_id, "032x") == trace_id]
    roots = [s for s in server_spans if s.parent is not None and s.parent.is_remote]
    assert len(roots) == 1
    assert roots[0].parent is not None
    assert format(roots[0].parent.span_id, "016x") == span_id  # the agent's span is the server span's parent


async def test_async_calls_and_streams_join_the_callers_trace(
    traced: tuple[RunningServer, InMemorySpanExporter], tracer: trace.Tracer
) -> None:
    srv, _ = traced
    async with AsyncSandboxClient(srv.target) as sbx:
        with tracer.start_as_current_span("agent-step") as span:
            result = await sbx.execute("print(1)")
            items = [item async for item in sbx.execute_stream("print(2)")]
        trace_id, _ = _hex(span)
        assert result.trace_id == trace_id
        final = items[-1]
        assert isinstance(final, ExecutionResult)
        assert final.trace_id == trace_id
        untraced = await sbx.execute("print(3)")  # outside the span: a trace of the server's own
        assert untraced.trace_id not in ("", trace_id)


def test_a_sync_stream_joins_the_trace_current_when_it_was_made(
    traced: tuple[RunningServer, InMemorySpanExporter], tracer: trace.Tracer
) -> None:
    srv, _ = traced
    with SandboxClient(srv.target) as sbx:
        with tracer.start_as_current_span("agent-step") as span:
            stream = sbx.execute_stream("print(1)")
        final = list(stream)[-1]  # read after the span ended: the context was taken when the call was made
    assert isinstance(final, ExecutionResult)
    assert final.trace_id == _hex(span)[0]


def test_traceparent_and_tracestate_go_as_metadata(client: SandboxClient, fake: FakeSandbox) -> None:
    parent = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "opaque")]),
    )
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        client.execute("1")
    finally:
        otel_context.detach(token)
    metadata = fake.calls[0].metadata
    assert metadata["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert metadata["tracestate"] == "vendor=opaque"
    assert "baggage" not in metadata  # only the trace context leaves the process


def test_no_span_no_trace_metadata(client: SandboxClient, fake: FakeSandbox) -> None:
    client.execute("1")
    assert "traceparent" not in fake.calls[0].metadata


def test_without_opentelemetry_nothing_is_sent(fake_server: FakeServer, fake: FakeSandbox) -> None:
    # None in sys.modules makes every "import opentelemetry..." fail, as when the package is not installed.
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "from sandbox_client import SandboxClient\n"
        f"with SandboxClient({fake_server.target!r}) as sbx:\n"
        "    print(sbx.execute('1').execution_id)\n"
        "assert sys.modules['opentelemetry'] is None\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "exec-1"
    (call,) = fake.calls
    assert not any(re.match("trace", key) for key in call.metadata)
