"""Bad input gets a clear error naming the problem, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from scanward.catalog import Catalog, UnknownScanner
from scanward.contract import ScanRequest
from scanward.inputs import InputError, check_ref, check_repository_url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "repository URL is empty"),
        ("-uhttps://evil", "starts with '-'"),
        ("--upload-pack=/tmp/x", "starts with '-'"),
        ("ext::sh -c touch% /tmp/pwned", "whitespace or control"),
        ("ext::sh", "remote helper"),
        ("fd::17", "remote helper"),
        ("http://example.com/repo.git", "scheme 'http' is not allowed"),
        ("ftp://example.com/repo.git", "scheme 'ftp' is not allowed"),
        ("https://user:token@example.com/repo.git", "embeds credentials"),
        ("https://token@example.com/repo.git", "embeds credentials"),
        ("https:///repo.git", "has no host"),
        ("https://example.com", "no repository path"),
        ("file://otherhost/srv/repo", "file:///absolute/path"),
        ("/srv/git/repo", "not a URL"),
        ("just-words", "not a URL"),
        ("https://example.com/repo\n.git", "whitespace or control"),
    ],
)
def test_bad_repository_urls(url: str, message: str) -> None:
    with pytest.raises(InputError, match=None) as err:
        check_repository_url(url)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "url",
    ["https://github.com/org/repo.git", "ssh://git@example.com:2222/org/repo.git",
     "git@github.com:org/repo.git", "git://example.com/repo", "file:///srv/git/repo"],
)
def test_good_repository_urls(url: str) -> None:
    assert check_repository_url(url) == url


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("-n", "starts with '-'"),
        ("--output=/etc/passwd", "starts with '-'"),
        ("main..evil", "'..'"),
        ("feature branch", "character git refuses"),
        ("a~1", "character git refuses"),
        ("refs/heads/x.lock", "ends with"),
        ("x@{1}", "'@{'"),
        ("/main", "starts with '/'"),
        ("refs/.hidden", "starting with '.'"),
        ("", "ref is empty"),
    ],
)
def test_bad_refs(ref: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        check_ref(ref)
    assert message in str(err.value)


@pytest.mark.parametrize("ref", ["main", "HEAD", "release/1.2", "v1.0.0", "refs/tags/v2"])
def test_good_refs(ref: str) -> None:
    assert check_ref(ref) == ref


def test_request_validation_names_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        ScanRequest(repository="https://example.com/r.git", ref="-x", scanners=("bandit",))
    assert err.value.errors()[0]["loc"] == ("ref",)
    assert "starts with '-'" in str(err.value)
    with pytest.raises(ValidationError, match="scanner name 'Bandit!' is malformed"):
        ScanRequest(repository="https://example.com/r.git", scanners=("Bandit!",))
    with pytest.raises(ValidationError, match="scanners listed twice"):
        ScanRequest(repository="https://example.com/r.git", scanners=("bandit", "bandit"))
    with pytest.raises(ValidationError, match=r"at least 1 item"):
        ScanRequest(repository="https://example.com/r.git", scanners=())


def test_unknown_scanner_is_named() -> None:
    with pytest.raises(UnknownScanner, match=r"unknown scanner 'nosuch' \(known: bandit, "):
        Catalog.load().check(["bandit", "nosuch"])


def test_broken_catalog_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "catalog.json"
    bad.write_text(json.dumps({"scanners": [{"name": "x"}]}))
    with pytest.raises(InputError, match=r"catalog\.json: invalid"):
        Catalog.load(bad)
    with pytest.raises(InputError, match="file not found"):
        Catalog.load(tmp_path / "missing.json")


def test_scan_id_is_derived_from_the_request() -> None:
    a = ScanRequest(repository="https://example.com/r.git", scanners=("semgrep", "bandit"))
    b = ScanRequest(repository="https://example.com/r.git", scanners=("bandit", "semgrep"))
    c = a.model_copy(update={"dedupe_key": "push-42"})
    assert a.scan_id() == b.scan_id()  # scanner order does not matter
    assert a.scan_id() != c.scan_id()
    assert a.scan_id().startswith("scan-default-")
