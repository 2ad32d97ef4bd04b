"""Fingerprints of normalised SARIF results: stable across runs of the same code, equal
only for results that are the same finding.

A fingerprint is sha256 over the scanner, rule id and path plus, in order of preference:

1. the tool's own ``fingerprints`` / ``partialFingerprints`` (empty and placeholder
   values such as semgrep's ``"requires login"`` ignored). If the same tool fingerprint
   is given to results with different content (position, snippet, message: gitleaks'
   commit metadata is shared by every secret of a commit, and empty in ``gitleaks
   dir``), it does not identify a finding and those results fall back to 2. or 3.;
2. the region's snippet, whitespace-collapsed (the region's lines instead when it
   misquotes the checkout: see :mod:`scanward.sarif`), and the message, plus the
   finding's ordinal among the distinct (position, message) variants of that (rule,
   path, snippet, message) in the file, in position order: two identical flawed lines,
   two flaws on one line (``random() + random()``), or two flaws of one statement
   reported with the same start line and snippet, stay two findings, while inserting
   lines above them changes nothing;
3. else the start line and the message, plus that ordinal when it is not 0 (two flaws
   at different columns of one line).

Results with the same rule, path, lines, columns and message therefore get the same
fingerprint (they are one finding reported twice), and no two other results do: the
store never holds fewer findings than the SARIF has distinct results. (For results that
were never merged the fingerprints are those of the previous algorithm.)

:meth:`Fingerprints.observe` sees every result first and keeps only digests (a few dozen
bytes per distinct result); :meth:`Fingerprints.of` then gives each its fingerprint, and
:meth:`Fingerprints.match_of` its location-independent match fingerprint (see
:mod:`scanward.lifecycle`), whose ordinal is counted here the same way.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from scanward.contract import Severity
from scanward.lifecycle import match_basis, match_fingerprint

__all__ = ["FINGERPRINT_VERSION", "Fingerprints", "RawFinding"]

FINGERPRINT_VERSION = "scanward-fp/1"
_POSITION = struct.Struct(">4Q")
_MAX_POSITION = 2**64 - 1


@dataclass(slots=True)
class RawFinding:
    """A result normalised except for its fingerprint."""

    rule_id: str
    severity: Severity
    path: str
    unresolved: str | None  # why ``path`` is an unresolved:// mark, if it is one
    start_line: int | None
    end_line: int | None
    start_column: int | None
    end_column: int | None
    message: str
    snippet: str | None
    tool_fingerprints: tuple[tuple[str, str], ...]
    suppression: str | None = None  # the tool reported it suppressed: kind, justification


class Fingerprints:
    """The fingerprints of the results of one SARIF file: :meth:`observe` all of them,
    :meth:`freeze`, then :meth:`of` each."""

    def __init__(self, scanner: str) -> None:
        self._scanner = scanner
        # tool key -> the one content digest seen with it, or b"" once there are several
        self._tool: dict[bytes, bytes] = {}
        # content key -> its one variant; keys with several variants move to _multi
        self._single: dict[bytes, bytes] = {}
        self._multi: dict[bytes, set[bytes]] = {}
        self._ordered: dict[bytes, list[bytes]] = {}
        # the same, keyed by the match basis (scanward.lifecycle), for match ordinals
        self._match_single: dict[bytes, bytes] = {}
        self._match_multi: dict[bytes, set[bytes]] = {}
        self._match_ordered: dict[bytes, list[bytes]] = {}

    def observe(self, r: RawFinding) -> None:
        variant = _variant(r)
        _add_variant(self._match_single, self._match_multi, _digest(_match_basis(r)), variant)
        if r.tool_fingerprints:
            content = _digest([r.snippet, r.message]) + variant
            tk = _digest([r.rule_id, r.path, r.tool_fingerprints])
            if self._tool.setdefault(tk, content) != content:
                self._tool[tk] = b""
        ck = _digest(_content_key(r))
        several = self._multi.get(ck)
        if several is not None:
            several.add(variant)
            return
        one = self._single.setdefault(ck, variant)
        if one != variant:
            del self._single[ck]
            self._multi[ck] = {one, variant}

    def freeze(self) -> None:
        """Called once every result was observed."""
        self._ordered = {key: sorted(variants) for key, variants in self._multi.items()}
        self._multi.clear()
        self._match_ordered = {k: sorted(v) for k, v in self._match_multi.items()}
        self._match_multi.clear()
        self._match_single.clear()  # only needed to find the bases seen twice

    def match_of(self, r: RawFinding) -> str:
        """The match fingerprint of ``r``: its basis and its ordinal among the distinct
        results with that basis in position order (so line shifts change nothing)."""
        basis = _match_basis(r)
        ordered = self._match_ordered.get(_digest(list(basis)))
        ordinal = bisect.bisect_left(ordered, _variant(r)) if ordered else 0
        return match_fingerprint(self._scanner, basis, ordinal)

    def of(self, r: RawFinding) -> str:
        """The fingerprint of ``r``, one of the observed results."""
        payload: list[Any]
        if r.tool_fingerprints and self._tool.get(
                _digest([r.rule_id, r.path, r.tool_fingerprints])):
            payload = [FINGERPRINT_VERSION, self._scanner, r.rule_id, r.path, "tool",
                       [list(p) for p in r.tool_fingerprints]]
        else:
            key = _content_key(r)
            ordered = self._ordered.get(_digest(key))
            ordinal = bisect.bisect_left(ordered, _variant(r)) if ordered else 0
            payload = [FINGERPRINT_VERSION, self._scanner, *key]
            if r.snippet is not None or ordinal:
                payload.append(ordinal)
        blob = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def _match_basis(r: RawFinding) -> list[str]:
    return match_basis(r.rule_id, r.path, r.snippet, r.message)


def _add_variant(single: dict[bytes, bytes], multi: dict[bytes, set[bytes]], key: bytes,
                 variant: bytes) -> None:
    """Record ``variant`` under ``key``: keys seen with one variant stay in ``single``."""
    several = multi.get(key)
    if several is not None:
        several.add(variant)
        return
    one = single.setdefault(key, variant)
    if one != variant:
        del single[key]
        multi[key] = {one, variant}


def _content_key(r: RawFinding) -> list[Any]:
    if r.snippet is not None:
        return [r.rule_id, r.path, "snippet", r.snippet, _collapse(r.message)]
    return [r.rule_id, r.path, "line", r.start_line, _collapse(r.message)]


def _variant(r: RawFinding) -> bytes:
    """Position (sortable: big-endian, 0 for unknown) then a digest of the exact message."""
    position = _POSITION.pack(*(min(v or 0, _MAX_POSITION) for v in (
        r.start_line, r.start_column, r.end_line, r.end_column)))
    return position + hashlib.blake2b(r.message.encode("utf-8", "surrogatepass"),
                                      digest_size=8).digest()


def _digest(parts: list[Any]) -> bytes:
    blob = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(blob.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _collapse(text: str) -> str:
    return " ".join(text.split())
