"""One trace from the client's start through the workflow and activities into the
scanner process (W3C TRACEPARENT), with spans captured by an in-memory exporter."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

import worker as scan_worker
from scanward import tracing
from scanward.settings import Settings
from tests.conftest import scan_request, start


async def test_one_trace_from_start_to_scanner(temporal_env: WorkflowEnvironment,
                                               settings: Settings, flawed_repo: Path,
                                               state_dir: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    client = await Client.connect(temporal_env.client.service_client.config.target_host,
                                  data_converter=pydantic_data_converter,
                                  interceptors=tracing.interceptors())
    traced = dataclasses.replace(settings, task_queue=settings.task_queue + "-traced")
    async with scan_worker.running(traced, client):
        handle = await start(client, traced, scan_request(flawed_repo, "fake"))
        await handle.result()
    spans = exporter.get_finished_spans()
    names = {s.name for s in spans}
    for expected in ("StartWorkflow:ScanWorkflow", "RunWorkflow:ScanWorkflow",
                     "StartActivity:clone_repository", "RunActivity:clone_repository",
                     "RunActivity:run_scanner", "RunActivity:persist_results"):
        assert expected in names, sorted(names)
    start_span = next(s for s in spans if s.name == "StartWorkflow:ScanWorkflow")
    trace_id = start_span.context.trace_id
    assert all(s.context.trace_id == trace_id for s in spans
               if s.name.endswith(("ScanWorkflow", "run_scanner", "clone_repository")))
    # The scanner process was given the same trace.
    traceparent = (state_dir / "traceparent").read_text()
    assert traceparent.split("-")[1] == f"{trace_id:032x}"
