"""A small tmpfs for tests that need a full volume (ENOSPC for space or inodes)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """``mount`` as a tmpfs with ``options`` (``size=20m``, ``nr_inodes=64``...), or a
    skip naming why where mounting is not allowed; unmounted afterwards."""
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"needs a tmpfs ({options}): mount: "
                    f"{done.stderr.strip() or 'not allowed'}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
