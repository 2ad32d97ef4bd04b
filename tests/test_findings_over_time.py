"""Findings over time, for real: a git repository that gets new commits between scans,
real bandit and semgrep run by the real worker on a real Temporal dev server, the store,
the signed webhook (scanward/webhook_receiver.py) and the `scanward` CLI as a process
(triage, findings --new/--fixed/--format sarif, history, the scan gate's exit codes)."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from scanward.contract import NotifyTarget, ScanStatus, ScanSummary, Severity
from scanward.example import git
from scanward.settings import Settings
from scanward.store import Store
from scanward.webhook_receiver import WebhookReceiver
from tests.conftest import scan_request, start
from tests.helpers.processes import cli_env, scanward
from tests.test_lifecycle import check_sarif
from workflows.scan import ScanWorkflow

pytestmark = pytest.mark.usefixtures("scan_worker_task")

# Commit 1: flaws A (md5, B324 high) and B (shell=True, B602 high), plus B404 (low).
V1 = """\
import hashlib
import subprocess


def digest(data):
    return hashlib.md5(data).hexdigest()


def run(cmd):
    return subprocess.call(cmd, shell=True)
"""
# Commit 2 fixes A, moves B down 5 lines, adds C (os.system, B605 high).
V2 = """\
import hashlib
import subprocess


def digest(data):
    return hashlib.sha256(data).hexdigest()


# a helper
def one():
    return 1


def run(cmd):
    return subprocess.call(cmd, shell=True)


def shell(cmd):
    import os
    return os.system(cmd)
