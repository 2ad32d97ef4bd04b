"""Read the SARIF 2.1.0 a scanner wrote and normalise it into :class:`Finding` objects.

Scanners (bandit, semgrep, gitleaks, trivy, ...) all write SARIF, each in its own dialect.
This module validates only what it uses, so that a field the normaliser never reads
cannot reject a whole scan, while every field it does read is type-checked and a problem
is reported as a :class:`SarifError` naming the file and the JSON path
(``runs[0].results[2]``) of what is wrong.

**Streaming.** A scanner may write hundreds of megabytes. :func:`read_findings` never
holds the document: it reads the file three times with an incremental parser
(:mod:`scanward.sarif_stream`): (1) the structure and the small per-run parts (tool,
rules, URI bases, artifacts), (2) every result, to validate it and to gather what
fingerprints need to know about the other results (compact digests), (3) every result
again, yielding findings one at a time. So a broken SARIF is refused before the first
finding is yielded, and memory grows with the number of distinct findings (a few dozen
bytes each), not with the file.

Normalisation rules:

* **rule id**: ``ruleId``, else ``rule.id``, else the id of the rule that ``ruleIndex`` /
  ``rule.index`` points at in ``tool.driver.rules`` (or ``tool.extensions[].rules``).
* **severity**, first that applies: the result's ``properties.issue_severity`` (bandit);
  its ``properties.security-severity`` (a CVSS-like score: >=9 critical, >=7 high, >=4
  medium, >0 low, 0 info); the same two properties on the rule; the result's ``level``;
  the rule's ``defaultConfiguration.level``; else SARIF's default (``warning`` for
  ``kind: fail``, ``none`` otherwise). Levels map error→high, warning→medium, note→low,
  none→info. (The result's own ``level`` is consulted before the rule's default level
  because SARIF §3.27.10 says it overrides it.)
* **path**: the primary location's ``artifactLocation`` (or the ``run.artifacts`` entry
  it indexes), resolved through ``uriBaseId``/``originalUriBaseIds``, ``file://``
  stripped, absolute paths made relative to ``source_root`` (the checkout as the scanner
  saw it), normalised (no ``./``, no empty segments), and checked against the checkout
  (raw or percent-decoded, ``/`` or ``\\``: see :mod:`scanward.sarif_paths`). A path that
  would leave the checkout (``..``, an absolute path elsewhere) or, when the checkout is
  given, does not exist in it is never stored as a path: the finding is kept, with
  ``unresolved://<reason>/<the URI, percent-encoded>`` (:data:`UNRESOLVED`), and counted
  in :attr:`SarifStats.unresolved`. A result without a location gets the path ``""``
  (repository level). A location on another URI scheme (e.g. a remote Terraform module
  in trivy's output) is kept as ``scheme://host/path``, without credentials, query or
  fragment.
* **lines and columns**: the primary region's ``startLine``/``endLine`` and
  ``startColumn``/``endColumn`` (a missing ``endLine`` is the start line). A non-integer
  or negative value is refused; ``0`` (tools write it for "unknown") gives none, and an
  ``endLine`` before the start is the start.
* **message**: ``message.text``, else ``message.id`` resolved through the rule's (or the
  tool's global) ``messageStrings``; ``{0}``-style placeholders are filled from
  ``message.arguments``; at most :data:`MAX_MESSAGE_CHARS` characters.
* **snippet** (what fingerprints are made of; never stored): the primary region's
  ``snippet.text``, whitespace-collapsed, checked against the checkout when it is given
  (:meth:`_Run.checked_snippet`): a snippet that is the text of *other* whole lines of
  the file than the region's ``startLine``..``endLine`` is a misquote (bandit 1.9 quotes
  a line after any call written over several lines), replaced by the region's lines as
  the checkout has them. Every other snippet is kept as the tool wrote it (the region's
  own text, the normal case, whose fingerprints therefore never changed; part of a line
  that is no whole line; text that is not the file's, such as gitleaks' ``REDACTED``),
  as is any snippet of a file that cannot be read (unresolved, not a regular file of the
  checkout, over 4 MiB, binary) or of a region past its end.
* **fingerprint** (64 hex digits, see :mod:`scanward.sarif_fingerprints`): stable across runs of the
  same code and, where the SARIF allows it, across line shifts. Two results get the same
  fingerprint only if they are the same finding: same rule, path, lines, columns and
  message. So the store never holds fewer findings than the SARIF has distinct results.

Results that are not findings are skipped: ``kind`` ``pass`` or ``notApplicable``, or a
``baselineState`` of ``absent``.

**Suppressions** are kept, never dropped: a result with a ``suppressions`` entry that is
accepted (``status`` absent or ``accepted``; ``underReview`` and ``rejected`` ones do not
suppress) is a finding with :attr:`Finding.suppression` set to the entries' kinds and
justifications (``inSource`` for semgrep's ``# nosemgrep``). The store keeps it and shows
it on request; it is never counted (see :mod:`scanward.lifecycle`). Bandit's ``# nosec``
is applied by bandit itself: those results are not in its SARIF at all.
"""


