"""Where the control plane's binaries are: the cache dir build.sh builds them into, for
the Kubernetes version go.mod pins."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"


def pinned_k8s_version() -> str:
    for line in (HERE / "go.mod").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["require"]:
            parts = parts[1:]
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes":
            return parts[1]
    raise RuntimeError(f"k8s.io/kubernetes version not found in {HERE / 'go.mod'}")


def default_bin_dir() -> Path:
    env = os.environ.get("SCANWARD_K8S_BIN")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "scanward" / "k8s" / pinned_k8s_version()