"""
# Commit 3 moves B and C again.
V3 = V2.replace("# a helper", "def zero():\n    return 0\n\n\n# a helper")


def commit(repo: Path, code: str, message: str) -> str:
    repo.mkdir(exist_ok=True)
    (repo / "app.py").write_text(code)
    if not (repo / ".git").exists():
        git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def by_rule(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["rule_id"]: r for r in records}


async def findings_json(env: dict[str, str], scan_id: str, *flags: str) -> list[dict[str, Any]]:
    code, out, err = await scanward("findings", scan_id, *flags, "--format", "json", env=env)
    assert code == 0, err
    parsed: list[dict[str, Any]] = json.loads(out)
    return parsed


async def cli_scan(env: dict[str, str], repo: Path, key: str, *flags: str
                   ) -> tuple[int, str, str, str]:
    """``scanward scan REPO --wait ...``: (exit code, scan id, stdout, stderr)."""
    code, out, err = await scanward("scan", str(repo), "--ref", "main", "-s", "bandit",
                                    "--key", key, "--wait", *flags, env=env)
    scan_id = next(w for w in out.split() if w.startswith("scan-default-"))
    return code, scan_id, out, err


async def test_new_existing_fixed_triage_gate_and_webhook(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        receiver: WebhookReceiver, tmp_path: Path) -> None:
    repo = tmp_path / "app"
    env = cli_env(temporal_env, settings)
    hook = NotifyTarget(url=receiver.url, secret_ref="hook")

    # --- scan 1 (API): everything is new, the first scan of main.
    c1 = commit(repo, V1, "A and B")
    h1 = await start(client, settings, scan_request(repo, "bandit", notify=(hook,)))
    s1: ScanSummary = await h1.result()
    assert s1.status is ScanStatus.COMPLETED
    (d1,) = receiver.wait_for(1)
    assert d1.verified
    life1 = d1.body["scan"]["lifecycle"]
    assert (life1["new"], life1["existing"], life1["fixed"], life1["previous_scan_id"]) == (
        3, 0, 0, None)
    assert {f["rule_id"] for f in life1["new_findings"]} == {"B324", "B602", "B404"}

    # --- scan 2 (CLI): A fixed, B moved (existing since commit 1), C new: the new-high
    # gate fails with exit code 4, and the webhook says "1 new high".
    c2 = commit(repo, V2, "fix A, move B, add C")
    code, id2, out, err = await cli_scan(env, repo, "two", "--fail-on-new", "high",
                                         "--notify", f"{receiver.url}=hook")
    assert code == 4, out + err
    assert "gate failed: 1 new finding(s) at or above high (--fail-on-new high)" in err
    assert f"1 new, 2 existing, 1 fixed since {h1.id}" in out
    (_, d2) = receiver.wait_for(2)
    assert d2.verified and d2.body["scan"]["scan_id"] == id2
    life2 = d2.body["scan"]["lifecycle"]
    assert (life2["new"], life2["existing"], life2["fixed"], life2["suppressed"]) == (
        1, 2, 1, 0)
    assert (life2["previous_scan_id"], life2["previous_commit"]) == (h1.id, c1)
    assert life2["new_by_severity"] == {"high": 1} and not life2["truncated"]
    (new,) = life2["new_findings"]
    assert (new["rule_id"], new["severity"], new["path"]) == ("B605", "high", "app.py")
    assert d2.body["scan"]["by_severity"] == {"high": 2, "low": 1}

    now2 = by_rule(await findings_json(env, id2))
    assert set(now2) == {"B404", "B602", "B605"}
    assert (now2["B602"]["state"], now2["B602"]["first_seen"]["commit"]) == ("existing", c1)
    assert (now2["B605"]["state"], now2["B605"]["first_seen"]["commit"]) == ("new", c2)
    then = by_rule(await findings_json(env, h1.id))
    assert now2["B602"]["start_line"] == then["B602"]["start_line"] + 5  # moved...
    assert now2["B602"]["match_fingerprint"] == then["B602"]["match_fingerprint"]  # ...same
    assert [f["rule_id"] for f in await findings_json(env, id2, "--fixed")] == ["B324"]
    assert [f["rule_id"] for f in await findings_json(env, id2, "--new")] == ["B605"]
    assert [f["rule_id"] for f in await findings_json(env, id2, "--severity", "low")] == [
        "B404"]
    code, out, err = await scanward("findings", id2, "--new", env=env)
    assert code == 0 and "B605" in out and "B602" not in out, out + err
    code, out, err = await scanward("findings", id2, "--format", "sarif", env=env)
    assert code == 0, err
    doc = json.loads(out)
    check_sarif(doc)
    results = {r["ruleId"]: r for r in doc["runs"][0]["results"]}
    assert set(results) == {"B404", "B602", "B605"}
    assert results["B605"]["baselineState"] == "new"
    assert results["B602"]["baselineState"] == "unchanged"
    assert results["B602"]["partialFingerprints"] == {
        "scanwardMatch/v1": now2["B602"]["match_fingerprint"]}
    assert doc["runs"][0]["versionControlProvenance"][0]["revisionId"] == c2

    # --- triage (CLI): by the fingerprint `findings` shows; unknown ones are refused.
    b602, b605 = now2["B602"]["match_fingerprint"], now2["B605"]["match_fingerprint"]
    code, out, err = await scanward("triage", b602[:12], "--state", "accepted_risk",
                                    "--reason", "internal tool, trusted input", "--by",
                                    "ana", env=env)
    assert code == 0, err
    assert f"{b602[:12]} in default {repo.as_uri()}: accepted_risk by ana" in out
    code, out, err = await scanward("triage", b605, "--state", "false_positive", "--reason",
                                    "cmd is a constant", env=env)
    assert code == 0, err
    code, _, err = await scanward("triage", "deadbeefdeadbeef", "--state", "false_positive",
                                  "--reason", "x", env=env)
    assert code == 1 and "no stored finding has the fingerprint deadbeefdeadbeef" in err
    code, _, err = await scanward("triage", b605, "--state", "false_positive", env=env)
    assert code == 2 and "--reason is required" in err

    # --- scan 3 (CLI): B and C moved again and keep their triage: nothing at or above
    # high counts, so the gate passes.
    commit(repo, V3, "move B and C")
    code, id3, out, err = await cli_scan(env, repo, "three", "--fail-on", "high",
                                         "--fail-on-new", "high")
    assert code == 0, out + err
    assert "0 new, 1 existing, 0 fixed" in out and "2 suppressed" in out
    assert set(by_rule(await findings_json(env, id3))) == {"B404"}
    every = by_rule(await findings_json(env, id3, "--all"))
    assert (every["B602"]["triage"]["state"], every["B602"]["triage"]["by"]) == (
        "accepted_risk", "ana")
    assert every["B602"]["suppressed"] and every["B602"]["state"] == "existing"
    assert every["B605"]["triage"]["state"] == "false_positive"
    assert every["B605"]["start_line"] > now2["B605"]["start_line"]

    # --- scan 4 (CLI, same commit): the low finding fails --fail-on low, not -new.
    code, id4, out, err = await cli_scan(env, repo, "four", "--fail-on", "low",
                                         "--fail-on-new", "low")
    assert code == 4, out + err
    assert "gate failed: 1 finding(s) at or above low (--fail-on low)" in err
    assert "--fail-on-new" not in err

    # --- history (CLI): the four scans, latest first, with their counts.
    code, out, err = await scanward("history", str(repo), "--ref", "main", "--format",
                                    "json", env=env)
    assert code == 0, err
    rows = [(e["scan_id"], e["new"], e["existing"], e["fixed"], e["suppressed"])
            for e in json.loads(out)]
    assert rows == [(id4, 0, 1, 0, 2), (id3, 0, 1, 0, 2), (id2, 1, 2, 1, 0),
                    (h1.id, 3, 0, 0, 0)]
    code, out, err = await scanward("history", str(repo), env=env)
    assert code == 0 and id2 in out and "suppressed" in out, out + err
    code, _, err = await scanward("history", str(tmp_path / "nothing"), env=env)
    assert code == 1 and "no scans of" in err

    # --- scan 5 (CLI): everything fixed. Its SARIF still has bandit's run, empty: a
    # code-scanning upload closes only the alerts of the runs it has (it had no run).
    commit(repo, "VALUE = 1\n", "fix everything")
    code, id5, out, err = await cli_scan(env, repo, "five")
    assert code == 0 and "0 new, 0 existing, 1 fixed" in out, out + err
    code, out, err = await scanward("findings", id5, "--format", "sarif", env=env)
    assert code == 0, err
    doc = json.loads(out)
    check_sarif(doc)
    assert [(run["tool"]["driver"]["name"], run["results"]) for run in doc["runs"]] == [
        ("bandit", [])]

    # The recorded history (with the patch's marker) replays against this code.
    history = await client.get_workflow_handle(id2).fetch_history()
    replayer = Replayer(workflows=[ScanWorkflow], data_converter=pydantic_data_converter)
    replay = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert replay.replay_failure is None


async def test_gate_needs_wait(temporal_env: WorkflowEnvironment, settings: Settings,
                               tmp_path: Path) -> None:
    code, _, err = await scanward("scan", str(tmp_path), "--fail-on", "high",
                                  env=cli_env(temporal_env, settings))
    assert code == 2 and "--fail-on and --fail-on-new need --wait" in err


async def test_findings_flags_exclude_each_other(temporal_env: WorkflowEnvironment,
                                                 settings: Settings) -> None:
    code, _, err = await scanward("findings", "scan-default-00000000000000000000", "--new",
                                  "--fixed", env=cli_env(temporal_env, settings))
    assert code == 2 and "exclude each other" in err


SEMGREP = Path(sysconfig.get_path("scripts")) / "semgrep"
SUPPRESSED_V1 = """\
import subprocess


