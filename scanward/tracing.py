"""End-to-end tracing with OpenTelemetry: client → workflow → activities → scanner.

Temporal's ``TracingInterceptor`` carries the trace context through workflow history;
the scanner receives it as a W3C ``TRACEPARENT`` (environment of the subprocess, or the
Job's environment on Kubernetes). Spans are exported over OTLP when the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set; otherwise tracing
costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from temporalio.client import Interceptor
from temporalio.contrib.opentelemetry import TracingInterceptor

_configured = False


def configure(service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Install an OTLP-exporting tracer provider if an endpoint is configured."""
    global _configured
    e = os.environ if env is None else env
    if _configured or not (e.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                           or e.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter,
    )

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
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
