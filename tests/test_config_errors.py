"""A bad value in any SCANWARD_* variable is one line that names the variable and the
form it expects, and exit 1, from the worker and from the CLI: never a traceback, never
a silent default, never a failure at the first scan.

The table covers every SCANWARD_* variable the code reads (the inventory test greps the
sources, so a new variable without a row fails here)."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from activities.backends.kubernetes import KubeSettings
from scanward.env_values import ConfigError
from scanward.settings import Settings
from tests.k8s_fixture import token_kubeconfig

ROOT = Path(__file__).parent.parent
SOURCES = [*(ROOT / "scanward").rglob("*.py"), *(ROOT / "activities").rglob("*.py"),
           *(ROOT / "workflows").rglob("*.py"), ROOT / "worker.py", ROOT / "starter.py"]
BIN = Path(sys.executable).parent

# Variables whose every value works: what a bad one would be is not a form.
ANY_VALUE = {
    "SCANWARD_TASK_QUEUE": "any task queue name Temporal accepts",
    "SCANWARD_SECRET_<NAME>": "secret values, never parsed (nor shown)",
}

# Files a row needs, made in the test's tmp dir: {file} in a value or extra is replaced.
A_FILE = "{file}"
BROKEN_CATALOG = "{broken_catalog}"
KUBECONFIG = "{kubeconfig}"

# (variable, bad value, other variables it needs, what the message must also say)
BAD: list[tuple[str, str, dict[str, str], str]] = [
    ("SCANWARD_HOME", A_FILE, {}, "a directory"),
    ("SCANWARD_WORKSPACE", A_FILE, {}, "a directory"),
    ("SCANWARD_RESULTS", A_FILE, {}, "a directory"),
    ("SCANWARD_SECRETS_DIR", A_FILE, {}, "a directory"),
    # Nothing creates it: missing, every scan naming a secret would fail.
    ("SCANWARD_SECRETS_DIR", "/nonexistent/secrets", {}, "an existing directory"),
    ("SCANWARD_HOSTS_FOR_SECRETS", "github.com", {}, "is not SECRET=HOST"),
    ("SCANWARD_HOSTS_FOR_SECRETS", "gh=https://github.com", {}, "is not a host or host:port"),
    ("SCANWARD_DATABASE_URL", "mysql://u@db/scans", {}, "use sqlite:// or postgresql://"),
    ("SCANWARD_DATABASE_URL", "not a url", {}, "expected sqlite:////abs/path.db"),
    ("SCANWARD_DATABASE_URL", "postgresql://u:hunter2@/scans", {}, "names no host"),
    # An explicit SQLite file outside SCANWARD_HOME in a directory that does not exist:
    # a typo, not a tree to create.
    ("SCANWARD_DATABASE_URL", "sqlite:////nonexistent-dir/x.db", {},
     "an SQLite file in an existing directory (/nonexistent-dir does not exist"),
    ("SCANWARD_CLUSTER", "EU_West", {}, "a cluster name"),
    ("SCANWARD_BACKEND", "docker", {}, "one of local, kubernetes"),
    ("SCANWARD_ALLOW_LOCAL_REPOS", "maybe", {}, "1/true/yes/on or 0/false/no/off"),
    ("SCANWARD_WORKFLOW_SANDBOX", "sometimes", {}, "1/true/yes/on or 0/false/no/off"),
    ("SCANWARD_CATALOG", "/nonexistent/catalog.json", {}, "file not found"),
    ("SCANWARD_CATALOG", BROKEN_CATALOG, {}, 'expected a JSON file {"scanners": [...]}'),
    ("SCANWARD_METRICS_PORT", "nine thousand", {}, "a TCP port from 1 to 65535"),
    ("SCANWARD_METRICS_PORT", "70000", {}, "a TCP port from 1 to 65535"),
    ("SCANWARD_HEALTH_PORT", "-1", {}, "a TCP port from 1 to 65535"),
    ("SCANWARD_PUSHGATEWAY", "ftp://gateway:9091", {}, "host:port or http(s)://host:port"),
    ("SCANWARD_PUSHGATEWAY", "gateway:99999", {}, "host:port or http(s)://host:port"),
    ("SCANWARD_GRACEFUL_SHUTDOWN_SECONDS", "soon", {}, "a number of seconds >= 0"),
    ("SCANWARD_GRACEFUL_SHUTDOWN_SECONDS", "-5", {}, "a number of seconds >= 0"),
    ("SCANWARD_GRACEFUL_SHUTDOWN_SECONDS", "nan", {}, "a number of seconds >= 0"),
    ("SCANWARD_TEMPORAL_WAIT_SECONDS", "5m", {}, "a number of seconds >= 0"),
    ("SCANWARD_MAX_CONCURRENT_ACTIVITIES", "0", {}, "an integer >= 1"),
    ("SCANWARD_MAX_CONCURRENT_ACTIVITIES", "1.5", {}, "an integer >= 1"),
    ("SCANWARD_MAX_CACHED_WORKFLOWS", "-1", {}, "an integer >= 0"),
    ("SCANWARD_MAX_CONCURRENT_WORKFLOW_TASKS", "1", {}, "an integer >= 2"),
    ("SCANWARD_MAX_CONCURRENT_WORKFLOW_TASKS", "four", {}, "an integer >= 2"),
    ("SCANWARD_LOG_RETENTION_DAYS", "two weeks", {}, "a positive number of days"),
    ("SCANWARD_LOG_RETENTION_DAYS", "0", {}, "a positive number of days"),
    # Parsed by their own modules (scanward/tenants.py, scanward/metrics.py), checked
    # with the rest at start.
    ("SCANWARD_TENANT_WEIGHTS", "acme=heavy", {}, "not a number"),
    ("SCANWARD_TENANT_WEIGHTS", "acme", {}, "is not TENANT=VALUE"),
    ("SCANWARD_TENANT_MAX_JOBS", "four", {}, "not a whole number"),
    ("SCANWARD_TENANT_MAX_JOBS", "acme=0", {}, "at least 1"),
    ("SCANWARD_METRICS_INTERVAL_SECONDS", "0", {}, "a number of seconds"),
    ("SCANWARD_METRICS_INTERVAL_SECONDS", "a minute", {}, "a number of seconds"),
    # The kubernetes backend's own (KubeSettings), read when SCANWARD_BACKEND=kubernetes.
    ("SCANWARD_KUBECONFIG", "/nonexistent/kubeconfig", {}, "expected a kubeconfig file"),
    ("SCANWARD_KUBE_CONTEXT", "prod", {"SCANWARD_KUBECONFIG": KUBECONFIG},
     "a context of kubeconfig"),
    ("SCANWARD_KUBE_NAMESPACE", "Scan_Ward", {}, "a DNS label"),
    ("SCANWARD_KUBE_WORKSPACE_CLAIM", "my claim", {}, "a Kubernetes name"),
    ("SCANWARD_KUBE_RESULTS_CLAIM", "-results", {}, "a Kubernetes name"),
    ("SCANWARD_KUBE_IMAGE_PULL_POLICY", "Sometimes", {}, "one of Always, IfNotPresent, Never"),
    ("SCANWARD_KUBE_IMAGE_PULL_SECRETS", "regcred,Other Cred", {},
     "comma-separated Kubernetes names"),
    ("SCANWARD_KUBE_NODE_SELECTOR", "disktype", {}, "key=value pairs"),
    ("SCANWARD_KUBE_NODE_SELECTOR", "disktype=ssd,=x", {}, "key=value pairs"),
    ("SCANWARD_KUBE_NODE_SELECTOR", "zone=eu west", {}, "key=value pairs"),
    ("SCANWARD_KUBE_TOLERATIONS", '[{"key": "a"', {}, "a JSON list of objects"),
    ("SCANWARD_KUBE_TOLERATIONS", '{"key": "a"}', {}, "a JSON list of objects"),
    ("SCANWARD_KUBE_TOLERATIONS", '["a"]', {}, "a JSON list of objects"),
    ("SCANWARD_KUBE_JOB_TTL_SECONDS", "1h", {}, "a number of seconds >= 0"),
    ("SCANWARD_KUBE_JOB_TTL_SECONDS", "-1", {}, "a number of seconds >= 0"),
    ("SCANWARD_KUBE_RESYNC_SECONDS", "0", {}, "a number of seconds > 0"),
    ("SCANWARD_KUBE_RESYNC_SECONDS", "often", {}, "a number of seconds > 0"),
    ("SCANWARD_KUBE_NO_POD_SECONDS", "0", {}, "a number of seconds > 0"),
    ("SCANWARD_KUBE_DELETED_POD_SECONDS", "soon", {}, "a number of seconds > 0"),
    ("SCANWARD_KUBE_UNSCHEDULABLE_SECONDS", "-1", {}, "a number of seconds"),
]


def read_by_code() -> set[str]:
    """Every SCANWARD_* name in the sources (the SCANWARD_SECRET_ family as one)."""
    names = set()
    for path in SOURCES:
        for name in re.findall(r"SCANWARD_[A-Z0-9_]*[A-Z0-9]", path.read_text()):
            names.add("SCANWARD_SECRET_<NAME>" if name.startswith("SCANWARD_SECRET_")
                      or name == "SCANWARD_SECRET" else name)
    return names


def materialise(value: str, tmp_path: Path) -> str:
    if value == A_FILE:
        path = tmp_path / "a-file"
        path.write_text("not a directory\n")
        return str(path)
    if value == BROKEN_CATALOG:
        path = tmp_path / "catalog.json"
        path.write_text('{"scanners": [{"name": "x"')
        return str(path)
    if value == KUBECONFIG:
        return str(token_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:6443", "t"))
    return value


def environment(name: str, value: str, extra: dict[str, str], tmp_path: Path
                ) -> dict[str, str]:
    env = {k: materialise(v, tmp_path) for k, v in extra.items()}
    env[name] = materialise(value, tmp_path)
    if name.startswith(("SCANWARD_KUBE", "SCANWARD_KUBECONFIG")):
        env["SCANWARD_BACKEND"] = "kubernetes"
    return env


def parse(env: dict[str, str]) -> None:
    """What the worker parses before it starts: its settings (as its own, paths checked
    on this machine), then its backend's."""
    settings = Settings.from_env(env, check_paths=True)
    if settings.backend == "kubernetes":
        KubeSettings.from_env(env)


