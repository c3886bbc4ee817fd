"""Tracer and meter providers built from Settings, injected into the links that use them (never global).

Tracing: an SDK TracerProvider always runs, so every call has a trace id for the logs, the audit record and the
result; spans leave the process only when an exporter is configured (``otlp_endpoint``, or one a test passes).
Per-request code reaches the tracer through ``current_telemetry`` (set by the telemetry interceptor for the
call), so phase spans in the servicer and backends need no wiring: ``with phase("queue"): ...``. With no
exporter, phase spans are not made at all (nothing could ever read them; they cost ~40 us each, nine a call):
the call's own span remains, for its trace id.

Metrics: OpenTelemetry instruments read by a Prometheus reader on a registry of this server's own, served at
``http://<metrics_host>:<metrics_port>/metrics`` when ``metrics_port`` is set.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Tracer
from prometheus_client import CollectorRegistry, start_http_server

from sandbox_server.settings import Settings

if TYPE_CHECKING:
    from sandbox_server.stores.base import AuditRecord

log = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "sandbox_server"
# Seconds; from a warm start (tens of ms) to the longest wall-time ceiling.
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
QUEUE_BUCKETS_S = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)
MEMORY_BUCKETS_BYTES = tuple(float(2**n) for n in range(20, 34))  # 1 MiB .. 8 GiB
SESSION_LIFETIME_BUCKETS_S = (1.0, 10.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)


class Metrics:
    """Every instrument the server records; the Prometheus names are in deploy/prometheus/alerts.yml's terms."""

    def __init__(self, meter: Meter) -> None:
        self.executions = meter.create_counter(
            "sandbox.executions", description="Executions by tenant, language and result status")
        self.rpcs = meter.create_counter("sandbox.rpcs", description="Sandbox calls by method and final gRPC code")
        self.duration = meter.create_histogram(
            "sandbox.execution.duration", unit="s", description="Wall time of executions",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S)
        self.queue_wait = meter.create_histogram(
            "sandbox.queue.wait", unit="s", description="Time executions waited for an admission slot",
            explicit_bucket_boundaries_advisory=QUEUE_BUCKETS_S)
        self.cpu = meter.create_counter("sandbox.execution.cpu", unit="s", description="CPU time used by sandboxes")
        self.memory = meter.create_histogram(
            "sandbox.execution.peak_memory", unit="By", description="Peak memory of executions",
            explicit_bucket_boundaries_advisory=MEMORY_BUCKETS_BYTES)
        self.rejections = meter.create_counter(
            "sandbox.rejections", description="Requests refused before running, by reason")
        self.cost = meter.create_counter("sandbox.cost", description="Cost of executions and model usage by tenant")
        self.active = meter.create_up_down_counter("sandbox.active_sandboxes", description="Sandboxes running now")
        self._queue_depth: Callable[[], int] = lambda: 0
        # Read at each scrape: the autoscaler's signal (work waiting for a slot on this server).
        meter.create_observable_gauge("sandbox.queue.depth", callbacks=[self._observe_queue_depth],
                                      description="Requests waiting for an admission slot now")
        self._outbox: Callable[[], int] = lambda: 0
        # Read at each scrape: records that must not be lost with this server's disk (stores/outbox.py).
        meter.create_observable_gauge("sandbox.audit.outbox_records", callbacks=[self._observe_outbox],
                                      description="Audit records waiting in this server's outbox for the database")
        self.shedding = meter.create_gauge(
            "sandbox.shedding", description="1 while new work is refused for host pressure, by reason (memory, tasks)")
        self.budget_used = meter.create_gauge(
            "sandbox.budget.used_ratio", description="Spent / limit of each budget (1 = exhausted)")
        self.budget_warnings = meter.create_counter(
            "sandbox.budget.warnings", description="Budgets that crossed their warning fraction")
        self.teardown_failures = meter.create_counter(
            "sandbox.teardown.failures", description="Sandboxes that could not be torn down (possible leaks)")
        self.incidents = meter.create_counter("sandbox.incidents", description="Incidents opened, by rule")
        self.sessions_active = meter.create_up_down_counter(
            "sandbox.sessions.active", description="Live sessions, by tenant")
        self.session_closes = meter.create_counter("sandbox.sessions.closed", description="Sessions closed, by reason")
        self.kernel_restarts = meter.create_counter(
            "sandbox.sessions.kernel_restarts", description="Session kernels restarted (interrupt failed, died)")
        self.egress_bytes = meter.create_counter(
            "sandbox.egress", unit="By", description="Bytes through the egress proxy, by tenant and direction")
        self.egress_refusals = meter.create_counter(
            "sandbox.egress.refusals", description="Connections the egress proxy refused, by tenant and reason")
        self.session_lifetime = meter.create_histogram(
            "sandbox.sessions.lifetime", unit="s", description="How long sessions lived, by close reason",
            explicit_bucket_boundaries_advisory=SESSION_LIFETIME_BUCKETS_S)


    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Report ``depth()`` as ``sandbox_queue_depth`` from now on."""
        self._queue_depth = depth

    def _observe_queue_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._queue_depth())]

    def watch_outbox(self, waiting: Callable[[], int]) -> None:
        """Report ``waiting()`` as ``sandbox_audit_outbox_records`` from now on."""
        self._outbox = waiting

    def _observe_outbox(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._outbox())]


class ExecutionMetrics:
    """The audit link's observer: counts every accepted execution once its record is durable, by its outcome
    (a result status, ``ERROR`` when the server failed it, ``CANCELLED`` when the client went away)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def on_execution(self, rec: AuditRecord) -> None:
        labels = {"tenant": rec.tenant, "language": rec.language}
        status = rec.outcome.split(":", 1)[0]
        # exercise: an operator's red-team or eval run, told apart from the agents' work on dashboards
        self.metrics.executions.add(1, {**labels, "status": status, "exercise": str(rec.exercise).lower()})
        if status not in ("ERROR", "CANCELLED"):
            self.metrics.duration.record(rec.wall_time_s, labels)
            self.metrics.cpu.add(rec.cpu_time_s, labels)
            self.metrics.memory.record(rec.peak_memory_bytes, labels)
        if rec.egress_bytes_sent or rec.egress_bytes_received:
            self.metrics.egress_bytes.add(rec.egress_bytes_sent, {"tenant": rec.tenant, "direction": "sent"})
            self.metrics.egress_bytes.add(rec.egress_bytes_received, {"tenant": rec.tenant, "direction": "received"})


