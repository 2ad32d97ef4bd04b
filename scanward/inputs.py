"""Checks on untrusted request fields, run before anything is written.

A repository URL or ref reaches ``git`` as an argument: a value that git would read
as an option (``-``-prefixed) or as a remote helper (``ext::sh -c ...``) runs
arbitrary commands, so those are refused here with a message naming the problem.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# Also a Kubernetes label value: must end with a letter or digit.
_SCANNER_NAME = re.compile(r"^[a-z](?:[a-z0-9-]{0,30}[a-z0-9])?$")
_SCP_LIKE = re.compile(r"^(?P<user>[A-Za-z0-9._-]+@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/].*)$")
_REMOTE_HELPER = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
ALLOWED_SCHEMES = ("https", "ssh", "git", "file")


class InputError(ValueError):
    """A request field that retrying cannot fix."""


def check_repository_url(url: str) -> str:
    """Return ``url`` if it is a repository address git may safely be given."""
    if not url:
        raise InputError("repository URL is empty")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise InputError(f"repository URL {url!r} contains whitespace or control characters")
    if url.startswith("-"):
        raise InputError(
            f"repository URL {url!r} starts with '-' and would be read as a git option")
    if _REMOTE_HELPER.match(url):
        raise InputError(
            f"repository URL {url!r} uses a git remote helper ('<transport>::'), which is refused"
        )
    if "://" not in url:
        m = _SCP_LIKE.match(url)
        if m is None:
            raise InputError(
                f"repository URL {url!r} is not a URL: expected https://, ssh://, git://, "
                "file:// or user@host:path"
            )
        return url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise InputError(
            f"repository URL scheme {scheme!r} is not allowed "
            f"(allowed: {', '.join(ALLOWED_SCHEMES)})"
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InputError(f"file URL {url!r} must be file:///absolute/path")
        return url
    if not parts.hostname:
        raise InputError(f"repository URL {url!r} has no host")
    if parts.password is not None or (scheme == "https" and parts.username is not None):
        raise InputError(
            "repository URL embeds credentials; pass them as a secret (credentials_ref) so they "
            "never enter workflow history"
        )
    if parts.hostname.startswith("-"):
        raise InputError(f"repository host {parts.hostname!r} starts with '-'")
    if not parts.path or parts.path == "/":
        raise InputError(f"repository URL {url!r} has no repository path")
    return url


def check_ref(ref: str) -> str:
    """Return ``ref`` if it is a plausible branch, tag or ``HEAD`` that git cannot
    mistake for an option (a subset of ``git check-ref-format``)."""
    if not ref:
        raise InputError("ref is empty")
    if ref.startswith("-"):
        raise InputError(f"ref {ref!r} starts with '-' and would be read as a git option")
    if _REF_FORBIDDEN.search(ref):
        raise InputError(f"ref {ref!r} contains a character git refuses in ref names")
    if ".." in ref or "@{" in ref or "//" in ref:
        raise InputError(f"ref {ref!r} contains '..', '@{{' or '//'")
    if ref.startswith("/") or ref.endswith(("/", ".", ".lock")):
        raise InputError(f"ref {ref!r} starts with '/' or ends with '/', '.' or '.lock'")
    if any(part.startswith(".") for part in ref.split("/")):
        raise InputError(f"ref {ref!r} has a component starting with '.'")
    return ref


def check_scanner_name(name: str) -> str:
    """Return ``name`` if it is a well-formed scanner name (catalog membership is
    checked where the catalog is known)."""
    if not _SCANNER_NAME.match(name):
        raise InputError(
            f"scanner name {name!r} is malformed: up to 32 lower-case letters, digits and "
            "'-', starting with a letter and not ending with '-'"
        )
    return name
