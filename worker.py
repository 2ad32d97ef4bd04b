"""scanward-worker: wires settings, the store, a job backend and the activities into a
Temporal worker, and shuts it down gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import (
    FixedSizeSlotSupplier,
    UnsandboxedWorkflowRunner,
    Worker,
    WorkerTuner,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.backends import JobBackend
from activities.backends.kubernetes import ClusterError, KubernetesBackend, KubeSettings
from activities.backends.local import LocalBackend
from activities.notify import NotifyActivities
from activities.results import ResultActivities
from activities.scanner_jobs import ScannerActivities
from activities.workspace import WorkspaceActivities
from scanward import client as client_api
from scanward import metrics, tenants, tracing
from scanward import search_attributes as sa
from scanward.catalog import Catalog
from scanward.client import TemporalUnavailable, connect
from scanward.env_values import (  # a bad SCANWARD_* value, or a cluster that cannot work
    ConfigError,
    port_unavailable,
)
from scanward.health import NOT_STARTED, Health
from scanward.inputs import InputError
from scanward.scan_survey import ScanSurveyor
from scanward.secrets import SecretStore
from scanward.settings import CONTROL_SLOTS, Settings, control_queue_for
from scanward.store import Store
from scanward.worker_slots import ActivitySlots
from workflows.resolve import ResolveRefWorkflow
from workflows.scan import ScanWorkflow

log = logging.getLogger("scanward.worker")
SDK_DEFAULT_SLOTS = 100  # local activities (none used) and Nexus tasks (none): the SDK's


def make_backend(settings: Settings) -> JobBackend:
    """The job backend the settings name: ``local`` or ``kubernetes``."""
    if settings.backend == "local":
        return LocalBackend(settings.workspace_root, settings.results_root)
    if settings.backend == "kubernetes":
        try:
            return KubernetesBackend(KubeSettings.from_env(settings.env), settings.results_root)
        except ClusterError as e:
            raise ConfigError(str(e)) from e
    raise ConfigError(f"unknown job backend {settings.backend!r} (available: local, kubernetes)")


def build_worker(client: Client, settings: Settings, store: Store,
                 executor: ThreadPoolExecutor, backend: JobBackend,
                 pusher: metrics.Pusher | None = None) -> tuple[Worker, Worker]:
    """A worker for the ScanWorkflow and its activities on ``settings.task_queue``, and
    one for its control activities on the control queue beside it."""
    catalog = Catalog.load(settings.catalog_file)
    metrics.initialize(catalog.names(), backend.name)
    secrets = SecretStore(settings.env, settings.secrets_dir)  # its hosts: checked in settings
    workspace = WorkspaceActivities(settings, catalog, secrets)
    try:
        caps = tenants.parse_job_caps(settings.env.get(tenants.MAX_JOBS_ENV))
    except InputError as e:
        raise ConfigError(str(e)) from e
    # With caps, a job waiting for its tenant's slot lends its worker slot back.
    lending = ActivitySlots(settings.max_concurrent_activities) if caps.enabled else None
    scanners = ScannerActivities(backend, catalog, pusher, caps,
                                 lending.lent if lending is not None else None)
    results = ResultActivities(store, settings.workspace_root, settings.results_root)
    notify = NotifyActivities(secrets, pusher)
    scans = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[ScanWorkflow, ResolveRefWorkflow],
        activities=[
            workspace.resolve_ref, workspace.clone_repository, workspace.cleanup_workspace,
            scanners.run_scanner, scanners.stop_scanner, results.persist_results,
            results.finalize_scan, notify.notify_webhook,
        ],
        activity_executor=executor,
        workflow_runner=(SandboxedWorkflowRunner() if settings.workflow_sandbox
                         else UnsandboxedWorkflowRunner()),
        **_slots(settings, lending),
        # Eager dispatch hands a scan's next activity straight back to this worker when
        # a slot is free, past the task queue and so past its fairness.
        disable_eager_activity_execution=True,
        # Each cached (waiting) scan holds its sandboxed workflow: ~130 KB measured.
        max_cached_workflows=settings.max_cached_workflows,
        # Without this, shutdown cancels running scanners at once.
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_seconds),
    )
    # A cancelled scan's stop must not wait for a slot behind the work it stops: on a
    # worker sized to its machine every slot can hold a running scanner. Stops have a
    # queue and slots of their own (short calls: a kill, a Job delete).
    control = Worker(
        client,
        task_queue=control_queue_for(settings.task_queue),
        activities=[scanners.stop_scanner],  # async: no thread pool
        max_concurrent_activities=CONTROL_SLOTS,
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_seconds),
    )
    return scans, control


def _slots(settings: Settings, lending: ActivitySlots | None) -> dict[str, Any]:
    """The worker's slots (scanward/settings.py, "Worker sizing"): the SDK's fixed ones,
    or a tuner whose activity slots an activity can lend back."""
    if lending is None:
        return {"max_concurrent_activities": settings.max_concurrent_activities,
                "max_concurrent_workflow_tasks": settings.max_concurrent_workflow_tasks}
    return {"tuner": WorkerTuner.create_composite(
        workflow_supplier=FixedSizeSlotSupplier(settings.max_concurrent_workflow_tasks),
        activity_supplier=lending,
        local_activity_supplier=FixedSizeSlotSupplier(SDK_DEFAULT_SLOTS),
        nexus_supplier=FixedSizeSlotSupplier(SDK_DEFAULT_SLOTS))}


async def run(settings: Settings, stop: asyncio.Event, client: Client | None = None) -> None:
    """Run a worker until ``stop`` is set, then drain in-flight work and return."""
    health = Health()
    try:
        runtime = _listen(settings, health, metrics_runtime=client is None)
        await _run(settings, stop, client, health, runtime)
    finally:
        health.close()  # closes a port bound by _listen when start-up failed after it


def _listen(settings: Settings, health: Health, *, metrics_runtime: bool) -> Runtime | None:
    """Take the worker's ports before any other start-up work (directories, migrations,
    the Temporal connection): a port in use stops the worker at once, with one line that
    names its variable. Returns the Temporal runtime exporting on the metrics port."""
    if settings.health_port is not None:
        try:
            health.bind(settings.health_port)  # served once the worker is wired (_health)
        except OSError as e:
            raise port_unavailable("SCANWARD_HEALTH_PORT", settings.health_port, e) from None
    if not (metrics_runtime and settings.metrics_port):
        return None
    try:
        # The SDK's Prometheus exporter binds its port as the runtime is created.
        return Runtime(telemetry=TelemetryConfig(
            logging=client_api.core_logging(),  # in the worker's log, as its own lines
            metrics=PrometheusConfig(bind_address=f"0.0.0.0:{settings.metrics_port}")))
    except ValueError as e:  # "Failed starting Prometheus exporter: <OS error>"
        if "Prometheus exporter" not in str(e):
            raise
        raise port_unavailable("SCANWARD_METRICS_PORT", settings.metrics_port,
                               str(e)) from None


async def check_search_attributes(client: Client) -> None:
    """Refuse to start on a namespace without scanward's search attributes: the worker
    ran, but every scan failed to start ("no mapping defined for search attribute"), dead
    scans could not be listed, and the survey logged a warning every interval. Where the
    server will not list them (permissions), the check is skipped with a warning."""
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace))
    except RPCError as e:
        if e.status is RPCStatusCode.NOT_FOUND:  # the namespace itself
            raise ConfigError(f"Temporal namespace {client.namespace!r}: {e.message} "
                              "(TEMPORAL_NAMESPACE)") from None
        log.warning("could not check the namespace's search attributes: %s", e.message)
        return
    have = dict(listed.custom_attributes)
    wrong = [key for key in sa.ALL if have.get(key.name) != int(key.indexed_value_type)]
    if wrong:
        create = " && ".join(
            f"temporal operator search-attribute create --namespace {client.namespace} "
            f"--name {key.name} --type {sa.type_name(key)}" for key in wrong)
        raise ConfigError(f"namespace {client.namespace!r} lacks scanward's search "
                          f"attribute(s) {', '.join(k.name for k in wrong)} (or has them "
                          f"with another type): {create}")


async def _run(settings: Settings, stop: asyncio.Event, client: Client | None,
               health: Health, runtime: Runtime | None) -> None:
    # Probes answer from here on: /livez while start-up waits (for Temporal, above all),
    # /readyz saying what it waits for.
    ticking = asyncio.create_task(health.run())
    if settings.health_port is not None:  # bound by _listen
        log.info("health probes on :%d (/livez, /readyz)", health.serve())
    try:
        await _start_and_serve(settings, stop, client, health, runtime)
    finally:
        ticking.cancel()
        # A stopped worker is not ready; and the global gauge must not keep this health
        # (and through its checks the client and its Temporal runtime) alive after us.
        metrics.WORKER_READY.set_function(lambda: 0.0)
        health.close()
    log.info("worker stopped")


async def _start_and_serve(settings: Settings, stop: asyncio.Event, client: Client | None,
                           health: Health, runtime: Runtime | None) -> None:
    for path in (settings.workspace_root, settings.results_root):
        path.mkdir(parents=True, exist_ok=True)
    try:
        interval = metrics.interval_from_env(settings.env)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    backend = make_backend(settings)
    try:
        await asyncio.to_thread(backend.start)
    except ClusterError as e:
        backend.close()
        raise ConfigError(str(e)) from e
    store = Store.open(settings.database_url)
    background: list[asyncio.Task[None]] = []
    pusher = (metrics.Pusher(settings.pushgateway, interval=interval)
              if settings.pushgateway else None)
    try:
        if client is None:
            client = await connect_patiently(settings.temporal_wait_seconds, stop, health,
                                             runtime)
            if client is None:  # stopped while waiting
                return
        await check_search_attributes(client)
        _health(store, client, health)
        if settings.health_port is not None:  # someone scrapes /metrics: survey scans
            surveyor = ScanSurveyor(client, settings.task_queue)
            background.append(asyncio.create_task(surveyor.run(interval)))
        # Threads serve only the synchronous (database) activities and are started on
        # demand; waiting scanners are coroutines and use none.
        with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as executor:
            scans, control = build_worker(client, settings, store, executor, backend, pusher)
            if pusher is not None:  # after build_worker: the first push has every series
                background.append(asyncio.create_task(pusher.run()))
            async with scans, control:
                health.set_ready(True)
                log.info("worker polling %s and %s (backend %s)", settings.task_queue,
                         control_queue_for(settings.task_queue), settings.backend)
                await stop.wait()
                health.set_draining()
                log.info("shutting down: finishing in-flight activities (up to %.0fs)",
                         settings.graceful_shutdown_seconds)
    finally:
        for task in background:
            task.cancel()
        if pusher is not None:  # a clean stop: its group leaves the Pushgateway
            await pusher.close()
        store.close()
        backend.close()


async def connect_patiently(patience: float, stop: asyncio.Event, health: Health,
                            runtime: Runtime | None) -> Client | None:
    """Connect to Temporal, waiting up to ``patience`` seconds for it to answer (a worker
    deployed beside a restarting server, or before it, would otherwise exit and sit in
    the orchestrator's restart back-off after Temporal is back). None if ``stop`` is set
    meanwhile. Errors that waiting cannot cure (an unknown namespace, bad TLS) are
    raised at once."""
    started = time.monotonic()
    pause = 1.0
    waited = False  # said once, when the first try fails
    while True:
        try:
            client = await connect(runtime=runtime)
        except TemporalUnavailable as e:
            left = patience - (time.monotonic() - started)
            if left <= 0:
                if patience > 0:
                    raise TemporalUnavailable(f"{e}; waited {patience:.0f}s "
                                              "(SCANWARD_TEMPORAL_WAIT_SECONDS)") from None
                raise
            if not waited:
                waited = True
                log.warning("%s: waiting up to %.0fs for it (SCANWARD_TEMPORAL_WAIT_SECONDS)",
                            e, left)
            health.set_starting(f"waiting for Temporal: {e}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(pause, left))
                log.info("stopped while waiting for Temporal")
                return None
            pause = min(pause * 2, 10.0)
            continue
        if waited:
            log.info("Temporal answered after %.0fs", time.monotonic() - started)
        health.set_starting(NOT_STARTED)
        return client


@contextlib.asynccontextmanager
async def running(settings: Settings, client: Client, *,
                  stop_timeout: float = 60.0) -> AsyncIterator[asyncio.Task[None]]:
    """A worker in this process for the duration of the block (tests, tools, the dev
    stack), drained and stopped when the block ends; yields its task."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop, client))
    await asyncio.sleep(0)
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, stop_timeout)


def _health(store: Store, client: Client, health: Health) -> None:
    async def temporal() -> None:
        if not await client.service_client.check_health():
            raise RuntimeError("Temporal reports NOT_SERVING")

    async def database() -> None:
        await asyncio.to_thread(store.ping)

    health.add_check("temporal", temporal)
    health.add_check("store", database)
    metrics.WORKER_READY.set_function(lambda: float(health.ready()[0]))


def main() -> None:
    """Console entry point ``scanward-worker``; configuration comes from the environment."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request's full URL at INFO, and webhook URLs carry credentials
    # and tokens (user:pass@, ?token=); a failed delivery's error names the URL redacted
    # (scanward.webhook.redact_url). httpcore logs requests at DEBUG.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    tracing.configure("scanward-worker")

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(Settings.from_env(), stop)

    try:
        # On a Temporal runtime that is shut down before the interpreter finalizes (see
        # scanward.client.run): the default one can abort the process at exit.
        client_api.run(_main())
    except (ConfigError, OSError, RuntimeError) as e:
        print(f"scanward-worker: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
