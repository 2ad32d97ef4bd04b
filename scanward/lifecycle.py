"""Findings over time: the pure policy (no I/O) that the store, the finalize activity and
the CLI share.

* **Match fingerprint.** A finding is followed from scan to scan by a fingerprint that
  does not depend on where it is in the file (GitHub's ``partialFingerprints``,
  DefectDojo's hash code): the scanner, rule, path and the flagged code (the region's
  snippet as :mod:`scanward.sarif` checked it against the checkout, whitespace-collapsed,
  inline suppression markers removed), or, for a result without a snippet, its message;
  plus the finding's ordinal among the distinct results with that same basis in the
  file, in position order, so two identical flawed lines stay two findings while lines
  inserted above them change nothing. The *exact* fingerprint (``Finding.fingerprint``)
  still dedupes within one scan. The limit: identical findings of one file are told
  apart by their order only, so removing or adding one shifts the identities (and
  triage) of those after it. Context (the enclosing block, neighbouring lines) is not
  in the basis on purpose: it would change every stored fingerprint of such findings,
  and make editing the enclosing line a new finding (see the README).
* **Lifecycle.** Each finished scan is compared with the previous completed scan of the
  same (tenant, repository, ref) and scanners: a finding is ``new``, ``existing`` (first
  seen in an earlier scan, carried along) or ``fixed`` (in the previous scan, gone now).
* **Suppression.** A finding the tool reports as suppressed (SARIF ``suppressions``) or
  that an operator triaged as ``false_positive`` / ``accepted_risk`` is kept and shown
  on request, but never counted: not as new, not in severity counts, not by the gate.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Generic, TypeVar

from scanward.contract import Finding, Severity

__all__ = [
    "MATCH_VERSION",
    "NEW_FINDINGS_CAP",
    "PAYLOAD_MESSAGE_CHARS",
    "SEVERITY_ORDER",
    "Comparison",
    "FindingState",
    "Tracked",
    "Triage",
    "TriageState",
    "at_or_above",
    "cap_new",
    "compare",
    "gate",
    "match_basis",
    "match_fingerprint",
    "most_severe_first",
    "normalise_snippet",
    "severity_counts",
    "suppressed",
]

MATCH_VERSION = "scanward-match/1"
NEW_FINDINGS_CAP = 50
"""New findings carried in the summary (and so the webhook); the rest are counted."""
PAYLOAD_MESSAGE_CHARS = 300
"""Messages of the findings carried in the summary are cut to this: history stays small."""
SEVERITY_ORDER: tuple[Severity, ...] = (
    Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW, Severity.INFO)
_RANK = {s: i for i, s in enumerate(SEVERITY_ORDER)}

# Inline suppression markers: adding one to a line must not make it another finding
# (the marker is the suppression, not a code change). Only the markers and their rule
# lists are removed, so code after them in a collapsed multi-line snippet stays.
_MARKERS = re.compile(
    r"(?:#|//)\s*nosec\b(?:\s+B\d{3}(?:\s*,\s*B\d{3})*)?"
    r"|(?:#|//)\s*nosemgrep\b(?::\s*[\w.\-]+(?:\s*,\s*[\w.\-]+)*)?",
    re.IGNORECASE)
# Snippets some tools write instead of code, which identify nothing.
_PLACEHOLDER_SNIPPETS = frozenset({"requires login", "none", "null", "n/a", "-"})


class FindingState(StrEnum):
    NEW = "new"  # not in the previous scan of this ref
    EXISTING = "existing"  # also in the previous scan (first seen earlier)
    FIXED = "fixed"  # in the previous scan, not in this one


class TriageState(StrEnum):
    OPEN = "open"  # counted (also: undoes an earlier triage)
    FALSE_POSITIVE = "false_positive"
    ACCEPTED_RISK = "accepted_risk"


@dataclass(frozen=True, slots=True)
class Triage:
    """An operator's decision on a finding of (tenant, repository), by match fingerprint."""

    state: TriageState
    reason: str
    by: str
    at: datetime


# ----------------------------------------------------------------- match fingerprint


def normalise_snippet(snippet: str | None) -> str | None:
    """The flagged code as the match fingerprint sees it: whitespace collapsed, inline
    suppression markers (``# nosec B602``, ``# nosemgrep: rule``) removed; ``None`` when
    nothing (or a placeholder) is left."""
    if snippet is None:
        return None
    text = " ".join(_MARKERS.sub(" ", snippet).split())
    if not text or text.lower() in _PLACEHOLDER_SNIPPETS:
        return None
    return text


