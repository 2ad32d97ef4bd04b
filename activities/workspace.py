"""Workspace activities: clone the repository once into the shared volume, plan the
scanners' sizes from it, and remove it when the scan is over."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import child_process, git_errors
from activities.backends import wait_heartbeating
from scanward import attempt_logs
from scanward.catalog import Catalog, UnknownScanner
from scanward.contract import (
    Checkout,
    CloneInput,
    CloneResult,
    ResolvedRef,
    ResolveInput,
    ScannerPlan,
)
from scanward.inputs import InputError, check_ref, check_repository_url
from scanward.policy import size_resources
from scanward.secrets import SecretNotFound, SecretStore
from scanward.settings import Settings
from scanward.volumes import FULL_ERRNOS, volume_free

T = TypeVar("T")
NON_RETRYABLE = ("InputError", "UnknownScanner", "SecretNotFound",
                 *git_errors.PERMANENT_KINDS)
# An attempt clones into a directory of its own and renames it to ``src`` when complete:
# a dead attempt's half-written tree (or a git still writing into it) is never ``src``.
_ATTEMPT_PREFIX = ".clone-"
SWEEP_EVERY_SECONDS = 3600.0  # expired scanner logs, per worker (see cleanup_workspace)
# Retryable (another scan's cleanup may free the space) but named: the workflow's attempts
# bound the retries and the failed scan says which volume and how much it had.
WORKSPACE_FULL = "WorkspaceFull"
_FULL_TEXT = ("no space left on device", "disk quota exceeded")


FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def ref_candidates(ref: str) -> tuple[str, ...]:
    """The full ref names ``ref`` may mean, in git's order of preference."""
    if ref == "HEAD" or ref.startswith("refs/"):
        return (ref,)
    return (f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/tags/{ref}^{{}}")


def pick_ref(ls_remote: str, ref: str) -> ResolvedRef | None:
    """The commit ``ref`` names in ``git ls-remote`` output: a branch before a tag, and an
    annotated tag through the commit it points to (its ``^{}`` line)."""
    listed: dict[str, str] = {}
    for line in ls_remote.splitlines():
        sha, _, name = line.partition("\t")
        if FULL_SHA.fullmatch(sha):
            listed[name] = sha
    for name in ref_candidates(ref):
        if name.endswith("^{}"):
            continue
        peeled = listed.get(f"{name}^{{}}")
        if name in listed:
            return ResolvedRef(ref=name, commit=peeled or listed[name])
    return None


def _detached_head(work: Path) -> str | None:
    """The commit a detached HEAD names (``.git/HEAD`` holds it), or None."""
    try:
        head = (work / ".git" / "HEAD").read_text().strip()
    except OSError:
        return None
    return head if FULL_SHA.fullmatch(head) else None


def scan_dir(root: Path, scan_id: str) -> Path:
    """The per-scan directory under a root; refuses ids that could escape it."""
    if not re.fullmatch(r"[a-z0-9-]{1,128}", scan_id):
        raise ApplicationError(f"invalid scan id {scan_id!r}", type="InputError",
                               non_retryable=True)
    return root / scan_id


def tree_size(path: Path) -> tuple[int, int]:
    """Bytes and regular files below ``path`` (symlinks are not followed)."""
    total = files = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
                files += 1
    return total, files


def remove_escaping_symlinks(root: Path) -> list[str]:
    """Remove every symlink below ``root`` that resolves outside it (absolute, climbing
    out with ``..``, or dangling there); returns their paths relative to ``root``.

    The repository is hostile: a scanner that follows a symlinked file (bandit does)
    would read the worker's files (``~/.ssh``, another scan's checkout) and store their
    text in findings. A symlink that stays inside the checkout is kept: its target is
    in the tree anyway."""
    real_root = os.path.realpath(root)
    removed: list[str] = []
    for dirpath, dirs, names in os.walk(root):  # does not descend into symlinked dirs
        for name in (*dirs, *names):
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                continue
            target = os.path.realpath(full)
            if target != real_root and not target.startswith(real_root + os.sep):
                os.unlink(full)
                removed.append(os.path.relpath(full, root))
    return removed


def publish_checkout(work: Path, src: Path) -> tuple[int, int]:
    """Remove ``.git`` (scanners see the tree, not the object store: smaller, and no
    history to leak) and the symlinks leaving the tree, size the tree and make it
    ``src``; returns (bytes, files). One thread hop for all of it."""
    shutil.rmtree(work / ".git")
    removed = remove_escaping_symlinks(work)
    if removed:
        activity.logger.warning(
            "removed %d symlink(s) pointing outside the checkout (not scanned): %s",
            len(removed), ", ".join(repr(p) for p in removed[:20]))
    sized = tree_size(work)
    replace_dir(work, src)
    return sized


def remove_leftovers(base: Path) -> None:
    """Remove what earlier attempts of this clone left in ``base``: ``src`` and their
    own directories. Best effort: a directory that a stale attempt elsewhere is still
    writing may resist, and it is not in this attempt's way (cleanup removes it)."""
    if not base.is_dir():
        return
    for entry in base.iterdir():
        if entry.name == "src" or entry.name.startswith(_ATTEMPT_PREFIX):
            _remove(entry, ignore_errors=True)


def replace_dir(new: Path, dest: Path) -> None:
    """Make ``new`` the directory at ``dest``, replacing whatever is there."""
    if dest.exists() or dest.is_symlink():
        _remove(dest, ignore_errors=False)
    new.rename(dest)


def _remove(path: Path, *, ignore_errors: bool) -> None:
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=ignore_errors)


