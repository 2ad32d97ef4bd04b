"""Hostile input, end to end: a repository, a scanner's SARIF and a scan request are
untrusted. Real git, the real dev server, real scanners; nothing mocked."""

from __future__ import annotations

import base64
import dataclasses
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import worker as scan_worker
from activities.workspace import WorkspaceActivities
from scanward import client as api
from scanward.catalog import Catalog
from scanward.contract import Finding, NotifyTarget, ResolveInput, ScanRequest, ScanStatus
from scanward.example import create_example_repo, git
from scanward.secrets import SecretStore
from scanward.settings import Settings
from scanward.store import Store
from scanward.synthetic_scanner import EXIT_BAD_INPUT, STAMPS_FILE, prepare_stamps
from scanward.webhook_receiver import WebhookReceiver
from tests.conftest import FAST, scan_request, start


async def _commit_and_scan(client: Client, settings: Settings, repo: Path, scanner: str,
                           message: str) -> list[Finding]:
    """Commit the repository's working tree, scan it to completion, read the findings."""
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", message)
    handle = await start(client, settings, scan_request(repo, scanner))
    summary = await handle.result()
    assert summary.status is ScanStatus.COMPLETED, summary
    with Store.open(settings.database_url) as store:
        return store.findings(handle.id)


@pytest.mark.usefixtures("scan_worker_task")
async def test_symlinks_leaving_the_checkout_are_not_scanned(
        client: Client, settings: Settings, tmp_path: Path) -> None:
    """A repository's symlinks to files outside it (absolute, or relative climbing out
    of ``<workspace>/<scan>/src`` into the worker's files or another scan's checkout)
    must not be read by a scanner: bandit follows a symlinked file and would store the
    outside file's secrets in a finding's message."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "abs.py").write_text('password = "s3cr3t-absolute"\n')
    (outside / "rel.py").write_text('password = "s3cr3t-relative"\n')
    repo = create_example_repo(tmp_path / "repo")
    (repo / "leak_abs.py").symlink_to(outside / "abs.py")
    # <tmp>/home/workspace/<scan>/src/leak_rel.py -> <tmp>/outside/rel.py
    (repo / "leak_rel.py").symlink_to("../../../../outside/rel.py")
    (repo / "alias.py").symlink_to("app.py")  # stays inside: harmless
    findings = await _commit_and_scan(client, settings, repo, "bandit", "symlinks")
    assert {"app.py", "alias.py"} <= {f.path for f in findings}  # inside: kept
    leaked = [(f.path, f.message) for f in findings
              if "s3cr3t" in f.message or f.path.startswith("leak_")]
    assert not leaked, leaked
    assert os.path.exists(outside / "abs.py")  # untouched


TOKEN = "tok/with:special@chars%&?# é"  # needs URL-quoting, and not ASCII
REPLAY = ("import shutil, sys; "
          "shutil.copyfile(sys.argv[1] + '/evil.sarif', sys.argv[2])")


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The test settings plus ``replay``, a scanner whose SARIF is the repository's own
    ``evil.sarif``: the SARIF is as hostile as the repository."""
    catalog = json.loads(settings.catalog_file.read_text())  # type: ignore[union-attr]
    catalog["scanners"].append({
        "name": "replay", "image": "example.invalid/replay:1", "command": ["replay"],
        "local_command": ["{python}", "-c", REPLAY, "{source}", "{sarif}"]})
    path = tmp_path / "catalog-hostile.json"
    path.write_text(json.dumps(catalog))
    return dataclasses.replace(settings, catalog_file=path,
                               env={**settings.env, "SCANWARD_SECRET_GH": TOKEN,
                                    "SCANWARD_HOSTS_FOR_SECRETS":
                                    "hook=127.0.0.1,gh=127.0.0.1"})


def sarif_result(n: int, uri: str, *, base: str | None = None,
                 line: int = 1) -> dict[str, Any]:
    location: dict[str, Any] = {"uri": uri}
    if base is not None:
        location["uriBaseId"] = base
    return {"ruleId": f"R{n}", "level": "error", "message": {"text": f"result {n}"},
            "locations": [{"physicalLocation": {
                "artifactLocation": location, "region": {"startLine": line}}}]}


