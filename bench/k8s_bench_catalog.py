"""The bench's scanner catalog: scanners whose pods kwok completes after a delay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import k8s_bench_repo  # noqa: F401 - puts the repository on sys.path

from tests.k8s_fixture import testenv

IMAGE = "registry.invalid/scanward/bench-scanner:1"


def kwok_complete(delay: str, jitter: str | None = None) -> dict[str, Any]:
    meta = testenv.job_complete_metadata(delay=delay, jitter=jitter)
    return {"pod_annotations": meta.get("annotations", {}),
            "pod_labels": meta.get("labels", {})}


def write_catalog(path: Path, scanners: dict[str, dict[str, Any]]) -> Path:
    entries = [{"name": name, "image": IMAGE, "command": ["scan", "{source}", "{sarif}"],
                "findings_exit_codes": [1], "bad_input_exit_codes": [2],
                "base": {"cpu_millis": 100, "memory_mib": 128}, **behaviour}
               for name, behaviour in scanners.items()]
    path.write_text(json.dumps({"scanners": entries}))
    return path
