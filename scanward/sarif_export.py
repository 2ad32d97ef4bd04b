"""A scan's merged, deduplicated findings as one SARIF 2.1.0 log, for GitHub code
scanning, GitLab and any other SARIF consumer.

One run per scanner (``tool.driver.name``; its ``rules`` with a ``security-severity``
GitHub ranks alerts by), each result with its rule (``ruleId`` and ``ruleIndex``),
``level``, message, location relative to the repository root, the match fingerprint as
``partialFingerprints["scanwardMatch/v1"]`` (so the consumer follows the alert across
line moves as scanward does), the exact fingerprint as ``fingerprints``, a
``baselineState`` (``new``, ``unchanged``, or ``absent`` for fixed findings) and, for a
finding the tool suppressed or an operator triaged, ``suppressions`` with the
justification. Pure: the caller reads the findings.

:func:`to_sarif` builds the log as dicts; :func:`write_sarif` writes the same document,
byte for byte as ``json.dumps(to_sarif(...), indent=2)``, one result at a time, so that
its memory does not grow with the number of findings (it keeps only each run's rules,
found by :func:`sarif_rules` in a first pass over the same findings).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, TextIO
from urllib.parse import quote

from scanward.contract import Finding, Severity
from scanward.lifecycle import SEVERITY_ORDER, FindingState, Triage, TriageState

__all__ = ["MATCH_KEY", "SCHEMA", "sarif_rules", "to_sarif", "write_sarif"]

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
MATCH_KEY = "scanwardMatch/v1"
EXACT_KEY = "scanward/v1"
_LEVEL = {Severity.CRITICAL: "error", Severity.HIGH: "error", Severity.MEDIUM: "warning",
          Severity.LOW: "note", Severity.INFO: "none"}
# CVSS-like scores GitHub maps back onto critical (>=9), high (>=7), medium (>=4), low.
_SCORE = {Severity.CRITICAL: "9.5", Severity.HIGH: "8.0", Severity.MEDIUM: "5.5",
          Severity.LOW: "2.0", Severity.INFO: "0.0"}
_BASELINE = {FindingState.NEW: "new", FindingState.EXISTING: "unchanged",
             FindingState.FIXED: "absent"}
_SUPPRESSION_KINDS = frozenset({"inSource", "external"})

Item = tuple[Finding, FindingState | None, Triage | None]


def to_sarif(items: Iterable[Item], *, repository: str, commit: str | None,
             ref: str | None, scanners: Iterable[str] = ()) -> dict[str, Any]:
    """The SARIF 2.1.0 log (as JSON-ready dicts) of ``items``: (finding, its lifecycle
    state or None, its triage or None). Each of ``scanners`` (those that ran) gets a
    run even without results: a code-scanning upload closes the alerts of the runs it
    has, and would keep a scanner's fixed alerts open if its run were missing."""
    by_scanner: dict[str, list[Item]] = {name: [] for name in scanners}
    for item in items:
        by_scanner.setdefault(item[0].scanner, []).append(item)
    runs = [_run(scanner, found, repository, commit, ref)
            for scanner, found in sorted(by_scanner.items())]
    return {"$schema": SCHEMA, "version": "2.1.0", "runs": runs}


def _run(scanner: str, items: list[Item], repository: str, commit: str | None,
         ref: str | None) -> dict[str, Any]:
    worst: dict[str, Severity] = {}
    for finding, _, _ in items:
        _worsen(worst, finding)
    rules, index = _rules(worst)
    run: dict[str, Any] = {
        **_run_head(scanner, rules),
        "results": [_result(f, state, triage, index[f.rule_id]) for f, state, triage in items],
    }
    provenance = _provenance(repository, commit, ref)
    if provenance is not None:
        run["versionControlProvenance"] = provenance
    return run


def _worsen(worst: dict[str, Severity], finding: Finding) -> None:
    """Keep in ``worst`` the most severe severity seen of ``finding``'s rule."""
    seen = worst.get(finding.rule_id)
    if seen is None or SEVERITY_ORDER.index(finding.severity) < SEVERITY_ORDER.index(seen):
        worst[finding.rule_id] = finding.severity