def test_every_variable_has_a_row() -> None:
    covered = {row[0] for row in BAD} | set(ANY_VALUE)
    read = read_by_code()
    assert read - covered == set(), "SCANWARD_* variables without a bad-value row"
    assert covered - read == set(), "rows for variables the code no longer reads"


@pytest.mark.parametrize(("name", "value", "extra", "expected"), BAD,
                         ids=[f"{row[0]}={row[1]}" for row in BAD])
def test_bad_value_names_the_variable(name: str, value: str, extra: dict[str, str],
                                      expected: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        parse(environment(name, value, extra, tmp_path))
    message = str(error.value)
    assert name in message and expected in message, message
    assert "\n" not in message, message
    assert "hunter2" not in message  # a database password is never shown


def test_good_values_and_defaults(tmp_path: Path) -> None:
    """The same readers accept what the README documents (and empty means default)."""
    empty = Settings.from_env({v: "" for v in read_by_code()})
    assert dataclasses.replace(empty, env={}) == Settings.from_env({})
    settings = Settings.from_env({
        "SCANWARD_HOME": str(tmp_path), "SCANWARD_METRICS_PORT": "9464",
        "SCANWARD_HEALTH_PORT": "8080", "SCANWARD_PUSHGATEWAY": "pushgateway:9091",
        "SCANWARD_GRACEFUL_SHUTDOWN_SECONDS": "0.5", "SCANWARD_ALLOW_LOCAL_REPOS": "Off",
        "SCANWARD_MAX_CACHED_WORKFLOWS": "0", "SCANWARD_CLUSTER": "eu-west-1",
        "SCANWARD_DATABASE_URL": "postgresql://scanward:pw@db:5432/scanward",
        "SCANWARD_BACKEND": "kubernetes", "SCANWARD_LOG_RETENTION_DAYS": "0.5"})
    assert (settings.metrics_port, settings.health_port) == (9464, 8080)
    assert settings.graceful_shutdown_seconds == 0.5 and not settings.allow_local_repositories
    assert settings.task_queue == "scanward-eu-west-1" and settings.max_cached_workflows == 0
    assert Settings.from_env({"SCANWARD_PUSHGATEWAY": "https://pgw.example:443/x"}).pushgateway

    kube = KubeSettings.from_env({
        "SCANWARD_KUBE_NODE_SELECTOR": "disktype=ssd, kubernetes.io/arch=amd64,empty=",
        "SCANWARD_KUBE_TOLERATIONS": json.dumps([{"key": "dedicated", "operator": "Exists"}]),
        "SCANWARD_KUBE_IMAGE_PULL_SECRETS": "regcred, other.cred",
        "SCANWARD_KUBE_JOB_TTL_SECONDS": "0", "SCANWARD_KUBE_RESYNC_SECONDS": "2.5",
        "SCANWARD_KUBE_NO_POD_SECONDS": "45", "SCANWARD_KUBE_DELETED_POD_SECONDS": "300",
        "SCANWARD_KUBE_UNSCHEDULABLE_SECONDS": "600",
        "SCANWARD_KUBECONFIG": materialise(KUBECONFIG, tmp_path),
        "SCANWARD_KUBE_CONTEXT": "token"})
    assert kube.job.node_selector == {"disktype": "ssd", "kubernetes.io/arch": "amd64",
                                      "empty": ""}
    assert kube.job.tolerations == ({"key": "dedicated", "operator": "Exists"},)
    assert kube.job.image_pull_secrets == ("regcred", "other.cred")
    assert (kube.job.ttl_seconds_after_finished, kube.resync_seconds) == (0, 2.5)
    assert (kube.no_pod_seconds, kube.deleted_pod_seconds) == (45, 300)
    assert kube.unschedulable_seconds == 600
    default = KubeSettings.from_env({})
    assert (default.no_pod_seconds, default.deleted_pod_seconds,
            default.unschedulable_seconds) == (30, 120, 0)
    assert kube.context == "token"


def test_paths_scanward_creates_may_be_missing(tmp_path: Path) -> None:
    """Only what nothing creates must exist: SCANWARD_HOME (and an SQLite file under
    it), the workspace and the results are made by scanward."""
    home = tmp_path / "new-home"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    settings = Settings.from_env({
        "SCANWARD_HOME": str(home), "SCANWARD_WORKSPACE": str(tmp_path / "new-workspace"),
        "SCANWARD_RESULTS": str(tmp_path / "new-results"),
        "SCANWARD_DATABASE_URL": f"sqlite:///{home / 'db' / 'scanward.db'}",
        "SCANWARD_SECRETS_DIR": str(secrets)}, check_paths=True)
    assert settings.secrets_dir == secrets and not home.exists()
    # Settings described for another machine (deploy/'s manifest: a mounted Secret) are
    # checked for their forms only.
    there = Settings.from_env({"SCANWARD_SECRETS_DIR": "/nonexistent/secrets",
                               "SCANWARD_DATABASE_URL": "sqlite:////nonexistent-dir/x.db"})
    assert there.secrets_dir == Path("/nonexistent/secrets")


# ------------------------------------------------------- the real entry points


def run(program: str, *args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """An installed console script, run to its end with nothing else in its
    environment: no Temporal listens at TEMPORAL_ADDRESS, so only a configuration
    check can end it quickly."""
    full = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "TEMPORAL_ADDRESS": "127.0.0.1:9",
            "COLUMNS": "200", **env}
    done = subprocess.run([str(BIN / program), *args], env=full, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)
    return done.returncode, done.stdout, done.stderr


ENTRY_CASES: list[tuple[str, tuple[str, ...], str, str]] = [
    ("scanward-worker", (), "SCANWARD_MAX_CONCURRENT_ACTIVITIES", "lots"),
    ("scanward-worker", (), "SCANWARD_BACKEND", "docker"),
    ("scanward-worker", (), "SCANWARD_KUBE_TOLERATIONS", '[{"key"'),
    ("scanward-worker", (), "SCANWARD_METRICS_PORT", "70000"),
    ("scanward-worker", (), "SCANWARD_SECRETS_DIR", "/nonexistent/secrets"),
    ("scanward", ("list",), "SCANWARD_SECRETS_DIR", "/nonexistent/secrets"),
    ("scanward", ("list",), "SCANWARD_MAX_CACHED_WORKFLOWS", "1e3"),
    ("scanward", ("list", "--status", "dead"), "SCANWARD_KUBE_NODE_SELECTOR", "ssd"),
    ("scanward", ("dev",), "SCANWARD_HEALTH_PORT", "http"),
]


@pytest.mark.parametrize(("program", "args", "name", "value"), ENTRY_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in ENTRY_CASES])
def test_entry_point_prints_one_line_and_exits_1(program: str, args: tuple[str, ...],
                                                 name: str, value: str,
                                                 tmp_path: Path) -> None:
    env = environment(name, value, {}, tmp_path)
    env["SCANWARD_HOME"] = str(tmp_path / "home")
    code, out, err = run(program, *args, env=env, cwd=tmp_path)
    assert code == 1, (out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    prefix = f"{program}: error: "
    assert lines[0].startswith(f"{prefix}{name}={value!r}: expected "), lines[0]
    assert not out.strip(), out


def test_bad_database_url_from_the_worker_never_shows_the_password(tmp_path: Path) -> None:
    code, _, err = run("scanward-worker", env={
        "SCANWARD_HOME": str(tmp_path / "home"),
        "SCANWARD_DATABASE_URL": "postgresql://scanward:hunter2@/scanward"}, cwd=tmp_path)
    assert code == 1 and err.startswith("scanward-worker: error: SCANWARD_DATABASE_URL: "), err
    assert len(err.strip().splitlines()) == 1 and "hunter2" not in err, err


@pytest.mark.parametrize("program", ["scanward-worker", "scanward"])
def test_sqlite_url_into_a_missing_directory_creates_nothing(program: str,
                                                             tmp_path: Path) -> None:
    """An explicit SQLite file outside SCANWARD_HOME whose directory does not exist is
    a typo: stopped at start, and no directory tree made for it."""
    typo = tmp_path / "typo" / "deeper"
    url = f"sqlite:///{typo / 'x.db'}"
    code, out, err = run(program, *(() if program == "scanward-worker" else ("list",)),
                         env={"SCANWARD_HOME": str(tmp_path / "home"),
                              "SCANWARD_DATABASE_URL": url}, cwd=tmp_path)
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"{program}: error: SCANWARD_DATABASE_URL='sqlite:///"), err  # the URL, shortened
    assert lines[0].endswith(
        f": expected an SQLite file in an existing directory ({typo} does not exist; "
        "scanward creates only those under SCANWARD_HOME)"), err
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("name", ["SCANWARD_HEALTH_PORT", "SCANWARD_METRICS_PORT"])
def test_worker_port_in_use_is_one_line_before_start_up(name: str, tmp_path: Path) -> None:
    """A port another process listens on stops the worker with one line naming the
    variable, before its directories, migrations or Temporal connection."""
    home = tmp_path / "home"
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - where the worker binds its ports
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run("scanward-worker", env={"SCANWARD_HOME": str(home),
                                                      name: str(port)}, cwd=tmp_path)
    assert code == 1, (out, err)
    assert err.strip().splitlines() == [
        f"scanward-worker: error: {name}='{port}': port {port} is in use"], err
    assert not home.exists(), "start-up work ran before the port was taken"
