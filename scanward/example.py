"""The bundled example repository: a small app with deliberate flaws, made into a git
repository on the fly (offline) for the demo and the tests."""

from __future__ import annotations

import subprocess
from importlib import resources
from pathlib import Path

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "scanward", "GIT_AUTHOR_EMAIL": "demo@scanward.invalid",
    "GIT_COMMITTER_NAME": "scanward", "GIT_COMMITTER_EMAIL": "demo@scanward.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent", "PATH": "/usr/bin:/bin",
}


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], env=_GIT_ENV, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def create_example_repo(dest: Path) -> Path:
    """Write the flawed app into ``dest`` as a one-commit git repository on ``main``."""
    source = resources.files("scanward") / "examples" / "flawed_app"
    dest.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file():
            (dest / item.name).write_bytes(item.read_bytes())
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", ".")
    git(dest, "commit", "-q", "-m", "flawed app")
    return dest


