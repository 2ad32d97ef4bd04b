"""End-to-end tracing with OpenTelemetry: client → workflow → activities → scanner.

Temporal's ``TracingInterceptor`` carries the trace context through workflow history;
the scanner receives it as a W3C ``TRACEPARENT`` (environment of the subprocess, or the
Job's environment on Kubernetes). Spans are exported over OTLP when the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set; otherwise tracing
costs nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from temporalio.client import Interceptor
from temporalio.contrib.opentelemetry import TracingInterceptor

log = logging.getLogger("scanward.tracing")
_configured = False
# The exporter's default is 10 s, and the last batch is flushed at exit: a collector that
# hangs would add that to every CLI command. A collector answers in milliseconds.
EXPORT_TIMEOUT = 2.0
_TIMEOUT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")


class _OneLineExporter(SpanExporter):
    """Drops a batch the collector does not take with one log line per outage: the SDK
    would print a full traceback per batch (on the CLI's stderr, in the worker's log)."""

    def __init__(self, inner: SpanExporter, endpoint: str) -> None:
        self._inner = inner
        self._endpoint = endpoint
        self._failing = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
            problem = None if result is SpanExportResult.SUCCESS else "refused the batch"
        except Exception as e:  # tracing must never fail or flood anything
            result, problem = SpanExportResult.FAILURE, f"{type(e).__name__}: {e}"
        if problem is not None and not self._failing:
            log.warning("exporting traces to %s failed (%s); spans are dropped until it "
                        "answers", self._endpoint, problem.splitlines()[0][:300])
        elif problem is None and self._failing:
            log.info("exporting traces to %s works again", self._endpoint)
        self._failing = problem is not None
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def configure(service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Install an OTLP-exporting tracer provider if an endpoint is configured."""
    global _configured
    e = os.environ if env is None else env
    endpoint = (e.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or e.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    if _configured or not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter,
    )

    # An explicit OTEL_EXPORTER_OTLP_*TIMEOUT wins (the exporter reads it itself).
    timeout = None if any(e.get(v) for v in _TIMEOUT_VARIABLES) else EXPORT_TIMEOUT
    exporter = _OneLineExporter(OTLPSpanExporter(timeout=timeout), endpoint)
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = True
    return True


def interceptors() -> list[Interceptor]:
    """Client (and so worker) interceptors that propagate the trace through Temporal."""
    return [TracingInterceptor()]


def traceparent_env() -> dict[str, str]:
    """The current span as W3C trace-context variables for a child process or Job."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {k.upper(): v for k, v in carrier.items() if k in ("traceparent", "tracestate")}