def _rules(worst: Mapping[str, Severity]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """A run's ``rules`` (sorted by id, each with its worst severity's score) and each
    rule's index in them (a result's ``ruleIndex``)."""
    rule_ids = sorted(worst)
    rules = [{"id": rule, "name": rule, "shortDescription": {"text": rule},
              "properties": {"security-severity": _SCORE[worst[rule]]}} for rule in rule_ids]
    return rules, {rule: i for i, rule in enumerate(rule_ids)}


def _run_head(scanner: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"tool": {"driver": {"name": scanner, "rules": rules}},
            "automationDetails": {"id": f"scanward/{scanner}/"}}


def _provenance(repository: str, commit: str | None, ref: str | None
                ) -> list[dict[str, Any]] | None:
    if "://" not in repository:  # versionControlProvenance.repositoryUri must be a URI
        return None
    provenance: dict[str, Any] = {"repositoryUri": repository}
    if commit:
        provenance["revisionId"] = commit
    if ref:
        provenance["branch"] = ref
    return [provenance]


def sarif_rules(items: Iterable[Item]) -> dict[str, dict[str, Severity]]:
    """Each scanner's rules in ``items``, with the worst severity seen of each: what
    :func:`write_sarif` needs before it writes a run's first result (its ``ruleIndex``)."""
    rules: dict[str, dict[str, Severity]] = {}
    for finding, _, _ in items:
        _worsen(rules.setdefault(finding.scanner, {}), finding)
    return rules


def write_sarif(out: TextIO, items: Iterable[Item], *,
                rules: Mapping[str, Mapping[str, Severity]], repository: str,
                commit: str | None, ref: str | None, scanners: Iterable[str] = ()) -> int:
    """Write to ``out`` what ``json.dumps(to_sarif(items, ...), indent=2)`` is, result by
    result. ``items`` come grouped by scanner, the scanners in name order (as
    :func:`to_sarif` orders runs); ``rules`` is :func:`sarif_rules` of the same items.
    Returns the number of results written. Raises :class:`ValueError` for items out of
    that order or of a rule missing from ``rules`` (the document would be wrong)."""
    head = _provenance(repository, commit, ref)
    names = sorted(set(scanners) | set(rules))
    pending = iter(items)
    item = next(pending, None)
    written = 0
    out.write('{\n  "$schema": ' + json.dumps(SCHEMA) + ',\n  "version": "2.1.0",\n'
              '  "runs": ' + ("[\n" if names else "[]"))
    for n, scanner in enumerate(names):
        rule_list, index = _rules(rules.get(scanner, {}))
        out.write("    {\n")
        for key, value in _run_head(scanner, rule_list).items():
            out.write(f"      {json.dumps(key)}: {_dump(value, 3)},\n")
        out.write('      "results": ')
        first = True
        while item is not None and item[0].scanner == scanner:
            finding, state, triage = item
            if finding.rule_id not in index:
                raise ValueError(f"rule {finding.rule_id!r} of {scanner} is not in rules")
            out.write("[\n        " if first else ",\n        ")
            out.write(_dump(_result(finding, state, triage, index[finding.rule_id]), 4))
            first = False
            written += 1
            item = next(pending, None)
        out.write("[]" if first else "\n      ]")
        if head is not None:
            out.write(f',\n      "versionControlProvenance": {_dump(head, 3)}')
        out.write("\n    }" + (",\n" if n < len(names) - 1 else "\n  ]"))
    if item is not None:
        raise ValueError(f"a finding of {item[0].scanner!r} came out of scanner order")
    out.write("\n}")
    return written


def _dump(value: Any, depth: int) -> str:
    """``value`` as ``json.dumps(..., indent=2)`` writes it ``depth`` levels deep (JSON
    text has no raw line breaks but those of the indentation)."""
    return json.dumps(value, indent=2).replace("\n", "\n" + "  " * depth)


def _result(f: Finding, state: FindingState | None, triage: Triage | None,
            rule_index: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "ruleId": f.rule_id,
        "ruleIndex": rule_index,
        "level": _LEVEL[f.severity],
        "message": {"text": f.message or f.rule_id},
        "fingerprints": {EXACT_KEY: f.fingerprint},
        "properties": {"security-severity": _SCORE[f.severity],
                       "scanward-severity": f.severity.value},
    }
    if f.match_fingerprint is not None:
        result["partialFingerprints"] = {MATCH_KEY: f.match_fingerprint}
    if f.path:  # a repository-level finding has no location
        location: dict[str, Any] = {"artifactLocation": {"uri": _uri(f.path)}}
        region = _region(f)
        if region:
            location["region"] = region
        result["locations"] = [{"physicalLocation": location}]
    if state is not None:
        result["baselineState"] = _BASELINE[state]
    suppressions = _suppressions(f.suppression, triage)
    if suppressions:
        result["suppressions"] = suppressions
    return result


def _uri(path: str) -> str:
    """A relative URI reference for a repository path (``unresolved://`` marks are
    already URIs)."""
    if "://" in path:
        return path
    return quote(path, safe="/")


def _region(f: Finding) -> dict[str, int]:
    region: dict[str, int] = {}
    if f.start_line:
        region["startLine"] = f.start_line
        if f.start_column:
            region["startColumn"] = f.start_column
        if f.end_line and f.end_line >= f.start_line:
            region["endLine"] = f.end_line
        if f.end_column:
            same_line = (f.end_line or f.start_line) == f.start_line
            if not same_line or f.start_column is None or f.end_column >= f.start_column:
                region["endColumn"] = f.end_column
    return region


def _suppressions(tool: str | None, triage: Triage | None) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    for part in (tool.split("; ") if tool else []):
        kind, _, why = part.partition(": ")
        entry = {"kind": kind if kind in _SUPPRESSION_KINDS else "external",
                 "status": "accepted"}
        if why or kind not in _SUPPRESSION_KINDS:
            entry["justification"] = why or part
        found.append(entry)
    if triage is not None and triage.state is not TriageState.OPEN:
        found.append({"kind": "external", "status": "accepted",
                      "justification": f"{triage.state.value}: {triage.reason} "
                                       f"(by {triage.by}, {triage.at:%Y-%m-%d})"})
    return found
