"""A service that calls start_scan on every push: a branch that moved is scanned again,
the same commit is not, and the client resolves nothing itself (a worker does, through
ResolveRef). Real dev server, real worker, real git, real bandit."""

from __future__ import annotations

import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client

from activities.workspace import pick_ref, ref_candidates
from scanward import client as api
from scanward.contract import ScanStatus
from scanward.settings import Settings
from scanward.store import Store
from tests.conftest import scan_request, start

pytestmark = pytest.mark.usefixtures("scan_worker_task")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.com",
                           "-c", "user.name=t", *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def push_flaw(repo: Path, name: str, code: str) -> str:
    """A new commit on main (the 'push'), returning its sha."""
    (repo / name).write_text(code)
    git(repo, "add", name)
    git(repo, "commit", "-qm", f"add {name}")
    return git(repo, "rev-parse", "HEAD")


async def test_a_moved_branch_is_scanned_again_and_the_same_commit_is_not(
        client: Client, settings: Settings, flawed_repo: Path) -> None:
    # What a push-event handler does: the same request (no key, no commit) every time.
    request = scan_request(flawed_repo, "bandit", dedupe_key="")
    first = await start(client, settings, request)
    one = await first.result()
    assert one.status is ScanStatus.COMPLETED and one.commit == git(flawed_repo, "rev-parse",
                                                                    "HEAD")

    # Same commit again: the same scan, its result; nothing new runs.
    again = await start(client, settings, request)
    assert again.id == first.id and (await again.result()) == one

    # A push moves main: a new scan of the new commit, which sees the new flaw.
    pushed = push_flaw(flawed_repo, "later.py",
                       "import subprocess\nsubprocess.call('ls ' + input(), shell=True)\n")
    second = await start(client, settings, request)
    assert second.id != first.id
    two = await second.result()
    assert two.status is ScanStatus.COMPLETED and two.commit == pushed
    store = Store.open(settings.database_url)
    try:
        paths = {f.path for f in store.findings(second.id)}
        assert "later.py" in paths, paths
        assert "later.py" not in {f.path for f in store.findings(first.id)}
    finally:
        store.close()
    # A deliberate re-scan of the same commit still works, with a key.
    keyed = await start(client, settings, request.model_copy(update={"dedupe_key": "again"}))
    assert keyed.id not in (first.id, second.id)
    assert (await keyed.result()).commit == pushed


async def test_a_ref_that_does_not_exist_is_a_clear_error_within_seconds(
        client: Client, settings: Settings, flawed_repo: Path) -> None:
    request = scan_request(flawed_repo, "bandit").model_copy(update={"ref": "no-such-branch"})
    started = time.monotonic()
    with pytest.raises(api.RefNotResolved, match="'no-such-branch' not found"):
        await start(client, settings, request)
    assert time.monotonic() - started < 10


async def test_no_worker_on_the_queue_is_named_not_waited_for(
        client: Client, flawed_repo: Path) -> None:
    request = scan_request(flawed_repo, "bandit")
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    with pytest.raises(api.RefNotResolved, match=f"no worker answered on task queue '{queue}'"):
        await api.resolve_ref(client, request, queue,
                              within=timedelta(seconds=2))


def test_tags_and_branches_resolve_like_git(flawed_repo: Path) -> None:
    head = git(flawed_repo, "rev-parse", "HEAD")
    git(flawed_repo, "tag", "-a", "v1", "-m", "release", "HEAD")
    git(flawed_repo, "tag", "light", "HEAD")
    listing = subprocess.run(
        ["git", "-c", "protocol.file.allow=always", "ls-remote", "--", flawed_repo.as_uri(),
         *ref_candidates("v1"), *ref_candidates("light"), *ref_candidates("main"), "HEAD"],
        check=True, capture_output=True, text=True).stdout
    annotated = pick_ref(listing, "v1")
    assert annotated is not None and annotated.commit == head  # peeled, not the tag object
    assert annotated.ref == "refs/tags/v1"
    assert (pick_ref(listing, "light") or annotated).commit == head
    main = pick_ref(listing, "main")
    assert main is not None and (main.ref, main.commit) == ("refs/heads/main", head)
    assert pick_ref(listing, "HEAD") is not None
    assert pick_ref(listing, "nope") is None