@dataclass
class Telemetry:
    """The server's tracer, meter instruments and metrics endpoint. ``shutdown`` flushes and stops them."""

    tracer_provider: TracerProvider
    tracer: Tracer
    meter_provider: MeterProvider
    metrics: Metrics
    registry: CollectorRegistry
    metrics_server: WSGIServer | None = None
    exports_spans: bool = True  # False: no span ever leaves the process, so phase spans are skipped

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.server_address[1] if self.metrics_server is not None else None

    def serve_metrics(self, host: str, port: int) -> int:
        """Start the /metrics endpoint (a thread of prometheus_client's); returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.metrics_server = server
        return int(server.server_address[1])

    def shutdown(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def build_telemetry(settings: Settings, span_exporters: Sequence[SpanExporter] = ()) -> Telemetry:
    """Providers from Settings. ``span_exporters`` are added as-is (synchronous processor: tests read them
    right after a call); the OTLP exporter, when configured, gets a batch processor."""
    resource = Resource.create({"service.name": settings.service_name})
    tracer_provider = TracerProvider(resource=resource)
    processors: list[SpanProcessor] = [SimpleSpanProcessor(e) for e in span_exporters]
    if settings.otlp_endpoint:
        # Imported here: the gRPC exporter is only needed when configured.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        processors.append(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=settings.otlp_insecure),
            schedule_delay_millis=1000,
        ))
    for processor in processors:
        tracer_provider.add_span_processor(processor)
    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
    # No exemplars: Prometheus' text format carries none, so offering each measurement to a reservoir is waste
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader],
                                   exemplar_filter=AlwaysOffExemplarFilter())
    return Telemetry(
        tracer_provider=tracer_provider,
        tracer=tracer_provider.get_tracer(INSTRUMENTATION_NAME),
        meter_provider=meter_provider,
        metrics=Metrics(meter_provider.get_meter(INSTRUMENTATION_NAME)),
        registry=registry,
        exports_spans=bool(processors),
    )


current_telemetry: contextvars.ContextVar[Telemetry | None] = contextvars.ContextVar(
    "sandbox_telemetry", default=None
)


@contextlib.contextmanager
def phase(name: str, **attributes: Any) -> Iterator[Span | None]:
    """A child span of the current call for one phase of it; nothing outside a traced call or with no exporter."""
    telemetry = current_telemetry.get()
    if telemetry is None or not telemetry.exports_spans:
        yield None
        return
    with telemetry.tracer.start_as_current_span(name, attributes=attributes) as span:
        yield span


def record_phase(name: str, start_ns: int, end_ns: int | None = None, **attributes: Any) -> None:
    """A phase span from timestamps taken along the way (``time.time_ns()``), for code whose phases do not
    nest as blocks (a backend's start, run and teardown)."""
    telemetry = current_telemetry.get()
    if telemetry is None or not telemetry.exports_spans:
        return
    span = telemetry.tracer.start_span(name, start_time=start_ns, attributes=attributes)
    span.end(end_time=end_ns if end_ns is not None else time.time_ns())


def current_trace_id() -> str:
    """The current span's trace id (32 hex digits), or "" outside a traced call."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def metrics() -> Metrics | None:
    """The current call's instruments (None outside a call, e.g. in unit tests of a link)."""
    telemetry = current_telemetry.get()
    return telemetry.metrics if telemetry is not None else None
