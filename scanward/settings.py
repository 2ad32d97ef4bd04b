"""Worker and CLI settings, read from the environment (``SCANWARD_*``).

Temporal connection settings are not here: they follow Temporal's own conventions
(``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, profiles) through ``temporalio.envconfig``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from scanward.env_values import (
    ConfigError,
    bad,
    env_choice,
    env_flag,
    env_float,
    env_int,
    env_port,
)

DEFAULT_HOME = Path(os.path.expanduser("~")) / ".scanward"
DEFAULT_TASK_QUEUE = "scanward"
BACKENDS = ("local", "kubernetes")
# ScanRequest.cluster's pattern: a worker named otherwise could never be sent a scan.
_CLUSTER = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


# Worker sizing. Task-queue fairness orders only what waits in the task queue: a worker
# must not take more work than it can run at once, or it holds (and runs side by side,
# on the same CPUs) work the queue would have ordered. Workflow tasks run under one GIL:
# a few in flight cover the round trips, more only wait inside the worker.
DEFAULT_WORKFLOW_TASKS = 4
# Kubernetes backend: a running scanner job is a coroutine waiting on the cluster.
KUBERNETES_ACTIVITY_SLOTS = 500


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, which a container's cpuset limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_activity_slots(backend: str, cpus: int) -> int:
    """Activity slots a worker takes by default. With the local backend the worker's own
    machine runs every clone, scanner and store write: two per CPU (one computing while
    one waits on I/O). With Kubernetes, jobs run on the cluster and wait as coroutines."""
    return 2 * cpus if backend == "local" else KUBERNETES_ACTIVITY_SLOTS


# Each worker also serves its task queue's control queue: stops of cancelled scans.
CONTROL_SLOTS = 50


def control_queue_for(task_queue: str) -> str:
    """The queue a task queue's control activities go to (``<queue>-control``)."""
    return f"{task_queue}-control"


def task_queue_for(cluster: str | None, base: str = DEFAULT_TASK_QUEUE) -> str:
    """Each cluster's workers serve their own task queue; scans are routed by request."""
    return f"{base}-{cluster}" if cluster else base


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
    # As long as deploy/worker.yaml's startup probe allows: a worker deployed beside a
    # restarting Temporal waits for it rather than exit into the restart back-off.
    temporal_wait_seconds: float = 300.0
    max_concurrent_activities: int = 500
    max_cached_workflows: int = 1000
    max_concurrent_workflow_tasks: int = DEFAULT_WORKFLOW_TASKS
    # Off in production: the sandbox re-imports the workflow module for every scan and
    # runs each payload's conversion through it (measured: ~13 ms CPU per scan, a fifth
    # of the worker's). Its determinism checks run where they catch mistakes before a
    # deploy: every test's worker and `scanward replay` (the pre-deploy gate) are
    # sandboxed.
    workflow_sandbox: bool = False
    cluster: str | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *,
                 check_paths: bool | None = None) -> Settings:
        """Settings from ``SCANWARD_*``; a value that cannot work raises
        :class:`~scanward.env_values.ConfigError` naming the variable and the form
        expected, before anything starts (the worker and the CLI print it and exit 1).

        ``check_paths``: whether directories scanward never creates must exist on this
        machine (``SCANWARD_SECRETS_DIR``, the directory of an explicit SQLite database
        outside ``SCANWARD_HOME``). By default, when the settings are this process's
        own (``env`` is None); an explicit mapping may describe another machine, like
        the pod of deploy/worker.yaml with its Secret mounted."""
        e = dict(os.environ if env is None else env)
        check_paths = env is None if check_paths is None else check_paths
        home = _directory(e, "SCANWARD_HOME", DEFAULT_HOME).resolve()
        cluster = e.get("SCANWARD_CLUSTER") or None
        if cluster is not None and not _CLUSTER.fullmatch(cluster):
            raise bad("SCANWARD_CLUSTER", cluster,
                      "a cluster name (lowercase letters, digits and '-', at most 63)")
        catalog = e.get("SCANWARD_CATALOG") or None
        if catalog is not None:
            _check_catalog(catalog)
        secrets_dir = e.get("SCANWARD_SECRETS_DIR") or None
        if secrets_dir is not None:
            # Nothing creates it (a mounted Secret): a missing one would only fail every
            # scan that names a secret, with SecretNotFound.
            _directory(e, "SCANWARD_SECRETS_DIR", Path(secrets_dir), must_exist=check_paths)
        _check_retention(e)
        _check_others(e)
        backend = env_choice(e, "SCANWARD_BACKEND", "local", BACKENDS)
        return cls(
            home=home,
            workspace_root=_directory(e, "SCANWARD_WORKSPACE", home / "workspace"),
            results_root=_directory(e, "SCANWARD_RESULTS", home / "results"),
            database_url=_database_url(e, home, check_paths),
            task_queue=(e.get("SCANWARD_TASK_QUEUE") or "").strip()
            or task_queue_for(cluster),
            cluster=cluster,
            backend=backend,
            allow_local_repositories=env_flag(e, "SCANWARD_ALLOW_LOCAL_REPOS"),
            catalog_file=Path(catalog) if catalog else None,
            secrets_dir=Path(secrets_dir) if secrets_dir else None,
            metrics_port=env_port(e, "SCANWARD_METRICS_PORT"),
            pushgateway=_pushgateway(e),
            health_port=env_port(e, "SCANWARD_HEALTH_PORT"),
            graceful_shutdown_seconds=env_float(e, "SCANWARD_GRACEFUL_SHUTDOWN_SECONDS", 60),
            temporal_wait_seconds=env_float(e, "SCANWARD_TEMPORAL_WAIT_SECONDS", 300),
            max_concurrent_activities=env_int(
                e, "SCANWARD_MAX_CONCURRENT_ACTIVITIES",
                default_activity_slots(backend, available_cpus()), min=1),
            max_cached_workflows=env_int(e, "SCANWARD_MAX_CACHED_WORKFLOWS", 1000, min=0),
            # The SDK needs two with a workflow cache (a sticky and a normal poll).
            max_concurrent_workflow_tasks=env_int(
                e, "SCANWARD_MAX_CONCURRENT_WORKFLOW_TASKS", DEFAULT_WORKFLOW_TASKS, min=2),
            workflow_sandbox=env_flag(e, "SCANWARD_WORKFLOW_SANDBOX"),
            env=e,
        )


