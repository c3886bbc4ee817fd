"""W3C trace context on every call, so the server's spans join the caller's trace.

Optional: when the ``opentelemetry-api`` package is importable and the caller has a current, valid span, each
call carries ``traceparent`` (and ``tracestate`` when there is one) in its metadata; the server continues that
trace, and its ``ExecutionResult.trace_id`` is the caller's trace id. Without opentelemetry, or outside a span,
nothing is added. The client depends on no opentelemetry package.

Only the W3C trace context is sent, whatever propagators the application has configured globally: it is what
the server reads, and baggage (which may hold anything the application put there) stays in the process.
"""

from __future__ import annotations

from collections.abc import Callable

Metadata = tuple[tuple[str, str], ...]


def trace_injector() -> Callable[[], Metadata] | None:
    """A function giving the current span's trace-context metadata, or None when opentelemetry is not
    installed. Each client calls this once, when it is made (an import that fails is not retried per call)."""
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None
    propagator = TraceContextTextMapPropagator()

    def inject() -> Metadata:
        if not trace.get_current_span().get_span_context().is_valid:
            return ()
        carrier: dict[str, str] = {}
        propagator.inject(carrier)
        return tuple(carrier.items())

    return inject
