"""One trace from the client's start through the workflow and activities into the
scanner process (W3C TRACEPARENT), with spans captured by an in-memory exporter."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
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
from tests.helpers.processes import REPO_ROOT


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


@pytest.mark.parametrize("collector", ["hangs", "refuses"])
def test_an_unreachable_collector_costs_a_command_no_time_and_one_line(
        collector: str, tmp_path: Path) -> None:
    """A real process configured like the CLI, ending a span and exiting (the last batch
    is flushed at exit): a collector that hangs added the exporter's 10 s to every
    command, one that refuses printed a traceback per batch on stderr."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if collector == "hangs":
            listener.listen(64)  # connections complete, nothing ever answers
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        script = ("from opentelemetry import trace\n"
                  "from scanward import tracing\n"
                  "assert tracing.configure('scanward-cli')\n"
                  "with trace.get_tracer('t').start_as_current_span('StartWorkflow'):\n"
                  "    pass\n")
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO_ROOT),
               "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert took < 6, f"exit took {took:.1f}s"
    assert "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) <= 1, done.stderr
