"""The clone activity against the real dev server, real git and real worker processes:
it heartbeats (a SIGKILLed worker's clone runs again elsewhere within seconds), leaves
no git process behind (worker SIGKILLed, or the scan cancelled), restarts cleanly over
what a dead attempt left, and fails at once with git's own reason when retrying cannot
help.

A clone is held mid-fetch deterministically, not by timing: the worker's global git
config (``$HOME/.gitconfig``; the worker runs git with ``HOME=SCANWARD_HOME``) sets
``uploadpack.packObjectsHook``, git's own hook around ``pack-objects``, to a script that
runs the real ``pack-objects`` and holds its output until a gate file exists. The
repository carries a 1 MiB random blob, more than a pipe holds, so the real
``pack-objects`` stays alive, blocked on its write, under ``upload-pack`` under
``git fetch`` - the process tree a slow fetch has - for as long as the test needs."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment

from activities.workspace import remove_leftovers, replace_dir, tree_size
from scanward import client as api
from scanward.contract import ScanStatus
from scanward.example import create_example_repo, git
from scanward.settings import Settings
from tests.conftest import FAST, eventually, scan_request, start
from tests.helpers.pids import process_alive
from tests.helpers.processes import spawn_worker, worker_env


@dataclass(frozen=True)
class Proc:
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells a reused pid apart
    pgid: int
    cmdline: str

    def alive(self) -> bool:
        return process_alive(self.pid) and _stat(self.pid)[1] == self.start_ticks


def _stat(pid: int) -> tuple[int, int]:
    """(pgid, start time) of a process."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[2]), int(fields[19])


def processes_of(*paths: Path) -> list[Proc]:
    """Live processes working in (cwd) or on (argv) any of ``paths``: a clone's git,
    upload-pack, pack-objects, the hook, and the reaper they run under."""
    roots = [str(p.resolve()) for p in paths]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
            pgid, start_ticks = _stat(pid)
        except OSError:  # exited meanwhile, or a kernel thread
            continue
        if pid != os.getpid() and process_alive(pid) and any(
                cwd == r or cwd.startswith(r + "/") or r in cmdline for r in roots):
            found.append(Proc(pid, start_ticks, pgid, cmdline))
    return found


def repo_with_blob(dest: Path) -> Path:
    """The example repository plus a 1 MiB incompressible blob."""
    repo = create_example_repo(dest)
    (repo / "blob.bin").write_bytes(os.urandom(1 << 20))
    git(repo, "add", "blob.bin")
    git(repo, "commit", "-q", "-m", "a blob larger than a pipe")
    return repo


def checkout_bytes(repo: Path) -> int:
    return tree_size(repo)[0] - tree_size(repo / ".git")[0]


def hold_pack_objects(home: Path, gate: Path) -> None:
    """Make every fetch by a git with ``HOME=home`` wait, mid-transfer, for ``gate``."""
    home.mkdir(parents=True, exist_ok=True)
    hook = home / "hold-pack-objects.sh"
    hook.write_text("#!/bin/sh\n"
                    f'"$@" | {{ while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done; '
                    "exec cat; }\n")
    hook.chmod(0o755)
    (home / ".gitconfig").write_text(f"[uploadpack]\n\tpackObjectsHook = {hook}\n")


async def fetch_held(repo: Path, workspace: Path) -> list[Proc] | None:
    """The clone's processes once its fetch is under way with pack-objects running."""
    procs = processes_of(repo, workspace)
    fetching = any(" fetch " in p.cmdline and "reaper.py" not in p.cmdline for p in procs)
    packing = any("pack-objects" in p.cmdline and "hold-pack" not in p.cmdline
                  for p in procs)
    return procs if fetching and packing else None


def describe(procs: list[Proc]) -> str:
    return "\n".join(f"  {p.pid} pgid={p.pgid} {p.cmdline[:160]}" for p in procs)


