"""Workspace activities: clone the repository once into the shared volume, plan the
scanners' sizes from it, and remove it when the scan is over."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import stat
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from scanward.catalog import Catalog, UnknownScanner
from scanward.contract import Checkout, CloneInput, CloneResult, ScannerPlan
from scanward.inputs import InputError, check_ref, check_repository_url
from scanward.policy import size_resources
from scanward.secrets import SecretNotFound, SecretStore
from scanward.settings import Settings

# git's stderr → a non-retryable error type; anything else is treated as transient.
_GIT_PERMANENT = (
    (re.compile(r"couldn't find remote ref|not our ref|unadvertised object", re.I), "RefNotFound"),
    (re.compile(r"repository .* not found|does not appear to be a git repository|"
                r"no such file or directory", re.I), "RepositoryNotFound"),
    (re.compile(r"authentication failed|permission denied|could not read username|"
                r"403|401", re.I), "AccessDenied"),
    (re.compile(r"transport .* not allowed", re.I), "LocalRepositoryRefused"),
)
NON_RETRYABLE = ("InputError", "UnknownScanner", "SecretNotFound",
                 *(kind for _, kind in _GIT_PERMANENT))


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


class WorkspaceActivities:
    """Clone and clean up, against the worker's workspace root."""

    def __init__(self, settings: Settings, catalog: Catalog, secrets: SecretStore) -> None:
        self._settings = settings
        self._catalog = catalog
        self._secrets = secrets

    def _git_env(self, credentials_ref: str | None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self._settings.home),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        }
        if credentials_ref:
            try:
                token = self._secrets.resolve(credentials_ref).decode()
            except SecretNotFound as e:
                raise ApplicationError(str(e), type="SecretNotFound", non_retryable=True) from e
            basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
            # Passed through the environment, not argv, so it shows in no process list.
            env |= {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                    "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"}
        return env

    async def _git(self, *args: str, env: dict[str, str], cwd: Path | None = None) -> str:
        protocols = ["-c", "protocol.allow=never", "-c", "protocol.https.allow=always",
                     "-c", "protocol.ssh.allow=always", "-c", "protocol.git.allow=always"]
        if self._settings.allow_local_repositories:
            protocols += ["-c", "protocol.file.allow=always"]
        proc = await asyncio.create_subprocess_exec(
            "git", *protocols, *args, cwd=cwd, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip().splitlines()
            detail = message[-1] if message else f"exit {proc.returncode}"
            for pattern, kind in _GIT_PERMANENT:
                if pattern.search(detail):
                    raise ApplicationError(f"git {args[0]}: {detail}", type=kind,
                                           non_retryable=True)
            raise ApplicationError(f"git {args[0]}: {detail}", type="GitError")
        return out.decode().strip()

    @activity.defn(name="clone_repository")
    async def clone_repository(self, req: CloneInput) -> CloneResult:
        """Fetch one commit (depth 1) into ``<workspace>/<scan_id>/src`` and size the
        scanners from it. Safe to retry: a partial checkout is replaced."""
        try:
            check_repository_url(req.repository)
            check_ref(req.ref)
            specs = [self._catalog.get(name) for name in req.scanners]
        except UnknownScanner as e:
            raise ApplicationError(str(e), type="UnknownScanner", non_retryable=True) from e
        except InputError as e:
            raise ApplicationError(str(e), type="InputError", non_retryable=True) from e
        if req.repository.startswith("file:") and not self._settings.allow_local_repositories:
            raise ApplicationError(
                f"local repository {req.repository!r} refused: this worker does not allow "
                "file:// URLs (SCANWARD_ALLOW_LOCAL_REPOS=1 enables them for local use)",
                type="LocalRepositoryRefused", non_retryable=True)
        env = self._git_env(req.credentials_ref)
        base = scan_dir(self._settings.workspace_root, req.scan_id)
        src = base / "src"
        if src.exists():  # a previous attempt died half-way
            shutil.rmtree(src)
        src.mkdir(parents=True)
        try:
            await self._git("init", "-q", str(src), env=env)
            await self._git("fetch", "-q", "--depth", "1", "--no-tags", "--", req.repository,
                            req.commit or req.ref, env=env, cwd=src)
            await self._git("checkout", "-q", "--detach", "FETCH_HEAD", env=env, cwd=src)
            commit = await self._git("rev-parse", "HEAD", env=env, cwd=src)
        except BaseException:
            shutil.rmtree(src, ignore_errors=True)
            raise
        # Scanners see the tree, not the object store: smaller, and no history to leak.
        shutil.rmtree(src / ".git")
        size, files = tree_size(src)
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
        """Remove the scan's checkout and results; idempotent."""
        for root in (self._settings.workspace_root, self._settings.results_root):
            shutil.rmtree(scan_dir(root, scan_id), ignore_errors=True)
