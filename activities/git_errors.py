"""What a failed git command means, read from its whole stderr.

git's last stderr line is often boilerplate ("and the repository exists."); the reason is
in the ``fatal:``/``remote:``/``ssh:`` lines before it. Failures that retrying cannot fix
(no such repository or ref, access denied, an untrusted server) become non-retryable
error types; everything else (DNS, refused or timed-out connections, 5xx, a dropped
transfer, local I/O) is a retryable ``GitError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

RETRYABLE_KIND = "GitError"

# Checked in this order against stderr without its boilerplate; the first match decides.
_PERMANENT: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("LocalRepositoryRefused", re.compile(r"transport '[^']*' not allowed", re.I)),
    ("RefNotFound", re.compile(
        r"couldn't find remote ref|not our ref|unadvertised object", re.I)),
    ("RepositoryNotFound", re.compile(
        r"does not appear to be a git repository|repository '[^']*' not found|"
        r"remote: repository not found|project you were looking for could not be found|"
        r"returned error: 404\b", re.I)),
    ("AccessDenied", re.compile(
        r"authentication failed|could not read (?:username|password)|"
        r"terminal prompts disabled|permission denied \(|returned error: 40[13]\b|"
        r"access denied|invalid username or password|remote: permission to \S+ denied",
        re.I)),
    # The server's identity: a TLS certificate or SSH host key the worker does not trust.
    ("UntrustedServer", re.compile(
        r"certificate verification failed|ssl certificate problem|certificate subject name|"
        r"problem with the ssl ca cert|certificate has expired|self[- ]signed certificate|"
        r"unable to get local issuer certificate|host key verification failed", re.I)),
)
PERMANENT_KINDS: tuple[str, ...] = tuple(kind for kind, _ in _PERMANENT)

# Said on every remote failure whatever the cause: not a reason, and it matches
# "repository" / "access" patterns it has nothing to do with.
_BOILERPLATE = re.compile(
    r"^(?:hint:|warning:|please make sure you have the correct access rights|"
    r"and the repository exists\.?$)", re.I)
_GENERIC = re.compile(r"^fatal: could not read from remote repository\.?$", re.I)
_MAX_REASON = 1500


@dataclass(frozen=True)
class GitFailure:
    kind: str  # the ApplicationError type
    reason: str  # git's own words, secrets scrubbed
    retryable: bool


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the given secrets, URL credentials or authorization headers."""
    # A server or git may print a secret URL-quoted (%3A or %3a, '+' for a space) as
    # well as raw: each form is removed, the longest first.
    forms = {form for s in secrets if s
             for form in (s, quote(s, safe=""), quote(s), quote_plus(s), quote_plus(s, "/"))}
    for form in sorted(forms, key=len, reverse=True):
        text = re.sub(re.escape(form), "***", text, flags=re.I)
    text = re.sub(r"(?i)(authorization:\s*)\S+(?:[ \t]+\S+)?", r"\1***", text)
    text = re.sub(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s'\"]+@", r"\1***@", text)
    return re.sub(r"(?i)x-access-token(?::[^@\s'\"]*)?", "***", text)


def reason(stderr: str) -> str:
    """git's meaningful stderr lines, in order, without hints and boilerplate."""
    lines: list[str] = []
    for raw in stderr.splitlines():
        line = raw.strip()
        if line and not _BOILERPLATE.match(line) and line not in lines:
            lines.append(line)
    specific = [line for line in lines if not _GENERIC.match(line)]
    text = "; ".join(specific or lines)
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "…"


def classify(stderr: str, returncode: int, secrets: Iterable[str] = ()) -> GitFailure:
    """The failure a git command's stderr and exit status describe."""
    text = reason(scrub(stderr, secrets)) or f"exit {returncode}"
    for kind, pattern in _PERMANENT:
        if pattern.search(text):
            return GitFailure(kind=kind, reason=text, retryable=False)
    return GitFailure(kind=RETRYABLE_KIND, reason=text, retryable=True)