def a(cmd):
    return subprocess.call(cmd, shell=True)  # nosemgrep


def b(cmd):
    return subprocess.call(cmd, shell=True)
"""


async def test_semgrep_suppressions_are_stored_visible_and_never_new(
        client: Client, settings: Settings, tmp_path: Path) -> None:
    """semgrep writes ``# nosemgrep`` results into its SARIF with ``suppressions:
    [{"kind": "inSource"}]`` (run here for real): kept, marked, not counted. Suppressing
    a line later does not make it a new finding."""
    assert SEMGREP.exists(), "semgrep is installed by tools/setup.sh (the semgrep extra)"
    repo = tmp_path / "app"
    commit(repo, SUPPRESSED_V1, "one suppressed, one not")
    first = await (await start(client, settings, scan_request(repo, "semgrep"))).result()
    assert first.status is ScanStatus.COMPLETED
    assert first.finding_count == 1 and first.by_severity == {Severity.HIGH: 1}
    with Store.open(settings.database_url) as store:
        records = store.scan_findings(first.scan_id)
        lifecycle = store.lifecycle(first.scan_id)
    assert sorted((r.finding.start_line, r.finding.suppression) for r in records) == [
        (5, "inSource"), (9, None)]
    assert lifecycle is not None and (lifecycle.new, lifecycle.suppressed) == (1, 1)
    assert [f.start_line for f in lifecycle.new_findings] == [9]

    # Commit 2 suppresses b too, and moves both: same findings, now both suppressed.
    commit(repo, "\n\n" + SUPPRESSED_V1.replace("shell=True)\n", "shell=True)  # nosemgrep\n"),
           "suppress b")
    second = await (await start(client, settings, scan_request(repo, "semgrep"))).result()
    with Store.open(settings.database_url) as store:
        records = store.scan_findings(second.scan_id)
        lifecycle = store.lifecycle(second.scan_id)
    assert sorted((r.finding.start_line, r.finding.suppression, r.state and r.state.value)
                  for r in records) == [(7, "inSource", "existing"),
                                        (11, "inSource", "existing")]
    assert lifecycle is not None
    assert (lifecycle.new, lifecycle.existing, lifecycle.fixed, lifecycle.suppressed) == (
        0, 0, 0, 2)
    assert second.finding_count == 0 and second.by_severity == {}
