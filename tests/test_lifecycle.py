"""Findings over time, the pure parts (``scanward.lifecycle``, ``scanward.sarif_export``)
and the match fingerprint as the SARIF reader computes it. Fast: no server, no database.
The same flow for real (git, bandit, semgrep, the worker, the CLI, the webhook) is in
tests/test_findings_over_time.py; the store's side in tests/test_lifecycle_store.py."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from scanward.contract import Finding, Severity
from scanward.lifecycle import (
    NEW_FINDINGS_CAP,
    PAYLOAD_MESSAGE_CHARS,
    FindingState,
    Tracked,
    Triage,
    TriageState,
    at_or_above,
    cap_new,
    compare,
    gate,
    match_fingerprint,
    normalise_snippet,
    suppressed,
)
from scanward.sarif import parse_findings, read_findings
from scanward.sarif_export import MATCH_KEY, to_sarif
from tests.test_sarif import result, run_bandit, sarif

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def parse(data: bytes) -> list[Finding]:
    return parse_findings(data, scanner="tool", origin="results.sarif")


def finding(rule: str = "R1", severity: Severity = Severity.HIGH, line: int = 3,
            path: str = "src/a.py", **extra: Any) -> Finding:
    fp = f"{rule}{path}{line}".encode().hex()[:64].ljust(64, "0")
    return Finding(scanner="bandit", rule_id=rule, severity=severity, path=path,
                   start_line=line, end_line=line, message=f"{rule} here",
                   fingerprint=fp, match_fingerprint=fp[::-1], **extra)


# ---------------------------------------------------------------- match fingerprint


def test_snippets_are_normalised_without_suppression_markers() -> None:
    assert normalise_snippet("  subprocess.call(cmd,   shell=True)  ") == (
        "subprocess.call(cmd, shell=True)")
    # Suppressing a line inline must not make it another finding.
    for marked in ("subprocess.call(cmd, shell=True)  # nosec",
                   "subprocess.call(cmd, shell=True)  # nosec B602, B607",
                   "subprocess.call(cmd, shell=True)  # nosemgrep",
                   "subprocess.call(cmd, shell=True) # nosemgrep: python.lang.x, y.z",
                   "subprocess.call(cmd, shell=True) // NOSEMGREP"):
        assert normalise_snippet(marked) == "subprocess.call(cmd, shell=True)", marked
    # Only the marker goes: code after it (a collapsed multi-line snippet) stays.
    assert normalise_snippet("a = f(x)  # nosec B602 b = g(y)") == "a = f(x) b = g(y)"
    assert normalise_snippet("requires login") is None  # a placeholder identifies nothing
    assert normalise_snippet("   ") is None
    assert normalise_snippet(None) is None


def test_match_fingerprint_survives_line_moves_the_exact_one_may_not() -> None:
    # With a snippet: lines inserted above change neither.
    (a,) = parse(sarif([result(line=3, snippet="os.system(cmd)")]))
    (b,) = parse(sarif([result(line=30, snippet="  os.system(cmd)  # nosec")]))
    assert a.match_fingerprint == b.match_fingerprint
    assert a.match_fingerprint is not None and HEX64.match(a.match_fingerprint)
    # Without a snippet the exact fingerprint has the line; the match one does not: rule,
    # path and message.
    (c,) = parse(sarif([result(line=3)]))
    (d,) = parse(sarif([result(line=40)]))
    assert c.fingerprint != d.fingerprint
    assert c.match_fingerprint == d.match_fingerprint
    # Rule, path, code (or message) and scanner tell findings apart.
    base = c.match_fingerprint
    assert parse(sarif([result("R2", line=3)]))[0].match_fingerprint != base
    assert parse(sarif([result(uri="src/b.py", line=3)]))[0].match_fingerprint != base
    assert parse(sarif([result(text="other", line=3)]))[0].match_fingerprint != base
    assert parse_findings(sarif([result(line=3)]), scanner="other",
                          origin="o")[0].match_fingerprint != base
    assert parse(sarif([result(line=3, snippet="os.popen(cmd)")]))[0].match_fingerprint != (
        a.match_fingerprint)


def test_identical_flaws_stay_distinct_and_keep_their_match_when_shifted() -> None:
    def two(offset: int) -> list[Finding]:
        return parse(sarif([result(line=5 + offset, snippet="eval(x)"),
                            result(line=9 + offset, snippet="eval(x)")]))

    first, second = two(0)
    assert first.match_fingerprint != second.match_fingerprint
    assert [f.match_fingerprint for f in two(12)] == [first.match_fingerprint,
                                                      second.match_fingerprint]
    # The same result reported twice is one finding: one exact, one match fingerprint.
    twice = parse(sarif([result(line=5, snippet="eval(x)")] * 2))
    assert len({f.fingerprint for f in twice}) == len({f.match_fingerprint for f in twice}) == 1


def test_real_bandit_match_fingerprints_survive_inserted_lines(tmp_path: Path) -> None:
    code = "import subprocess\n\n\ndef run(cmd):\n    return subprocess.call(cmd, shell=True)\n"
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "app.py").write_text(code)
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "app.py").write_text(
        code.replace("def run", "def a():\n    return 1\n\n\ndef run") + "\n# nosec\n")
    found = []
    for version in ("v1", "v2"):
        out = tmp_path / f"{version}.sarif"
        run_bandit(tmp_path / version, out)
        found.append({f.rule_id: f for f in read_findings(
            out, scanner="bandit", source_root=tmp_path / version,
            checkout=tmp_path / version)})
    v1, v2 = found
    assert v1["B602"].start_line == 5 and v2["B602"].start_line == 9
    assert v1["B602"].match_fingerprint == v2["B602"].match_fingerprint
    assert v1["B404"].match_fingerprint == v2["B404"].match_fingerprint


def test_match_fingerprint_is_a_pure_function_of_its_parts() -> None:
    basis = ["R1", "a.py", "snippet", "eval(x)"]
    assert match_fingerprint("s", basis, 0) == match_fingerprint("s", list(basis), 0)
    assert match_fingerprint("s", basis, 0) != match_fingerprint("s", basis, 1)


# ------------------------------------------------------------------------ lifecycle


def t(ref: str, key: str, scanner: str = "bandit") -> Tracked[str]:
    return Tracked(ref=ref, key=key, scanner=scanner)


def test_compare_new_existing_fixed() -> None:
    # Commit 1 had A and B; commit 2 fixed A, moved B (same key), added C.
    result = compare([t("b2", "B"), t("c2", "C")], [t("a1", "A"), t("b1", "B")])
    assert result.new == ["c2"]
    assert result.existing == [("b2", "b1")]
    assert result.fixed == ["a1"]


def test_compare_without_a_previous_scan_everything_is_new() -> None:
    result = compare([t("a", "A"), t("b", "B")], None)
    assert (result.new, result.existing, result.fixed) == (["a", "b"], [], [])


def test_compare_repeated_keys_pair_in_order() -> None:
    result = compare([t("x1", "X"), t("x2", "X"), t("x3", "X")], [t("p1", "X"), t("p2", "X")])
    assert result.existing == [("x1", "p1"), ("x2", "p2")]
    assert result.new == ["x3"]
    result = compare([t("x1", "X")], [t("p1", "X"), t("p2", "X")])
    assert result.fixed == ["p2"]


def test_a_scanner_that_did_not_run_fixed_nothing() -> None:
    previous = [t("b1", "B", "bandit"), t("s1", "S", "semgrep")]
    result = compare([t("b2", "B", "bandit")], previous, scanners=["bandit"])
    assert result.fixed == []
    assert result.existing == [("b2", "b1")]


def test_suppressed_and_gate() -> None:
    now = datetime.now(UTC)
    assert suppressed("inSource", None)
    assert suppressed(None, Triage(TriageState.FALSE_POSITIVE, "test code", "ana", now))
    assert suppressed(None, Triage(TriageState.ACCEPTED_RISK, "internal only", "ana", now))
    assert not suppressed(None, Triage(TriageState.OPEN, "reopened", "ana", now))
    assert not suppressed(None, None)
    assert at_or_above(Severity.CRITICAL, Severity.HIGH)
    assert at_or_above(Severity.HIGH, Severity.HIGH)
    assert not at_or_above(Severity.MEDIUM, Severity.HIGH)
    rows = [(Severity.HIGH, True), (Severity.CRITICAL, False), (Severity.LOW, True)]
    hits = gate(rows, Severity.HIGH, severity=lambda r: r[0], counted=lambda r: r[1])
    assert hits == [(Severity.HIGH, True)]
    assert gate(rows, Severity.LOW, severity=lambda r: r[0], counted=lambda r: r[1]) == [
        (Severity.HIGH, True), (Severity.LOW, True)]


def test_new_findings_are_capped_most_severe_first_with_short_messages() -> None:
    many = [finding(f"R{i}", Severity.LOW if i % 2 else Severity.CRITICAL, line=i)
            for i in range(NEW_FINDINGS_CAP + 10)]
    kept, truncated = cap_new(many)
    assert truncated and len(kept) == NEW_FINDINGS_CAP
    assert [f.severity for f in kept[:30]] == [Severity.CRITICAL] * 30
    long = finding().model_copy(update={"message": "y" * 5000})
    (short,), truncated = cap_new([long])
    assert not truncated
    assert len(short.message) == PAYLOAD_MESSAGE_CHARS and short.message.endswith("…")


# ---------------------------------------------------------------------- SARIF export

_LEVELS = {"none", "note", "warning", "error"}
_BASELINE = {"new", "unchanged", "updated", "absent"}
_KINDS = {"inSource", "external"}
_STATUSES = {"accepted", "underReview", "rejected"}


def check_sarif(doc: dict[str, Any]) -> None:
    """The SARIF 2.1.0 structure GitHub code scanning and GitLab read: required members,
    their types and enumerations as the schema (sarif-schema-2.1.0.json) defines them."""
    assert doc["version"] == "2.1.0"
    assert doc["$schema"].endswith("sarif-2.1.0.json")
    assert isinstance(doc["runs"], list) and doc["runs"]
    json.dumps(doc, allow_nan=False)  # plain JSON
    for run in doc["runs"]:
        driver = run["tool"]["driver"]
        assert isinstance(driver["name"], str) and driver["name"]
        rules = driver.get("rules", [])
        ids = [r["id"] for r in rules]
        assert len(ids) == len(set(ids)), "rule ids are unique within a run"
        for rule in rules:
            score = float(rule["properties"]["security-severity"])
            assert 0.0 <= score <= 10.0
        for res in run["results"]:
            assert res["message"]["text"]
            assert res["level"] in _LEVELS
            assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
            for key in ("partialFingerprints", "fingerprints"):
                assert all(isinstance(v, str) for v in res.get(key, {}).values())
            assert res.get("baselineState", "new") in _BASELINE
            for sup in res.get("suppressions", []):
                assert sup["kind"] in _KINDS and sup.get("status", "accepted") in _STATUSES
            for loc in res.get("locations", []):
                uri = loc["physicalLocation"]["artifactLocation"]["uri"]
                assert " " not in uri and not uri.startswith("/"), uri
                urlsplit(uri)  # a URI reference
                region = loc["physicalLocation"].get("region", {})
                if region:
                    assert region["startLine"] >= 1
                    assert region.get("endLine", region["startLine"]) >= region["startLine"]
                    assert region.get("startColumn", 1) >= 1
        for prov in run.get("versionControlProvenance", []):
            assert "://" in prov["repositoryUri"]


def test_sarif_export_is_valid_and_reads_back() -> None:
    now = datetime(2026, 5, 1, tzinfo=UTC)
    items = [
        (finding("B602", Severity.HIGH, 12, start_column=5, end_column=30),
         FindingState.EXISTING, None),
        (finding("B605", Severity.CRITICAL, 20, path="dir with space/ä.py"), FindingState.NEW,
         Triage(TriageState.FALSE_POSITIVE, "test fixture", "ana", now)),
        (finding("B404", Severity.LOW, 1, suppression="inSource"), FindingState.NEW, None),
        (finding("B324", Severity.MEDIUM, 7).model_copy(update={"scanner": "semgrep"}),
         FindingState.FIXED, None),
        (finding("REPO", Severity.INFO, 1).model_copy(update={"path": ""}), None, None),
    ]
    doc = to_sarif(items, repository="https://example.com/app.git", commit="a" * 40,
                   ref="main")
    check_sarif(doc)
    bandit, semgrep = doc["runs"]
    assert bandit["tool"]["driver"]["name"] == "bandit"
    by_rule = {r["ruleId"]: r for r in bandit["results"]}
    assert by_rule["B602"]["partialFingerprints"] == {
        MATCH_KEY: items[0][0].match_fingerprint}
    assert by_rule["B602"]["baselineState"] == "unchanged"
    assert by_rule["B602"]["locations"][0]["physicalLocation"]["region"] == {
        "startLine": 12, "startColumn": 5, "endLine": 12, "endColumn": 30}
    assert by_rule["B605"]["suppressions"][0]["justification"].startswith(
        "false_positive: test fixture (by ana")
    assert by_rule["B605"]["locations"][0]["physicalLocation"]["artifactLocation"][
        "uri"] == "dir%20with%20space/%C3%A4.py"
    assert by_rule["B404"]["suppressions"] == [{"kind": "inSource", "status": "accepted"}]
    assert "locations" not in by_rule["REPO"]
    assert semgrep["results"][0]["baselineState"] == "absent"
    assert semgrep["versionControlProvenance"] == [{
        "repositoryUri": "https://example.com/app.git", "revisionId": "a" * 40,
        "branch": "main"}]

    # scanward reads its own export back: same rules, severities, paths, lines, the
    # suppressions as suppressions, and a fixed finding (baselineState absent) as none.
    back = read_findings(json.dumps(doc).encode(), scanner="bandit")
    got = {(f.rule_id, f.severity, f.path, f.start_line, f.suppression is not None)
           for f in back}
    assert got == {
        ("B602", Severity.HIGH, "src/a.py", 12, False),
        ("B605", Severity.CRITICAL, "dir with space/ä.py", 20, True),
        ("B404", Severity.LOW, "src/a.py", 1, True),
        ("REPO", Severity.INFO, "", None, False),
    }


@pytest.mark.parametrize("severity", list(Severity))
def test_sarif_export_severity_round_trips(severity: Severity) -> None:
    doc = to_sarif([(finding(severity=severity), None, None)], repository="/local/dir",
                   commit=None, ref=None)
    check_sarif(doc)
    assert "versionControlProvenance" not in doc["runs"][0]  # not a URI
    (back,) = read_findings(json.dumps(doc).encode(), scanner="bandit")
    assert back.severity is severity