from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, NoReturn

from scanward.contract import Finding, Severity
from scanward.sarif_fingerprints import Fingerprints, RawFinding
from scanward.sarif_paths import UNRESOLVED, CheckoutPaths, UriResolver, source_roots
from scanward.sarif_stream import (
    Layout,
    Progress,
    SarifError,
    SarifSource,
    read_layout,
    results,
    short,
)

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_MESSAGE_CHARS",
    "MAX_RESULTS",
    "UNRESOLVED",
    "FindingStream",
    "Progress",
    "SarifError",
    "SarifStats",
    "dedupe",
    "load_findings",
    "parse_findings",
    "read_findings",
]

MAX_FILE_BYTES = 256 * 1024 * 1024
"""SARIF files larger than this are refused before being read."""
MAX_RESULTS = 100_000
"""SARIF files with more results than this (over all runs) are refused."""
MAX_MESSAGE_CHARS = 2_000
"""Messages are truncated to this many characters (the last one being ``…``)."""

# Values some tools write where a fingerprint would be, which identify nothing.
_PLACEHOLDER_FINGERPRINTS = frozenset({"requires login", "none", "null", "n/a", "-"})
_LEVELS: Mapping[str, Severity] = {
    "error": Severity.HIGH,
    "warning": Severity.MEDIUM,
    "note": Severity.LOW,
    "none": Severity.INFO,
}
_NAMED_SEVERITIES: Mapping[str, Severity] = {
    "critical": Severity.CRITICAL,
    "high": Severity.HIGH,
    "medium": Severity.MEDIUM,
    "moderate": Severity.MEDIUM,
    "low": Severity.LOW,
    "info": Severity.INFO,
    "informational": Severity.INFO,
}
_NOT_FINDINGS = frozenset({"pass", "notapplicable"})
_MAX_SUPPRESSION_CHARS = 500
_PLACEHOLDER = re.compile(r"\{(\d+)\}")


@dataclass(slots=True)
class SarifStats:
    """What reading one SARIF file found, beyond the findings themselves."""

    results: int = 0  # results in the file, over all runs
    skipped: int = 0  # results that are not findings (pass, notApplicable, absent)
    suppressed: int = 0  # findings the tool reported suppressed (kept, marked)
    # Findings kept with an ``unresolved://`` path, by reason.
    unresolved: Counter[str] = field(default_factory=Counter)
    # What the tool said it could not do (error-level notifications of its invocations,
    # an unsuccessful run): files it could not parse were not scanned, and a scan that
    # says nothing of it looks clean where it is blind.
    tool_errors: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------ public API


def read_findings(
    source: Path | bytes,
    *,
    scanner: str,
    origin: str | None = None,
    source_root: PurePath | str | None = None,
    checkout: Path | None = None,
    max_bytes: int = MAX_FILE_BYTES,
    max_results: int = MAX_RESULTS,
    progress: Progress | None = None,
) -> FindingStream:
    """Validate the SARIF at ``source`` (a file, or the bytes of one) and return a
    stream of its findings, in file order, not deduplicated (see :func:`dedupe`).

    ``source_root`` is the checkout directory *as the scanner saw it*: absolute paths the
    tool wrote (``file:///src/app.py``, ``/src/app.py``) are made relative to it.
    ``checkout`` is the checkout directory *as this process sees it*: when given, every
    stored path is a file of it (see :mod:`scanward.sarif_paths`). Files over
    ``max_bytes`` are refused without being read. ``progress`` is called every thousand
    results or so (for heartbeats).

    Raises :class:`SarifError` here, before any finding is yielded, for anything wrong
    with the file; iterating raises it only if the file changes meanwhile.
    """
    stream = FindingStream(SarifSource(source, origin, max_bytes), scanner=scanner,
                           paths=CheckoutPaths(source_roots(source_root), checkout),
                           max_results=max_results, progress=progress)
    stream.validate()
    return stream