@pytest.fixture
def gate(settings: Settings, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "gate"
    hold_pack_objects(settings.home, path)
    try:
        yield path
    finally:
        path.touch()  # whatever happens, nothing stays blocked on it


async def clone_pending(handle: WorkflowHandle[object, object]) -> PendingActivityInfo | None:
    """The clone's pending activity, if it is pending."""
    desc = await handle.describe()
    return next((p for p in desc.raw_description.pending_activities
                 if p.activity_type.name == "clone_repository"), None)


async def clone_retry(handle: WorkflowHandle[object, object],
                      state: PendingActivityState.ValueType | None = None) -> datetime | None:
    """When clone_repository attempt >= 2 started (``state`` STARTED), or the time it was
    seen scheduled; None before that."""
    pending = await clone_pending(handle)
    if pending is None or pending.attempt < 2:
        return None
    if state is None:
        return datetime.now(UTC)
    if pending.state == state and pending.HasField("last_started_time"):
        return pending.last_started_time.ToDatetime(tzinfo=UTC)
    return None


async def clone_attempts(handle: WorkflowHandle[object, object]) -> list[tuple[int, str]]:
    """(attempt, worker identity) of the clone's ActivityTaskStarted events."""
    events = [e async for e in handle.fetch_history_events()]
    clone = {e.event_id for e in events
             if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
             and e.activity_task_scheduled_event_attributes.activity_type.name
             == "clone_repository"}
    return [(e.activity_task_started_event_attributes.attempt,
             e.activity_task_started_event_attributes.identity)
            for e in events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
            and e.activity_task_started_event_attributes.scheduled_event_id in clone]


async def test_sigkilled_worker_leaves_no_git_and_its_clone_restarts_within_60s(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        tmp_path: Path, gate: Path) -> None:
    """Issue 7, problems 1 and 2: the worker is SIGKILLed mid-fetch. Everything of that
    clone dies with it (pack-objects and upload-pack included), and a second worker
    runs the clone again within 60 s (a few seconds: the heartbeat timeout is 2 s) over
    the half-written checkout the dead attempt left, and the scan completes."""
    repo = repo_with_blob(tmp_path / "repo")
    env = worker_env(temporal_env, settings)
    first = spawn_worker(env, tmp_path / "worker1.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        handle = await start(client, settings, scan_request(repo, "fake"))
        procs = await eventually(lambda: fetch_held(repo, settings.workspace_root),
                                 timeout=60, what="the first worker's fetch to be under way")
        cmdlines = " ".join(p.cmdline for p in procs)
        assert "upload-pack" in cmdlines and "pack-objects" in cmdlines, describe(procs)
        # git and its children run in process groups of their own, not the worker's.
        assert os.getpgid(first.pid) not in {p.pgid for p in procs}, describe(procs)
        # While git runs, the clone heartbeats: held in its fetch on a live worker for
        # longer than the heartbeat timeout, it is still the first attempt, not timed out.
        await asyncio.sleep(2.5 * FAST.heartbeat_timeout.total_seconds())
        pending = await clone_pending(handle)
        assert pending is not None and pending.attempt == 1, (
            f"a clone busy in git fetch was timed out (it does not heartbeat): {pending}")
        assert pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        assert pending.HasField("last_heartbeat_time")
        steady = [p for p in procs if not p.cmdline.startswith("sleep ")]  # not the hook's
        assert all(p.alive() for p in steady), "the fetch was restarted meanwhile"

        first.kill()
        killed_at = time.time()
        first.wait(10)
        second = spawn_worker(env, tmp_path / "worker2.log")

        async def orphans_gone() -> bool:
            return not [p for p in procs if p.alive()]

        try:
            await eventually(orphans_gone, timeout=5, what="the dead clone's processes to go")
        except AssertionError:
            survivors = [p for p in procs if p.alive()]
            raise AssertionError(f"left running by the SIGKILLed worker:\n"
                                 f"{describe(survivors)}") from None
        orphans_seconds = time.time() - killed_at
        leftovers = list((settings.workspace_root / handle.id).iterdir())
        assert leftovers, "the dead attempt left nothing: the restart test would be moot"

        rescheduled = await eventually(lambda: clone_retry(handle), timeout=60,
                                       what="the clone to be retried")
        restarted = await eventually(
            lambda: clone_retry(handle, PendingActivityState.PENDING_ACTIVITY_STATE_STARTED),
            timeout=60, what="the clone to run again on the second worker")
        gate.touch()
        summary = await handle.result()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    restart_seconds = restarted.timestamp() - killed_at
    print(f"\nclone after SIGKILL of its worker: processes gone {orphans_seconds:.2f}s, "
          f"retry scheduled <= {rescheduled.timestamp() - killed_at:.1f}s, running again "
          f"on the second worker {restart_seconds:.1f}s after the kill (second worker "
          f"started after the kill; heartbeat timeout "
          f"{FAST.heartbeat_timeout.total_seconds():.0f}s)")
    assert restart_seconds < 60
    assert summary.status is ScanStatus.COMPLETED
    assert summary.commit == git(repo, "rev-parse", "HEAD")
    assert summary.checkout_bytes == checkout_bytes(repo)  # nothing of the dead attempt
    attempts = await clone_attempts(handle)
    assert attempts and attempts[-1][0] == 2, attempts
    assert attempts[-1][1].startswith(f"{second.pid}@"), attempts


@pytest.mark.usefixtures("scan_worker_task")
async def test_cancelled_scan_kills_the_clones_whole_process_group(
        client: Client, settings: Settings, tmp_path: Path, gate: Path) -> None:
    """Cancelling a scan mid-fetch kills git and everything git started."""
    repo = repo_with_blob(tmp_path / "repo")
    handle = await start(client, settings, scan_request(repo, "fake"))
    procs = await eventually(lambda: fetch_held(repo, settings.workspace_root), timeout=60,
                             what="the fetch to be under way")
    assert os.getpgrp() not in {p.pgid for p in procs}, describe(procs)
    await api.cancel(client, handle.id)
    cancelled_at = time.monotonic()

    async def all_gone() -> bool:
        return not [p for p in procs if p.alive()]

    try:
        await eventually(all_gone, timeout=10, what="the clone's processes to be killed")
    except AssertionError:
        raise AssertionError("still running after the cancel:\n"
                             f"{describe([p for p in procs if p.alive()])}") from None
    print(f"\nclone processes gone {time.monotonic() - cancelled_at:.2f}s after the cancel")
    # The scan ends cancelled, not "clone failed".
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError), failure.value.cause
    assert (await api.progress(client, handle.id)).status is ScanStatus.CANCELLED
    assert not processes_of(repo, settings.workspace_root)


@pytest.mark.usefixtures("scan_worker_task")
async def test_clone_of_a_directory_that_is_not_a_repository_fails_at_once(
        client: Client, settings: Settings, tmp_path: Path) -> None:
    """Issue 7, problem 3: not retried for minutes with "and the repository exists.",
    but failed on the first attempt with git's own reason."""
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "app.py").write_text("print('not in git')\n")
    # Through our client, the ref is resolved first (ResolveRef, git ls-remote): refused
    # before anything starts, with git's own reason.
    started = time.monotonic()
    with pytest.raises(api.RefNotResolved) as refused:
        await start(client, settings, scan_request(plain, "fake"))
    assert f"'{plain}' does not appear to be a git repository" in str(refused.value)
    assert "repository exists" not in str(refused.value)
    assert time.monotonic() - started < 15
    # Started with a commit (a push event's sha, or another SDK): the clone fails at once.
    started = time.monotonic()
    handle = await start(client, settings,
                         scan_request(plain, "fake").model_copy(update={"commit": "b" * 40}))
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    elapsed = time.monotonic() - started
    message = str(failure.value.cause)
    assert f"'{plain}' does not appear to be a git repository" in message, message
    assert "repository exists" not in message and "Please make sure" not in message
    assert elapsed < 15, f"took {elapsed:.1f}s"
    summary = await api.progress(client, handle.id)
    assert summary.status is ScanStatus.FAILED
    assert "does not appear to be a git repository" in (summary.reason or "")
    assert [a for a, _ in await clone_attempts(handle)] == [1]  # not retried
    failed = [e.activity_task_failed_event_attributes.failure.application_failure_info.type
              async for e in handle.fetch_history_events()
              if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED]
    assert failed == ["RepositoryNotFound"]


