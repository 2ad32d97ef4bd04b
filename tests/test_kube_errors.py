"""A kubernetes backend that cannot work says why, in one line an operator can act on:
unreachable API server, missing namespace, forbidden identity, bad credentials, missing
kubeconfig; and the worker turns that into a ConfigError before it touches Temporal or
the database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import worker
from activities.backends.kubernetes import ClusterError, KubernetesBackend, KubeSettings
from scanward.env_values import ConfigError
from scanward.job_spec import KubeJobConfig
from scanward.settings import Settings
from tests.conftest import run_async
from tests.k8s_fixture import service_account_token, testenv, token_kubeconfig

# Loads the fixtures (control_plane, kube_namespace) whether or not conftest.py already
# lists the plugin; see tests/test_kube_rbac.py.
pytest_plugins = ["tests.k8s_fixture"]

FAST_ENOUGH = 15.0  # seconds: a misconfigured worker must fail at once, not hang


def backend(config: Path, namespace: str, tmp_path: Path) -> KubernetesBackend:
    return KubernetesBackend(
        KubeSettings(kubeconfig=str(config), job=KubeJobConfig(namespace=namespace)),
        tmp_path / "results")


def preflight_error(b: KubernetesBackend) -> tuple[str, float]:
    started = time.monotonic()
    try:
        with pytest.raises(ClusterError) as error:
            b.preflight()
    finally:
        b.close()  # never started: no watch threads to join
    return str(error.value), time.monotonic() - started


def worker_settings(tmp_path: Path, config: Path, namespace: str) -> Settings:
    home = tmp_path / "home"
    return Settings(
        home=home, workspace_root=home / "workspace", results_root=home / "results",
        database_url=f"sqlite:///{tmp_path / 'scanward.db'}", task_queue="test-kube-errors",
        backend="kubernetes",
        env={"SCANWARD_KUBECONFIG": str(config), "SCANWARD_KUBE_NAMESPACE": namespace})


@pytest.fixture
def closed_port_kubeconfig(tmp_path: Path) -> tuple[Path, str]:
    server = f"https://127.0.0.1:{testenv.free_port()}"  # bound, released: nobody listens
    return token_kubeconfig(tmp_path / "kubeconfig", server, "no-such-token"), server


# ------------------------------------------------------------------ no cluster needed


def test_unreachable_cluster(closed_port_kubeconfig: tuple[Path, str], tmp_path: Path) -> None:
    config, server = closed_port_kubeconfig
    message, took = preflight_error(backend(config, "scanward", tmp_path))
    assert message == f"cannot reach the Kubernetes API at {server}: Connection refused"
    assert took < FAST_ENOUGH


def test_missing_kubeconfig(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    with pytest.raises(ClusterError, match=f"^kubeconfig {missing}: "):
        backend(missing, "scanward", tmp_path)


def test_worker_make_backend_missing_kubeconfig(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    with pytest.raises(ConfigError, match=f"^kubeconfig {missing}: "):
        worker.make_backend(worker_settings(tmp_path, missing, "scanward"))


def test_worker_unreachable_cluster_is_a_config_error(
        closed_port_kubeconfig: tuple[Path, str], tmp_path: Path) -> None:
    config, server = closed_port_kubeconfig
    settings = worker_settings(tmp_path, config, "scanward")
    made = worker.make_backend(settings)  # constructing it does not contact the cluster
    assert isinstance(made, KubernetesBackend) and made.server == server
    made.close()

    # client=None: run() would connect to Temporal (nothing listens here) only after the
    # backend started, and open the database only after that: neither may happen.
    started = time.monotonic()
    with pytest.raises(ConfigError) as error:
        run_async(worker.run(settings, asyncio.Event(), client=None))
    assert str(error.value) == f"cannot reach the Kubernetes API at {server}: Connection refused"
    assert time.monotonic() - started < FAST_ENOUGH
    assert not (tmp_path / "scanward.db").exists(), "the store was opened before the backend"


# ------------------------------------------------------------------ the real API server


def test_missing_namespace(control_plane: testenv.ControlPlane, tmp_path: Path) -> None:
    admin = token_kubeconfig(tmp_path / "kubeconfig", control_plane.server, control_plane.token,
                       control_plane.ca_file)
    message, took = preflight_error(backend(admin, "nope", tmp_path))
    assert message.startswith("namespace 'nope' not found: "), message
    assert message.endswith("(SCANWARD_KUBE_NAMESPACE)"), message
    assert took < FAST_ENOUGH


def test_forbidden_identity(control_plane: testenv.ControlPlane, kube_namespace: str,
                            tmp_path: Path) -> None:
    ns = kube_namespace
    control_plane.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts",
                          {"metadata": {"name": "unbound"}})
    token = service_account_token(control_plane, ns, "unbound", seconds=600)
    config = token_kubeconfig(tmp_path / "kubeconfig", control_plane.server, token,
                        control_plane.ca_file)
    message, took = preflight_error(backend(config, ns, tmp_path))
    # Nothing at all is allowed: the namespace may be missing (the identity cannot tell)
    # or the Role unbound; both are named.
    assert message.startswith(f"no permission at all in namespace {ns!r}"), message
    assert "namespace exists (SCANWARD_KUBE_NAMESPACE)" in message
    assert "deploy/rbac.yaml is bound there" in message
    assert took < FAST_ENOUGH


def test_bad_credentials(control_plane: testenv.ControlPlane, tmp_path: Path) -> None:
    config = token_kubeconfig(tmp_path / "kubeconfig", control_plane.server, "not-a-valid-token",
                        control_plane.ca_file)
    message, _ = preflight_error(backend(config, "default", tmp_path))
    assert message.startswith("unauthorized to "), message
    assert "check the kubeconfig's credentials" in message


def test_untrusted_server_certificate(control_plane: testenv.ControlPlane,
                                      tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.crt"  # a CA that did not sign the server's cert
    other_ca.write_bytes(_self_signed_pem())
    config = token_kubeconfig(tmp_path / "kubeconfig", control_plane.server, control_plane.token,
                        other_ca)
    message, took = preflight_error(backend(config, "default", tmp_path))
    assert message == (f"cannot reach the Kubernetes API at {control_plane.server}: "
                       "certificate verify failed")
    assert took < FAST_ENOUGH


def _self_signed_pem() -> bytes:
    """A valid CA certificate that is not the plane's: certifi's first root."""
    import certifi

    text = Path(certifi.where()).read_text()
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    return (text[text.index(begin):text.index(end) + len(end)] + "\n").encode()
