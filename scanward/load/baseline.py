"""The baseline of ``scanward load --baseline``: the least a Temporal Python worker can do
per workflow, measured on the same server in the same run. ``MinimalWorkflow`` runs as
many no-op activities, one after the other, as a scan runs (clone, per scanner run and
persist, finalize, cleanup); its worker is the SDK's defaults (sandboxed workflows,
default converter, no logging) and runs as a process of its own like scanward's.

    python -m scanward.load.baseline   # TEMPORAL_ADDRESS, SCANWARD_TASK_QUEUE
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.worker import Worker

WORKFLOW = "MinimalWorkflow"


@activity.defn(name="noop")
async def noop(step: int) -> int:
    return step


@workflow.defn(name=WORKFLOW)
class MinimalWorkflow:
    @workflow.run
    async def run(self, activities: int) -> int:
        for step in range(activities):
            await workflow.execute_activity(noop, step,
                                            start_to_close_timeout=timedelta(minutes=1))
        return activities


async def serve(address: str, task_queue: str, stop: asyncio.Event,
                runtime: Runtime | None = None) -> None:
    client = await Client.connect(address, runtime=runtime,
                                  namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"))
    async with Worker(client, task_queue=task_queue, workflows=[MinimalWorkflow],
                      activities=[noop]):
        await stop.wait()


def main() -> None:
    # A runtime of its own, dropped before the interpreter finalizes (see
    # scanward.client.run: the default one can abort the process at exit).
    runtime: Runtime | None = Runtime(telemetry=TelemetryConfig())

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(os.environ["TEMPORAL_ADDRESS"], os.environ["SCANWARD_TASK_QUEUE"], stop,
                    runtime)

    asyncio.run(_main())
    runtime = None
    gc.collect()


if __name__ == "__main__":
    main()
