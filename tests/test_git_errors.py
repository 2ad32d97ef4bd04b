"""git failure classification (activities/git_errors.py), a pure function, fed real git
stderr wherever git can produce it here: file:// repositories, hosts that do not resolve
or refuse the connection, and a local HTTPS server (its own certificate, from the
openssl CLI) answering 401/403/404/5xx. Only what needs a real forge or a remote SSH
host is a recorded string, marked as such below."""

from __future__ import annotations

import http.server
import os
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from activities.git_errors import PERMANENT_KINDS, GitFailure, classify, reason, scrub
from activities.workspace import NON_RETRYABLE
from scanward.devserver import free_port
from scanward.example import create_example_repo, git

TOKEN = "ghs_s3cr3tT0kenValue1234567890"
BOILERPLATE = ("and the repository exists", "Please make sure", "hint:")


@dataclass(frozen=True)
class Fetcher:
    """Runs ``git fetch`` as the clone activity does (depth 1, no prompts, batch ssh)."""

    repo: Path
    home: Path

    def stderr(self, url: str, ref: str = "main", *config: str, **env: str) -> str:
        flags = [a for c in ("protocol.file.allow=always", *config) for a in ("-c", c)]
        proc = subprocess.run(
            ["git", *flags, "fetch", "-q", "--depth", "1", "--no-tags", "--", url, ref],
            cwd=self.repo, capture_output=True, text=True, timeout=120,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
                 "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
                 "GIT_SSH_COMMAND": "ssh -o BatchMode=yes", **env})
        assert proc.returncode != 0, f"git fetch {url} {ref} unexpectedly succeeded"
        return proc.stderr


