"""start_scan joins an existing scan only with the same request: a second start with the
same id (tenant, repository, ref, commit, scanners, dedupe key) but other notify targets,
cluster, resources, tuning or credentials used to join silently and drop them. Real
workflow, real worker (``scan_worker_task``), the real CLI."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from scanward import client as api
from scanward.contract import NotifyTarget, ResourceOverrides, ScanStatus
from scanward.example import git
from scanward.inputs import InputError
from scanward.settings import Settings
from tests.conftest import FAST, scan_request, start
from tests.helpers.processes import cli_env, scanward

pytestmark = pytest.mark.usefixtures("scan_worker_task")


async def test_a_second_start_with_another_request_is_refused_naming_what_differs(
        client: Client, settings: Settings, flawed_repo: Path) -> None:
    commit = git(flawed_repo, "rev-parse", "main")
    # The first start names a cluster no worker serves: it waits for one, durably.
    typo = scan_request(flawed_repo, "fake", commit=commit, cluster="eu-typo")
    waiting = await start(client, settings, typo)
    try:
        corrected = typo.model_copy(update={"cluster": None})
        assert corrected.scan_id() == waiting.id
        with pytest.raises(api.RequestConflict) as conflict:
            await start(client, settings, corrected)
        message = str(conflict.value)
        assert f"scan {waiting.id} is running with a different request" in message, message
        assert "cluster differs" in message and "dedupe_key" in message, message
        assert "\n" not in message

        several = typo.model_copy(update={
            "notify": (NotifyTarget(url="https://hooks.example.com/x", secret_ref="hook"),),
            "resources": ResourceOverrides(memory_mib=512),
            "tuning": FAST.model_copy(update={"scanner_attempts": 5}),
            "credentials_ref": "git-token"})
        with pytest.raises(api.RequestConflict,
                           match="credentials_ref, notify, resources, tuning differ"):
            await start(client, settings, several)

        # The same request joins the running scan, as before.
        joined = await start(client, settings, typo)
        assert (joined.id, joined.result_run_id) == (waiting.id, waiting.result_run_id)
        assert (await waiting.describe()).status is WorkflowExecutionStatus.RUNNING
    finally:
        await waiting.terminate(reason="test over")


async def test_a_finished_scan_is_returned_only_for_the_same_request(
        client: Client, settings: Settings, flawed_repo: Path) -> None:
    request = scan_request(flawed_repo, "fake")
    handle = await start(client, settings, request)
    summary = await handle.result()
    assert summary.status is ScanStatus.COMPLETED
    again = await start(client, settings, request)
    assert again.id == handle.id and await again.result() == summary

    hooked = request.model_copy(update={
        "notify": (NotifyTarget(url="https://hooks.example.com/x", secret_ref="hook"),)})
    with pytest.raises(api.RequestConflict) as conflict:
        await start(client, settings, hooked)
    assert f"scan {handle.id} ended completed with a different request" in str(
        conflict.value)
    assert "notify differs" in str(conflict.value)


async def test_the_cli_names_the_conflict_in_one_line(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path) -> None:
    env = cli_env(temporal_env, settings)
    commit = git(flawed_repo, "rev-parse", "main")
    key = uuid.uuid4().hex
    scan = ("scan", str(flawed_repo), "--ref", "main", "--commit", commit, "-s", "fake",
            "--key", key)
    code, out, err = await scanward(*scan, "--cluster", "eu-typo", env=env)
    assert code == 0, err
    scan_id = out.split()[1]
    try:
        code, out, err = await scanward(*scan, "--wait", env=env, timeout=60)
        assert code == 1, out + err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"scanward: error: scan {scan_id} is running with a "
                              "different request: cluster differs"), err
        code, out, err = await scanward(*scan, "--cluster", "eu-typo", env=env)
        assert code == 0 and f"scan {scan_id} of main at {commit[:12]} running" in out, err
    finally:
        await api.handle(client, scan_id).terminate(reason="test over")


def test_request_fields_digests_ignore_identity_and_defaults() -> None:
    base = scan_request(Path("/tmp/r"), "fake", dedupe_key="k")
    digests = api.request_digests(base)
    assert set(digests) == {"notify", "resources", "credentials_ref", "cluster", "tuning"}
    assert api.request_digests(base.model_copy(update={"ref": "other"})) == digests
    assert api.request_digests(base.model_copy(update={"cluster": "eu"})) != digests
    assert len({v for v in digests.values()}) == len(digests)  # not all the same hash


def test_visibility_queries_refuse_what_could_change_them() -> None:
    assert api.status_query(ScanStatus.COMPLETED, "acme") == (
        'WorkflowType = "ScanWorkflow" AND ScanStatus = "completed" AND '
        'ScanTenant = "acme"')
    for tenant in ('x" OR ScanStatus="completed', "x' OR '1'='1", "Acme", "", "a\\b",
                   "-x", "a" * 64):
        with pytest.raises(InputError, match="invalid tenant"):
            api.status_query(None, tenant)
    with pytest.raises(InputError, match="malformed"):
        api.status_query(ScanStatus.DEAD, dead_scanner='x" OR "1"="1')