def load_findings(
    path: Path,
    *,
    scanner: str,
    source_root: PurePath | str | None = None,
    checkout: Path | None = None,
    max_bytes: int = MAX_FILE_BYTES,
    max_results: int = MAX_RESULTS,
) -> list[Finding]:
    """All findings of the SARIF file at ``path``, in file order (see
    :func:`read_findings`, which streams them instead)."""
    return list(read_findings(path, scanner=scanner, source_root=source_root,
                              checkout=checkout, max_bytes=max_bytes,
                              max_results=max_results))


def parse_findings(
    data: bytes,
    *,
    scanner: str,
    origin: str,
    source_root: PurePath | str | None = None,
    checkout: Path | None = None,
    max_bytes: int = MAX_FILE_BYTES,
    max_results: int = MAX_RESULTS,
) -> list[Finding]:
    """All findings of SARIF ``data``; ``origin`` (usually the file name) starts every
    error message. See :func:`read_findings`."""
    return list(read_findings(data, scanner=scanner, origin=origin, source_root=source_root,
                              checkout=checkout, max_bytes=max_bytes,
                              max_results=max_results))


def dedupe(findings: Iterable[Finding]) -> list[Finding]:
    """Findings with distinct fingerprints: the first of each wins, order is preserved."""
    seen: set[str] = set()
    out: list[Finding] = []
    for f in findings:
        if f.fingerprint not in seen:
            seen.add(f.fingerprint)
            out.append(f)
    return out


class FindingStream:
    """The findings of one validated SARIF file, read anew by each iteration; made by
    :func:`read_findings`. ``stats`` describes the file."""

    def __init__(self, source: SarifSource, *, scanner: str, paths: CheckoutPaths,
                 max_results: int, progress: Progress | None) -> None:
        self._source = source
        self._scanner = scanner
        self._paths = paths
        self._max_results = max_results
        self._progress = progress
        self._layout = Layout(runs=[], counts=[])
        self._runs: list[_Run] = []
        self._fingerprints = Fingerprints(scanner)
        self.stats = SarifStats()

    def validate(self) -> None:
        """Passes 1 and 2: the structure, then every result (and what fingerprints
        need to know about all of them)."""
        origin = self._source.origin
        self._layout = read_layout(self._source, self._max_results, self._progress)
        self._runs = [_Run(header, f"runs[{i}]", origin, self._paths)
                      for i, header in enumerate(self._layout.runs)]
        self.stats.results = sum(self._layout.counts)
        self.stats.tool_errors = [e for run in self._runs for e in run.tool_errors]
        for raw in self._raws("checked"):
            if raw is None:
                self.stats.skipped += 1
                continue
            if raw.unresolved:
                self.stats.unresolved[raw.unresolved] += 1
            if raw.suppression is not None:
                self.stats.suppressed += 1
            self._fingerprints.observe(raw)
        self._fingerprints.freeze()

    def __iter__(self) -> Iterator[Finding]:
        """Pass 3: every finding, with its fingerprint."""
        for r in self._raws("read"):
            if r is not None:
                yield Finding(
                    scanner=self._scanner, rule_id=r.rule_id, severity=r.severity,
                    path=r.path, start_line=r.start_line, end_line=r.end_line,
                    start_column=r.start_column, end_column=r.end_column, message=r.message,
                    fingerprint=self._fingerprints.of(r),
                    match_fingerprint=self._fingerprints.match_of(r),
                    suppression=r.suppression,
                )

    def _raws(self, stage: str) -> Iterator[RawFinding | None]:
        """Every result of the file, normalised (None: not a finding)."""
        for run_no, index, item in results(self._source, self._layout, stage, self._progress):
            where = f"runs[{run_no}].results[{index}]"
            run = self._runs[run_no]
            yield run.result(run.as_obj(item, where), where)


# ------------------------------------------------------------------------- one run


MAX_TOOL_ERRORS = 1_000  # kept per file (a tool can fail on every file of a checkout)


