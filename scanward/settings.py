"""Worker and CLI settings, read from the environment (``SCANWARD_*``).

Temporal connection settings are not here: they follow Temporal's own conventions
(``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, profiles) through ``temporalio.envconfig``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOME = Path(os.path.expanduser("~")) / ".scanward"
DEFAULT_TASK_QUEUE = "scanward"


def task_queue_for(cluster: str | None, base: str = DEFAULT_TASK_QUEUE) -> str:
    """Each cluster's workers serve their own task queue; scans are routed by request."""
    return f"{base}-{cluster}" if cluster else base


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs besides the Temporal connection."""

    home: Path = DEFAULT_HOME
    workspace_root: Path = DEFAULT_HOME / "workspace"
    results_root: Path = DEFAULT_HOME / "results"
    database_url: str = f"sqlite:///{DEFAULT_HOME / 'scanward.db'}"
    task_queue: str = DEFAULT_TASK_QUEUE
    backend: str = "local"
    allow_local_repositories: bool = False
    catalog_file: Path | None = None
    secrets_dir: Path | None = None
    metrics_port: int | None = None
    pushgateway: str | None = None
    health_port: int | None = None
    graceful_shutdown_seconds: float = 60.0
    max_concurrent_activities: int = 500
    max_cached_workflows: int = 1000
    cluster: str | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = dict(os.environ if env is None else env)
        home = Path(e.get("SCANWARD_HOME", str(DEFAULT_HOME))).expanduser().resolve()

        def path(name: str, default: Path) -> Path:
            return Path(e[name]).expanduser() if e.get(name) else default

        def port(name: str) -> int | None:
            return int(e[name]) if e.get(name) else None

        catalog = e.get("SCANWARD_CATALOG")
        secrets_dir = e.get("SCANWARD_SECRETS_DIR")
        return cls(
            home=home,
            workspace_root=path("SCANWARD_WORKSPACE", home / "workspace"),
            results_root=path("SCANWARD_RESULTS", home / "results"),
            database_url=e.get("SCANWARD_DATABASE_URL") or f"sqlite:///{home / 'scanward.db'}",
            task_queue=e.get("SCANWARD_TASK_QUEUE") or task_queue_for(e.get("SCANWARD_CLUSTER")),
            cluster=e.get("SCANWARD_CLUSTER") or None,
            backend=e.get("SCANWARD_BACKEND") or "local",
            allow_local_repositories=_flag(e.get("SCANWARD_ALLOW_LOCAL_REPOS")),
            catalog_file=Path(catalog) if catalog else None,
            secrets_dir=Path(secrets_dir) if secrets_dir else None,
            metrics_port=port("SCANWARD_METRICS_PORT"),
            pushgateway=e.get("SCANWARD_PUSHGATEWAY") or None,
            health_port=port("SCANWARD_HEALTH_PORT"),
            graceful_shutdown_seconds=float(e.get("SCANWARD_GRACEFUL_SHUTDOWN_SECONDS") or 60),
            max_concurrent_activities=int(e.get("SCANWARD_MAX_CONCURRENT_ACTIVITIES") or 500),
            max_cached_workflows=int(e.get("SCANWARD_MAX_CACHED_WORKFLOWS") or 1000),
            env=e,
        )
