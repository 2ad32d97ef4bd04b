"""Today's ScanWorkflow must replay every history in the corpus (tests/histories/<contract
version>/, recorded by tools/record_history.py from real scans); a non-deterministic
change fails here. ``scanward replay``, the pre-deploy gate, runs as a real process
against the corpus, against an edited history, and against a live dev server."""

from __future__ import annotations

import base64
import json
import shutil
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.common import RawValue
from temporalio.testing import WorkflowEnvironment

from scanward import client as api
from scanward import replay
from scanward.contract import RetrySignal, ScannerStatus, ScanStatus, ScanSummary
from scanward.settings import Settings
from tests.conftest import eventually, scan_request, start
from tests.helpers.processes import cli_env, scanward
from tests.helpers.workflows import temporal_cli
from workflows.payloads import NO_INPUT
from workflows.scan import ScanWorkflow

CORPUS = Path(__file__).parent / "histories"
HISTORIES = sorted(CORPUS.rglob("*.json"))

# Each recorded path, and what its history must show to be that path: activities
# scheduled (with multiplicity), failure types of failed activities, other events.
PATHS: dict[str, dict[str, Any]] = {
    "completed_single": {"scheduled": ["run_scanner"], "closed": "COMPLETED"},
    "completed_multi": {"scheduled": ["run_scanner"] * 3, "closed": "COMPLETED"},
    "dead_retry_signal": {"failed": ["crashed", "crashed"], "events": ["SIGNALED"],
                          "scheduled": ["run_scanner"] * 4, "closed": "COMPLETED"},
    "dead_retry_update": {"failed": ["crashed", "crashed"], "events": ["UPDATE_COMPLETED"],
                          "scheduled": ["run_scanner"] * 4, "closed": "COMPLETED"},
    "dead_abandon": {"failed": ["crashed", "crashed"], "events": ["UPDATE_COMPLETED"],
                     "scheduled": ["run_scanner"] * 3, "closed": "COMPLETED"},
    "cancel_running": {"scheduled": ["run_scanner", "stop_scanner"], "closed": "CANCELED",
                       "failed": ["CancelledError"]},  # the scanner, stopped
    "cancel_during_clone": {"scheduled": ["clone_repository"], "closed": "CANCELED",
                            "events": ["ACTIVITY_TASK_CANCEL_REQUESTED"]},
    "clone_failure": {"failed": ["RefNotFound"], "closed": "FAILED"},
    "webhook_down": {"failed": ["WebhookFailed"], "scheduled": ["run_scanner", "notify_webhook"],
                     "closed": "COMPLETED"},
    "bad_input": {"scheduled": [], "closed": "FAILED"},
    "request_refused": {"scheduled": [], "closed": "FAILED", "events": ["MARKER_RECORDED"]},
    "deadline_abandoned": {"failed": ["deadline_exceeded"], "events": ["UPDATE_COMPLETED"],
                           "scheduled": ["run_scanner"], "closed": "COMPLETED"},
    # kubernetes backend, against the test control plane
    "oom_bump": {"failed": ["oom_killed"], "scheduled": ["run_scanner"] * 2,
                 "closed": "COMPLETED"},
    "evicted": {"failed": ["evicted"], "scheduled": ["run_scanner"] * 2, "closed": "COMPLETED"},
    # recorded before the STOP_ON_CANCEL patch
    "scan_completed": {"scheduled": ["run_scanner"], "closed": "COMPLETED"},
    "scan_dead_retried": {"failed": ["crashed", "crashed"], "events": ["SIGNALED"],
                          "scheduled": ["run_scanner"] * 4, "closed": "COMPLETED"},
}


def _events(history: WorkflowHistory) -> tuple[list[str], list[str], list[str]]:
    """(activity types scheduled, failure types of failed activities, event type names)."""
    scheduled, failed, kinds = [], [], []
    for e in history.events:
        kinds.append(EventType.Name(e.event_type).removeprefix("EVENT_TYPE_"))
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled.append(e.activity_task_scheduled_event_attributes.activity_type.name)
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            failed.append(e.activity_task_failed_event_attributes.failure
                          .application_failure_info.type)
    return scheduled, failed, kinds


