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
(job_complete_metadata() / job_fail_metadata() build them).

This module is the entry point and the one name to import; the work is done in the
testenv_*.py modules next to it (prefixed so that, with this directory on sys.path,
none shadows or is shadowed by another top-level module):

  testenv_plane       ControlPlane: start, stop, restart_apiserver, API requests
  testenv_components  the components' command lines, the kubeconfig, the fake Node
  testenv_kwok        pod metadata for kwok's stages; test Job manifests
  testenv_procs       child processes that die with the Python process
  testenv_rsa         the service-account RSA key, in pure Python
  testenv_bins        where build.sh put the binaries
  testenv_net         free ports; proxy-free loopback HTTP(S)
  testenv_errors      ControlPlaneError, ApiError
  testenv_smoke       the `smoke` self-test
  testenv_cli         the command line
"""

from __future__ import annotations

import sys

from testenv_bins import HERE, default_bin_dir, pinned_k8s_version
from testenv_cli import main
from testenv_components import (
    DEFAULT_CONTROLLERS,
    PV_BINDER_SYNC_PERIOD,
    SA_ISSUER,
    node_manifest,
    node_schedulable,
)
from testenv_errors import ApiError, ControlPlaneError
from testenv_kwok import (
    COMPLETE_DELAY_ANNOTATION,
    COMPLETE_JITTER_ANNOTATION,
    FAIL_DELAY_ANNOTATION,
    FAIL_EXIT_CODE_ANNOTATION,
    FAIL_LABEL,
    FAIL_MESSAGE_ANNOTATION,
    FAIL_REASON_ANNOTATION,
    KWOK_NODE_ANNOTATION,
    KWOK_NODE_SELECTOR,
    STAGES_FILE,
    job_complete_metadata,
    job_fail_metadata,
)
from testenv_net import free_port
from testenv_plane import ControlPlane
from testenv_rsa import rsa_private_key_pem
from testenv_smoke import smoke

__all__ = [
    "COMPLETE_DELAY_ANNOTATION",
    "COMPLETE_JITTER_ANNOTATION",
    "DEFAULT_CONTROLLERS",
    "FAIL_DELAY_ANNOTATION",
    "FAIL_EXIT_CODE_ANNOTATION",
    "FAIL_LABEL",
    "FAIL_MESSAGE_ANNOTATION",
    "FAIL_REASON_ANNOTATION",
    "HERE",
    "KWOK_NODE_ANNOTATION",
    "KWOK_NODE_SELECTOR",
    "PV_BINDER_SYNC_PERIOD",
    "SA_ISSUER",
    "STAGES_FILE",
    "ApiError",
    "ControlPlane",
    "ControlPlaneError",
    "default_bin_dir",
    "free_port",
    "job_complete_metadata",
    "job_fail_metadata",
    "main",
    "node_manifest",
    "node_schedulable",
    "pinned_k8s_version",
    "rsa_private_key_pem",
    "smoke",
]

if __name__ == "__main__":
    sys.exit(main())
