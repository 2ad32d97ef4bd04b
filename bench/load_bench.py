"""scanward's orchestration cost against Temporal's floor, measured in one run.

Runs `scanward load happy --start-local-server --baseline` (a dev server, a real
scanward-worker process, the synthetic scanner finishing at once, one scanner per scan)
and prints scanward's throughput and its worker's and server's CPU per scan as ratios
of a MinimalWorkflow with as many no-op activities on the same server. No assertion:
the figures are the output (see bench/README.md).

    .venv/bin/python bench/load_bench.py --iterations 200 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scanward import client as client_api
from scanward.load.report import LoadReport
from scanward.load.runner import LoadOptions, run_load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--max-concurrent", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the whole report here")
    args = parser.parse_args()
    opts = LoadOptions(scenario="happy", iterations=args.iterations,
                       max_concurrent=args.max_concurrent, start_local_server=True,
                       baseline=True)

    def say(line: str) -> None:
        print(f"load_bench: {line}", file=sys.stderr)

    report: LoadReport = client_api.run(run_load(opts, say))
    data = report.as_json()
    base = data["baseline"]
    cpu = data["cpu_ms_per_scan"]
    print(f"scanward: {data['scans']['completed']}/{data['scans']['started']} scans, "
          f"{data['scans_per_second']} scans/s; CPU per scan: worker {cpu['worker']} ms "
          f"(+{cpu['worker_children']} ms in git and the scanner), server {cpu['server']} ms")
    print(f"baseline: {base['workflows']} MinimalWorkflow x {base['activities']} no-op "
          f"activities, {base['workflows_per_second']} wf/s; CPU per workflow: worker "
          f"{base['cpu_ms_per_workflow']['worker']} ms, server "
          f"{base['cpu_ms_per_workflow']['server']} ms")
    for name, ratio in base["ratios"].items():
        print(f"ratio {name}: {ratio}")
    print(f"replayed {data['replay']['replayed']} histories, {data['replay']['failures']} "
          f"failures, {data['replay']['replays_per_second']} replays/s")
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
