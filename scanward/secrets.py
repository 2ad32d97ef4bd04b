"""Worker-side secret resolution. Requests carry only a secret's *name*; its value is
read here, in the worker, so it never enters workflow history or logs.

Any request may name any secret, so a secret goes only to the hosts listed for it
(``SCANWARD_HOSTS_FOR_SECRETS="gh-token=github.com|ghe.example.com:8443,acme-hook=
hooks.acme.example"``): otherwise a scan of a repository, or a webhook, on a host of the
requester's choosing would receive another tenant's clone token or signatures made with
its key."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

ENV_PREFIX = "SCANWARD_SECRET_"
HOSTS_ENV = "SCANWARD_HOSTS_FOR_SECRETS"
_HOST = re.compile(r"(?:[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?\.?)+(?::[0-9]{1,5})?|"
                   r"\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


class SecretNotFound(LookupError):
    """No secret of that name is configured on this worker."""


class SecretNotAllowed(SecretNotFound):
    """The secret exists but may not be sent to that host."""


def parse_hosts(text: str | None) -> dict[str, frozenset[str]]:
    """``"gh=github.com|ghe.example.com:8443,hook=hooks.example.com"`` → each secret's
    hosts (lower-cased; ``host`` allows any port, ``host:port`` that port only).
    Raises ValueError naming the variable and the entry."""
    hosts: dict[str, frozenset[str]] = {}
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        name, sep, listed = item.partition("=")
        name = name.strip()
        entries = [h.strip().lower() for h in listed.split("|") if h.strip()]
        if not sep or not name or not entries:
            raise ValueError(f"{HOSTS_ENV}: {item!r} is not SECRET=HOST[|HOST...]")
        for host in entries:
            if not _HOST.fullmatch(host):
                raise ValueError(f"{HOSTS_ENV}: {host!r} (for {name!r}) is not a host or "
                                 "host:port")
        if name in hosts:
            raise ValueError(f"{HOSTS_ENV}: secret {name!r} listed twice")
        hosts[name] = frozenset(entries)
    return hosts


def _host_of(url: str) -> tuple[str, str]:
    """(host, host:port) of ``url``, lower-cased; ("", "") when it names none."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return "", ""
    if ":" in host:  # IPv6 literal: listed in brackets
        host = f"[{host}]"
    return host, f"{host}:{port}" if port is not None else host


def env_name(ref: str) -> str:
    """``demo-hook`` → ``SCANWARD_SECRET_DEMO_HOOK``."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", ref).upper()


class SecretStore:
    """Secrets from ``SCANWARD_SECRET_<NAME>`` variables or files in a directory
    (a mounted Kubernetes Secret)."""

    def __init__(self, env: Mapping[str, str], directory: Path | None = None) -> None:
        """Raises ValueError if ``SCANWARD_HOSTS_FOR_SECRETS`` is malformed."""
        self._env = env
        self._dir = directory
        self._hosts = parse_hosts(env.get(HOSTS_ENV))

    def resolve_for(self, ref: str, url: str) -> bytes:
        """The secret ``ref``, to be sent to ``url``'s host: only if it is listed for it."""
        host, host_port = _host_of(url)
        allowed = self._hosts.get(ref, frozenset())
        if not host or not ({host, host_port} & allowed):
            listed = ", ".join(sorted(allowed)) or "none"
            raise SecretNotAllowed(
                f"secret {ref!r} may not be sent to {host_port or 'a URL without a host'} "
                f"(its hosts: {listed}; the worker's {HOSTS_ENV} lists where each secret "
                "may go, as SECRET=HOST|HOST:PORT,...)")
        return self.resolve(ref)

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