def match_basis(rule_id: str, path: str, snippet: str | None, message: str) -> list[str]:
    """What a finding's match fingerprint is made of, before its ordinal: rule, path and
    the normalised snippet, else rule, path and the whitespace-collapsed message."""
    code = normalise_snippet(snippet)
    if code is not None:
        return [rule_id, path, "snippet", code]
    return [rule_id, path, "message", " ".join(message.split())]


def match_fingerprint(scanner: str, basis: Sequence[str], ordinal: int) -> str:
    """64 hex digits: sha256 of the scanner, the basis and the ordinal among the distinct
    results of the file with that basis (0 for the first, in position order)."""
    blob = json.dumps([MATCH_VERSION, scanner, *basis, ordinal], ensure_ascii=False,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


# ------------------------------------------------------------------------ lifecycle

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Tracked(Generic[K]):
    """One stored finding as the comparison sees it: ``ref`` is the caller's handle (a
    row id), ``key`` its match fingerprint."""

    ref: K
    key: str
    scanner: str


@dataclass(frozen=True, slots=True)
class Comparison(Generic[K]):
    """``existing`` pairs each current finding with the previous one it continues."""

    new: list[K]
    existing: list[tuple[K, K]]  # (current ref, previous ref)
    fixed: list[K]  # previous refs


def compare(current: Iterable[Tracked[K]], previous: Iterable[Tracked[K]] | None,
            scanners: Iterable[str] | None = None) -> Comparison[K]:
    """Which current findings are new, which continue a previous one, which previous ones
    are fixed. Without a previous scan every finding is new and none is fixed. Only the
    previous findings of ``scanners`` (default: all) can be fixed: a scanner that did not
    run this time (abandoned) fixed nothing. A key present n times now and m times before
    pairs min(n, m) times, in order."""
    now = list(current)
    if previous is None:
        return Comparison(new=[t.ref for t in now], existing=[], fixed=[])
    ran = None if scanners is None else set(scanners)
    before: dict[str, list[Tracked[K]]] = defaultdict(list)
    for t in previous:
        if ran is None or t.scanner in ran:
            before[t.key].append(t)
    new: list[K] = []
    existing: list[tuple[K, K]] = []
    taken: dict[str, int] = defaultdict(int)
    for t in now:
        candidates = before.get(t.key, [])
        i = taken[t.key]
        if i < len(candidates):
            existing.append((t.ref, candidates[i].ref))
            taken[t.key] = i + 1
        else:
            new.append(t.ref)
    fixed = [t.ref for key, ts in before.items() for t in ts[taken[key]:]]
    return Comparison(new=new, existing=existing, fixed=fixed)


def suppressed(tool_suppression: str | None, triage: Triage | None) -> bool:
    """Not counted: the tool reported it suppressed, or an operator triaged it."""
    return tool_suppression is not None or (
        triage is not None and triage.state is not TriageState.OPEN)


def at_or_above(severity: Severity, threshold: Severity) -> bool:
    return _RANK[severity] <= _RANK[threshold]


def severity_counts(severities: Iterable[Severity]) -> dict[Severity, int]:
    counts: dict[Severity, int] = {}
    for s in severities:
        counts[s] = counts.get(s, 0) + 1
    return counts


def most_severe_first(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first, then by path, line and column (a stable, readable order)."""
    return sorted(findings, key=lambda f: (_RANK[f.severity], f.path, f.start_line or 0,
                                           f.start_column or 0, f.rule_id, f.fingerprint))


def cap_new(findings: Iterable[Finding], cap: int = NEW_FINDINGS_CAP
            ) -> tuple[tuple[Finding, ...], bool]:
    """The first ``cap`` findings, most severe first, with messages cut to
    :data:`PAYLOAD_MESSAGE_CHARS`; and whether any were left out."""
    ordered = most_severe_first(findings)
    kept = tuple(_short(f) for f in ordered[:cap])
    return kept, len(ordered) > cap


def _short(f: Finding) -> Finding:
    if len(f.message) <= PAYLOAD_MESSAGE_CHARS:
        return f
    return f.model_copy(update={"message": f.message[:PAYLOAD_MESSAGE_CHARS - 1] + "…"})


T = TypeVar("T")


def gate(findings: Iterable[T], threshold: Severity, *,
         severity: Callable[[T], Severity], counted: Callable[[T], bool]) -> list[T]:
    """The findings that fail a CI gate at ``threshold``: counted ones (not suppressed;
    for ``--fail-on-new`` also new) at or above it."""
    return [f for f in findings if counted(f) and at_or_above(severity(f), threshold)]
