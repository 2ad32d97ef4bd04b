"""The test control plane: starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, stops them, and talks to the API server as admin."""

from __future__ import annotations

import atexit
import http.client
import json
import os
import secrets
import shutil
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from testenv_bins import BUILD_SCRIPT, default_bin_dir
from testenv_components import (
    DEFAULT_CONTROLLERS,
    admin_kubeconfig,
    apiserver_args,
    controller_manager_args,
    etcd_args,
    kwok_args,
    node_manifest,
    node_schedulable,
    scheduler_args,
)
from testenv_errors import ApiError, ControlPlaneError
from testenv_kwok import has_condition, job_complete_metadata, job_manifest
from testenv_net import free_port, open_url
from testenv_procs import Proc
from testenv_rsa import rsa_private_key_pem


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok.

    Everything listens on 127.0.0.1 on free ports; state lives in a temporary
    work dir (removed by stop() unless keep_workdir=True). Authentication: a
    static bearer token for user "admin" in group system:masters (see
    `token`, `kubeconfig`); authorization mode is RBAC, so other identities
    (e.g. service-account tokens from the TokenRequest API) get RBAC checks.
    """

    def __init__(
        self,
        bin_dir: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        *,
        keep_workdir: bool = False,
        node_name: str = "kwok-node-0",
        controllers: tuple[str, ...] | list[str] = DEFAULT_CONTROLLERS,
        startup_timeout: float = 180.0,
        stop_timeout: float = 15.0,
        verbosity: int = 0,
        die_with_parent: bool = True,
        extra_apiserver_args: list[str] | None = None,
    ) -> None:
        self.bin_dir = Path(bin_dir).expanduser() if bin_dir else default_bin_dir()
        self._workdir_arg = Path(workdir) if workdir else None
        self.keep_workdir = keep_workdir
        self.node_name = node_name
        self.controllers = list(dict.fromkeys(controllers))  # de-duplicated, order kept
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.verbosity = verbosity
        self.die_with_parent = die_with_parent
        self.extra_apiserver_args = list(extra_apiserver_args or [])

        self.workdir: Path | None = None
        self.token = ""
        self.server = ""
        self.timings: dict[str, float] = {}
        self._procs: list[Proc] = []
        self._ssl: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._started = False

    # -- public properties -------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        if self.workdir is None:
            raise ControlPlaneError("control plane not started")
        return self.workdir / "kubeconfig"

    def _cert_complete(self) -> bool:
        try:
            ssl.create_default_context(cafile=str(self.ca_file))
        except (OSError, ssl.SSLError):
            return False
        return True

    @property
    def ca_file(self) -> Path:
        if self.workdir is None:
            raise ControlPlaneError("control plane not started")
        return self.workdir / "pki" / "apiserver.crt"

    @property
    def logs_dir(self) -> Path:
        if self.workdir is None:
            raise ControlPlaneError("control plane not started")
        return self.workdir / "logs"

    @property
    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self._procs}

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        with self._lock:
            if self._started:
                return self
            self._started = True
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            logs = self.workdir / "logs" if self.workdir else None
            self.stop(remove_workdir=False)
            if logs:
                print(f"testenv: start failed; logs kept in {logs}", file=sys.stderr)
            raise
        return self

    def stop(self, remove_workdir: bool | None = None) -> None:
        """SIGTERM every process (dependents first), SIGKILL after stop_timeout."""
        with self._lock:
            procs, self._procs = self._procs, []
            started, self._started = self._started, False
        atexit.unregister(self.stop)
        t0 = time.monotonic()
        # kwok/scheduler/controller-manager together, then apiserver, then etcd.
        by_name = {p.name: p for p in procs}
        waves = [
            ["kwok", "kube-scheduler", "kube-controller-manager"],
            ["kube-apiserver"],
            ["etcd"],
        ]
        for wave in waves:
            batch = [by_name.pop(n) for n in wave if n in by_name]
            for p in batch:
                p.terminate()
            deadline = time.monotonic() + self.stop_timeout
            for p in batch:
                p.wait_or_kill(deadline - time.monotonic())
        for p in by_name.values():  # anything unexpected
            p.terminate()
            p.wait_or_kill(self.stop_timeout)
        if procs:
            self.timings["stop"] = time.monotonic() - t0
        if remove_workdir is None:
            remove_workdir = not self.keep_workdir
        if started and remove_workdir and self.workdir and self._workdir_arg is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart_apiserver(
        self, down_seconds: float = 2.0, *, wait_for_controllers: bool = False
    ) -> None:
        """Stop kube-apiserver (SIGTERM, then wait), leave it down for `down_seconds`,
        start it again with the same argv: same port, serving cert (reused from the
        cert dir), token file, service-account key and etcd, so existing kubeconfigs
        and tokens keep working. Returns once /readyz answers again.

        etcd, kwok, the scheduler and controller-manager keep running and reconnect
        by themselves (their watches resume), but on client-go's reflector backoff
        (0.8 s doubling up to 30 s, times a random factor up to 2, reset only after
        2 min without errors): right after /readyz they may not be watching yet, and
        restarts in quick succession compound. Measured (a new Job's pod created /
        Job Complete after /readyz): 1st restart 0.0 s / 1.1 s; 2nd, 10 s later,
        5.8 s / 14 s; 3rd, 10 s after that, 49 s / 65 s. So a test that restarts the
        session's plane slows the tests after it: restart once, or last, or on a
        ControlPlane of its own. `wait_for_controllers=True` returns only once a
        probe Job in "default" has completed (Job controller, scheduler and kwok all
        back; the probe deletes itself, ttlSecondsAfterFinished=0).

        Timings: `timings["apiserver_down"]` (SIGTERM to exit),
        `timings["apiserver_restart"]` (spawn to ready), and with
        wait_for_controllers `timings["controllers_back"]` (ready to probe Complete).

        May be called from any thread (e.g. asyncio.to_thread): the new process is
        forked by the same long-lived thread as the others (see _Spawner).
        """
        with self._lock:
            old = next((p for p in self._procs if p.name == "kube-apiserver"), None)
            etcd = [p for p in self._procs if p.name == "etcd"]
        if old is None or not self._started:
            raise ControlPlaneError("control plane not started")
        ca_before = self.ca_file.read_bytes()
        t = time.monotonic()
        old.terminate()
        old.wait_or_kill(self.stop_timeout)
        with self._lock:
            if old in self._procs:
                self._procs.remove(old)
        self.timings["apiserver_down"] = time.monotonic() - t
        if down_seconds > 0:
            time.sleep(down_seconds)
        t = time.monotonic()
        new = self._spawn("kube-apiserver", old.argv, old.env, append_log=True)
        self._wait(
            "restarted kube-apiserver /readyz",
            lambda: self._get_ok(f"{self.server}/readyz", auth=True),
            [new, *etcd],
        )
        self.timings["apiserver_restart"] = time.monotonic() - t
        if self.ca_file.read_bytes() != ca_before:  # it reuses the cert it generated
            raise ControlPlaneError(
                f"kube-apiserver regenerated its serving cert {self.ca_file} on restart"
            )
        if wait_for_controllers:
            t = time.monotonic()
            self._probe_job()
            self.timings["controllers_back"] = time.monotonic() - t

    def _probe_job(self) -> None:
        """A Job in "default" that kwok completes at once; returns when it is Complete."""
        jobs = "/apis/batch/v1/namespaces/default/jobs"
        name = f"testenv-probe-{secrets.token_hex(4)}"
        probe = job_manifest(name, job_complete_metadata(delay="0s"), ttlSecondsAfterFinished=0)
        self.request("POST", jobs, probe)

        def done(job: dict[str, Any]) -> bool:
            if has_condition(job, "Failed"):
                raise ControlPlaneError(f"probe Job {name} failed: {job.get('status')}")
            return has_condition(job, "Complete")

        self.wait_for(jobs, name, done, timeout=self.startup_timeout)

    # -- HTTP API -------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float = 30,
        content_type: str = "application/json",
        token: str | None = None,
    ) -> Any:
        """Request to the apiserver as admin (or as the bearer `token` given).

        Returns the decoded JSON (or text); raises ApiError on HTTP errors.
        """
        data = None
        headers = {"Authorization": f"Bearer {token or self.token}", "Accept": "application/json"}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        req = urllib.request.Request(  # noqa: S310 - https URL we built
            self._url(path), data=data, method=method, headers=headers
        )
        try:
            with open_url(req, timeout, self._ssl) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            raise ApiError(f"{method} {path}: HTTP {e.code}: {detail}", e.code) from None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def watch(self, path: str, timeout: float = 60) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (type, object) watch events for a collection path (may include a query)."""
        sep = "&" if "?" in path else "?"
        url = f"{self._url(path)}{sep}watch=true&timeoutSeconds={max(1, int(timeout))}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})  # noqa: S310 - https URL we built
        with open_url(req, timeout + 10, self._ssl) as r:
            for line in r:
                if line.strip():
                    ev = json.loads(line)
                    yield ev["type"], ev["object"]

    def wait_for(
        self, collection: str, name: str, predicate: Any, timeout: float = 60
    ) -> dict[str, Any]:
        """Watch one object of `collection` until predicate(obj) is true; return obj."""
        deadline = time.monotonic() + timeout
        sel = urllib.parse.quote(f"metadata.name={name}")
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{collection}/{name}: condition not met within {timeout}s")
            for typ, obj in self.watch(f"{collection}?fieldSelector={sel}", timeout=left):
                if typ == "ERROR":
                    break  # e.g. resourceVersion too old: start over
                if typ != "DELETED" and predicate(obj):
                    return obj
                if time.monotonic() > deadline:
                    break

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient for this plane (needs the `kubernetes` package)."""
        from kubernetes import config as k8s_config  # type: ignore[import-not-found,unused-ignore]

        return k8s_config.new_client_from_config(  # type: ignore[no-untyped-call,unused-ignore]
            config_file=str(self.kubeconfig)
        )

    # -- internals -------------------------------------------------------------

    def _url(self, path: str) -> str:
        """The URL of an API path; a path without its leading "/" is taken as absolute."""
        if not self.server:
            raise ControlPlaneError("control plane not started")
        return f"{self.server}/{path.lstrip('/')}"

    def _bin(self, name: str) -> str:
        p = self.bin_dir / name
        if not os.access(p, os.X_OK):
            raise ControlPlaneError(f"{p} not found: run {BUILD_SCRIPT} first")
        return str(p)

    def _spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        *,
        append_log: bool = False,
    ) -> Proc:
        if self.workdir is None:
            raise ControlPlaneError("control plane not started")
        proc = Proc(
            name,
            argv,
            self.workdir / "logs" / f"{name}.log",
            env or self._child_env(),
            self.die_with_parent,
            append_log=append_log,
        )
        with self._lock:
            self._procs.append(proc)
        return proc

    def _child_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("KUBECONFIG",) and not k.lower().endswith("_proxy")
        }
        return env

    def _wait(
        self,
        what: str,
        probe: Any,
        procs: list[Proc],
        timeout: float | None = None,
        interval: float = 0.1,
    ) -> None:
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        last_err: Any = None
        while True:
            for p in procs:
                p.check()
            try:
                if probe():
                    return
            except (OSError, http.client.HTTPException, ControlPlaneError, ValueError) as e:
                last_err = e  # not up yet
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"timed out waiting for {what}; last error: {last_err!r}")
            time.sleep(interval)

    def _get_ok(self, url: str, *, verify: bool = True, auth: bool = False) -> bool:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        ctx: ssl.SSLContext | None = None
        if url.startswith("https://"):
            if verify:
                ctx = self._ssl
            else:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        req = urllib.request.Request(url, headers=headers)  # noqa: S310 - https URL we built
        with open_url(req, 5, ctx) as r:
            return bool(r.status == 200)

    def _start(self) -> None:
        t_start = time.monotonic()
        for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
            self._bin(name)
        if self._workdir_arg:
            self.workdir = self._workdir_arg.resolve()
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="scanward-k8s-"))
        wd = self.workdir
        for sub in ("logs", "pki", "etcd", "kcm-certs", "scheduler-certs", "kwok-home"):
            (wd / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(wd / "etcd", 0o700)

        # credentials
        self.token = secrets.token_hex(24)
        tokens = wd / "pki" / "tokens.csv"
        tokens.write_text(f'{self.token},admin,admin-uid,"system:masters"\n')
        sa_key = wd / "pki" / "sa.key"
        t = time.monotonic()
        sa_key.write_bytes(rsa_private_key_pem(2048))
        os.chmod(sa_key, 0o600)
        os.chmod(tokens, 0o600)
        self.timings["sa_key"] = time.monotonic() - t

        # etcd
        t = time.monotonic()
        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = self._spawn("etcd", etcd_args(self._bin("etcd"), wd / "etcd", etcd_url, peer_url))
        self._wait("etcd /health", lambda: self._get_ok(f"{etcd_url}/health"), [etcd])
        self.timings["etcd"] = time.monotonic() - t

        # kube-apiserver
        t = time.monotonic()
        api_port = free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        apiserver = self._spawn(
            "kube-apiserver",
            apiserver_args(
                self._bin("kube-apiserver"),
                etcd_url=etcd_url,
                port=api_port,
                cert_dir=wd / "pki",
                token_file=tokens,
                sa_key=sa_key,
                verbosity=self.verbosity,
                extra=self.extra_apiserver_args,
            ),
        )
        # The apiserver writes its self-signed cert while we poll: wait for a whole one
        # (a file that exists may still be empty or half-written on a loaded machine).
        self._wait("kube-apiserver serving cert", self._cert_complete, [apiserver])
        self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        self._wait(
            "kube-apiserver /readyz",
            lambda: self._get_ok(f"{self.server}/readyz", auth=True),
            [apiserver],
        )
        self._write_kubeconfig()
        self.timings["kube-apiserver"] = time.monotonic() - t

        # controller-manager, scheduler, kwok (in parallel)
        t = time.monotonic()
        kcm_port, sched_port = free_port(), free_port()
        kc = str(self.kubeconfig)
        kcm = self._spawn(
            "kube-controller-manager",
            controller_manager_args(
                self._bin("kube-controller-manager"),
                kubeconfig=kc,
                port=kcm_port,
                cert_dir=wd / "kcm-certs",
                controllers=self.controllers,
                sa_key=sa_key,
                root_ca=self.ca_file,
                verbosity=self.verbosity,
            ),
        )
        sched = self._spawn(
            "kube-scheduler",
            scheduler_args(
                self._bin("kube-scheduler"),
                kubeconfig=kc,
                port=sched_port,
                cert_dir=wd / "scheduler-certs",
                verbosity=self.verbosity,
            ),
        )
        kwok_env = self._child_env()
        # kwok always also loads ~/.kwok/kwok.yaml if it exists: isolate it.
        kwok_env["HOME"] = str(wd / "kwok-home")
        kwok = self._spawn("kwok", kwok_args(self._bin("kwok"), kubeconfig=kc), env=kwok_env)
        self._create_node()
        procs = [apiserver, etcd, kcm, sched, kwok]
        self._wait(
            "kube-controller-manager /healthz",
            lambda: self._get_ok(f"https://127.0.0.1:{kcm_port}/healthz", verify=False),
            procs,
        )
        self._wait(
            "kube-scheduler /healthz",
            lambda: self._get_ok(f"https://127.0.0.1:{sched_port}/healthz", verify=False),
            procs,
        )
        self._wait(
            f"node {self.node_name} Ready and schedulable", self._node_ready, procs, interval=0.2
        )
        self._wait(
            "default/default ServiceAccount",
            lambda: bool(self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")),
            procs,
            interval=0.2,
        )
        self.timings["controllers+node"] = time.monotonic() - t
        self.timings["start"] = time.monotonic() - t_start

    def _write_kubeconfig(self) -> None:
        cfg = admin_kubeconfig(self.server, self.ca_file, self.token)
        # JSON is valid YAML; kubeconfig loaders accept it.
        self.kubeconfig.write_text(json.dumps(cfg, indent=2) + "\n")
        os.chmod(self.kubeconfig, 0o600)

    def _create_node(self) -> None:
        self.request("POST", "/api/v1/nodes", node_manifest(self.node_name))

    def _node_ready(self) -> bool:
        return node_schedulable(self.request("GET", f"/api/v1/nodes/{self.node_name}"))
