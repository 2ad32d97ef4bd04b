"""`scanward load`: the load scenarios."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from scanward.cli.app import EXIT_USAGE, CliError, err, out, run_command
from scanward.cli.termination import sigterm_interrupts


def load(
    scenario: Annotated[str, typer.Argument(
        help="happy | mixed | webhook | tenants")] = "happy",
    iterations: Annotated[int | None, typer.Option(
        min=1, help="Scans to run (tenants: the bulk tenant's).")] = None,
    duration: Annotated[str | None, typer.Option(
        help="Start scans for this long instead, e.g. 5m.")] = None,
    max_concurrent: Annotated[int | None, typer.Option(
        min=1, help="Scans in flight at once.")] = None,
    rate: Annotated[str | None, typer.Option(help="At most R starts per second, e.g. 5/s.")
                    ] = None,
    run_id: Annotated[str | None, typer.Option(
        help="Derives the scan ids (and the local task queue).")] = None,
    start_local_server: Annotated[bool, typer.Option(
        "--start-local-server", help="Start a dev server and a worker process here.")
                                  ] = False,
    task_queue: Annotated[str | None, typer.Option(
        help="Task queue of the deployment's workers.")] = None,
    cluster: Annotated[str | None, typer.Option(help="Route scans to this cluster.")] = None,
    scanners: Annotated[int, typer.Option(min=1, max=8, help="Synthetic scanners per scan.")
                        ] = 1,
    scan_seconds: Annotated[float, typer.Option(min=0, help="How long each scanner runs.")
                            ] = 0.0,
    findings: Annotated[int, typer.Option(min=0, help="Findings per scanner.")] = 3,
    crash_share: Annotated[float, typer.Option(help="mixed: crash, then succeed.")] = 0.2,
    dead_share: Annotated[float, typer.Option(help="mixed: go dead (retried, abandoned).")
                          ] = 0.2,
    cancel_share: Annotated[float, typer.Option(help="mixed: cancelled while running.")
                            ] = 0.2,
    oom_share: Annotated[float | None, typer.Option(
        help="mixed: OOM-killed, then succeed with doubled memory (needs a memory limit: "
             "--kube; default 0.1 there).")] = None,
    webhook_down: Annotated[str, typer.Option(help="webhook: receiver down this long.")
                            ] = "3s",
    webhook_delay: Annotated[float, typer.Option(help="webhook: seconds per answer.")] = 0.2,
    small_scans: Annotated[int, typer.Option(min=1, help="tenants: the small tenant's scans.")
                           ] = 10,
    tenant_max_jobs: Annotated[str | None, typer.Option(
        help="SCANWARD_TENANT_MAX_JOBS of the local worker, e.g. 4 or bulk=2,*=4.")] = None,
    worker_activities: Annotated[int | None, typer.Option(
        min=1, help="SCANWARD_MAX_CONCURRENT_ACTIVITIES of the local worker.")] = None,
    baseline: Annotated[bool, typer.Option(
        help="Also run a minimal workflow with as many no-op activities; print ratios.")
                        ] = False,
    kube: Annotated[Path | None, typer.Option(
        "--kube", metavar="KUBECONFIG",
        help="The local worker runs its scanners as Jobs on this cluster (kubernetes "
             "backend; with --start-local-server).")] = None,
    kube_namespace: Annotated[str | None, typer.Option(
        help="--kube: namespace of the Jobs, with the workspace/results claims and the "
             "worker's Role (deploy/). Default scanward.")] = None,
    kube_context: Annotated[str | None, typer.Option(help="--kube: kubeconfig context.")
                            ] = None,
    kube_workspace: Annotated[Path | None, typer.Option(
        help="--kube: where this machine mounts the workspace claim's volume (default: "
             "the run's work dir; enough for --kube-stand-in).")] = None,
    kube_results: Annotated[Path | None, typer.Option(
        help="--kube: where this machine mounts the results claim's volume.")] = None,
    kube_stand_in: Annotated[Path | None, typer.Option(
        metavar="KUBECONFIG",
        help="--kube is the test control plane (kwok, tools/k8s-testenv): play each "
             "scanner pod as this identity (watch Jobs and pods, patch pods).")] = None,
    scan_timeout: Annotated[str, typer.Option(
        help="A scan not ended this long after its start fails and is terminated (its "
             "workers gone, or far behind).")] = "10m",
    keep: Annotated[bool, typer.Option(help="Keep the work dir (logs, repository).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON on stdout.")
                       ] = False,
) -> None:
    """Load test: run a scenario's scans end to end with the synthetic scanner, report
    throughput, latency, history sizes and CPU per scan, then replay every history it
    produced. Exits 1 if a scan failed or a history does not replay."""
    from scanward.load import kube as load_kube
    from scanward.load import report as load_report
    from scanward.load import runner

    async def go() -> None:
        try:
            target = load_kube.target(kube, namespace=kube_namespace, context=kube_context,
                                      workspace=kube_workspace, results=kube_results,
                                      stand_in=kube_stand_in)
            opts = runner.LoadOptions(
                scenario=scenario, iterations=iterations,
                duration=runner.parse_duration(duration) if duration else None,
                max_concurrent=max_concurrent,
                rate=runner.parse_rate(rate) if rate else None,
                start_local_server=start_local_server, task_queue=task_queue,
                cluster=cluster, scanners=scanners, scan_seconds=scan_seconds,
                findings=findings, crash_share=crash_share, dead_share=dead_share,
                cancel_share=cancel_share, webhook_down=runner.parse_duration(webhook_down),
                webhook_delay=webhook_delay, small_scans=small_scans,
                tenant_max_jobs=tenant_max_jobs, worker_activities=worker_activities,
                baseline=baseline, keep=keep, kube=target, oom_share=oom_share,
                scan_timeout=runner.parse_duration(scan_timeout))
            if run_id:
                opts.run_id = run_id
            async with sigterm_interrupts():
                result = await runner.run_load(opts, lambda line: err.print(
                    f"scanward load: {line}", markup=False, highlight=False,
                    soft_wrap=True))
        except (runner.LoadUsageError, load_kube.KubeOptionError) as e:
            raise CliError(str(e), EXIT_USAGE) from e
        except runner.LoadError as e:
            raise CliError(str(e)) from e
        if as_json:
            print(json.dumps(result.as_json(), indent=2))
        else:
            load_report.render(result, out)
        failures = result.failures()
        if failures:
            raise CliError("; ".join(failures))

    run_command(go())