@pytest.mark.usefixtures("scan_worker_task")
async def test_hostile_sarif_paths_are_never_stored_as_checkout_paths(
        client: Client, settings: Settings, tmp_path: Path) -> None:
    """Every stored path is a file of the checkout or an ``unresolved://`` mark, and
    every result the scanner reported is stored."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("x = 1\n")
    repo = create_example_repo(tmp_path / "repo")
    (repo / "dirlink").symlink_to(outside, target_is_directory=True)
    uris: list[tuple[str, str | None]] = [
        ("../../etc/passwd", None), ("/etc/passwd", None), ("file:///etc/passwd", None),
        ("%2e%2e/%2e%2e/etc/passwd", None), ("..%2f..%2fetc%2fpasswd", None),
        ("passwd", "ETC"), ("../passwd", "SRCROOT"), ("dirlink/secret.py", None),
        (f"file://{outside}/secret.py", None), ("app.py", "ETC"),
        ("app.py", None), ("./app.py", None), ("a\npp.py", None), ("app.py\x00", None),
    ]
    results = [sarif_result(i, uri, base=base) for i, (uri, base) in enumerate(uris)]
    results.append(sarif_result(len(results), "app.py", line=10**9))  # beyond the file
    (repo / "evil.sarif").write_text(json.dumps({
        "version": "2.1.0", "runs": [{
            "tool": {"driver": {"name": "evil"}},
            "originalUriBaseIds": {"ETC": {"uri": "file:///etc/"},
                                   "SRCROOT": {"uri": "file:///"}},
            "results": results}]}))
    findings = await _commit_and_scan(client, settings, repo, "replay", "hostile sarif")
    by_rule = {f.rule_id: f.path for f in findings}
    assert len(by_rule) == len(results), (len(by_rule), by_rule)
    bad = {rule: path for rule, path in by_rule.items()
           if not path.startswith("unresolved://")
           and not (os.path.lexists(repo / path) and path != "dirlink/secret.py")}
    assert not bad, (bad, by_rule)
    assert by_rule["R10"] == by_rule["R11"] == "app.py", by_rule



class _Echo(http.server.BaseHTTPRequestHandler):
    """A git server that reflects the request's Authorization header, decoded too, in a
    smart-protocol error: git prints it on stderr."""
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[str]] = []  # the Authorization header of every request

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization") or ""
        _Echo.seen.append(auth)
        decoded = base64.b64decode(auth.split()[-1]).decode() if auth else ""
        def pkt(text: str) -> bytes:
            data = text.encode()
            return b"%04x" % (len(data) + 4) + data
        body = pkt("# service=git-upload-pack\n") + b"0000" + pkt(
            f"ERR {auth} {decoded} {quote(decoded)}\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-git-upload-pack-advertisement")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """An HTTPS git server the worker's git trusts (``http.sslCAInfo`` in its HOME)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True)
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / ".gitconfig").write_text(f"[http]\n\tsslCAInfo = {cert}\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/org/repo.git"
    finally:
        server.shutdown()
        server.server_close()


async def _failed_clone_with_token(client: Client, settings: Settings, server: str
                                  ) -> tuple[WorkflowHandle[Any, Any], str]:
    """A scan of ``server``'s repository with the clone token ``gh``, which must fail;
    its handle and the failure's message."""
    request = ScanRequest(repository=server, ref="main", commit="c" * 40,
                          scanners=("fake",), credentials_ref="gh", tuning=FAST,
                          dedupe_key=uuid.uuid4().hex)
    handle = await start(client, settings, request)
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    return handle, str(failure.value.cause)


@pytest.mark.usefixtures("scan_worker_task")
async def test_clone_token_reflected_by_the_server_is_scrubbed(
        client: Client, settings: Settings, echo_server: str, tmp_path: Path) -> None:
    """A server that prints the Authorization header back (raw, decoded, URL-quoted):
    neither the token nor its Basic encoding reaches the error, the progress query or
    the workflow's history."""
    handle, message = await _failed_clone_with_token(client, settings, echo_server)
    assert "remote error" in message, message  # the server's words did arrive
    summary = await api.progress(client, handle.id)
    history = (await handle.fetch_history()).to_json()
    basic = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    for text in (message, summary.model_dump_json(), history):
        for secret in (TOKEN, basic, quote(TOKEN), json.dumps(TOKEN)[1:-1]):
            assert secret not in text, (secret, text[:2000])


def _synthetic(checkout: Path, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """The built-in synthetic scanner, run as the local backend runs it, on a checkout
    whose ``.scanward-synthetic.json`` is ``config``."""
    (checkout / ".scanward-synthetic.json").write_text(json.dumps(config))
    sarif = checkout.parent / "results" / "attempt-1" / "results.sarif"
    sarif.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-I", "-m", "scanward.synthetic_scanner",
                           str(checkout), str(sarif)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_synthetic_scanner_takes_no_orders_beyond_its_own_files(tmp_path: Path) -> None:
    """Any request may name ``synthetic``, and its orders come from the scanned
    repository: it wrote ``stamps.log`` into any directory the worker could write to, and
    held as much memory as the repository asked for (the local backend has no limit)."""
    checkout = tmp_path / "src"
    checkout.mkdir()
    target = tmp_path / "worker-dir"
    target.mkdir()
    done = _synthetic(checkout, {"stamps": str(target)})
    assert done.returncode == 0, done.stderr
    assert list(target.iterdir()) == []  # no file created where the repository said
    assert "not stamping" in done.stderr
    link = tmp_path / "linked"
    link.mkdir()
    (link / "stamps.log").symlink_to(target / "elsewhere.log")
    assert _synthetic(checkout, {"stamps": str(link)}).returncode == 0
    assert not (target / "elsewhere.log").exists()  # nor through a symlink

    prepare_stamps(target)  # the observer's own directory: stamped
    assert _synthetic(checkout, {"stamps": str(target)}).returncode == 0
    assert [line.split()[0] for line in (target / STAMPS_FILE).read_text().splitlines()] \
        == ["start", "stop"]

    for config in ({"memory_mib": 64 * 1024}, {"findings": 10**9}):
        refused = _synthetic(checkout, config)
        assert refused.returncode == EXIT_BAD_INPUT, (config, refused.stderr)
        assert f"{next(iter(config))} " in refused.stderr


async def test_secrets_go_only_to_the_hosts_listed_for_them(
        client: Client, settings: Settings, echo_server: str, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    """Any request may name any secret: a clone token was sent to whatever https host the
    request named (one tenant could collect another's), and a webhook key signed a
    summary for any URL. Now each secret goes only to the hosts the worker lists for
    it; anywhere else the scan fails (clone) or the webhook is undelivered, naming why,
    and the host receives nothing."""
    scoped = dataclasses.replace(settings, env={
        **settings.env, "SCANWARD_HOSTS_FOR_SECRETS": "gh=git.example.com,hook=127.0.0.1"})
    _Echo.seen.clear()
    async with scan_worker.running(scoped, client, stop_timeout=30):
        _, message = await _failed_clone_with_token(client, scoped, echo_server)
        assert "secret 'gh' may not be sent to 127.0.0.1" in message
        assert _Echo.seen == []  # git never ran

        elsewhere = receiver.url.replace("127.0.0.1", "localhost")
        repo = create_example_repo(tmp_path / "repo")
        handle = await start(client, scoped, scan_request(
            repo, "fake", notify=(NotifyTarget(url=elsewhere, secret_ref="hook"),)))
        summary = await handle.result()
    assert summary.status is ScanStatus.COMPLETED, summary
    [undelivered] = summary.undelivered_webhooks
    assert undelivered.startswith("http://localhost:"), undelivered
    assert "secret 'hook' may not be sent to localhost" in undelivered, undelivered
    assert receiver.deliveries == []


@pytest.mark.parametrize("url", ["file:///srv/repo", "FILE:///srv/repo", "File:///srv/repo"])
async def test_local_repositories_are_refused_whatever_the_schemes_case(
        settings: Settings, url: str) -> None:
    """URL schemes are case-insensitive: "FILE:///..." passes the worker's own file://
    check, and git's protocol list (protocol.allow=never) refuses it, classed the same."""
    strict = dataclasses.replace(settings, allow_local_repositories=False)
    workspace = WorkspaceActivities(strict, Catalog.load(strict.catalog_file),
                                    SecretStore(strict.env))
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(workspace.resolve_ref,
                                        ResolveInput(repository=url, ref="main"))
    assert refused.value.type == "LocalRepositoryRefused", refused.value
    assert refused.value.non_retryable
