"""Tests of SARIF normalisation (``scanward.sarif``).

Fixtures in ``tests/data/sarif``:

* ``bandit.sarif`` is REAL bandit 1.9.4 output: ``bandit -q -r . -f sarif`` run inside
  ``bandit_src/``. The tests below also run the real bandit binary themselves.
* ``gitleaks.sarif`` and ``trivy.sarif`` are HAND-WRITTEN in the shape gitleaks 8.28
  (``gitleaks dir``) and trivy 0.67 (``trivy fs``) emit — partialFingerprints, absolute
  paths, ``security-severity``, rules with ``defaultConfiguration``, ``uriBaseId`` with
  ``originalUriBaseIds`` — because those tools are not installable here. Semgrep-shaped
  cases (placeholder fingerprints, ``nosemgrep`` suppressions) are written inline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scanward.contract import Finding, Severity
from scanward.sarif import (
    MAX_FILE_BYTES,
    MAX_MESSAGE_CHARS,
    UNRESOLVED,
    SarifError,
    dedupe,
    load_findings,
    parse_findings,
    read_findings,
)

DATA = Path(__file__).parent / "data" / "sarif"
BANDIT_SRC = DATA / "bandit_src"
CHECKOUT = Path("/workspace/scan-demo/src")  # where the hand-written fixtures were "scanned"

BANDIT_EXPECTED = [
    ("B403", Severity.LOW, "app.py", 3),
    ("B404", Severity.LOW, "app.py", 4),
    ("B105", Severity.LOW, "app.py", 8),
    ("B602", Severity.HIGH, "app.py", 12),
    ("B301", Severity.MEDIUM, "app.py", 16),
    ("B506", Severity.MEDIUM, "app.py", 20),
    ("B101", Severity.LOW, "app.py", 24),
]


# ------------------------------------------------------------------------- helpers


def bandit_exe() -> str:
    found = shutil.which("bandit") or str(Path(sys.executable).parent / "bandit")
    assert Path(found).exists(), "bandit is a dependency (bandit[sarif]) and must be installed"
    return found


def run_bandit(target: Path, out: Path) -> None:
    """Run the real bandit on ``target`` (absolute: it then writes file:// URIs)."""
    proc = subprocess.run(
        [bandit_exe(), "-q", "-r", str(target), "-f", "sarif", "-o", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1 means "found issues"


def sarif(results: list[dict[str, Any]], *, rules: list[dict[str, Any]] | None = None,
          **run: Any) -> bytes:
    """A minimal SARIF log with one run."""
    driver: dict[str, Any] = {"name": "tool"}
    if rules is not None:
        driver["rules"] = rules
    doc = {"version": "2.1.0", "runs": [{"tool": {"driver": driver}, "results": results, **run}]}
    return json.dumps(doc).encode()


def result(rule_id: str | None = "R1", *, uri: str | None = "src/a.py", line: int | None = 3,
           snippet: str | None = None, text: str = "bad thing", **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"message": {"text": text}, **extra}
    if rule_id is not None:
        res["ruleId"] = rule_id
    if uri is not None:
        region: dict[str, Any] = {}
        if line is not None:
            region["startLine"] = line
        if snippet is not None:
            region["snippet"] = {"text": snippet}
        res["locations"] = [{"physicalLocation": {"artifactLocation": {"uri": uri},
                                                  "region": region}}]
    return res


def parse(data: bytes, **kw: Any) -> list[Finding]:
    return parse_findings(data, scanner="tool", origin="results.sarif", **kw)


def summary(findings: list[Finding]) -> list[tuple[str, Severity, str, int | None]]:
    return [(f.rule_id, f.severity, f.path, f.start_line) for f in findings]


# ---------------------------------------------------------------- real bandit output


def test_real_bandit_output_normalises() -> None:
    findings = load_findings(DATA / "bandit.sarif", scanner="bandit")
    assert summary(findings) == BANDIT_EXPECTED
    assert all(f.scanner == "bandit" for f in findings)
    by_rule = {f.rule_id: f for f in findings}
    assert by_rule["B602"].message == (
        "subprocess call with shell=True identified, security issue.")
    assert by_rule["B602"].end_line == 12
    assert all(re.fullmatch(r"[0-9a-f]{64}", f.fingerprint) for f in findings)
    assert len({f.fingerprint for f in findings}) == len(findings)


def test_live_bandit_with_absolute_paths_matches_the_fixture(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(BANDIT_SRC, src)
    out = tmp_path / "out.sarif"
    run_bandit(src, out)  # absolute target: bandit writes file:///.../src/app.py
    assert "file://" in out.read_text()
    live = load_findings(out, scanner="bandit", source_root=src)
    fixture = load_findings(DATA / "bandit.sarif", scanner="bandit")
    assert summary(live) == BANDIT_EXPECTED
    # Same code, relative vs absolute invocation, another run: same fingerprints.
    assert [f.fingerprint for f in live] == [f.fingerprint for f in fixture]
    # Absolute paths outside the source root (or with none given) are never stored as
    # paths; the findings are kept, marked, and counted.
    for root in (tmp_path / "elsewhere", None):
        stream = read_findings(out, scanner="bandit", source_root=root)
        outside = list(stream)
        assert len(outside) == len(live)
        assert all(f.path.startswith(f"{UNRESOLVED}outside-checkout/file%3A%2F%2F%2F")
                   for f in outside), outside[0].path
        assert stream.stats.unresolved == {"outside-checkout": len(live)}


def test_fingerprints_survive_inserting_lines_above_findings(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(BANDIT_SRC, src)
    run_bandit(src, tmp_path / "before.sarif")
    before = load_findings(tmp_path / "before.sarif", scanner="bandit", source_root=src)

    app = src / "app.py"
    text = app.read_text()
    text = "\n\n\n" + text.replace("def load_session", "\n\n# a comment\n\ndef load_session")
    app.write_text(text)
    run_bandit(src, tmp_path / "after.sarif")
    after = load_findings(tmp_path / "after.sarif", scanner="bandit", source_root=src)

    assert [f.rule_id for f in after] == [f.rule_id for f in before]
    assert [f.start_line for f in after] != [f.start_line for f in before]  # really shifted
    assert [f.start_line for f in after][-1] == 24 + 3 + 4
    assert [f.fingerprint for f in after] == [f.fingerprint for f in before]


def test_identical_flaws_stay_distinct_and_keep_their_fingerprints(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    code = "def f(x):\n    assert x\n\n\ndef g(x):\n    assert x\n"
    (src / "m.py").write_text(code)
    run_bandit(src, tmp_path / "a.sarif")
    first = load_findings(tmp_path / "a.sarif", scanner="bandit", source_root=src)
    assert [(f.rule_id, f.start_line) for f in first] == [("B101", 2), ("B101", 6)]
    assert first[0].fingerprint != first[1].fingerprint  # same snippet and message

    (src / "m.py").write_text("import os\n\n" + code)
    run_bandit(src, tmp_path / "b.sarif")
    second = load_findings(tmp_path / "b.sarif", scanner="bandit", source_root=src)
    assert [f.start_line for f in second] == [4, 8]
    assert [f.fingerprint for f in second] == [f.fingerprint for f in first]


# Two calls over several lines: bandit 1.9's snippet for each is some later line (the
# last of a window after the call), not the call's, so it changes with code after it.
MULTI = """\
import subprocess
def m(cmd):
    return subprocess.call(
        cmd,
        shell=True,
    )
def n(cmd):
    return subprocess.call(
        cmd,
        shell=True,
    )
"""
O_FUNCTION = "def o(cmd):\n    return subprocess.call(cmd, shell=True)\n"


def b602(src: Path, out: Path) -> list[Finding]:
    run_bandit(src, out)
    found = load_findings(out, scanner="bandit", source_root=src, checkout=src)
    return [f for f in found if f.rule_id == "B602"]


def test_multi_line_calls_keep_their_fingerprints_when_code_after_them_changes(
        tmp_path: Path) -> None:
    """bandit's snippet for a call over several lines is another line of the file: the
    snippet is then taken from the checkout (the region's lines), so appending code
    after the calls changes neither call's identity."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "multi.py").write_text(MULTI)
    before = b602(src, tmp_path / "a.sarif")
    assert [f.start_line for f in before] == [3, 8]
    raw = json.loads((tmp_path / "a.sarif").read_text())["runs"][0]["results"]
    snippets = [r["locations"][0]["physicalLocation"]["region"]["snippet"]["text"]
                for r in raw if r["ruleId"] == "B602"]
    assert snippets[1].strip() == ")"  # bandit quotes line 11, not line 8

    (src / "multi.py").write_text(MULTI + O_FUNCTION)
    with_o = b602(src, tmp_path / "b.sarif")
    (src / "multi.py").write_text(MULTI + O_FUNCTION + "X = 1\n")
    with_x = b602(src, tmp_path / "c.sarif")
    assert [f.start_line for f in with_x] == [3, 8, 13]

    keys = [f.match_fingerprint for f in before]
    assert len(set(keys)) == 2  # m and n stay two findings
    assert [f.match_fingerprint for f in with_o[:2]] == keys
    assert [f.match_fingerprint for f in with_x[:2]] == keys
    assert with_o[2].match_fingerprint not in keys  # o is another finding
    assert [f.fingerprint for f in with_x[:2]] == [f.fingerprint for f in before]


# Fingerprints the previous algorithm (tool snippets never checked) gave these results of
# real bandit 1.9.4 and semgrep on APP and MULTI: every snippet below is the text of its
# region's lines in the checkout, so none may change (findings stored before would
# otherwise all turn new + fixed and lose their triage). The bandit values are also the
# README's (app.py of "Findings over time").
APP = """\
import hashlib
import subprocess


def digest(data):
    return hashlib.md5(data).hexdigest()


def run(cmd):
    return subprocess.call(cmd, shell=True)


def again(cmd):
    return subprocess.call(cmd, shell=True)
"""
STORED_BANDIT = [  # (rule, path, line, match fingerprint, fingerprint)
    ("B404", "app.py", 2, "0414eb450551d4c3f55da347de6bd9167b9aa73fcba8e75c0172d0cbc8cdcf8b",
     "8c14e2c28dd0f63378554fbc84bae55ddcf9d8a53b999e0ca1e221258f36df80"),
    ("B324", "app.py", 6, "86a88551344a39c122126cf5dfe53ae3c8dc3162656c8cf6b72c28f51b9616fc",
     "ca0dbb6b9ef501202f7c19ce442f49bf9a12c1143c4db40dc6e77bb00ab80f32"),
    ("B602", "app.py", 10, "1ac016f4c56b9619a20778fb139f26c93bbdebdf1a4e19e94cba2ee8a0a6e32e",
     "a7e9df51a5c1d8b08a40fa33a303d759600175dd21108fa22cb529785072162e"),
    ("B602", "app.py", 14, "9190d5d91648f4540338a53f3cccd068f5965b592fff187ef37000005ffe32ce",
     "ad3d836809cdf2023aff957edcc3c3c21fcc0841da9bf4e1aed412d4d6df920a"),
]
STORED_SEMGREP = [  # (rule, path, line, match fingerprint); multi.py's snippet: 4 lines
    ("weak-hash-md5", "app.py", 6,
     "15ea883633e97c1aac55413b90fdd8dccda291f5de7984a8fbb4275ae9424c87"),
    ("subprocess-shell-true", "app.py", 10,
     "12c270642629bd6a3d484a93cafebd3b34945f43e8587496537032d766826560"),
    ("subprocess-shell-true", "app.py", 14,
     "96cd4553d5d2cd9baa8900f456e86dd66f040bb85ef5d9de74d8e9128155c208"),
    ("subprocess-shell-true", "multi.py", 3,
     "cec6f4c30f3df7ee732a0b67f5e05b275536089dd59a03b2920ed4d9f7b3f9c3"),
]


def run_semgrep(src: Path, out: Path, home: Path) -> None:
    exe = Path(sys.executable).parent / "semgrep"
    assert exe.exists(), "semgrep is installed by tools/setup.sh (the semgrep extra)"
    proc = subprocess.run(
        [str(exe), "scan", "--config", "semgrep-python.yml", "--metrics", "off",
         "--disable-version-check", "--quiet", "--sarif", "--output", str(out), str(src)],
        cwd=Path(__file__).parent.parent / "scanward" / "rules", capture_output=True,
        text=True, timeout=300, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home), "SEMGREP_SEND_METRICS": "off",
             "SEMGREP_ENABLE_VERSION_CHECK": "0"})
    assert proc.returncode in (0, 1), proc.stderr


def test_fingerprints_of_faithful_snippets_are_those_stored_before(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "app.py").write_text(APP)
    (src / "multi.py").write_text(MULTI.split("def n")[0])
    run_bandit(src, tmp_path / "bandit.sarif")
    bandit = [f for f in load_findings(tmp_path / "bandit.sarif", scanner="bandit",
                                       source_root=src, checkout=src) if f.path == "app.py"]
    assert [(f.rule_id, f.path, f.start_line, f.match_fingerprint, f.fingerprint)
            for f in bandit] == STORED_BANDIT

    run_semgrep(src, tmp_path / "semgrep.sarif", tmp_path)
    semgrep = load_findings(tmp_path / "semgrep.sarif", scanner="semgrep", source_root=src,
                            checkout=src)
    assert sorted((f.rule_id.rsplit(".", 1)[-1], f.path, f.start_line, f.match_fingerprint)
                  for f in semgrep) == sorted(STORED_SEMGREP)


def test_snippets_checked_against_the_checkout(tmp_path: Path) -> None:
    """Only a snippet that is other whole lines of the file is replaced by the region's
    lines; the tool's own text (gitleaks' REDACTED, part of a line, code the checkout
    does not have, a file that is not readable) is kept as it was."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.py").write_text("import os\nkey = 'AKIAXXXX'\n\ncall(\n    x,\n)\nY = 1\n")
    (tmp_path / "outside.py").write_text("one\ntwo\nthree\n")
    (src / "sub" / "link.py").symlink_to(tmp_path / "outside.py")
    os.mkfifo(src / "fifo.py")  # never opened for reading (it would block)

    def fps(res: dict[str, Any], **kw: Any) -> tuple[str, str]:
        (f,) = parse(sarif([res]), **kw)
        return f.match_fingerprint or "", f.fingerprint

    def at_(line: int, end: int, snippet: str, uri: str = "a.py") -> dict[str, Any]:
        res = result(uri=uri, line=line, snippet=snippet)
        res["locations"][0]["physicalLocation"]["region"]["endLine"] = end
        return res

    with_checkout = {"checkout": src, "source_root": src}
    for res in (at_(2, 2, "REDACTED"), at_(2, 2, "AKIAXXXX"), at_(4, 5, "call(\n    x,"),
                at_(2, 2, "code = 'not in this file'"), at_(9, 9, "Y = 1"),
                at_(1, 1, "two", uri="sub/link.py"), at_(1, 1, "two", uri="fifo.py")):
        assert fps(res, **with_checkout) == fps(res, source_root=src), res

    # Line 7 quoted for a region of lines 4-5: the snippet is lines 4-5 as they are.
    assert fps(at_(4, 5, "Y = 1\n"), **with_checkout) == fps(at_(4, 5, "call( x,"))
    assert fps(at_(4, 5, ")"), **with_checkout) == fps(at_(4, 5, "call( x,"))


# ------------------------------------------------------ gitleaks and trivy (hand-written)


def test_gitleaks_shape() -> None:
    findings = load_findings(DATA / "gitleaks.sarif", scanner="gitleaks", source_root=CHECKOUT)
    assert summary(findings) == [
        ("aws-access-token", Severity.MEDIUM, "config/settings.py", 12),
        ("generic-api-key", Severity.MEDIUM, "config/settings.py", 18),
        ("generic-api-key", Severity.MEDIUM, "config/settings.py", 27),
        ("private-key", Severity.MEDIUM, "deploy/id_rsa", 1),
    ]
    assert findings[3].end_line == 27
    # Two redacted secrets with the same rule, snippet and message remain two findings.
    assert len({f.fingerprint for f in findings}) == 4


def test_gitleaks_fingerprints_survive_line_shifts() -> None:
    doc = json.loads((DATA / "gitleaks.sarif").read_bytes())
    before = parse_findings(json.dumps(doc).encode(), scanner="gitleaks", origin="a",
                            source_root=CHECKOUT)
    for res in doc["runs"][0]["results"]:
        region = res["locations"][0]["physicalLocation"]["region"]
        region["startLine"] += 7
        region["endLine"] += 7
    after = parse_findings(json.dumps(doc).encode(), scanner="gitleaks", origin="b",
                           source_root=CHECKOUT)
    assert [f.start_line for f in after] == [19, 25, 34, 8]
    assert [f.fingerprint for f in after] == [f.fingerprint for f in before]


def test_shared_tool_fingerprints_do_not_merge_distinct_findings() -> None:
    """gitleaks' partialFingerprints are commit metadata: every secret of one commit has
    the same ones, so they cannot identify a finding on their own."""
    commit = {"commitSha": "abc123", "email": "a@example.com", "author": "A",
              "date": "2025-01-01T00:00:00Z", "commitMessage": "oops"}
    data = sarif([result("generic-api-key", line=3, snippet="REDACTED", text="m",
                         partialFingerprints=commit),
                  result("generic-api-key", line=9, snippet="REDACTED", text="m",
                         partialFingerprints=commit)])
    a, b = parse(data)
    assert a.fingerprint != b.fingerprint


def test_trivy_shape_resolves_uri_base_ids_and_scores() -> None:
    findings = load_findings(DATA / "trivy.sarif", scanner="trivy", source_root=CHECKOUT)
    assert summary(findings) == [
        ("CVE-2023-32681", Severity.MEDIUM, "requirements.txt", 3),  # security-severity 6.1
        ("CVE-2020-14343", Severity.CRITICAL, "requirements.txt", 5),  # 9.8
        ("DS002", Severity.HIGH, "docker/Dockerfile", 1),  # 8.0
        ("DS026", Severity.LOW, "docker/Dockerfile", 1),  # 2.0
    ]
    assert findings[0].message.startswith("Package: requests\nInstalled Version: 2.25.1\n")
    # The scanner saw the checkout at another mount path: the base is the scan root.
    elsewhere = load_findings(DATA / "trivy.sarif", scanner="trivy", source_root=Path("/x"))
    assert [f.path for f in elsewhere] == [f.path for f in findings]
    assert [f.fingerprint for f in elsewhere] == [f.fingerprint for f in findings]
    # The base is a subdirectory of the checkout: its path is kept.
    parent = load_findings(DATA / "trivy.sarif", scanner="trivy", source_root=CHECKOUT.parent)
    assert parent[0].path == "src/requirements.txt"


# -------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("res", "rules", "expected"),
    [
        pytest.param({"level": "note", "properties": {"issue_severity": "HIGH"}}, None,
                     Severity.HIGH, id="bandit-issue-severity-beats-level"),
        pytest.param({"properties": {"security-severity": "9.0"}}, None, Severity.CRITICAL,
                     id="score-9-critical"),
        pytest.param({"properties": {"security-severity": 8.9}}, None, Severity.HIGH,
                     id="score-8.9-high"),
        pytest.param({"properties": {"security-severity": "7"}}, None, Severity.HIGH,
                     id="score-7-high"),
        pytest.param({"properties": {"security-severity": "4.0"}}, None, Severity.MEDIUM,
                     id="score-4-medium"),
        pytest.param({"properties": {"security-severity": "0.1"}}, None, Severity.LOW,
                     id="score-0.1-low"),
        pytest.param({"properties": {"security-severity": "0"}}, None, Severity.INFO,
                     id="score-0-info"),
        pytest.param({"level": "note", "properties": {"security-severity": "n/a"}}, None,
                     Severity.LOW, id="unparseable-score-falls-through"),
        pytest.param({"level": "note"},
                     [{"id": "R1", "properties": {"security-severity": "9.1"}}],
                     Severity.CRITICAL, id="rule-score-beats-level"),
        pytest.param({"level": "note"}, [{"id": "R1", "defaultConfiguration": {"level": "error"}}],
                     Severity.LOW, id="result-level-overrides-rule-default"),
        pytest.param({}, [{"id": "R1", "defaultConfiguration": {"level": "error"}}],
                     Severity.HIGH, id="rule-default-level"),
        pytest.param({"ruleIndex": 0}, [{"id": "R1", "defaultConfiguration": {"level": "none"}}],
                     Severity.INFO, id="rule-by-index"),
        pytest.param({"level": "error"}, None, Severity.HIGH, id="error-high"),
        pytest.param({"level": "warning"}, None, Severity.MEDIUM, id="warning-medium"),
        pytest.param({"level": "none"}, None, Severity.INFO, id="none-info"),
        pytest.param({}, None, Severity.MEDIUM, id="absent-is-warning"),
        pytest.param({"kind": "informational"}, None, Severity.INFO, id="non-fail-kind-is-none"),
    ],
)
def test_severity_mapping(res: dict[str, Any], rules: list[dict[str, Any]] | None,
                          expected: Severity) -> None:
    (finding,) = parse(sarif([{**result(), **res}], rules=rules))
    assert finding.severity is expected


def test_rule_found_through_index_and_extension() -> None:
    run = {"tool": {"driver": {"name": "codeql"},
                    "extensions": [{"name": "pack", "rules": [
                        {"id": "js/xss", "defaultConfiguration": {"level": "error"}}]}]},
           "results": [{"rule": {"index": 0, "toolComponent": {"index": 0}},
                        "message": {"text": "xss"}}]}
    (f,) = parse(json.dumps({"version": "2.1.0", "runs": [run]}).encode())
    assert (f.rule_id, f.severity, f.path, f.start_line) == ("js/xss", Severity.HIGH, "", None)


@pytest.mark.parametrize(
    ("uri", "base", "expected"),
    [
        ("./src/./app.py", None, "src/app.py"),
        ("src//pkg/app.py", None, "src/pkg/app.py"),
        ("src/my%20file.py", None, "src/my file.py"),
        ("file:///workspace/scan-demo/src/pkg/a.py", None, "pkg/a.py"),
        ("file://localhost/workspace/scan-demo/src/a.py", None, "a.py"),
        ("/workspace/scan-demo/src/a.py", None, "a.py"),
        ("a.py", "SRC", "pkg/a.py"),
        ("a.py", "NESTED", "pkg/sub/a.py"),
        ("a.py", "%SRCROOT%", "a.py"),  # undefined base: the scan root
        ("https://user:tok@example.com/mod/main.tf?ref=v1#x", None,
         "https://example.com/mod/main.tf"),
    ],
)
def test_paths(uri: str, base: str | None, expected: str) -> None:
    res = result(uri=uri)
    if base:
        res["locations"][0]["physicalLocation"]["artifactLocation"]["uriBaseId"] = base
    bases = {"SRC": {"uri": "file:///workspace/scan-demo/src/pkg/"},
             "NESTED": {"uri": "sub/", "uriBaseId": "SRC"}}
    (f,) = parse(sarif([res], originalUriBaseIds=bases), source_root=CHECKOUT)
    assert f.path == expected


def test_location_forms() -> None:
    artifacts = [{"location": {"uri": "lib/x.py"}}]
    data = sarif([
        result(uri=None),  # no location: repository-level finding
        {"ruleId": "R1", "message": {"text": "m"},
         "locations": [{"physicalLocation": {"artifactLocation": {"index": 0},
                                             "region": {"startLine": 2, "endLine": 4}}}]},
        {"ruleId": "R1", "message": {"text": "m"},
         "locations": [{"logicalLocations": [{"fullyQualifiedName": "pkg.mod"}]}]},
    ], artifacts=artifacts)
    assert [(f.path, f.start_line, f.end_line) for f in parse(data)] == [
        ("", None, None), ("lib/x.py", 2, 4), ("", None, None)]


def test_messages() -> None:
    rules = [{"id": "R1", "messageStrings": {"default": {"text": "{0} flows into {1}"}}}]
    data = sarif([
        {"ruleId": "R1", "message": {"id": "default", "arguments": ["input", "exec()"]}},
        result(text="x" * 5000),
    ], rules=rules)
    a, b = parse(data)
    assert a.message == "input flows into exec()"
    assert len(b.message) == MAX_MESSAGE_CHARS
    assert b.message.endswith("…")


def test_results_that_are_not_findings_are_skipped_suppressed_ones_kept() -> None:
    data = sarif([
        result(text="kept"),
        result(kind="pass"),
        result(kind="notApplicable"),
        result(baselineState="absent"),
        # Suppressed (e.g. # nosemgrep): kept and marked, never silently dropped.
        result(suppressions=[{"kind": "inSource"}], text="suppressed"),
        result(suppressions=[{"kind": "external", "status": "rejected"}], text="kept too"),
        result(suppressions=[{"kind": "external", "justification": "  test  data "},
                             {"kind": "inSource", "status": "underReview"}], text="waived"),
    ])
    assert [(f.message, f.suppression) for f in parse(data)] == [
        ("kept", None), ("suppressed", "inSource"), ("kept too", None),
        ("waived", "external: test data")]


def test_tool_fingerprints_are_preferred_and_placeholders_ignored() -> None:
    fp = {"matchBasedId/v1": "5f9c0e3b" * 8}
    a1, a2 = parse(sarif([result(line=3, snippet="os.system(x)", fingerprints=fp),
                          result(line=30, snippet="os.system(y)", text="moved", fingerprints=fp,
                                 )]))
    # Different content under one tool fingerprint: not trusted, content decides.
    assert a1.fingerprint != a2.fingerprint
    (b1,) = parse(sarif([result(line=3, snippet="os.system(x)", fingerprints=fp)]))
    (b2,) = parse(sarif([result(line=40, snippet="os.system(x)  # edited", fingerprints=fp)]))
    assert b1.fingerprint == b2.fingerprint  # the tool's fingerprint wins
    # semgrep logged out: "requires login" everywhere identifies nothing.
    login = {"matchBasedId/v1": "requires login"}
    c1, c2 = parse(sarif([result(line=3, snippet="requires login", fingerprints=login),
                          result(line=9, snippet="requires login", fingerprints=login)]))
    assert c1.fingerprint != c2.fingerprint


def test_fingerprint_depends_on_scanner_rule_path_and_message() -> None:
    base = parse(sarif([result()]))[0].fingerprint
    assert parse_findings(sarif([result()]), scanner="other", origin="o")[0].fingerprint != base
    assert parse(sarif([result("R2")]))[0].fingerprint != base
    assert parse(sarif([result(uri="src/b.py")]))[0].fingerprint != base
    assert parse(sarif([result(text="other")]))[0].fingerprint != base
    assert parse(sarif([result(line=4)]))[0].fingerprint != base  # no snippet: the line counts
    assert parse(sarif([result()]))[0].fingerprint == base


def test_dedupe_first_wins_order_preserved() -> None:
    data = sarif([
        result("R1", line=3, text="first"),
        result("R2", line=5),
        result("R1", line=3, text="first"),  # the tool reported it twice
        result("R3", line=1),
    ])
    findings = parse(data)
    assert len(findings) == 4
    assert findings[0].fingerprint == findings[2].fingerprint
    kept = dedupe(findings)
    assert [f.rule_id for f in kept] == ["R1", "R2", "R3"]
    assert kept[0] is findings[0]
    # Across files too (e.g. two attempts' outputs), and with any iterable.
    assert dedupe(iter(findings + findings)) == kept
    renamed = findings[2].model_copy(update={"message": "second"})
    assert dedupe([findings[0], renamed])[0].message == "first"


# ------------------------------------------- distinct findings are never merged


def at(rule: str = "R1", *, line: int = 4, col: int | None = None, end_line: int | None = None,
       end_col: int | None = None, snippet: str | None = None, text: str = "bad thing",
       **extra: Any) -> dict[str, Any]:
    """A result with a full region (columns, end line)."""
    res = result(rule, line=line, snippet=snippet, text=text, **extra)
    region = res["locations"][0]["physicalLocation"]["region"]
    for key, value in (("startColumn", col), ("endLine", end_line), ("endColumn", end_col)):
        if value is not None:
            region[key] = value
    return res


def test_same_line_results_at_other_columns_stay_distinct() -> None:
    """``x = random.random() + random.random()``: one rule, one line, two columns. The
    first keeps the fingerprint a lone result on that line always had."""
    a, b = parse(sarif([at(col=5, end_col=20), at(col=23, end_col=38)]))
    assert a.fingerprint != b.fingerprint
    assert (a.start_column, a.end_column, b.start_column, b.end_column) == (5, 20, 23, 38)
    (alone,) = parse(sarif([at()]))
    assert a.fingerprint == alone.fingerprint


def test_statement_snippet_collision_stays_two_findings() -> None:
    """Two flaws of one multi-line statement: the SARIF gives both the statement's start
    line and snippet, and the same message; only the end of their regions differs."""
    stmt = "w = eval("
    data = sarif([
        at("B307", line=9, col=5, end_line=10, end_col=8, snippet=stmt, text="eval"),
        at("B307", line=9, col=5, end_line=10, end_col=20, snippet=stmt, text="eval"),
        at("B307", line=9, col=5, end_line=10, end_col=20, snippet=stmt, text="eval"),  # again
    ])
    first, second, again = parse(data)
    assert first.fingerprint != second.fingerprint
    assert second.fingerprint == again.fingerprint  # the tool reported it twice
    assert len(dedupe([first, second, again])) == 2


def test_only_truly_identical_results_share_a_fingerprint() -> None:
    """Same rule, path, start/end line and column, and message: one finding. Any
    difference, with or without snippets and tool fingerprints: two."""
    shared = {"partialFingerprints": {"commitSha": "abc"}}  # gitleaks-style, shared
    variants: list[dict[str, Any]] = []
    for snippet in (None, "s = 1"):
        for extra in ({}, shared):
            base: dict[str, Any] = {"snippet": snippet, **extra}
            variants += [
                at(col=1, end_col=5, **base), at(col=2, end_col=5, **base),
                at(col=1, end_col=6, **base), at(col=1, end_line=5, end_col=5, **base),
                at(line=5, col=1, end_col=5, **base), at(col=1, end_col=5, text="other", **base),
                at(col=1, end_col=5, text="bad  thing", **base),  # whitespace differs
                at("R2", col=1, end_col=5, **base),
            ]
    findings = parse(sarif(variants))
    groups = [findings[i:i + 8] for i in range(0, len(findings), 8)]
    for group in groups:
        assert len({f.fingerprint for f in group}) == 8, [f.fingerprint[:8] for f in group]
    # ... and each of them reported twice is still that many findings.
    doubled = parse(sarif(variants + variants))
    assert len(dedupe(doubled)) == len({f.fingerprint for f in findings})
    assert [f.fingerprint for f in doubled[:len(variants)]] == [
        f.fingerprint for f in doubled[len(variants):]]


def test_same_line_fingerprints_survive_line_shifts() -> None:
    snippet = "x = random.random() + random.random()"
    before = parse(sarif([at(line=4, col=5, snippet=snippet), at(line=4, col=23, snippet=snippet),
                          at(line=9, col=5, snippet=snippet)]))
    after = parse(sarif([at(line=7, col=5, snippet=snippet), at(line=7, col=23, snippet=snippet),
                         at(line=12, col=5, snippet=snippet)]))
    assert len({f.fingerprint for f in before}) == 3
    assert [f.fingerprint for f in after] == [f.fingerprint for f in before]


def test_columns_are_read_like_lines() -> None:
    (f,) = parse(sarif([at(col=0, end_col=7)]))  # 0: unknown
    assert (f.start_column, f.end_column) == (None, 7)
    with pytest.raises(SarifError, match=r"region has a negative column number"):
        parse(sarif([at(col=-2)]))
    with pytest.raises(SarifError, match=r"region.startColumn is '3', not an integer"):
        parse(sarif([at(col="3")]))  # type: ignore[arg-type]


# ----------------------------------------------- paths checked against the checkout


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout whose file names SARIF writers disagree about."""
    src = tmp_path / "scan" / "src"
    for name in ("pct%41.py", "both%41.py", "bothA.py", "my file.py", "ünï.py",
                 "sub/a#b.py", "%2E%2E/x.py", "back\\slash.py"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("x = 1\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.py").write_text("secret = 1\n")
    (src / "link").symlink_to(outside)
    return src


def resolve_in(checkout: Path, uri: str, base: str | None = None,
               bases: dict[str, Any] | None = None) -> tuple[str, Any]:
    res = result(uri=uri)
    if base:
        res["locations"][0]["physicalLocation"]["artifactLocation"]["uriBaseId"] = base
    data = sarif([res], originalUriBaseIds=bases or {})
    stream = read_findings(data, scanner="tool", origin="r.sarif", source_root=checkout,
                           checkout=checkout)
    (f,) = list(stream)
    return f.path, stream.stats


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("pct%41.py", "pct%41.py"),  # semgrep: raw, and that file exists
        ("pct%2541.py", "pct%41.py"),  # SARIF-conformant, percent-encoded
        ("both%41.py", "both%41.py"),  # both readings exist: as written wins
        ("my file.py", "my file.py"),
        ("my%20file.py", "my file.py"),
        ("ünï.py", "ünï.py"),
        ("%C3%BCn%C3%AF.py", "ünï.py"),
        ("./sub//a#b.py", "sub/a#b.py"),
        ("sub/a%23b.py", "sub/a#b.py"),
        ("sub\\a#b.py", "sub/a#b.py"),  # Windows separators
        ("back\\slash.py", "back\\slash.py"),  # a real backslash in a name
        ("%2E%2E/x.py", "%2E%2E/x.py"),  # a directory really named %2E%2E
        ("{root}/pct%41.py", "pct%41.py"),  # semgrep's absolute raw path
        ("file://{root}/sub/a%23b.py", "sub/a#b.py"),  # bandit's file:// URI
        ("file://localhost{root}/my%20file.py", "my file.py"),
        ("file://{root}/sub/a#b.py", "sub/a#b.py"),  # raw '#': a name, not a fragment
    ],
)
def test_paths_are_files_of_the_checkout(checkout: Path, uri: str, expected: str) -> None:
    path, stats = resolve_in(checkout, uri.format(root=checkout))
    assert path == expected
    assert (checkout / path).is_file()
    assert not stats.unresolved


def test_uri_base_ids_are_resolved_in_the_checkout(checkout: Path) -> None:
    bases = {"SUB": {"uri": f"file://{checkout}/sub/"}, "PCT": {"uri": "pct%2541.py"},
             "REL": {"uri": "sub/", "uriBaseId": "ROOT"}, "ROOT": {"uri": f"{checkout}/"}}
    assert resolve_in(checkout, "a%23b.py", "SUB", bases)[0] == "sub/a#b.py"
    assert resolve_in(checkout, "a#b.py", "REL", bases)[0] == "sub/a#b.py"
    # semgrep: an undefined %SRCROOT% with an absolute raw path.
    assert resolve_in(checkout, f"{checkout}/pct%41.py", "%SRCROOT%")[0] == "pct%41.py"


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("pctA.py", "not-in-checkout"),  # pct%41.py read as SARIF says: no such file
        ("missing.py", "not-in-checkout"),
        ("link/f.py", "not-in-checkout"),  # through a symlink out of the checkout
        ("../../etc/passwd", "outside-checkout"),
        ("sub/../../outside/f.py", "outside-checkout"),
        ("%2E%2E/%2E%2E/etc/passwd", "outside-checkout"),
        ("%2e%2e%2f%2e%2e%2fetc%2fpasswd", "outside-checkout"),
        ("..%5C..%5Cetc%5Cpasswd", "outside-checkout"),
        ("/etc/passwd", "outside-checkout"),
        ("%2Fetc%2Fpasswd", "outside-checkout"),
        ("file:///etc/passwd", "outside-checkout"),
        ("file://otherhost{root}/pct%41.py", "outside-checkout"),
        ("{root}/../outside/f.py", "outside-checkout"),
        ("C:\\src\\pct%41.py", "outside-checkout"),
        ("https://example.com/../../etc/passwd", "outside-checkout"),
        ("a\x00b.py", "invalid"),
    ],
)
def test_paths_outside_or_missing_are_marked_never_stored(checkout: Path, uri: str,
                                                          reason: str) -> None:
    uri = uri.format(root=checkout)
    path, stats = resolve_in(checkout, uri)
    assert path.startswith(f"{UNRESOLVED}{reason}/")
    assert ".." not in path.split("/") and "\x00" not in path
    assert "/" not in path.removeprefix(f"{UNRESOLVED}{reason}/")  # no path inside
    assert stats.unresolved == {reason: 1}
    assert stats.results == 1  # kept and counted, not dropped


def test_without_a_checkout_hostile_paths_are_marked_too() -> None:
    findings = parse(sarif([result(uri="../../etc/passwd"), result(uri="src/%2e%2e/%2e%2e/x"),
                            result(uri="file:///etc/passwd"), result(uri="src/ok.py")]),
                     source_root="/src")
    assert [f.path.split("/")[2] for f in findings[:3]] == ["outside-checkout"] * 3
    assert findings[3].path == "src/ok.py"


def test_real_semgrep_raw_paths_are_the_files_scanned(tmp_path: Path) -> None:
    """semgrep writes absolute raw paths (not percent-encoded): each stored path is the
    file semgrep flagged, which exists in the checkout."""
    src = tmp_path / "src"
    names = ["pct%41.py", "my file.py", "ünï.py", "sub/a#b.py"]
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text('import subprocess\nsubprocess.call("ls", shell=True)\n')
    out = tmp_path / "semgrep.sarif"
    run_semgrep(src, out, tmp_path)
    assert f"{src}/pct%41.py" in out.read_text()  # raw, as the tool wrote it
    stream = read_findings(out, scanner="semgrep", source_root=src, checkout=src)
    findings = list(stream)
    assert sorted(f.path for f in findings) == sorted(names)
    assert not stream.stats.unresolved


# ---------------------------------------------------------------- streaming the file


def test_results_before_the_tool_and_several_runs(tmp_path: Path) -> None:
    """ijson reads in document order; a run may give its results before its rules."""
    doc = (b'{"runs": ['
           b'{"results": [{"ruleIndex": 0, "message": {"text": "m"}}],'
           b' "tool": {"driver": {"name": "t", "rules": [{"id": "R0"}]}}},'
           b'{"tool": {"driver": {"name": "t"}}, "results": []},'
           b'{"results": [{"ruleId": "R2", "message": {"text": "m"}},'
           b'             {"message": {"text": "no rule"}}], "tool": {"driver": {"name": "t"}}}'
           b'], "version": "2.1.0"}')
    with pytest.raises(SarifError, match=r"runs\[2\]\.results\[1\] has no ruleId"):
        parse(doc)
    fixed = doc.replace(b'{"message": {"text": "no rule"}}', b'{"ruleId": "R3", '
                        b'"message": {"text": "m"}}')
    assert [f.rule_id for f in parse(fixed)] == ["R0", "R2", "R3"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"version": "2.1.0", "runs": [{}], "runs": [{}]}', "has 'runs' twice"),
        (b'{"version": "2.1.0", "runs": [{"results": [], "results": []}]}',
         "runs[0] has 'results' twice"),
        (b'{"version": "2.1.0", "runs": [{"results": []}], "runs.item": {"results": [1]}}',
         "has a key 'runs.item', which cannot be read unambiguously"),
        (b'{"version": "2.1.0", "runs": [{"results": [], "results.item": {}}]}',
         "runs[0] has a key 'results.item'"),
        (b'{"version": "2.1.0", "runs": [{"results": []}]} {}', "not JSON (line 1, column"),
    ],
)
def test_keys_a_stream_cannot_read_unambiguously_are_refused(data: bytes,
                                                             expected: str) -> None:
    with pytest.raises(SarifError) as info:
        parse(data)
    assert expected in str(info.value)


def test_bom_is_accepted_and_bad_utf8_found_anywhere() -> None:
    data = sarif([result()])
    assert len(parse(b"\xef\xbb\xbf" + data)) == 1
    # The file is read in 64 KiB chunks: a character across two of them is fine...
    padded = sarif([result(properties={"pad": "x" * 100_000})])
    chunk = 64 * 1024
    assert padded[chunk - 1 : chunk + 1] == b"xx"  # inside the padding string
    straddling = padded[: chunk - 1] + "é".encode() + padded[chunk + 1:]
    assert len(parse(straddling)) == 1
    # ... and a bad byte far into the file is found, at its offset.
    broken = padded[:70_000] + b"\xff" + padded[70_001:]
    with pytest.raises(SarifError, match=r"not UTF-8 \(invalid byte 0xff at offset 70000\)"):
        parse(broken)


def test_large_broken_file_is_reported_without_reading_it_whole(tmp_path: Path) -> None:
    big = tmp_path / "big.sarif"
    whole = sarif([result(text="y" * 1000, line=i + 1) for i in range(10_000)])
    big.write_bytes(whole[:-10])  # over 8 MiB, truncated
    with pytest.raises(SarifError) as info:
        load_findings(big, scanner="tool")
    message = str(info.value)
    assert message.startswith(f"{big}: not JSON (") and "bytes)" in message, message


def test_a_file_changed_between_passes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.sarif"
    path.write_bytes(sarif([result(), result(line=4)]))
    stream = read_findings(path, scanner="tool")
    path.write_bytes(sarif([result()]))  # e.g. a scanner still writing
    with pytest.raises(SarifError, match="changed while being read"):
        list(stream)


def test_progress_is_reported_while_reading() -> None:
    calls: list[tuple[str, int]] = []
    stream = read_findings(sarif([result(line=i + 1) for i in range(2500)]), scanner="t",
                           progress=lambda stage, n: calls.append((stage, n)))
    assert len(list(stream)) == 2500
    assert calls == [("scanned", 1000), ("scanned", 2000), ("checked", 1000),
                     ("checked", 2000), ("read", 1000), ("read", 2000)]


# ------------------------------------------------------------------ broken SARIF


def _doc(**top: Any) -> bytes:
    return json.dumps({"version": "2.1.0", **top}).encode()


BROKEN: list[Any] = [
    pytest.param(b"", {}, "results.sarif: file is empty", id="empty"),
    pytest.param(b" \n\t\n", {}, "results.sarif: file is empty", id="whitespace"),
    pytest.param(b'{"version": "2.1.0",\n "runs": [\n  {"tool" {}}]}', {},
                 "results.sarif: not JSON (line 3, column 11: Expecting ':' delimiter)",
                 id="not-json"),
    pytest.param(b'{"version": "2.1.0", "runs": [', {},
                 "results.sarif: not JSON (line 1, column 31: Expecting value)", id="truncated"),
    pytest.param(b'\xff\xfe{"v": 1}', {}, "results.sarif: not UTF-8 (invalid byte 0xff at "
                 "offset 0)", id="not-utf8"),
    pytest.param(b'{"version": "2.1.0", "runs": [], "x": NaN}', {},
                 "results.sarif: not JSON (NaN is not a JSON value)", id="nan"),
    pytest.param(b"[1, 2]", {},
                 "results.sarif: the JSON document is an array, not a SARIF log object",
                 id="json-not-object"),
    pytest.param(b'"2.1.0"', {},
                 "results.sarif: the JSON document is a string, not a SARIF log object",
                 id="json-string"),
    pytest.param(json.dumps({"version": "1.0", "runs": []}).encode(), {},
                 "results.sarif: version '1.0' is not SARIF 2.1.0", id="wrong-version"),
    pytest.param(json.dumps({"runs": []}).encode(), {},
                 "results.sarif: has no 'version': not a SARIF 2.1.0 log", id="no-version"),
    pytest.param(_doc(), {}, "results.sarif: has no 'runs'", id="no-runs-key"),
    pytest.param(_doc(runs=[]), {}, "results.sarif: has no runs ('runs' is empty)",
                 id="no-runs"),
    pytest.param(_doc(runs={}), {}, "results.sarif: 'runs' is an object, not an array",
                 id="runs-not-array"),
    pytest.param(_doc(runs=[{"results": {}}]), {},
                 "results.sarif: runs[0].results is an object, not an array",
                 id="results-not-array"),
    pytest.param(sarif([result(), result(), {"message": {"text": "no rule"}}]), {},
                 "results.sarif: runs[0].results[2] has no ruleId (and no rule reference)",
                 id="no-rule-id"),
    pytest.param(sarif([{"ruleIndex": 5, "message": {"text": "m"}}], rules=[{"id": "R1"}]),
                 {}, "results.sarif: runs[0].results[0] has no ruleId and its ruleIndex 5 "
                 "does not name a rule (the run has 1 rules)", id="rule-index-out-of-range"),
    pytest.param(sarif([result(line="3")]), {},  # type: ignore[arg-type]
                 "results.sarif: runs[0].results[0].locations[0].physicalLocation.region."
                 "startLine is '3', not an integer", id="startline-string"),
    pytest.param(sarif([result(line=None, snippet=None)]), {}, None, id="no-region-is-fine"),
    pytest.param(sarif([result(level="fatal")]), {},
                 "results.sarif: runs[0].results[0].level is 'fatal', not one of error, "
                 "warning, note, none", id="bad-level"),
    pytest.param(sarif([{"ruleId": "R1"}]), {},
                 "results.sarif: runs[0].results[0] has no message", id="no-message"),
    pytest.param(sarif([{"ruleId": "R1", "message": {"id": "nope"}}]), {},
                 "results.sarif: runs[0].results[0].message.id 'nope' is not in its rule's "
                 "messageStrings", id="unresolvable-message-id"),
    pytest.param(sarif([result(), result(), result()]), {"max_results": 2},
                 "results.sarif: more than 2 results: refusing to normalise them (runs[0] "
                 "brings the count to 3)", id="too-many-results"),
    pytest.param(sarif([result()]), {"max_bytes": 10}, "results.sarif: larger than 10 bytes",
                 id="too-large"),
    pytest.param(b'{"version": "2.1.0", "runs": [{"results": ["not an object"]}]}', {},
                 "results.sarif: runs[0].results[0] is a string, not an object",
                 id="result-not-object"),
]


@pytest.mark.parametrize(("data", "kwargs", "expected"), BROKEN)
def test_broken_sarif(data: bytes, kwargs: dict[str, Any], expected: str | None) -> None:
    if expected is None:
        parse(data, **kwargs)
        return
    with pytest.raises(SarifError) as info:
        parse(data, **kwargs)
    assert expected in str(info.value)
    assert str(info.value).startswith("results.sarif: ")


def test_broken_startline_variants() -> None:
    for bad, shown in ((3.5, "3.5"), (True, "true"), ([3], "[3]"), ("3", "'3'")):
        res = result()
        res["locations"][0]["physicalLocation"]["region"]["startLine"] = bad
        with pytest.raises(SarifError) as info:
            parse(sarif([res]))
        assert f"region.startLine is {shown}, not an integer" in str(info.value)
    res = result()
    res["locations"][0]["physicalLocation"]["region"]["startLine"] = -1
    with pytest.raises(SarifError, match=r"region has a negative line number"):
        parse(sarif([res]))


@pytest.mark.parametrize(
    ("region", "lines"),
    [
        ({"startLine": 3.0}, (3, 3)),  # an integer, as some encoders write it
        ({"startLine": 3, "endLine": 5}, (3, 5)),
        ({"startLine": 0, "endLine": 0}, (None, None)),  # 0: the tool knows no line
        ({"startLine": 7, "endLine": 0}, (7, 7)),
        ({"startLine": 7, "endLine": 6}, (7, 7)),
        ({"endLine": 4}, (None, None)),
        ({"charOffset": 10, "charLength": 4}, (None, None)),
    ],
)
def test_lines(region: dict[str, Any], lines: tuple[int | None, int | None]) -> None:
    res = result()
    res["locations"][0]["physicalLocation"]["region"] = region
    (f,) = parse(sarif([res]))
    assert (f.start_line, f.end_line) == lines


def test_messages_never_break_storage() -> None:
    (f,) = parse(sarif([result(text="nul \x00 and lone \ud800 surrogate")]))
    assert "\x00" not in f.message
    assert "\ud800" not in f.message


# --------------------------------------------------------------------- file access


def test_load_findings_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sarif"
    with pytest.raises(SarifError, match=re.escape(f"{missing}: file not found")):
        load_findings(missing, scanner="bandit")
    with pytest.raises(SarifError, match=re.escape(f"{tmp_path}: is a directory")):
        load_findings(tmp_path, scanner="bandit")
    empty = tmp_path / "empty.sarif"
    empty.write_bytes(b"")
    with pytest.raises(SarifError, match=re.escape(f"{empty}: file is empty")):
        load_findings(empty, scanner="bandit")


def test_files_over_256_mib_are_refused_without_reading(tmp_path: Path) -> None:
    huge = tmp_path / "huge.sarif"
    with huge.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used, nothing to read
    with pytest.raises(SarifError, match=re.escape(f"{huge}: larger than 256 MiB")):
        load_findings(huge, scanner="bandit")
    small = tmp_path / "small.sarif"
    small.write_bytes(sarif([result()]))
    with pytest.raises(SarifError, match="larger than 100 bytes"):
        load_findings(small, scanner="bandit", max_bytes=100)
    assert len(load_findings(small, scanner="bandit")) == 1


# ------------------------------------------------------------ what the tool could not do


def test_files_bandit_could_not_parse_are_reported_not_dropped(tmp_path: Path) -> None:
    """bandit skips a file it cannot parse (Python 2 here) and says so only in its
    invocation's notifications; the findings alone look like a clean file."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "py2.py").write_text('print "hello"\nimport os\nos.system(x)\n')
    (src / "ok.py").write_text("import subprocess\nsubprocess.call(c, shell=True)\n")
    out = tmp_path / "out.sarif"
    run_bandit(src, out)
    stream = read_findings(out, scanner="bandit", checkout=src, source_root=src)
    assert {f.path for f in stream} == {"ok.py"}
    (error,) = stream.stats.tool_errors
    assert error.startswith("syntax error while parsing AST from file: ")
    assert error.endswith("py2.py")


def test_tool_errors_are_read_leniently() -> None:
    invocations = [
        {"executionSuccessful": False, "toolExecutionNotifications": [
            {"level": "error", "message": {"text": "rule pack  failed\nto load"}},
            {"level": "warning", "message": {"text": "slow file"}},  # not an error
            {"message": {"text": "no level: a warning, as SARIF says"}},
            "not an object",
            {"level": "error", "message": "not an object",
             "locations": [{"physicalLocation": {"artifactLocation": {"uri": "a.py"}}}]},
        ]},
        "not an invocation",
        {"toolConfigurationNotifications": {"not": "a list"}},
    ]
    stream = read_findings(sarif([result()], invocations=invocations), scanner="tool")
    assert len(list(stream)) == 1  # the findings are read whatever the invocations hold
    assert stream.stats.tool_errors == [
        "the tool reported its run as not successful",
        "rule pack failed to load",
        "error (no message): a.py",
    ]


_DEEP_SARIF_PROBE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from scanward.sarif import SarifError, parse_findings
depth = int(sys.argv[1])
doc = (b'{"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "t"}}, "results": ['
       b'{"ruleId": "R", "message": {"text": "m"}, "properties": {"x": '
       + b"[" * depth + b"]" * depth + b'}}]}]}')
try:
    print(len(parse_findings(doc, scanner="s", origin="deep.sarif")))
except SarifError as e:
    print(e)
"""


@pytest.mark.parametrize(("depth", "expected"), [
    (200_000, "deep.sarif: nests JSON deeper than 256 levels"),
    (200, "1"),  # deep, but within what the reader accepts
])
def test_deeply_nested_sarif_is_refused_within_bounded_memory(depth: int,
                                                              expected: str) -> None:
    """A few hundred KB of ``[[[...`` took a worker to 23 GB (ijson's prefixes grow with
    the nesting) and persist retried it for ever. Run under a 1 GiB address-space limit,
    in a child process, so that a regression fails here rather than exhausting the host."""
    done = subprocess.run([sys.executable, "-c", _DEEP_SARIF_PROBE, str(depth)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith(expected)