def _tool_errors(invocations: Any, path_of: Callable[[str, str | None], str]) -> list[str]:
    """``"<message>: <file>"`` for each error-level notification of the run's
    invocations (``toolExecutionNotifications``, ``toolConfigurationNotifications``),
    and a line for an invocation that says it was not successful; ``path_of`` makes a
    URI the checkout's path. Read leniently: what is not well-formed here is skipped, it
    does not make the findings unreadable."""
    errors: list[str] = []
    for inv in invocations if isinstance(invocations, list) else []:
        if not isinstance(inv, dict):
            continue
        if inv.get("executionSuccessful") is False:
            errors.append("the tool reported its run as not successful")
        for key in ("toolExecutionNotifications", "toolConfigurationNotifications"):
            notes = inv.get(key)
            for note in notes if isinstance(notes, list) else []:
                if isinstance(note, dict) and note.get("level") == "error":
                    errors.append(_notification_line(note, path_of))
    return errors[:MAX_TOOL_ERRORS]


def _notification_line(note: dict[str, Any],
                       path_of: Callable[[str, str | None], str]) -> str:
    message = note.get("message")
    text = message.get("text") if isinstance(message, dict) else None
    line = " ".join(str(text).split())[:200] if text else "error (no message)"
    for loc in note.get("locations") or []:
        art = (loc.get("physicalLocation") or {}).get("artifactLocation") or {} \
            if isinstance(loc, dict) else {}
        uri = art.get("uri") if isinstance(art, dict) else None
        base = art.get("uriBaseId") if isinstance(art, dict) else None
        if isinstance(uri, str) and uri:
            return f"{line}: {path_of(uri, base if isinstance(base, str) else None)[:300]}"
    return line


@dataclass(slots=True)
class _Location:
    path: str = ""
    unresolved: str | None = None
    start_line: int | None = None
    end_line: int | None = None
    start_column: int | None = None
    end_column: int | None = None
    snippet: str | None = None