def test_leftovers_of_dead_attempts_are_replaced(tmp_path: Path) -> None:
    """What a killed clone can leave in its scan directory: a half-written attempt with
    git's lock files, a published ``src`` whose result was lost, or a ``src`` that is a
    symlink (never followed out of the workspace)."""
    base = tmp_path / "scan-x"
    dead = base / ".clone-0123456789ab"
    (dead / ".git" / "objects" / "pack").mkdir(parents=True)
    for lock in ("index.lock", "shallow.lock", "objects/pack/tmp_pack_x"):
        (dead / ".git" / lock).write_bytes(b"partial")
    (dead / "half-written.py").write_text("def f(")
    (base / "src" / "old").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not ours")
    (base / "other").write_text("not a clone's")
    remove_leftovers(base)
    assert sorted(p.name for p in base.iterdir()) == ["other"]

    (base / "src").symlink_to(outside, target_is_directory=True)
    new = base / ".clone-fedcba987654"
    new.mkdir()
    (new / "app.py").write_text("ok\n")
    replace_dir(new, base / "src")
    assert (base / "src" / "app.py").read_text() == "ok\n" and not (base / "src").is_symlink()
    assert (outside / "keep").exists()
    newer = base / ".clone-aaaaaaaaaaaa"
    newer.mkdir()
    replace_dir(newer, base / "src")  # over a complete earlier checkout
    assert list((base / "src").iterdir()) == []
    assert sorted(p.name for p in base.iterdir()) == ["other", "src"]