@pytest.fixture(scope="module")
def fetcher(tmp_path_factory: pytest.TempPathFactory) -> Fetcher:
    base = tmp_path_factory.mktemp("fetcher")
    (base / "home").mkdir()
    subprocess.run(["git", "init", "-q", str(base / "repo")], check=True)
    return Fetcher(repo=base / "repo", home=base / "home")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_example_repo(tmp_path_factory.mktemp("source") / "repo")


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request under /<status>/ with that status."""

    def _answer(self) -> None:
        status = int(self.path.split("/")[1])
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True)
class HttpsServer:
    port: int
    cafile: Path

    def url(self, status: int, host: str = "127.0.0.1", userinfo: str = "") -> str:
        return f"https://{userinfo}{host}:{self.port}/{status}/repo.git"


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsServer]:
    openssl = shutil.which("openssl")
    assert openssl, "the openssl CLI is needed to make the test server's certificate"
    d = tmp_path_factory.mktemp("tls")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "cert.pem", d / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpsServer(port=server.server_address[1], cafile=d / "cert.pem")
    finally:
        server.shutdown()
        server.server_close()


def assert_failure(failure: GitFailure, kind: str, says: str) -> None:
    assert failure.kind == kind, failure
    assert failure.retryable is (kind not in PERMANENT_KINDS)
    assert says.lower() in failure.reason.lower(), failure.reason
    for noise in BOILERPLATE:
        assert noise not in failure.reason, failure.reason


def test_permanent_kinds_are_the_clone_activitys_non_retryable_types() -> None:
    assert set(PERMANENT_KINDS) <= set(NON_RETRYABLE)
    assert "GitError" not in NON_RETRYABLE


def test_file_url_that_is_not_a_repository(fetcher: Fetcher, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "README").write_text("not a repository\n")
    for path in (plain, tmp_path / "missing"):
        stderr = fetcher.stderr(path.as_uri())
        # The bug this guards against: git's last line is boilerplate, not the reason.
        assert stderr.strip().splitlines()[-1] == "and the repository exists."
        failure = classify(stderr, 128)
        assert_failure(failure, "RepositoryNotFound",
                       f"'{path}' does not appear to be a git repository")
        assert "Could not read from remote repository" not in failure.reason


def test_missing_ref_and_commit(fetcher: Fetcher, source: Path) -> None:
    assert_failure(classify(fetcher.stderr(source.as_uri(), "no-such-branch"), 128),
                   "RefNotFound", "couldn't find remote ref no-such-branch")
    missing = "0123456789abcdef0123456789abcdef01234567"
    assert_failure(classify(fetcher.stderr(source.as_uri(), missing), 128),
                   "RefNotFound", f"not our ref {missing}")


def test_refused_file_transport(fetcher: Fetcher, source: Path) -> None:
    stderr = fetcher.stderr(source.as_uri(), "main", "protocol.file.allow=never")
    assert_failure(classify(stderr, 128), "LocalRepositoryRefused",
                   "transport 'file' not allowed")


def test_unreachable_hosts_are_transient(fetcher: Fetcher) -> None:
    closed = free_port()  # bound, then released: nothing listens there
    cases = {
        "https://nosuch.invalid/acme/app.git": "Could not resolve host: nosuch.invalid",
        f"https://127.0.0.1:{closed}/acme/app.git": "Couldn't connect to server",
        # ssh adds git's "access rights / repository exists" boilerplate: not the reason.
        "ssh://git@nosuch.invalid/acme/app.git": "Could not resolve hostname nosuch.invalid",
        f"ssh://git@127.0.0.1:{closed}/acme/app.git": "Connection refused",
        f"git://127.0.0.1:{closed}/acme/app.git": "Connection refused",
    }
    for url, says in cases.items():
        assert_failure(classify(fetcher.stderr(url), 128), "GitError", says)


def test_https_statuses(fetcher: Fetcher, https: HttpsServer) -> None:
    trusted = {"GIT_SSL_CAINFO": str(https.cafile)}
    expected = {404: ("RepositoryNotFound", "not found"),
                401: ("AccessDenied", "could not read Username"),
                403: ("AccessDenied", "returned error: 403"),
                429: ("GitError", "returned error: 429"),
                500: ("GitError", "returned error: 500"),
                503: ("GitError", "returned error: 503")}
    for status, (kind, says) in expected.items():
        assert_failure(classify(fetcher.stderr(https.url(status), **trusted), 128), kind, says)


def test_untrusted_certificates(fetcher: Fetcher, https: HttpsServer) -> None:
    # Not signed by a CA the worker trusts (GnuTLS git's wording; OpenSSL git's is below).
    assert_failure(classify(fetcher.stderr(https.url(404)), 128), "UntrustedServer",
                   "certificate verification failed")
    # Trusted, but issued for another name.
    stderr = fetcher.stderr(https.url(404, host="localhost"), GIT_SSL_CAINFO=str(https.cafile))
    assert_failure(classify(stderr, 128), "UntrustedServer", "certificate subject name")


def test_token_never_reaches_the_reason(fetcher: Fetcher, https: HttpsServer) -> None:
    trusted = {"GIT_SSL_CAINFO": str(https.cafile)}
    basic = "eC1hY2Nlc3MtdG9rZW46Z2hzX3MzY3IzdFQwa2VuVmFsdWUxMjM0NTY3ODkw"
    secrets = (TOKEN, basic)
    # The worker's way: the token in an http.extraHeader from GIT_CONFIG_* env.
    header = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
              "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"}
    stderr = fetcher.stderr(https.url(401), **trusted, **header)
    assert_failure(classify(stderr, 128, secrets), "AccessDenied", "could not read Username")
    # A token in the URL itself (requests refuse these; git may still be given one).
    stderr = fetcher.stderr(https.url(401, userinfo=f"x-access-token:{TOKEN}@"), **trusted)
    failures = [classify(stderr, 128, secrets)]
    assert_failure(failures[0], "AccessDenied", "Authentication failed")
    # Recorded: older gits and GIT_CURL_VERBOSE echo URLs with credentials and headers.
    echoed = (f"> Authorization: Basic {basic}\n"
              f"fatal: unable to access 'https://x-access-token:{TOKEN}@github.com/acme/"
              "app.git/': The requested URL returned error: 403\n")
    failures.append(classify(echoed, 128, secrets))
    failures.append(classify(echoed, 128))  # even without knowing the secret values
    assert failures[1].kind == failures[2].kind == "AccessDenied"
    for failure in failures:
        for leak in (TOKEN, basic, "x-access-token"):
            assert leak not in failure.reason, failure.reason


# Recorded: these need a real forge, a remote SSH host or a broken network.
RECORDED = [
    ("remote: Repository not found.\n"
     "fatal: repository 'https://github.com/acme/nope.git/' not found\n",
     "RepositoryNotFound", "remote: Repository not found."),
    ("remote: The project you were looking for could not be found or you don't have "
     "permission to view it.\nfatal: repository 'https://gitlab.com/acme/nope.git/' not "
     "found\n", "RepositoryNotFound", "could not be found"),
    ("git@github.com: Permission denied (publickey).\n"
     "fatal: Could not read from remote repository.\n\n"
     "Please make sure you have the correct access rights\nand the repository exists.\n",
     "AccessDenied", "Permission denied (publickey)"),
    ("remote: Permission to acme/app.git denied to scan-bot.\nfatal: unable to access "
     "'https://github.com/acme/app.git/': The requested URL returned error: 403\n",
     "AccessDenied", "denied to scan-bot"),
    ("remote: HTTP Basic: Access denied\n"
     "fatal: Authentication failed for 'https://gitlab.com/acme/app.git/'\n",
     "AccessDenied", "Authentication failed"),
    ("Host key verification failed.\nfatal: Could not read from remote repository.\n\n"
     "Please make sure you have the correct access rights\nand the repository exists.\n",
     "UntrustedServer", "Host key verification failed"),
    ("fatal: unable to access 'https://expired.example.com/app.git/': SSL certificate "
     "problem: certificate has expired\n", "UntrustedServer", "certificate has expired"),
    ("fatal: unable to access 'https://github.com/acme/app.git/': Failed to connect to "
     "github.com port 443 after 130417 ms: Connection timed out\n",
     "GitError", "Connection timed out"),
    ("ssh: connect to host github.com port 22: Connection timed out\n"
     "fatal: Could not read from remote repository.\n\n"
     "Please make sure you have the correct access rights\nand the repository exists.\n",
     "GitError", "ssh: connect to host github.com port 22: Connection timed out"),
    ("fatal: unable to access 'https://github.com/acme/app.git/': Could not resolve host: "
     "github.com\n", "GitError", "Could not resolve host"),
    ("fatal: unable to access 'https://github.com/acme/app.git/': The requested URL "
     "returned error: 502\n", "GitError", "returned error: 502"),
    ("error: RPC failed; curl 92 HTTP/2 stream 5 was not closed cleanly: CANCEL (err 8)\n"
     "error: 6144 bytes of body are still expected\n"
     "fetch-pack: unexpected disconnect while reading sideband packet\n"
     "fatal: early EOF\nfatal: fetch-pack: invalid index-pack output\n",
     "GitError", "RPC failed"),
]


@pytest.mark.parametrize(("stderr", "kind", "says"), RECORDED)
def test_recorded_forge_and_network_failures(stderr: str, kind: str, says: str) -> None:
    assert_failure(classify(stderr, 128), kind, says)


def test_reason_and_scrub_edges() -> None:
    assert classify("", 137).reason == "exit 137"  # killed without a word
    # Only boilerplate: still says something rather than nothing.
    generic = ("fatal: Could not read from remote repository.\n\nPlease make sure you have "
               "the correct access rights\nand the repository exists.\n")
    assert reason(generic) == "fatal: Could not read from remote repository."
    assert len(reason("fatal: " + "x" * 5000)) <= 1501
    assert scrub("https://user:pw@host/r.git and ssh://git@host/r") == (
        "https://***@host/r.git and ssh://***@host/r")


def test_the_same_fetch_of_an_existing_ref_succeeds(source: Path, fetcher: Fetcher) -> None:
    """A sanity check on the fixtures: the same fetch of an existing ref succeeds, so
    the failures above come from what each case changes."""
    proc = subprocess.run(["git", "-c", "protocol.file.allow=always", "fetch", "-q",
                           "--depth", "1", "--", source.as_uri(), "main"],
                          cwd=fetcher.repo, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert git(fetcher.repo, "rev-parse", "FETCH_HEAD") == git(source, "rev-parse", "HEAD")