class _Run:
    """Normalises the results of one ``runs[i]``, with its rules and URI bases."""

    def __init__(self, header: dict[str, Any], where: str, origin: str,
                 paths: CheckoutPaths) -> None:
        self.where = where
        self.origin = origin
        tool = self.obj(header, "tool", where) or {}
        self.driver = self.obj(tool, "driver", f"{where}.tool") or {}
        self.components: list[dict[str, Any]] = [self.driver]
        extensions = self.arr(tool, "extensions", f"{where}.tool") or []
        for i, ext in enumerate(extensions):
            self.components.append(self.as_obj(ext, f"{where}.tool.extensions[{i}]"))
        self._rules: list[list[dict[str, Any]]] = []
        self._rules_by_id: list[dict[str, dict[str, Any]]] = []
        for c_no, comp in enumerate(self.components):
            cwhere = f"{where}.tool.driver" if c_no == 0 else f"{where}.tool.extensions[{c_no - 1}]"
            rules = [self.as_obj(r, f"{cwhere}.rules[{i}]")
                     for i, r in enumerate(self.arr(comp, "rules", cwhere) or [])]
            self._rules.append(rules)
            by_id: dict[str, dict[str, Any]] = {}
            for r in rules:
                rid = r.get("id")
                if isinstance(rid, str):
                    by_id.setdefault(rid, r)
            self._rules_by_id.append(by_id)
        self.bases = self.obj(header, "originalUriBaseIds", where) or {}
        self.artifacts = self.arr(header, "artifacts", where) or []
        self.uris = UriResolver(paths, self.base, self.base_cycle)
        self.paths = paths
        self.tool_errors = _tool_errors(header.get("invocations"), self._error_path)

    # -- typed access, failing with the JSON path

    def fail(self, what: str) -> NoReturn:
        raise SarifError(f"{self.origin}: {what}")

    def as_obj(self, v: Any, where: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            self.fail(f"{where} is {_kind(v)}, not an object")
        return v

    def obj(self, parent: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
        v = parent.get(key)
        if v is None:
            return None
        return self.as_obj(v, f"{where}.{key}")

    def arr(self, parent: dict[str, Any], key: str, where: str) -> list[Any] | None:
        v = parent.get(key)
        if v is None:
            return None
        if not isinstance(v, list):
            self.fail(f"{where}.{key} is {_kind(v)}, not an array")
        return v

    def str_(self, parent: dict[str, Any], key: str, where: str) -> str | None:
        v = parent.get(key)
        if v is None:
            return None
        if not isinstance(v, str):
            self.fail(f"{where}.{key} is {_kind(v)}, not a string")
        return v

    def int_(self, parent: dict[str, Any], key: str, where: str) -> int | None:
        v = parent.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            # 3.0 is how some JSON encoders write an integer; 3.5 and "3" are not integers.
            if isinstance(v, float) and v.is_integer():
                return int(v)
            self.fail(f"{where}.{key} is {short(v)}, not an integer")
        return v

    # -- results

    def result(self, res: dict[str, Any], where: str) -> RawFinding | None:
        kind = self.str_(res, "kind", where)
        if kind is not None and kind.lower() in _NOT_FINDINGS:
            return None
        if self.str_(res, "baselineState", where) == "absent":
            return None
        suppression = self.suppression(res, where)
        rule_id, rule = self.rule(res, where)
        severity = self.severity(res, rule, kind, where)
        message = self.message(res, rule, where)
        loc = _Location()
        locations = self.arr(res, "locations", where) or []
        if locations:
            loc = self.location(locations[0], f"{where}.locations[0]")
        return RawFinding(
            rule_id=rule_id,
            severity=severity,
            path=loc.path,
            unresolved=loc.unresolved,
            start_line=loc.start_line,
            end_line=loc.end_line,
            start_column=loc.start_column,
            end_column=loc.end_column,
            message=message,
            snippet=loc.snippet,
            tool_fingerprints=self.tool_fingerprints(res, where),
            suppression=suppression,
        )

    def suppression(self, res: dict[str, Any], where: str) -> str | None:
        """The accepted suppressions of a result, described (``inSource``, ``external:
        <justification>``); None when it is not suppressed."""
        parts: list[str] = []
        for i, s in enumerate(self.arr(res, "suppressions", where) or []):
            swhere = f"{where}.suppressions[{i}]"
            sup = self.as_obj(s, swhere)
            status = self.str_(sup, "status", swhere)
            if status is not None and status != "accepted":
                continue  # under review or rejected: still a finding
            kind = self.str_(sup, "kind", swhere) or "suppressed"
            why = self.str_(sup, "justification", swhere)
            parts.append(f"{kind}: {' '.join(why.split())}" if why and why.strip() else kind)
        if not parts:
            return None
        text = _printable("; ".join(dict.fromkeys(parts)))
        return text if len(text) <= _MAX_SUPPRESSION_CHARS else (
            text[: _MAX_SUPPRESSION_CHARS - 1] + "…")

    def rule(self, res: dict[str, Any], where: str) -> tuple[str, dict[str, Any] | None]:
        """The result's rule id and, when the run describes it, its rule object."""
        rule_id = self.str_(res, "ruleId", where)
        index = self.int_(res, "ruleIndex", where)
        component = 0
        ref = self.obj(res, "rule", where)
        if ref is not None:
            rwhere = f"{where}.rule"
            if rule_id is None:
                rule_id = self.str_(ref, "id", rwhere)
            if index is None:
                index = self.int_(ref, "index", rwhere)
            comp_ref = self.obj(ref, "toolComponent", rwhere)
            if comp_ref is not None:
                component = self.component(comp_ref, f"{rwhere}.toolComponent")
        rules = self._rules[component]
        rule: dict[str, Any] | None = None
        if index is not None and 0 <= index < len(rules):
            candidate = rules[index]
            if rule_id is None or candidate.get("id") == rule_id:
                rule = candidate
        if rule is None and rule_id is not None:
            rule = self._rules_by_id[component].get(rule_id)
            if rule is None and "/" in rule_id:  # hierarchical id: "rule/sub-rule"
                rule = self._rules_by_id[component].get(rule_id.split("/", 1)[0])
        if rule_id is None and rule is not None:
            rule_id = self.str_(rule, "id", f"{where} (its rule)")
        if rule_id is not None and rule_id.strip():
            return _printable(rule_id.strip()), rule
        if index is not None:
            self.fail(f"{where} has no ruleId and its ruleIndex {index} does not name a "
                      f"rule (the run has {len(rules)} rules)")
        self.fail(f"{where} has no ruleId (and no rule reference)")

    def component(self, ref: dict[str, Any], where: str) -> int:
        index = self.int_(ref, "index", where)
        name = self.str_(ref, "name", where)
        if index is not None:
            if not 0 <= index < len(self.components) - 1:
                self.fail(f"{where}.index {index} does not name a tool extension")
            return index + 1
        if name is not None:
            for i, comp in enumerate(self.components):
                if comp.get("name") == name:
                    return i
        return 0

    def severity(self, res: dict[str, Any], rule: dict[str, Any] | None, kind: str | None,
                 where: str) -> Severity:
        props = self.obj(res, "properties", where) or {}
        sev = _named(props.get("issue_severity")) or _score(props.get("security-severity"))
        if sev is not None:
            return sev
        if rule is not None:
            rprops = self.obj(rule, "properties", f"{where} (its rule)") or {}
            sev = _score(rprops.get("security-severity")) or _named(rprops.get("issue_severity"))
            if sev is not None:
                return sev
        level = self.str_(res, "level", where)
        if level is not None:
            return self.level(level, f"{where}.level")
        if rule is not None:
            config = self.obj(rule, "defaultConfiguration", f"{where} (its rule)")
            if config is not None:
                level = self.str_(config, "level", f"{where} (its rule).defaultConfiguration")
                if level is not None:
                    return self.level(level, f"{where} (its rule).defaultConfiguration.level")
        # SARIF §3.27.10: absent everywhere, a failure is a warning, anything else none.
        return Severity.MEDIUM if kind is None or kind.lower() == "fail" else Severity.INFO

    def level(self, level: str, where: str) -> Severity:
        sev = _LEVELS.get(level.lower())
        if sev is None:
            self.fail(f"{where} is {level!r}, not one of error, warning, note, none")
        return sev

    def message(self, res: dict[str, Any], rule: dict[str, Any] | None, where: str) -> str:
        msg = self.obj(res, "message", where)
        if msg is None:
            self.fail(f"{where} has no message")
        mwhere = f"{where}.message"
        text = self.str_(msg, "text", mwhere)
        if text is None:
            msg_id = self.str_(msg, "id", mwhere)
            if msg_id is not None:
                text = self.message_string(msg_id, rule)
                if text is None:
                    self.fail(f"{mwhere}.id {msg_id!r} is not in its rule's messageStrings")
            else:
                text = self.str_(msg, "markdown", mwhere)
        if text is None:
            self.fail(f"{mwhere} has neither text nor id")
        args = self.arr(msg, "arguments", mwhere)
        if args:
            def fill(m: re.Match[str]) -> str:
                n = int(m.group(1))
                return str(args[n]) if n < len(args) else m.group(0)
            text = _PLACEHOLDER.sub(fill, text)
        text = _printable(text)
        if len(text) > MAX_MESSAGE_CHARS:
            text = text[: MAX_MESSAGE_CHARS - 1] + "…"
        return text

    def message_string(self, msg_id: str, rule: dict[str, Any] | None) -> str | None:
        for holder, key in ((rule, "messageStrings"), (self.driver, "globalMessageStrings")):
            if holder is None:
                continue
            strings = holder.get(key)
            if isinstance(strings, dict):
                entry = strings.get(msg_id)
                if isinstance(entry, dict) and isinstance(entry.get("text"), str):
                    return str(entry["text"])
        return None

    def tool_fingerprints(self, res: dict[str, Any], where: str) -> tuple[tuple[str, str], ...]:
        pairs: list[tuple[str, str]] = []
        for key, prefix in (("fingerprints", "f:"), ("partialFingerprints", "p:")):
            fps = self.obj(res, key, where) or {}
            for name, value in fps.items():
                if isinstance(value, bool) or not isinstance(value, str | int | float):
                    continue
                text = str(value).strip()
                if text and text.lower() not in _PLACEHOLDER_FINGERPRINTS:
                    pairs.append((prefix + name, text))
        return tuple(sorted(pairs))

    # -- locations

    def location(self, loc: Any, where: str) -> _Location:
        loc = self.as_obj(loc, where)
        out = _Location()
        phys = self.obj(loc, "physicalLocation", where)
        if phys is None:
            return out
        pwhere = f"{where}.physicalLocation"
        art = self.obj(phys, "artifactLocation", pwhere)
        if art is not None:
            out.path, out.unresolved = self.artifact_path(art, f"{pwhere}.artifactLocation")
        region = self.obj(phys, "region", pwhere)
        if region is not None:
            rwhere = f"{pwhere}.region"
            start = self.int_(region, "startLine", rwhere)
            end = self.int_(region, "endLine", rwhere)
            start_col = self.int_(region, "startColumn", rwhere)
            end_col = self.int_(region, "endColumn", rwhere)
            if min(start or 0, end or 0) < 0:
                self.fail(f"{rwhere} has a negative line number (lines start at 1)")
            if min(start_col or 0, end_col or 0) < 0:
                self.fail(f"{rwhere} has a negative column number (columns start at 1)")
            # Tools do write 0 for "no line" and endLine 0 or < startLine for "same line";
            # a whole scan is not refused for that.
            if not start:
                start = end = start_col = end_col = None
            elif end is None or end < start:
                end = start
            out.start_line, out.end_line = start, end
            out.start_column, out.end_column = start_col or None, end_col or None
            snip = self.obj(region, "snippet", rwhere)
            if snip is not None:
                text = self.str_(snip, "text", f"{rwhere}.snippet")
                if text is not None:
                    out.snippet = " ".join(text.split()) or None
        if out.snippet is not None and out.start_line is not None and not out.unresolved:
            out.snippet = self.checked_snippet(out.path, out.start_line, out.end_line,
                                               out.snippet)
        return out

    def checked_snippet(self, path: str, start: int, end: int | None, snippet: str) -> str:
        """The tool's ``snippet`` (whitespace-collapsed) checked against the checkout: when
        it is the text of some whole lines of the file but not of the region's lines, the
        tool quoted the wrong lines (bandit 1.9 does for a call over several lines: some
        later line, which changes with code after the call) and the region's lines, as
        the checkout has them, are the snippet instead. Anything else is kept as the tool
        wrote it: the region's own lines (the normal case, so its fingerprints do not
        change), part of a line (unless that is also a whole line of the file), or text
        that is not the file's (gitleaks' ``REDACTED``)."""
        text = self.paths.text(path)
        if text is None:
            return snippet
        region = text.region(start, end)
        if region is None or region == snippet or not text.has_lines(snippet):
            return snippet
        return region

    def artifact_path(self, art: dict[str, Any], where: str) -> tuple[str, str | None]:
        uri = self.str_(art, "uri", where)
        base_id = self.str_(art, "uriBaseId", where)
        if uri is None:
            index = self.int_(art, "index", where)
            if index is None:
                return "", None
            if not 0 <= index < len(self.artifacts):
                self.fail(f"{where}.index {index} does not name one of the run's "
                          f"{len(self.artifacts)} artifacts")
            awhere = f"{self.where}.artifacts[{index}]"
            artifact = self.as_obj(self.artifacts[index], awhere)
            location = self.obj(artifact, "location", awhere) or {}
            uri = self.str_(location, "uri", f"{awhere}.location")
            base_id = self.str_(location, "uriBaseId", f"{awhere}.location")
            if uri is None:
                return "", None
        return self.uris.resolve(uri, base_id)

    def _error_path(self, uri: str, base_id: str | None) -> str:
        """A notification's file as the checkout's path (as findings' paths are)."""
        return self.uris.resolve(uri, base_id)[0]

    def base(self, base_id: str) -> tuple[str | None, str | None] | None:
        """The (uri, parent uriBaseId) the run defines for ``base_id``, if any."""
        entry = self.bases.get(base_id)
        if entry is None:
            return None
        where = f"{self.where}.originalUriBaseIds[{base_id!r}]"
        entry = self.as_obj(entry, where)
        return self.str_(entry, "uri", where), self.str_(entry, "uriBaseId", where)

    def base_cycle(self, base_id: str) -> NoReturn:
        self.fail(f"{self.where}.originalUriBaseIds has a cycle through {base_id!r}")


# ---------------------------------------------------------------------- severities


def _named(value: Any) -> Severity | None:
    if isinstance(value, str):
        return _NAMED_SEVERITIES.get(value.strip().lower())
    return None


def _score(value: Any) -> Severity | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    if value >= 9:
        return Severity.CRITICAL
    if value >= 7:
        return Severity.HIGH
    if value >= 4:
        return Severity.MEDIUM
    if value > 0:
        return Severity.LOW
    return Severity.INFO


_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def _printable(text: str) -> str:
    """``text`` without NULs and lone surrogates, which databases refuse to store."""
    return _UNSTORABLE.sub("\ufffd", text)


def _kind(v: Any) -> str:
    return {
        dict: "an object", list: "an array", str: "a string", bool: "a boolean",
        int: "a number", float: "a number", type(None): "null",
    }.get(type(v), type(v).__name__)