def _heartbeat_every() -> float:
    # Well inside the timeout; the SDK throttles to 0.8 x the timeout anyway.
    timeout = activity.info().heartbeat_timeout
    return min(10.0, timeout.total_seconds() / 3) if timeout else 10.0


async def _heartbeating(work: asyncio.Future[T], phase: str) -> T:
    """Await ``work``, heartbeating (with the phase as details) until it is done."""
    def beat() -> None:
        activity.heartbeat(phase)

    return await wait_heartbeating(work, beat, _heartbeat_every())


async def _in_thread(fn: Callable[..., T], *args: object, what: str) -> T:
    """Blocking file work (a large tree) in a thread, heartbeating meanwhile."""
    return await _heartbeating(asyncio.ensure_future(asyncio.to_thread(fn, *args)), what)


async def _outputs(proc: asyncio.subprocess.Process, phase: str) -> tuple[bytes, bytes]:
    """A reaper's stdout and stderr, heartbeating while it runs; stopped (with all it
    started) if this is cancelled or fails."""
    output = asyncio.ensure_future(proc.communicate())
    try:
        return await _heartbeating(output, phase)
    except BaseException:
        await child_process.stop(proc)
        output.cancel()
        raise


def workspace_full(e: BaseException, root: Path, repository: str) -> ApplicationError | None:
    """``e`` as a :data:`WORKSPACE_FULL` error naming the volume, if it says the workspace
    ran out of space (git's stderr or the worker's own write); else None. Called after
    the attempt's directory is removed: the free space is what a clone had."""
    if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
        why = f"{e.strerror}: {e.filename}"
    elif isinstance(e, ApplicationError) and any(t in e.message.lower() for t in _FULL_TEXT):
        why = e.message
    else:
        return None
    return ApplicationError(
        f"workspace volume {root} is full: the checkout of {repository} needs more than "
        f"its {volume_free(root)} ({why})", type=WORKSPACE_FULL)


def _git_failure(command: str, stderr: bytes, code: int,
                 secrets: tuple[str, ...]) -> ApplicationError:
    failure = git_errors.classify(stderr.decode(errors="replace"), code, secrets)
    return ApplicationError(f"git {command}: {failure.reason}", type=failure.kind,
                            non_retryable=not failure.retryable)


