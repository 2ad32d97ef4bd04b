"""Worker-side secret resolution. Requests carry only a secret's *name*; its value is
read here, in the worker, so it never enters workflow history or logs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

ENV_PREFIX = "SCANWARD_SECRET_"


class SecretNotFound(LookupError):
    """No secret of that name is configured on this worker."""


def env_name(ref: str) -> str:
    """``demo-hook`` → ``SCANWARD_SECRET_DEMO_HOOK``."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", ref).upper()


class SecretStore:
    """Secrets from ``SCANWARD_SECRET_<NAME>`` variables or files in a directory
    (a mounted Kubernetes Secret)."""

    def __init__(self, env: Mapping[str, str], directory: Path | None = None) -> None:
        self._env = env
        self._dir = directory

    def resolve(self, ref: str) -> bytes:
        value = self._env.get(env_name(ref))
        if value:
            return value.encode()
        if self._dir is not None and re.fullmatch(r"[A-Za-z0-9_.-]+", ref) and ref[0] != ".":
            path = self._dir / ref
            if path.is_file():
                return path.read_bytes().strip()
        raise SecretNotFound(
            f"secret {ref!r} is not configured on this worker (set {env_name(ref)} or put a "
            "file of that name in SCANWARD_SECRETS_DIR)"
        )