def test_the_corpus_holds_every_path() -> None:
    """Each path the workflow can take has a history, and the history is that path."""
    by_name = {p.stem: p for p in (CORPUS / "v1").glob("*.json")}
    assert set(PATHS) <= set(by_name), sorted(set(PATHS) - set(by_name))
    for name, expected in PATHS.items():
        history = replay.load_history(by_name[name])
        scheduled, failed, kinds = _events(history)
        wanted = expected.get("scheduled", [])
        for activity in {*wanted, "run_scanner"}:
            assert scheduled.count(activity) == wanted.count(activity), (name, scheduled)
        assert [f for f in failed if f] == expected.get("failed", []), (name, failed)
        for kind in expected.get("events", []):
            assert any(k.endswith(kind) for k in kinds), (name, kind, kinds)
        assert kinds[-1] == f"WORKFLOW_EXECUTION_{expected['closed']}", (name, kinds[-1])
        # The history names its workflow (the replay report's id comes from here).
        assert history.workflow_id.startswith("scan-"), (name, history.workflow_id)


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: str(p.relative_to(CORPUS)))
async def test_replay(path: Path) -> None:
    report = await replay.replay(replay.file_sources([path]))
    (outcome,) = report.outcomes
    assert outcome.error is None, outcome.error
    assert outcome.events == len(json.loads(path.read_text())["events"])


# A change to the command sequence that is not behind workflow.patched: the deploy the
# gate exists to stop. Replayed against it, every history must fail, named.
# Unsandboxed: the sandbox would re-import this test module (and pytest) for every run.
@workflow.defn(name="ScanWorkflow", sandboxed=False)
class UnpatchedScanWorkflow(ScanWorkflow):
    @workflow.run
    async def run(self, raw: RawValue = NO_INPUT) -> ScanSummary:
        await workflow.sleep(timedelta(seconds=1))  # a new first step, unversioned
        return await super().run(raw)


async def test_an_unversioned_change_fails_every_history_by_name() -> None:
    names = ["completed_single", "dead_abandon", "bad_input"]
    paths = [CORPUS / "v1" / f"{n}.json" for n in names]
    report = await replay.replay(replay.file_sources(paths), workflows=[UnpatchedScanWorkflow],
                                 concurrency=2)
    assert len(report.outcomes) == 3 and len(report.failures) == 3, report.outcomes
    ids = {replay.load_history(p).workflow_id: str(p) for p in paths}
    assert {(f.workflow_id, f.origin) for f in report.failures} == set(ids.items())
    for failure in report.failures:
        assert failure.error is not None and "Nondeterminism" in failure.error, failure.error
        assert "Failure {" not in failure.error  # the core's message, not its debug dump
    # The same histories replay against today's class.
    assert not (await replay.replay(replay.file_sources(paths))).failures


