#!/usr/bin/env python3
"""A real Kubernetes control plane for tests, without Docker.

Runs, as plain local processes on loopback:
  etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
(kwok plays the kubelet for one fake Node), all built from upstream sources by
build.sh into ${SCANWARD_K8S_BIN:-~/.cache/scanward/k8s/<k8s-version>}.

Library use (stdlib only; the `kubernetes` package is optional)::

    from testenv import ControlPlane
    with ControlPlane() as cp:
        cp.kubeconfig            # path of an admin kubeconfig (bearer token)
        cp.request("GET", "/api/v1/nodes")
        cp.api_client()          # kubernetes.client.ApiClient, if installed

Command line::

    python testenv.py up       # start, print the kubeconfig path, run until ^C
    python testenv.py smoke    # start, run a completing and a failing Job, stop

Pods of Jobs are driven by the kwok stages in kwok-stages.yaml: see there for
the pod annotations/labels that pick a completion delay or a failure exit code
(JOB_COMPLETE_ANNOTATIONS / job_fail_metadata() build them).
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import contextlib
import http.client
import json
import math
import os
import queue
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

_T = TypeVar("_T")

HERE = Path(__file__).resolve().parent
STAGES_FILE = HERE / "kwok-stages.yaml"

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_SELECTOR = f"{KWOK_NODE_ANNOTATION}=fake"

# Pod metadata understood by the stages in kwok-stages.yaml.
COMPLETE_DELAY_ANNOTATION = "pod-complete.stage.kwok.x-k8s.io/delay"
COMPLETE_JITTER_ANNOTATION = "pod-complete.stage.kwok.x-k8s.io/jitter-delay"
FAIL_LABEL = "pod-container-running-failed.stage.kwok.x-k8s.io"
FAIL_EXIT_CODE_ANNOTATION = "pod-container-running-failed.stage.kwok.x-k8s.io/exit-code"
FAIL_DELAY_ANNOTATION = "pod-container-running-failed.stage.kwok.x-k8s.io/delay"
FAIL_REASON_ANNOTATION = "pod-container-running-failed.stage.kwok.x-k8s.io/reason"
FAIL_MESSAGE_ANNOTATION = "pod-container-running-failed.stage.kwok.x-k8s.io/message"

# Controllers of kube-controller-manager that the test plane runs. Besides the
# ones tests use directly (Jobs, garbage collection, TTL after finished,
# service accounts and their tokens) a few are needed for the plane to work:
#  - node-lifecycle: the NodeRestriction/TaintNodesByCondition admission puts
#    node.kubernetes.io/not-ready:NoSchedule on every new Node; only this
#    controller removes it once kwok reports Ready, else nothing schedules.
#  - namespace: namespace deletion (per-test namespaces) never finishes without it.
#  - pod-garbage-collector: removes orphaned/terminated pods.
#  - root-ca-certificate-publisher: kube-root-ca.crt ConfigMap that the
#    ServiceAccount admission references in projected token volumes.
#  - persistentvolume(claim)-protection: the StorageObjectInUseProtection admission
#    (always on) puts a kubernetes.io/pv(c)-protection finalizer on every PV and
#    PVC; only these controllers remove it, so without them a deleted PVC (and
#    with it its namespace) or PV stays Terminating forever.
# Not on by default: persistentvolume-binder-controller (binds PVCs to PVs; pass
# it in `controllers=` when a test needs Bound claims, see PV_BINDER_SYNC_PERIOD).
DEFAULT_CONTROLLERS = (
    "job-controller",
    "cronjob-controller",
    "garbage-collector-controller",
    "ttl-after-finished-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "node-lifecycle-controller",
    "namespace-controller",
    "pod-garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
)

# kube-controller-manager --pvclaimbinder-sync-period (default 15s). The binder
# handles a PV pre-bound to a claim (spec.claimRef) only from the claim's side;
# when the claim's event reaches it before the PV's informer has the PV, the
# claim stays Pending until the next periodic sync: ~15 s per namespace
# otherwise. Resyncing a handful of test objects every second costs nothing.
PV_BINDER_SYNC_PERIOD = "1s"

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


def job_complete_metadata(delay: str = "1s", jitter: str | None = None) -> dict[str, Any]:
    """Pod template metadata: kwok completes the pod (exit 0) after `delay`."""
    ann = {COMPLETE_DELAY_ANNOTATION: delay}
    if jitter:
        ann[COMPLETE_JITTER_ANNOTATION] = jitter
    return {"annotations": ann}


def job_fail_metadata(
    exit_code: int = 1, delay: str = "1s", reason: str = "Error", message: str | None = None
) -> dict[str, Any]:
    """Pod template metadata: kwok fails the container with `exit_code` after `delay`."""
    ann = {
        FAIL_EXIT_CODE_ANNOTATION: str(exit_code),
        FAIL_DELAY_ANNOTATION: delay,
        FAIL_REASON_ANNOTATION: reason,
    }
    if message:
        ann[FAIL_MESSAGE_ANNOTATION] = message
    return {"labels": {FAIL_LABEL: "true"}, "annotations": ann}


# --------------------------------------------------------------------------
# helpers


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-16384:].decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


# Pure-stdlib RSA key generation (PKCS#1 PEM) for the service-account signing
# key, so the module needs neither openssl nor the cryptography package.
_SMALL_PRIMES = [p for p in range(3, 2000) if all(p % d for d in range(2, int(p**0.5) + 1))]


def _probably_prime(n: int, rounds: int = 24) -> bool:
    for p in _SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for _ in range(rounds):
        a = 2 + secrets.randbelow(n - 3)
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _random_prime(bits: int) -> int:
    while True:
        # top two bits set => the product of two such primes has exactly 2*bits bits
        c = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        if _probably_prime(c):
            return c


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _der_int(v: int) -> bytes:
    b = v.to_bytes(v.bit_length() // 8 + 1, "big")  # always room for a sign bit
    while len(b) > 1 and b[0] == 0 and b[1] < 0x80:
        b = b[1:]
    return b"\x02" + _der_len(len(b)) + b


def _rsa_primes(bits: int, e: int) -> tuple[int, int]:
    while True:
        p, q = _random_prime(bits // 2), _random_prime(bits // 2)
        if p != q and math.gcd(e, math.lcm(p - 1, q - 1)) == 1:
            return max(p, q), min(p, q)


def rsa_private_key_pem(bits: int = 2048) -> bytes:
    """A new RSA private key, PKCS#1 PEM ("RSA PRIVATE KEY"), as Go's x509 parses it."""
    e = 65537
    p, q = _rsa_primes(bits, e)
    n, d = p * q, pow(e, -1, math.lcm(p - 1, q - 1))
    fields = [0, n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p)]
    body = b"".join(_der_int(f) for f in fields)
    der = b"\x30" + _der_len(len(body)) + body
    b64 = b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (
        "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END RSA PRIVATE KEY-----\n"
    ).encode()


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):  # best effort
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Spawner:
    """One long-lived daemon thread that forks every child process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
    process: a process started from a short-lived thread (asyncio.to_thread, a
    ThreadPoolExecutor worker, a test's helper thread) would be SIGKILLed as soon
    as that thread ends. Forking from this thread, which lives as long as the
    Python process, makes "die with the parent" mean the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_SpawnJob] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[[], _T]) -> _T:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="testenv-spawner", daemon=True
                )
                self._thread.start()
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            fn, future = self._jobs.get()
            try:
                future.set_result(fn())
            except BaseException as e:  # handed to the caller
                future.set_exception(e)


_SpawnJob = tuple[Callable[[], Any], concurrent.futures.Future[Any]]
_SPAWNER = _Spawner()


class ControlPlaneError(RuntimeError):
    pass


class ApiError(ControlPlaneError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _open(req: urllib.request.Request, timeout: float, ctx: ssl.SSLContext | None) -> Any:
    # No ProxyHandler: never send loopback requests to an HTTP(S)_PROXY from the environment.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ctx is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    return urllib.request.build_opener(*handlers).open(req, timeout=timeout)


class _Proc:
    def __init__(
        self,
        name: str,
        argv: list[str],
        log: Path,
        env: dict[str, str],
        die_with_parent: bool,
        *,
        append_log: bool = False,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self._logf = open(log, "ab" if append_log else "wb")
        logf = self._logf
        pdeathsig = die_with_parent and sys.platform == "linux"

        def popen() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # ^C in a terminal reaches only us; we stop in order
                preexec_fn=_set_pdeathsig if pdeathsig else None,
            )

        self.popen = _SPAWNER.run(popen) if pdeathsig else popen()  # see _Spawner

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check(self) -> None:
        rc = self.popen.poll()
        if rc is not None:
            raise ControlPlaneError(
                f"{self.name} exited with code {rc}; log tail ({self.log}):\n{_tail(self.log)}"
            )

    def terminate(self) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait_or_kill(self, timeout: float) -> None:
        try:
            self.popen.wait(timeout=max(timeout, 0))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._logf.close()


# --------------------------------------------------------------------------


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
        self._procs: list[_Proc] = []
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
        self.request(
            "POST", jobs, _job(name, job_complete_metadata(delay="0s"), ttlSecondsAfterFinished=0)
        )

        def done(job: dict[str, Any]) -> bool:
            if _has_condition(job, "Failed"):
                raise ControlPlaneError(f"probe Job {name} failed: {job.get('status')}")
            return _has_condition(job, "Complete")

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
            with _open(req, timeout, self._ssl) as r:
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
        with _open(req, timeout + 10, self._ssl) as r:
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
            raise ControlPlaneError(f"{p} not found: run {HERE / 'build.sh'} first")
        return str(p)

    def _spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        *,
        append_log: bool = False,
    ) -> _Proc:
        if self.workdir is None:
            raise ControlPlaneError("control plane not started")
        proc = _Proc(
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
        procs: list[_Proc],
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
        with _open(req, 5, ctx) as r:
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
        etcd = self._spawn(
            "etcd",
            [
                self._bin("etcd"),
                "--name=testenv",
                f"--data-dir={wd / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=testenv={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",  # test data: durability is irrelevant, speed is not
                "--log-level=warn",
            ],
        )
        self._wait("etcd /health", lambda: self._get_ok(f"{etcd_url}/health"), [etcd])
        self.timings["etcd"] = time.monotonic() - t

        # kube-apiserver
        t = time.monotonic()
        api_port = free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        apiserver = self._spawn(
            "kube-apiserver",
            [
                self._bin("kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                # self-signed serving cert (+ its CA) generated into --cert-dir
                f"--cert-dir={wd / 'pki'}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-cluster-ip-range=10.96.0.0/16",
                # The "kubernetes" Service's endpoint would be the loopback advertise
                # address, which Endpoints validation rejects (error every 10s).
                # Nothing runs in-cluster here, so do not reconcile it.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                # On SIGTERM, end open watches (rate-limited drain, at most this long)
                # instead of leaving them to the HTTP server's 60 s shutdown timeout:
                # with kwok/scheduler/controller-manager still connected (see
                # restart_apiserver) the old process would otherwise take >15 s to exit.
                "--shutdown-watch-termination-grace-period=2s",
                "--profiling=false",
                f"--v={self.verbosity}",
                *self.extra_apiserver_args,
            ],
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
            [
                self._bin("kube-controller-manager"),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                # The apiserver has no client CA, so the kube-system/extension-
                # apiserver-authentication ConfigMap this would look up never
                # exists (one error log line per retry). Token review still works.
                "--authentication-skip-lookup=true",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={wd / 'kcm-certs'}",
                "--leader-elect=false",
                f"--controllers={','.join(self.controllers)}",
                f"--pvclaimbinder-sync-period={PV_BINDER_SYNC_PERIOD}",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={self.ca_file}",
                "--use-service-account-credentials=false",
                f"--v={self.verbosity}",
            ],
        )
        sched = self._spawn(
            "kube-scheduler",
            [
                self._bin("kube-scheduler"),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                # The apiserver has no client CA, so the kube-system/extension-
                # apiserver-authentication ConfigMap this would look up never
                # exists (one error log line per retry). Token review still works.
                "--authentication-skip-lookup=true",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--cert-dir={wd / 'scheduler-certs'}",
                "--leader-elect=false",
                f"--v={self.verbosity}",
            ],
        )
        kwok_env = self._child_env()
        # kwok always also loads ~/.kwok/kwok.yaml if it exists: isolate it.
        kwok_env["HOME"] = str(wd / "kwok-home")
        kwok = self._spawn(
            "kwok",
            [
                self._bin("kwok"),
                f"--kubeconfig={kc}",
                f"--config={STAGES_FILE}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_SELECTOR}",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.1/16",
                "--node-ip=10.243.0.1",
            ],
            env=kwok_env,
        )
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
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "testenv",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": "admin"}}],
            "current-context": "testenv",
        }
        # JSON is valid YAML; kubeconfig loaders accept it.
        self.kubeconfig.write_text(json.dumps(cfg, indent=2) + "\n")
        os.chmod(self.kubeconfig, 0o600)

    def _create_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            },
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            },
        }
        self.request("POST", "/api/v1/nodes", node)

    def _node_ready(self) -> bool:
        node = self.request("GET", f"/api/v1/nodes/{self.node_name}")
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in node.get("status", {}).get("conditions", [])
        )
        blocking = [
            t
            for t in node.get("spec", {}).get("taints", [])
            if t.get("effect") in ("NoSchedule", "NoExecute")
        ]
        return ready and not blocking


# --------------------------------------------------------------------------
# command line


def _job(name: str, pod_metadata: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {
                "metadata": pod_metadata,
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "main", "image": "example.invalid/scanner:1", "command": ["scan"]}
                    ],
                },
            },
        },
    }


def _has_condition(job: dict[str, Any], ctype: str) -> bool:
    return any(
        c.get("type") == ctype and c.get("status") == "True"
        for c in job.get("status", {}).get("conditions", [])
    )


def smoke(cp: ControlPlane) -> None:
    ns = "/apis/batch/v1/namespaces/default/jobs"
    version = cp.request("GET", "/version")
    print(f"apiserver version: {version.get('gitVersion')} ({version.get('goVersion')})")
    print(
        f"started in {cp.timings['start']:.2f}s: "
        + ", ".join(f"{k} {v:.2f}s" for k, v in cp.timings.items() if k != "start")
    )

    t = time.monotonic()
    cp.request("POST", ns, _job("smoke-complete", job_complete_metadata(delay="1s")))
    job = cp.wait_for(
        ns,
        "smoke-complete",
        lambda j: _has_condition(j, "Complete") or _has_condition(j, "Failed"),
        timeout=60,
    )
    dt = time.monotonic() - t
    if not _has_condition(job, "Complete"):
        raise ControlPlaneError(f"smoke-complete did not complete: {job.get('status')}")
    print(
        f"job smoke-complete: Complete after {dt:.2f}s (pod asked kwok for 1s), "
        f"succeeded={job['status'].get('succeeded')}"
    )

    t = time.monotonic()
    cp.request(
        "POST",
        ns,
        _job(
            "smoke-fail",
            job_fail_metadata(exit_code=3, delay="1s"),
            podFailurePolicy={
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]},
                    }
                ]
            },
        ),
    )
    job = cp.wait_for(
        ns,
        "smoke-fail",
        lambda j: _has_condition(j, "Complete") or _has_condition(j, "Failed"),
        timeout=60,
    )
    dt = time.monotonic() - t
    failed = next(
        c
        for c in job["status"].get("conditions", [])
        if c["type"] == "Failed" and c["status"] == "True"
    )
    pods = cp.request(
        "GET",
        "/api/v1/namespaces/default/pods?labelSelector="
        + urllib.parse.quote("batch.kubernetes.io/job-name=smoke-fail"),
    )
    codes = [
        cs["state"]["terminated"]["exitCode"]
        for p in pods["items"]
        for cs in p.get("status", {}).get("containerStatuses", [])
        if "terminated" in cs.get("state", {})
    ]
    if 3 not in codes:
        raise ControlPlaneError(f"expected a container exit code 3, got {codes}")
    print(
        f"job smoke-fail: Failed after {dt:.2f}s reason={failed.get('reason')} "
        f"message={failed.get('message')!r} pod exit codes={codes}"
    )

    # A bound service-account token from the TokenRequest API, checked by RBAC.
    t = time.monotonic()
    cp.request(
        "POST", "/api/v1/namespaces/default/serviceaccounts", {"metadata": {"name": "smoke-sa"}}
    )
    tr = cp.request(
        "POST",
        "/api/v1/namespaces/default/serviceaccounts/smoke-sa/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600},
        },
    )
    sa_token = tr["status"]["token"]
    pods_path = "/api/v1/namespaces/default/pods"
    try:
        cp.request("GET", pods_path, token=sa_token)
        raise ControlPlaneError("service account could list pods without any RBAC grant")
    except ApiError as e:
        if e.status != 403:
            raise
    cp.request(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
    )
    cp.request(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        {
            "metadata": {"name": "smoke-sa-pod-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "smoke-sa", "namespace": "default"}],
        },
    )
    deadline = time.monotonic() + 10
    while True:  # the RBAC authorizer sees the binding through an informer: retry briefly
        try:
            n = len(cp.request("GET", pods_path, token=sa_token)["items"])
            break
        except ApiError as e:
            if e.status != 403 or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    print(
        f"service account token: 403 before RoleBinding, list pods ({n}) after; "
        f"{time.monotonic() - t:.2f}s"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["up", "smoke"])
    ap.add_argument(
        "--bin-dir", help="binaries (default: $SCANWARD_K8S_BIN or ~/.cache/scanward/k8s/<ver>)"
    )
    ap.add_argument("--workdir", help="state dir (default: a new temp dir, removed on stop)")
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument("-v", "--verbosity", type=int, default=0, help="klog -v for k8s components")
    args = ap.parse_args(argv)

    cp = ControlPlane(
        args.bin_dir, args.workdir, keep_workdir=args.keep_workdir, verbosity=args.verbosity
    )
    stop_event = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop_event.set()
        if args.command == "smoke":
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t0 = time.monotonic()
    rc = 0
    try:
        cp.start()
        if args.command == "up":
            print(f"kubeconfig: {cp.kubeconfig}")
            print(f"export KUBECONFIG={cp.kubeconfig}")
            print(f"logs: {cp.logs_dir}")
            print(f"started in {cp.timings['start']:.2f}s; ^C to stop", flush=True)
            while not stop_event.wait(1.0):
                for p in list(cp._procs):
                    p.check()
        else:
            smoke(cp)
    except ControlPlaneError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        rc = 130
    finally:
        pids = list(cp.pids.values())
        cp.stop()
        left = [p for p in pids if _alive(p)]
        print(f"stopped in {cp.timings.get('stop', 0):.2f}s; leftover processes: {left or 'none'}")
        if left:
            rc = rc or 1
    if args.command == "smoke":
        print(f"smoke {'PASSED' if rc == 0 else 'FAILED'} in {time.monotonic() - t0:.2f}s total")
    return rc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # reaped children cannot linger as zombies (Popen.wait reaped them)
    return True


if __name__ == "__main__":
    sys.exit(main())