class WorkspaceActivities:
    """Clone and clean up, against the worker's workspace root."""

    def __init__(self, settings: Settings, catalog: Catalog, secrets: SecretStore) -> None:
        self._settings = settings
        self._catalog = catalog
        self._secrets = secrets
        self._next_sweep = 0.0  # time.monotonic() of the next expired-log sweep

    def _git_env(self, credentials_ref: str | None,
                 repository: str) -> tuple[dict[str, str], tuple[str, ...]]:
        """git's environment, and the secret strings that must never leave the worker."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self._settings.home),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        }
        if not credentials_ref:
            return env, ()
        if urlsplit(repository).scheme.lower() not in ("https", "http"):
            raise ApplicationError(
                f"credentials_ref {credentials_ref!r}: the token is sent as an HTTP header, "
                "so it applies to https:// repositories only", type="SecretNotAllowed",
                non_retryable=True)
        try:
            token = self._secrets.resolve_for(credentials_ref, repository).decode()
        except SecretNotFound as e:
            raise ApplicationError(str(e), type=type(e).__name__, non_retryable=True) from e
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        # Passed through the environment, not argv, so it shows in no process list.
        env |= {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"}
        return env, (token, basic)

    def _git_argv(self, args: Sequence[str]) -> list[str]:
        config = ["-c", "protocol.allow=never", "-c", "protocol.https.allow=always",
                  "-c", "protocol.ssh.allow=always", "-c", "protocol.git.allow=always",
                  # No background gc: it would detach from the clone and outlive it.
                  "-c", "maintenance.auto=false", "-c", "gc.auto=0"]
        if self._settings.allow_local_repositories:
            config += ["-c", "protocol.file.allow=always"]
        return ["git", *config, *args]

    async def _git(self, *args: str, env: dict[str, str], secrets: tuple[str, ...],
                   cwd: Path | None = None) -> str:
        """Run git under the reaper, heartbeating while it runs; a cancelled or failed
        activity leaves none of git's processes behind."""
        proc = await child_process.spawn(self._git_argv(args), env=env, cwd=cwd)
        out, err = await _outputs(proc, f"git {args[0]}")
        if proc.returncode != 0:
            raise _git_failure(args[0], err, proc.returncode or 0, secrets)
        return out.decode().strip()

    async def _git_steps(self, *steps: Sequence[str], env: dict[str, str],
                         secrets: tuple[str, ...], cwd: Path) -> None:
        """Run git commands one after the other under one reaper (one process start, not
        one per command), up to the first that fails, whose failure is raised."""
        proc = await child_process.spawn_steps([self._git_argv(s) for s in steps], env=env,
                                               cwd=cwd)
        out, err = await _outputs(proc, "git " + ", ".join(s[0] for s in steps))
        if proc.returncode != 0:
            step = child_process.last_step(out)
            name = steps[step][0] if step is not None and step < len(steps) else steps[0][0]
            raise _git_failure(name, err, proc.returncode or 0, secrets)

    def _check_source(self, repository: str, ref: str) -> None:
        """The same safe-clone rules for every git command the worker runs."""
        try:
            check_repository_url(repository)
            check_ref(ref)
        except InputError as e:
            raise ApplicationError(str(e), type="InputError", non_retryable=True) from e
        if repository.startswith("file:") and not self._settings.allow_local_repositories:
            raise ApplicationError(
                f"local repository {repository!r} refused: this worker does not allow "
                "file:// URLs (SCANWARD_ALLOW_LOCAL_REPOS=1 enables them for local use)",
                type="LocalRepositoryRefused", non_retryable=True)

    @activity.defn(name="resolve_ref")
    async def resolve_ref(self, req: ResolveInput) -> ResolvedRef:
        """The commit ``ref`` names now (``git ls-remote``: no download), so that a scan
        is identified by the commit it scans. Runs where the credentials are."""
        self._check_source(req.repository, req.ref)
        if FULL_SHA.fullmatch(req.ref):
            return ResolvedRef(ref=req.ref, commit=req.ref)
        env, secrets = self._git_env(req.credentials_ref, req.repository)
        listing = await self._git("ls-remote", "--", req.repository, *ref_candidates(req.ref),
                                  env=env, secrets=secrets)
        found = pick_ref(listing, req.ref)
        if found is None:
            raise ApplicationError(f"git ls-remote: ref {req.ref!r} not found in "
                                   f"{req.repository}", type="RefNotFound",
                                   non_retryable=True)
        return found

    @activity.defn(name="clone_repository")
    async def clone_repository(self, req: CloneInput) -> CloneResult:
        """Fetch one commit (depth 1) into ``<workspace>/<scan_id>/src`` and size the
        scanners from it. Heartbeats throughout, so a killed worker's clone is retried
        elsewhere within the heartbeat timeout; safe to retry: each attempt clones into
        a fresh directory, and what a dead attempt left is removed."""
        self._check_source(req.repository, req.ref)
        try:
            specs = [self._catalog.get(name) for name in req.scanners]
        except UnknownScanner as e:
            raise ApplicationError(str(e), type="UnknownScanner", non_retryable=True) from e
        env, secrets = self._git_env(req.credentials_ref, req.repository)
        base = scan_dir(self._settings.workspace_root, req.scan_id)
        src = base / "src"
        activity.logger.info("clone of %s attempt %d starting", req.scan_id,
                             activity.info().attempt)
        await _in_thread(remove_leftovers, base, what="removing a dead attempt's files")
        work = base / f"{_ATTEMPT_PREFIX}{uuid.uuid4().hex[:12]}"
        work.mkdir(parents=True)
        try:
            # One reaper for the three commands (measured by `scanward load`: each reaper
            # is an interpreter start). No template: its sample hooks would be copied
            # only to be removed with .git below.
            await self._git_steps(
                ("init", "-q", "--template=", "."),
                ("fetch", "-q", "--depth", "1", "--no-tags", "--", req.repository,
                 req.commit or req.ref),
                ("checkout", "-q", "--detach", "FETCH_HEAD"),
                env=env, secrets=secrets, cwd=work)
            # A detached HEAD is the commit itself: read it rather than start a process.
            commit = _detached_head(work) or await self._git(
                "rev-parse", "HEAD", env=env, secrets=secrets, cwd=work)
            size, files = await _in_thread(publish_checkout, work, src,
                                           what="publishing the checkout")
        except BaseException as e:
            # Best effort, and a second cancel while removing must not hide the first error.
            with contextlib.suppress(BaseException):
                await asyncio.shield(asyncio.to_thread(shutil.rmtree, work, True))
            full = workspace_full(e, self._settings.workspace_root, req.repository)
            if full is not None:
                raise full from e
            raise
        activity.logger.info("cloned %s at %s: %d bytes in %d files", req.scan_id, commit,
                             size, files)
        checkout = Checkout(scan_id=req.scan_id, source_subpath=f"{req.scan_id}/src",
                            commit=commit, size_bytes=size, file_count=files)
        plan = tuple(
            ScannerPlan(scanner=spec.name, resources=size_resources(spec, size, req.resources),
                        max_memory_mib=spec.max_memory_mib)
            for spec in specs
        )
        return CloneResult(checkout=checkout, plan=plan)

    @activity.defn(name="cleanup_workspace")
    async def cleanup_workspace(self, scan_id: str) -> None:
        """Remove the scan's checkout and results but for each attempt's scanner.log,
        kept for the retention period (``scanward.attempt_logs``); at most once an hour
        per worker, sweep the logs that expired. Idempotent."""
        checkout = scan_dir(self._settings.workspace_root, scan_id)
        results = scan_dir(self._settings.results_root, scan_id)
        await _in_thread(shutil.rmtree, checkout, True, what="removing the checkout")
        try:
            await _in_thread(attempt_logs.keep_logs, results, time.time(),
                             what="removing the results but the logs")
        except OSError as e:  # like rmtree(ignore_errors=True): never fail a finished scan
            activity.logger.warning("results of %s not marked for log retention: %s",
                                    scan_id, e)
        await self._sweep_expired_logs()

    async def _sweep_expired_logs(self) -> None:
        """Housekeeping rides on cleanups, never in the workflow: the first cleanup after
        the worker starts, then one an hour. Best effort: a failed sweep must not fail
        the scan's cleanup, and the next one catches up."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY_SECONDS
        try:
            days = attempt_logs.retention_days(self._settings.env)
            swept = await _in_thread(attempt_logs.sweep, self._settings.results_root, days,
                                     time.time(), what="sweeping expired logs")
        except (OSError, ValueError) as e:
            activity.logger.warning("expired scanner logs not swept: %s", e)
            return
        if swept.expired_logs or swept.removed_scans:
            activity.logger.info("log retention (%g days): %d log(s) expired, %d scan "
                                 "directories removed", days, swept.expired_logs,
                                 swept.removed_scans)