def _directory(env: Mapping[str, str], name: str, default: Path, *,
               must_exist: bool = False) -> Path:
    """A directory. One the worker creates (``must_exist`` false) may not exist yet,
    but it may not be a file, which would only fail later at the first mkdir or clone."""
    raw = env.get(name)
    path = Path(raw).expanduser() if raw else default
    if raw and path.exists() and not path.is_dir():
        raise bad(name, raw, "a directory (this is a file)")
    if raw and must_exist and not path.exists():
        raise bad(name, raw, "an existing directory (this one does not exist, and "
                  "scanward does not create it)")
    return path


def _database_url(env: Mapping[str, str], home: Path, check_paths: bool) -> str:
    raw = env.get("SCANWARD_DATABASE_URL")
    if not raw:
        return f"sqlite:///{home / 'scanward.db'}"
    # Imported here: the store pulls in SQLAlchemy, which most CLI commands never need.
    from scanward.store.errors import StoreError
    from scanward.store.urls import SQLITE, normalize_url

    try:
        url = normalize_url(raw)  # the form: whether the database answers is the store's
    except StoreError as err:
        # The store's message names the expected forms and masks any password.
        raise ConfigError(f"SCANWARD_DATABASE_URL: {err}") from None
    if check_paths and url.get_backend_name() == SQLITE:
        # The store creates the file's directory, as it must for the default under
        # SCANWARD_HOME; an explicit path into a directory that does not exist is more
        # likely a typo than a wish for a new tree (an SQLite URL holds no password).
        folder = Path(url.database or "/").parent.resolve()
        if not folder.exists() and not folder.is_relative_to(home):
            raise bad("SCANWARD_DATABASE_URL", raw,
                      f"an SQLite file in an existing directory ({folder} does not exist; "
                      "scanward creates only those under SCANWARD_HOME)")
    return raw


def _pushgateway(env: Mapping[str, str]) -> str | None:
    raw = (env.get("SCANWARD_PUSHGATEWAY") or "").strip()
    if not raw:
        return None
    # prometheus_client takes host:port and prefixes http:// itself; or a full URL.
    parts = urlsplit(raw if "://" in raw else f"http://{raw}")
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise bad("SCANWARD_PUSHGATEWAY", raw, "host:port or http(s)://host:port")
    return raw


def _check_catalog(raw: str) -> None:
    # The worker loads it again when it starts; reading it here makes a missing or
    # broken file a configuration error of its own, named, before anything runs.
    from scanward.catalog import Catalog
    from scanward.inputs import InputError

    try:
        Catalog.load(raw)
    except InputError as err:
        raise ConfigError(f"SCANWARD_CATALOG: {err}; expected a JSON file "
                          '{"scanners": [...]}') from None


def _check_retention(env: Mapping[str, str]) -> None:
    # Read by each cleanup (activities/workspace.py); checked here so that a bad value
    # stops the worker at start instead of failing every cleanup later.
    from scanward.attempt_logs import retention_days

    try:
        retention_days(env)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_others(env: Mapping[str, str]) -> None:
    # Parsed where they are used (tenant fairness by the client and the scanner
    # activities, the push interval by the worker's metrics, where secrets may go by its
    # activities), and checked here as well, so that each is a configuration error at
    # start for the worker and every command.
    from scanward import metrics, secrets, tenants
    from scanward.inputs import InputError

    try:
        secrets.parse_hosts(env.get(secrets.HOSTS_ENV))
        tenants.parse_weights(env.get(tenants.WEIGHTS_ENV))
        tenants.parse_job_caps(env.get(tenants.MAX_JOBS_ENV))
        metrics.interval_from_env(env)
    except (InputError, ValueError) as err:
        raise ConfigError(str(err)) from None
