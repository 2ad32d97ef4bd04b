"""Read the SARIF 2.1.0 a scanner wrote and normalise it into :class:`Finding` objects.

Scanners (bandit, semgrep, gitleaks, trivy, ...) all write SARIF, each in its own dialect.
This module reads it with plain :mod:`json` and validates only what it uses, so that a
field the normaliser never reads cannot reject a whole scan, while every field it does
read is type-checked and a problem is reported as a :class:`SarifError` naming the file
and the JSON path (``runs[0].results[2]``) of what is wrong.

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
  it indexes), percent-decoded, ``file://`` stripped, resolved through
  ``uriBaseId``/``originalUriBaseIds``, made relative to the checkout and normalised
  (no ``./``, no empty segments). It is never absolute and never contains ``..``: such a
  path is refused. A result without a location gets the path ``""`` (repository level).
  A location on another URI scheme (e.g. a remote Terraform module in trivy's output) is
  kept as ``scheme://host/path``, without credentials, query or fragment.
* **lines**: the primary region's ``startLine``/``endLine`` (a missing ``endLine`` is the
  start line). A non-integer or negative line is refused; ``0`` (tools write it for "no
  line") gives no line, and an ``endLine`` before the start is the start.
* **message**: ``message.text``, else ``message.id`` resolved through the rule's (or the
  tool's global) ``messageStrings``; ``{0}``-style placeholders are filled from
  ``message.arguments``; at most :data:`MAX_MESSAGE_CHARS` characters.
* **fingerprint** (64 hex digits, see :func:`parse_findings`): stable across runs of the
  same code and, where the SARIF allows it, across line shifts.

Results that are not findings are skipped: ``kind`` ``pass`` or ``notApplicable``, a
``baselineState`` of ``absent``, or an accepted suppression (e.g. ``# nosemgrep``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

from scanward.contract import Finding, Severity

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_MESSAGE_CHARS",
    "MAX_RESULTS",
    "SarifError",
    "dedupe",
    "load_findings",
    "parse_findings",
]

MAX_FILE_BYTES = 256 * 1024 * 1024
"""SARIF files larger than this are refused before being read."""
MAX_RESULTS = 100_000
"""SARIF files with more results than this (over all runs) are refused."""
MAX_MESSAGE_CHARS = 2_000
"""Messages are truncated to this many characters (the last one being ``…``)."""

_FINGERPRINT_VERSION = "scanward-fp/1"
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
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):")
_PLACEHOLDER = re.compile(r"\{(\d+)\}")


class SarifError(ValueError):
    """The SARIF cannot be used. The message names the file and exactly what is wrong,
    e.g. ``results.sarif: runs[0].results[2] has no ruleId``."""


# ------------------------------------------------------------------------ public API


def load_findings(
    path: Path,
    *,
    scanner: str,
    source_root: Path | None = None,
    max_bytes: int = MAX_FILE_BYTES,
    max_results: int = MAX_RESULTS,
) -> list[Finding]:
    """Read the SARIF file at ``path`` and return its findings, in file order.

    ``source_root`` is the checkout directory *as the scanner saw it*: absolute paths
    the tool wrote (``file:///src/app.py``, ``/src/app.py``) are made relative to it, and
    an absolute path outside it is refused. Files over ``max_bytes`` are refused
    without being read. Raises :class:`SarifError`; the findings are not deduplicated
    (see :func:`dedupe`).
    """
    origin = str(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise SarifError(f"{origin}: larger than {_size(max_bytes)} ({size} bytes)")
            data = f.read(max_bytes + 1)  # the file may grow between fstat and read
    except FileNotFoundError:
        raise SarifError(f"{origin}: file not found") from None
    except IsADirectoryError:
        raise SarifError(f"{origin}: is a directory, not a SARIF file") from None
    except PermissionError:
        raise SarifError(f"{origin}: permission denied") from None
    except OSError as e:
        raise SarifError(f"{origin}: cannot be read ({e.strerror or e})") from None
    return parse_findings(
        data,
        scanner=scanner,
        origin=origin,
        source_root=source_root,
        max_bytes=max_bytes,
        max_results=max_results,
    )


def parse_findings(
    data: bytes,
    *,
    scanner: str,
    origin: str,
    source_root: PurePath | str | None = None,
    max_bytes: int = MAX_FILE_BYTES,
    max_results: int = MAX_RESULTS,
) -> list[Finding]:
    """Parse SARIF ``data`` and return its findings, in file order; ``origin`` (usually
    the file name) starts every error message. See :func:`load_findings` for
    ``source_root``.

    Fingerprints are sha256 over the scanner, rule id and path plus, in order of
    preference:

    1. the tool's own ``fingerprints`` / ``partialFingerprints`` (empty and placeholder
       values such as semgrep's ``"requires login"`` ignored). If the same tool
       fingerprint is given to results with different content (gitleaks' commit
       metadata is shared by every secret of a commit, and empty in ``gitleaks dir``),
       it does not identify a finding and those results fall back to 2.;
    2. the region's snippet, whitespace-collapsed, and the message, plus the finding's
       ordinal among identical (rule, path, snippet, message) findings of the file, so
       two identical flawed lines stay two findings while inserting lines above them
       changes nothing;
    3. else the start line and the message.

    Exact duplicate results therefore get the same fingerprint (see :func:`dedupe`).
    """
    if len(data) > max_bytes:
        raise SarifError(f"{origin}: larger than {_size(max_bytes)} ({len(data)} bytes)")
    doc = _decode(data, origin)
    runs = _validate_log(doc, origin, max_results)
    roots = _roots(source_root)
    raws: list[_Raw] = []
    for run_no, run in enumerate(runs):
        _Run(run, f"runs[{run_no}]", origin, roots).parse(raws)
    return [
        Finding(
            scanner=scanner,
            rule_id=r.rule_id,
            severity=r.severity,
            path=r.path,
            start_line=r.start_line,
            end_line=r.end_line,
            message=r.message,
            fingerprint=fp,
        )
        for r, fp in zip(raws, _fingerprints(scanner, raws), strict=True)
    ]


def dedupe(findings: Iterable[Finding]) -> list[Finding]:
    """Findings with distinct fingerprints: the first of each wins, order is preserved."""
    seen: set[str] = set()
    out: list[Finding] = []
    for f in findings:
        if f.fingerprint not in seen:
            seen.add(f.fingerprint)
            out.append(f)
    return out


# ----------------------------------------------------------------- document checks


def _size(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    return f"{n} bytes"


def _decode(data: bytes, origin: str) -> Any:
    if not data.strip():
        _fail(origin, "file is empty")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        _fail(origin, f"not UTF-8 (invalid byte 0x{data[e.start]:02x} at offset {e.start})")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        _fail(origin, f"not JSON (line {e.lineno}, column {e.colno}: {e.msg})")
    except ValueError as e:  # NaN / Infinity
        _fail(origin, f"not JSON ({e})")
    except RecursionError:
        _fail(origin, "not usable JSON (nested too deeply)")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _validate_log(doc: Any, origin: str, max_results: int) -> list[dict[str, Any]]:
    if not isinstance(doc, dict):
        _fail(origin, f"the JSON document is {_kind(doc)}, not a SARIF log object")
    version = doc.get("version")
    if version is None:
        _fail(origin, "has no 'version': not a SARIF 2.1.0 log")
    if version != "2.1.0":
        _fail(origin, f"version {_short(version)} is not SARIF 2.1.0")
    if "runs" not in doc:
        _fail(origin, "has no 'runs'")
    runs = doc["runs"]
    if runs is None or runs == []:
        _fail(origin, "has no runs ('runs' is empty): the tool reported nothing, not even "
                      "an empty result list")
    if not isinstance(runs, list):
        _fail(origin, f"'runs' is {_kind(runs)}, not an array")
    total = 0
    for i, run in enumerate(runs):
        if not isinstance(run, dict):
            _fail(origin, f"runs[{i}] is {_kind(run)}, not an object")
        results = run.get("results")
        if results is None:
            continue
        if not isinstance(results, list):
            _fail(origin, f"runs[{i}].results is {_kind(results)}, not an array")
        total += len(results)
        if total > max_results:
            _fail(origin, f"more than {max_results:,} results: refusing to normalise them "
                          f"(runs[{i}] brings the count to {total:,})")
    return runs


def _fail(origin: str, what: str) -> NoReturn:
    raise SarifError(f"{origin}: {what}")


def _kind(v: Any) -> str:
    return {
        dict: "an object", list: "an array", str: "a string", bool: "a boolean",
        int: "a number", float: "a number", type(None): "null",
    }.get(type(v), type(v).__name__)


def _short(v: Any, limit: int = 60) -> str:
    text = repr(v) if isinstance(v, str) else json.dumps(v)[:limit]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _roots(source_root: PurePath | str | None) -> list[tuple[str, ...]]:
    """The source root as path segments, lexically normalised and symlink-resolved."""
    if source_root is None:
        return []
    raw = os.fspath(source_root)
    if not posixpath.isabs(raw):
        raw = os.path.abspath(raw)
    candidates = [posixpath.normpath(raw), os.path.realpath(raw)]
    roots: list[tuple[str, ...]] = []
    for c in candidates:
        segments = tuple(s for s in c.split("/") if s)
        if segments not in roots:
            roots.append(segments)
    return roots


# ------------------------------------------------------------------------- one run


@dataclass(slots=True)
class _Raw:
    """A result normalised except for its fingerprint."""

    rule_id: str
    severity: Severity
    path: str
    start_line: int | None
    end_line: int | None
    message: str
    snippet: str | None
    tool_fingerprints: tuple[tuple[str, str], ...]


class _Run:
    """Normalises the results of one ``runs[i]``, with its rules and URI bases."""

    def __init__(self, run: dict[str, Any], where: str, origin: str,
                 roots: list[tuple[str, ...]]) -> None:
        self.run = run
        self.where = where
        self.origin = origin
        self.roots = roots
        tool = self.obj(run, "tool", where) or {}
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
        self.bases = self.obj(run, "originalUriBaseIds", where) or {}
        self.artifacts = self.arr(run, "artifacts", where) or []

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
            self.fail(f"{where}.{key} is {_short(v)}, not an integer")
        return v

    # -- results

    def parse(self, out: list[_Raw]) -> None:
        for i, result in enumerate(self.run.get("results") or []):
            raw = self.result(self.as_obj(result, f"{self.where}.results[{i}]"),
                              f"{self.where}.results[{i}]")
            if raw is not None:
                out.append(raw)

    def result(self, res: dict[str, Any], where: str) -> _Raw | None:
        kind = self.str_(res, "kind", where)
        if kind is not None and kind.lower() in _NOT_FINDINGS:
            return None
        if self.str_(res, "baselineState", where) == "absent":
            return None
        if self.suppressed(res, where):
            return None
        rule_id, rule = self.rule(res, where)
        severity = self.severity(res, rule, kind, where)
        message = self.message(res, rule, where)
        path, start, end, snippet = "", None, None, None
        locations = self.arr(res, "locations", where) or []
        if locations:
            path, start, end, snippet = self.location(locations[0], f"{where}.locations[0]")
        return _Raw(
            rule_id=rule_id,
            severity=severity,
            path=path,
            start_line=start,
            end_line=end,
            message=message,
            snippet=snippet,
            tool_fingerprints=self.tool_fingerprints(res, where),
        )

    def suppressed(self, res: dict[str, Any], where: str) -> bool:
        for i, s in enumerate(self.arr(res, "suppressions", where) or []):
            sup = self.as_obj(s, f"{where}.suppressions[{i}]")
            status = self.str_(sup, "status", f"{where}.suppressions[{i}]")
            if status is None or status == "accepted":
                return True
        return False

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

    def location(self, loc: Any, where: str) -> tuple[str, int | None, int | None, str | None]:
        loc = self.as_obj(loc, where)
        phys = self.obj(loc, "physicalLocation", where)
        if phys is None:
            return "", None, None, None
        pwhere = f"{where}.physicalLocation"
        path = ""
        art = self.obj(phys, "artifactLocation", pwhere)
        if art is not None:
            path = self.artifact_path(art, f"{pwhere}.artifactLocation")
        start = end = None
        snippet = None
        region = self.obj(phys, "region", pwhere)
        if region is not None:
            rwhere = f"{pwhere}.region"
            start = self.int_(region, "startLine", rwhere)
            end = self.int_(region, "endLine", rwhere)
            if min(start or 0, end or 0) < 0:
                self.fail(f"{rwhere} has a negative line number (lines start at 1)")
            # Tools do write 0 for "no line" and endLine 0 or < startLine for "same line";
            # a whole scan is not refused for that.
            if not start:
                start = end = None
            elif end is None or end < start:
                end = start
            snip = self.obj(region, "snippet", rwhere)
            if snip is not None:
                text = self.str_(snip, "text", f"{rwhere}.snippet")
                if text is not None:
                    snippet = " ".join(text.split()) or None
        return path, start, end, snippet

    def artifact_path(self, art: dict[str, Any], where: str) -> str:
        uri = self.str_(art, "uri", where)
        base_id = self.str_(art, "uriBaseId", where)
        if uri is None:
            index = self.int_(art, "index", where)
            if index is None:
                return ""
            if not 0 <= index < len(self.artifacts):
                self.fail(f"{where}.index {index} does not name one of the run's "
                          f"{len(self.artifacts)} artifacts")
            awhere = f"{self.where}.artifacts[{index}]"
            artifact = self.as_obj(self.artifacts[index], awhere)
            location = self.obj(artifact, "location", awhere) or {}
            uri = self.str_(location, "uri", f"{awhere}.location")
            base_id = self.str_(location, "uriBaseId", f"{awhere}.location")
            if uri is None:
                return ""
        return self.resolve(uri, base_id, where, set())

    def resolve(self, uri: str, base_id: str | None, where: str, seen: set[str]) -> str:
        """``uri`` (relative to ``base_id`` if given) as a path relative to the checkout."""
        if "\x00" in uri:
            self.fail(f"{where}.uri contains a NUL character")
        m = _SCHEME.match(uri)
        if m is not None and len(m.group("scheme")) > 1:  # not a Windows drive letter
            scheme = m.group("scheme").lower()
            if scheme != "file":
                return self.remote(uri, where)
            parts = urlsplit(uri)
            if parts.netloc not in ("", "localhost"):
                self.fail(f"{where}.uri {uri!r} names a file on another host")
            path = unquote(parts.path)
            if not path.startswith("/"):
                return self.relative(path, uri, where)
            return self.absolute(path, uri, where)
        path = unquote(uri)
        if path.startswith("/"):
            return self.absolute(path, uri, where)
        prefix = self.base_prefix(base_id, where, seen) if base_id else ""
        return self.relative(f"{prefix}/{path}" if prefix else path, uri, where)

    def base_prefix(self, base_id: str, where: str, seen: set[str]) -> str:
        """Where ``base_id`` points, relative to the checkout. A base that is not defined,
        or is an absolute location outside the source root (the scanner saw the checkout
        at another mount path), is taken to be the root of the scan."""
        if base_id in seen:
            self.fail(f"{self.where}.originalUriBaseIds has a cycle through {base_id!r}")
        seen = seen | {base_id}
        entry = self.bases.get(base_id)
        if entry is None:
            return ""
        bwhere = f"{self.where}.originalUriBaseIds[{base_id!r}]"
        entry = self.as_obj(entry, bwhere)
        uri = self.str_(entry, "uri", bwhere)
        if uri is None:
            return ""
        m = _SCHEME.match(uri)
        if m is not None and len(m.group("scheme")) > 1:
            if m.group("scheme").lower() != "file":
                return ""
            uri = urlsplit(uri).path
        path = unquote(uri)
        if path.startswith("/"):
            stripped = self.strip_root(path)
            return "" if stripped is None else stripped
        parent = self.str_(entry, "uriBaseId", bwhere)
        prefix = self.base_prefix(parent, where, seen) if parent else ""
        return self.relative(f"{prefix}/{path}" if prefix else path, uri, bwhere)

    def absolute(self, path: str, uri: str, where: str) -> str:
        segments = path.split("/")
        if ".." in segments:
            self.fail(f"{where}.uri {uri!r} contains '..'")
        stripped = self.strip_root(path)
        if stripped is None:
            if not self.roots:
                self.fail(f"{where}.uri {uri!r} is an absolute path and no source root was "
                          "given to make it relative")
            root = "/" + "/".join(self.roots[0])
            self.fail(f"{where}.uri {uri!r} is an absolute path outside the source root "
                      f"{root!r}")
        return stripped

    def strip_root(self, path: str) -> str | None:
        segments = tuple(s for s in path.split("/") if s and s != ".")
        for root in self.roots:
            if segments[: len(root)] == root:
                return "/".join(segments[len(root):])
        return None

    def relative(self, path: str, uri: str, where: str) -> str:
        segments = [s for s in path.split("/") if s and s != "."]
        if ".." in segments:
            self.fail(f"{where}.uri {uri!r} contains '..'")
        return "/".join(segments)

    def remote(self, uri: str, where: str) -> str:
        try:
            parts = urlsplit(uri)
            host = parts.hostname or ""
            port = f":{parts.port}" if parts.port is not None else ""
        except ValueError:
            self.fail(f"{where}.uri {uri!r} is not a valid URI")
        segments = unquote(parts.path).split("/")
        if ".." in segments:
            self.fail(f"{where}.uri {uri!r} contains '..'")
        netloc = f"//{host}{port}" if parts.netloc else ""
        return f"{parts.scheme.lower()}:{netloc}{parts.path}"


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


# -------------------------------------------------------------------- fingerprints


def _fingerprints(scanner: str, raws: Sequence[_Raw]) -> list[str]:
    # 1. Tool fingerprints, unless one value is shared by results with different content.
    def content(r: _Raw) -> tuple[Any, ...]:
        return (r.start_line, r.snippet, r.message)

    tool_groups: dict[tuple[Any, ...], set[tuple[Any, ...]]] = defaultdict(set)
    for r in raws:
        if r.tool_fingerprints:
            tool_groups[(r.rule_id, r.path, r.tool_fingerprints)].add(content(r))

    # 2. Snippet-based keys get an ordinal among identical snippets, by line.
    def content_key(r: _Raw) -> tuple[Any, ...]:
        if r.snippet is not None:
            return (r.rule_id, r.path, "snippet", r.snippet, _collapse(r.message))
        return (r.rule_id, r.path, "line", r.start_line, _collapse(r.message))

    lines: dict[tuple[Any, ...], set[int]] = defaultdict(set)
    for r in raws:
        if r.snippet is not None:
            lines[content_key(r)].add(r.start_line or 0)
    ordinals = {key: {line: n for n, line in enumerate(sorted(found))}
                for key, found in lines.items()}

    out: list[str] = []
    for r in raws:
        tool_key = (r.rule_id, r.path, r.tool_fingerprints)
        payload: list[Any]
        if r.tool_fingerprints and len(tool_groups[tool_key]) == 1:
            payload = [_FINGERPRINT_VERSION, scanner, r.rule_id, r.path, "tool",
                       [list(p) for p in r.tool_fingerprints]]
        else:
            key = content_key(r)
            payload = [_FINGERPRINT_VERSION, scanner, *key]
            if r.snippet is not None:
                payload.append(ordinals[key][r.start_line or 0])
        blob = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        out.append(hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest())
    return out


_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def _printable(text: str) -> str:
    """``text`` without NULs and lone surrogates, which databases refuse to store."""
    return _UNSTORABLE.sub("\ufffd", text)


def _collapse(text: str) -> str:
    return " ".join(text.split())