async def test_unreadable_and_empty_inputs_are_errors_not_an_empty_pass(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{ not json")
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "ok.json").write_text(
        (CORPUS / "v1" / "bad_input.json").read_text())
    report = await replay.replay(replay.file_sources([tmp_path]))
    assert [(Path(o.origin).name, o.error is None) for o in report.outcomes] == [
        ("broken.json", False), ("ok.json", True)]
    assert "could not load" in (report.failures[0].error or "")
    with pytest.raises(replay.ReplayError, match="no such file or directory"):
        replay.file_sources([tmp_path / "missing"])
    assert replay.file_sources([tmp_path / "nested" / "ok.json"])[0].origin.endswith("ok.json")


def test_namespace_query() -> None:
    assert replay.namespace_query() == 'WorkflowType="ScanWorkflow"'
    assert replay.namespace_query(running=True) == \
        '(WorkflowType="ScanWorkflow") AND ExecutionStatus="Running"'
    assert replay.namespace_query('CloseTime > "2026-01-01T00:00:00Z"') == \
        'WorkflowType="ScanWorkflow" AND (CloseTime > "2026-01-01T00:00:00Z")'
    assert replay.namespace_query('WorkflowType="ScanWorkflow" AND ScanTenant="a"') == \
        'WorkflowType="ScanWorkflow" AND ScanTenant="a"'
    assert replay.save_name("scan/x y", "run-1") == "scan_x_y__run-1.json"


# ------------------------------------------------------------------ the CLI, for real


async def test_cli_replays_the_corpus() -> None:
    code, out, err = await scanward("replay", str(CORPUS))
    assert code == 0, err
    assert f"replayed {len(HISTORIES)} histories in " in out, out
    assert "replays/s, 0 failed" in out, out
    assert f"{len(HISTORIES)}/{len(HISTORIES)}" in err  # the progress bar, on stderr
    code, out, _ = await scanward("replay", str(CORPUS), "--json", "--concurrency", "2")
    assert code == 0
    report = json.loads(out)
    assert report["replayed"] == len(HISTORIES) and report["failed"] == []
    assert report["replays_per_second"] > 0


async def test_cli_names_the_history_that_does_not_replay(tmp_path: Path) -> None:
    """A history whose recorded activity type differs from what the code schedules: what
    replaying an older history against an unversioned change looks like."""
    good = CORPUS / "v1" / "dead_retry_update.json"
    data = json.loads((CORPUS / "v1" / "completed_single.json").read_text())
    for event in data["events"]:
        scheduled = event.get("activityTaskScheduledEventAttributes")
        if scheduled and scheduled["activityType"]["name"] == "run_scanner":
            scheduled["activityType"]["name"] = "run_scanner_v0"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    bad_id = replay.load_history(edited).workflow_id
    code, out, err = await scanward("replay", str(good), str(tmp_path))
    assert code == 1, (out, err)
    assert f"FAILED {bad_id} (run " in err and str(edited) in err, err
    assert ("Nondeterminism error: Activity type of scheduled event 'run_scanner_v0' does "
            "not match activity type of activity command 'run_scanner'") in err, err
    assert f"1 of 2 histories do not replay against this code: {bad_id}" in err, err
    assert replay.load_history(good).workflow_id not in err
    assert "replayed 2 histories" in out and "1 failed" in out, out


def _edited(source: Path, target: Path, edit: Any) -> Path:
    """``source`` with ``edit(data)`` applied to its JSON, written to ``target``."""
    data = json.loads(source.read_text())
    edit(data)
    target.write_text(json.dumps(data))
    return target


def _other_workflow_type(data: dict[str, Any]) -> None:
    data["events"][0]["workflowExecutionStartedEventAttributes"]["workflowType"]["name"] = \
        "OtherWorkflow"


def _other_scanners(data: dict[str, Any]) -> None:
    """The start input names another scanner than the one the history ran: the workflow
    code raises (a KeyError) when the recorded events reach it."""
    payload = data["events"][0]["workflowExecutionStartedEventAttributes"]["input"][
        "payloads"][0]
    request = json.loads(base64.b64decode(payload["data"]))
    assert request["scanners"] == ["bandit"]
    request["scanners"] = ["semgrep"]
    payload["data"] = base64.b64encode(json.dumps(request).encode()).decode()


async def test_cli_reports_workflow_code_that_raises_once(tmp_path: Path) -> None:
    """Workflow code that raises while replaying (an unknown workflow type, a start input
    the history does not match): one FAILED line each, without the SDK's tracebacks
    ("Failed handling activation ...") on top."""
    single = CORPUS / "v1" / "completed_single.json"
    other_type = _edited(single, tmp_path / "other_type.json", _other_workflow_type)
    other_scanners = _edited(single, tmp_path / "other_scanners.json", _other_scanners)
    code, out, err = await scanward("replay", str(other_type), str(other_scanners), str(single))
    assert code == 1, (out, err)
    failed = [line for line in err.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 2, err
    assert any(str(other_type) in line and "not a ScanWorkflow history: its workflow type "
               "is OtherWorkflow" in line for line in failed), failed
    assert any(str(other_scanners) in line for line in failed), failed
    for noise in ("Traceback", "Failed handling activation", "Failed activation"):
        assert noise not in err, err
    assert "3 histories in " in out and "2 replayed, 2 failed, of which 1 could not be " \
        "replayed" in out, out


async def test_sdk_logs_are_silenced_for_the_replay_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The replay silences the SDK's worker loggers for what it runs (its tasks and its
    workflow threads), not for the rest of the process meanwhile (a worker's failures
    must still be logged), and not after it."""
    import logging
    import threading

    name = "temporalio.worker._workflow_instance"
    other = _edited(CORPUS / "v1" / "completed_single.json", tmp_path / "other.json",
                    _other_scanners)

    def meanwhile(_: replay.Outcome) -> None:  # runs inside the replay's lane
        logging.getLogger(name).warning("inside the replay")
        thread = threading.Thread(
            target=lambda: logging.getLogger(name).warning("another thread, meanwhile"))
        thread.start()
        thread.join()

    with caplog.at_level(logging.WARNING, logger="temporalio"):
        report = await replay.replay(replay.file_sources([other]), on_outcome=meanwhile)
        logging.getLogger(name).warning("after the replay")
    assert len(report.failures) == 1
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("temporalio")]
    assert logged == ["another thread, meanwhile", "after the replay"], logged


async def test_cli_save_that_cannot_be_a_directory_is_one_line(tmp_path: Path) -> None:
    """--save naming a file (or a path under one): one line naming --save and the path,
    before anything is replayed."""
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    for target, why in ((taken, "exists and is not a directory"),
                        (taken / "sub", "Not a directory")):
        code, out, err = await scanward("replay", str(CORPUS / "v1" / "bad_input.json"),
                                        "--save", str(target))
        assert code == 1, (out, err)
        assert err.strip() == f"scanward: error: --save {target}: {why}", err
        assert out == ""
    assert taken.read_text() == "not a directory"


async def test_cli_finding_nothing_is_an_error(tmp_path: Path) -> None:
    code, out, err = await scanward("replay", str(tmp_path))
    assert code == 1 and f"no histories found in {tmp_path}: nothing to replay" in err, err
    assert "replayed" not in out
    code, _, err = await scanward("replay", str(tmp_path / "missing"))
    assert code == 1 and "no such file or directory" in err, err


@pytest.mark.usefixtures("scan_worker_task")
async def test_cli_replays_and_saves_a_live_namespace(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path, state_dir: Path, tmp_path: Path) -> None:
    """Real scans on the dev server, then ``scanward replay --query`` against it: all
    replay, ``--save`` writes them, ``--running`` and ``--limit`` narrow the set, and
    what ``temporal workflow show --output json`` writes replays too."""
    tenant = f"replay-{uuid.uuid4().hex[:8]}"
    done = [await start(client, settings, scan_request(flawed_repo, *s, tenant=tenant))
            for s in (("fake",), ("fake", "many"))]
    for handle in done:
        assert (await handle.result()).status is ScanStatus.COMPLETED
    retried = await start(client, settings, scan_request(flawed_repo, "flaky", tenant=tenant))

    async def flaky_dead() -> bool:
        (run,) = (await api.progress(client, retried.id)).scanners
        return run.status is ScannerStatus.DEAD

    await eventually(flaky_dead, what="flaky dead")  # running, waiting for an operator
    env = cli_env(temporal_env, settings)
    query = f'ScanTenant="{tenant}"'
    saved = tmp_path / "saved"

    async def listed() -> bool:  # visibility is eventually consistent
        return (await client.count_workflows(f"{query} AND ScanStatus=\"dead\"")).count == 1

    await eventually(listed, what="the dead scan in visibility")
    code, out, err = await scanward("replay", "--query", query, "--save", str(saved), env=env)
    assert code == 0, err
    assert "replayed 3 histories" in out and "0 failed" in out, out
    ids = {h.id for h in [*done, retried]}
    files = sorted(saved.glob("*.json"))
    assert {replay.load_history(f).workflow_id for f in files} == ids
    assert len(files) == 3

    code, out, err = await scanward("replay", "--query", query, "--running", "--json", env=env)
    assert code == 0, err
    running = json.loads(out)
    assert running["replayed"] == 1 and running["failed"] == []
    code, out, err = await scanward("replay", "--query", query, "--limit", "2", env=env)
    assert code == 0 and "replayed 2 histories" in out, (out, err)
    code, out, err = await scanward("replay", "--query", 'ScanTenant="nobody-at-all"', env=env)
    assert code == 1 and "no histories found in namespace default" in err, err

    # The saved corpus replays from files; so does the Temporal CLI's own JSON, of the
    # running scan, which then completes and replays again.
    code, out, err = await scanward("replay", str(saved))
    assert code == 0 and "replayed 3 histories" in out, (out, err)
    shown = temporal_cli(temporal_env, "workflow", "show", "--workflow-id", retried.id,
                         "--output", "json")
    assert shown.returncode == 0, shown.stderr
    (tmp_path / "cli" / "nested").mkdir(parents=True)
    from_cli = tmp_path / "cli" / "nested" / "shown.json"
    from_cli.write_text(shown.stdout)
    assert replay.load_history(from_cli).workflow_id == retried.id
    (state_dir / "fixed").touch()
    await api.retry(client, retried.id, RetrySignal())
    assert (await retried.result()).status is ScanStatus.COMPLETED
    shown = temporal_cli(temporal_env, "workflow", "show", "--workflow-id", retried.id,
                         "--output", "json")
    (tmp_path / "cli" / "completed.json").write_text(shown.stdout)
    shutil.copy(files[0], tmp_path / "cli" / "to_json.json")
    code, out, err = await scanward("replay", str(tmp_path / "cli"))
    assert code == 0, err
    assert "replayed 3 histories" in out and "0 failed" in out, out


async def test_another_workflow_types_history_fails_even_before_its_first_task(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        tmp_path: Path) -> None:
    """A history of another type that no worker has picked up yet holds no workflow task
    for the replayer to fail on: it used to "replay" (exit 0, "0 failed") although not a
    line of ScanWorkflow ran. It fails, named, from a file and from the namespace, and
    is not saved; the summary does not call it replayed."""
    other_id = f"billing-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow("BillingWorkflow", id=other_id,
                                         task_queue=f"nobody-{uuid.uuid4().hex[:8]}")
    try:
        history = await handle.fetch_history()
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        (corpus / "billing.json").write_text(history.to_json())
        shutil.copy(CORPUS / "v1" / "completed_single.json", corpus)
        code, out, err = await scanward("replay", str(corpus))
        assert code == 1, (out, err)
        assert (f"FAILED {other_id} (run {history.run_id}, {corpus / 'billing.json'}): "
                "not a ScanWorkflow history: its workflow type is BillingWorkflow") in err, err
        assert "2 histories in " in out and "1 replayed, 1 failed, of which 1 could not " \
            "be replayed" in out, out
        env = cli_env(temporal_env, settings)
        saved = tmp_path / "saved"
        code, out, err = await scanward(
            "replay", "--query", f'WorkflowType="BillingWorkflow" AND WorkflowId="{other_id}"',
            "--save", str(saved), "--json", env=env)
        assert code == 1, (out, err)
        report = json.loads(out)
        assert report["not_replayed"] == 1 and report["failed"][0]["workflow_id"] == other_id
        assert list(saved.glob("*.json")) == []
        assert replay.foreign(history, {"ScanWorkflow"}) == (
            "not a ScanWorkflow history: its workflow type is BillingWorkflow")
    finally:
        await handle.terminate()


async def test_limit_with_files_only_and_a_bad_query_are_one_line(
        temporal_env: WorkflowEnvironment, settings: Settings) -> None:
    """``--limit`` caps what is listed from the namespace: with files only it used to be
    ignored (``replay tests/histories --limit 2`` replayed all 16, exit 0); it is a usage
    error now. A query the server refuses names the query sent, which the server's
    position refers to (the user's query ANDed with the workflow type)."""
    code, out, err = await scanward("replay", str(CORPUS), "--limit", "2")
    assert code == 2 and "replayed" not in out, (out, err)
    assert err.strip() == ("scanward: error: --limit caps the histories listed from the "
                           "namespace (no PATH, or --query/--running): it does not apply "
                           "to files"), err
    code, out, err = await scanward("replay", "--query", "Foo = = 3",
                                    env=cli_env(temporal_env, settings))
    assert code == 1, (out, err)
    assert err.strip().startswith('scanward: error: query WorkflowType="ScanWorkflow" AND '
                                  "(Foo = = 3): invalid query"), err
