"""The `scanward` command line, run as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

import starter
from scanward.devserver import free_port
from scanward.settings import Settings
from tests.conftest import eventually
from tests.helpers.processes import REPO_ROOT, cli_env, scanward


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["scan", "ext::sh -c id"], "invalid request: repository: repository URL"),
        (["scan", "https://example.com/r.git", "--ref", "--upload-pack=x"],
         "ref '--upload-pack=x' starts with '-'"),
        # Only the name's syntax: which scanners exist is the workers' call
        # (tests/test_operator_commands.py).
        (["scan", "https://example.com/r.git", "-s", "No_Such"],
         "scanner name 'No_Such' is malformed"),
        # Usage errors (exit 2 below): options missing, malformed or in conflict.
        (["scan", "https://example.com/r.git", "--notify", "no-secret"],
         "--notify 'no-secret': expected URL=SECRET_NAME"),
        (["retry"], "give a scan id or --all-dead"),
        # An id names one scan: with --all-dead it was ignored and every dead scan in
        # the namespace was retried.
        (["retry", "scan-default-0123456789abcdef0123", "--all-dead"],
         "give a scan id or --all-dead, not both"),
        (["retry", "scan-default-0123456789abcdef0123", "--tenant", "acme"],
         "--tenant selects scans for --all-dead"),
        (["retry", "--all-dead", "--scanner", "No_Such"], "scanner name 'No_Such' is "
                                                          "malformed"),
        # Pasted into a visibility query, this listed (and retried) other tenants' scans.
        (["list", "--tenant", 'x" OR ScanStatus="completed'], "invalid tenant 'x\" OR "),
        (["retry", "--all-dead", "--tenant", "acme' OR '1'='1"], "invalid tenant"),
        (["abandon", "scan-default-0123456789abcdef0123", "--reason", ""],
         "--reason must say why"),
        (["abandon", "scan-default-0123456789abcdef0123", "--reason", "  \t "],
         "--reason must say why"),
    ],
)
async def test_bad_input_is_one_line_and_nonzero(args: list[str], message: str) -> None:
    code, _, err = await scanward(*args, env={"TEMPORAL_ADDRESS": "127.0.0.1:9"})
    usage = ("--notify", "give a scan id", "--tenant selects")
    assert code == (2 if message.startswith(usage) else 1), (code, err)
    assert err.startswith("scanward: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["findings", "scan-default-0123456789abcdef0123", "--new", "--fixed"],
         "--new, --fixed and --all exclude each other"),
        (["triage", "0123456789ab", "--state", "false_positive"],
         "--reason is required for --state false_positive"),
        (["scan"], "Missing argument"),
        (["status", "x", "--bogus"], "No such option: --bogus"),
        (["nosuch"], "No such command 'nosuch'"),
        (["list", "--limit", "0"], "--limit"),
        (["list", "--limit", "-1"], "--limit"),
        (["scan", "https://example.com/r.git", "--fail-on", "high"],
         "--fail-on and --fail-on-new need --wait"),
    ],
)
async def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    """The README's promise: every error is one line on stderr (typer printed a usage
    line, a hint and a boxed message)."""
    code, out, err = await scanward(*args, env={"TEMPORAL_ADDRESS": "127.0.0.1:9"})
    assert code == 2, (code, out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("scanward: error: ") and message in err, err
    assert "╭" not in err and out == "", (out, err)


async def test_help_shows_flags_without_a_value() -> None:
    """A flag takes no value: typer's rich help showed `--new <bool>`, `--help <bool>`."""
    for args in (["findings", "--help"], ["scan", "--help"], ["--help"]):
        code, out, err = await scanward(*args, env={"COLUMNS": "200"})
        assert code == 0, err
        assert "<bool>" not in out, out
    code, out, _ = await scanward("findings", "--help", env={"COLUMNS": "200"})
    assert "--format" in out and "<table|json|sarif>" in out, out  # values still shown
    code, out, _ = await scanward("scan", "--help", env={"COLUMNS": "200"})
    assert "--wait" in out and "--no-wait" in out, out


async def test_help_lists_each_command_in_whole_sentences() -> None:
    """The command list shows each docstring's first paragraph as written, reflowed:
    with typer's default markup it broke lines where the source did, mid-sentence."""
    code, out, err = await scanward("--help", env={"COLUMNS": "400"})
    assert code == 0, err
    lines = out.splitlines()
    for command in starter.app.registered_commands:
        doc = (command.callback.__doc__ or "") if command.callback else ""
        first = " ".join(doc.strip().split("\n\n")[0].split())
        name = command.name or (command.callback.__name__ if command.callback else "")
        assert any(name in line and first in line for line in lines), (name, first, out)


async def test_unreachable_temporal_is_named() -> None:
    code, _, err = await scanward("status", "scan-default-0123456789abcdef0123",
                                  env={"TEMPORAL_ADDRESS": "127.0.0.1:9"})
    assert code == 1 and err.startswith("scanward: error: ")
    assert "127.0.0.1:9" in err or "connect" in err.lower(), err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.usefixtures("scan_worker_task")
async def test_scan_wait_then_findings_json(temporal_env: WorkflowEnvironment,
                                            settings: Settings, flawed_repo: Path) -> None:
    env = cli_env(temporal_env, settings)
    code, out, err = await scanward("scan", str(flawed_repo), "--ref", "main", "-s", "bandit",
                                    "--key", settings.task_queue, "--wait", env=env)
    assert code == 0, err
    scan_id = out.split()[1]
    assert scan_id.startswith("scan-default-")
    assert "succeeded" in out and "B602" in out
    code, out, err = await scanward("findings", scan_id, "--format", "json", env=env)
    assert code == 0, err
    findings = json.loads(out)
    assert {"B602", "B301"} <= {f["rule_id"] for f in findings}
    code, out, _ = await scanward("status", scan_id, env=env)
    assert code == 0 and "completed" in out and "bandit" in out
    code, out, _ = await scanward("list", "--status", "completed", env=env)
    assert code == 0 and scan_id in out


async def test_demo_runs_a_real_scan(tmp_path: Path) -> None:
    """The README's first command (after setup): a real scan on the embedded defaults."""
    code, out, err = await scanward("demo", env={"HOME": str(tmp_path)}, timeout=300)
    assert code == 0, out + err
    assert "B602" in out and "B301" in out
    assert "scan completed:" in out
    # Nothing keeps the session's Temporal runtime alive past its end (its threads could
    # abort the interpreter at exit): scanward.client.run warns when something does.
    assert "outlived its session" not in err, err


async def test_dev_serves_ui_and_scans_then_stops_on_sigint(tmp_path: Path,
                                                           flawed_repo: Path) -> None:
    """`scanward dev`: a dev server with the Web UI and search attributes, plus a worker."""
    port, ui_port = free_port(), free_port()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "PYTHONPATH": str(REPO_ROOT), "SCANWARD_HOME": str(tmp_path / "home")}
    dev = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "starter", "dev", "--port", str(port), "--ui-port", str(ui_port),
        cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        async def ui_up() -> bool:
            async with httpx.AsyncClient() as http:
                return (await http.get(f"http://127.0.0.1:{ui_port}/", timeout=2)).is_success

        await eventually(ui_up, timeout=60, what="the Web UI")
        cli = {"TEMPORAL_ADDRESS": f"127.0.0.1:{port}", "SCANWARD_HOME": str(tmp_path / "home")}
        code, out, err = await scanward("scan", str(flawed_repo), "--ref", "main", "--wait",
                                        env=cli)
        assert code == 0, out + err
        scan_id = out.split()[1]

        async def listed() -> bool:
            _, listing, _ = await scanward("list", "--status", "completed", env=cli)
            return scan_id in listing

        await eventually(listed, what="the scan in visibility by ScanStatus")
    finally:
        dev.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(dev.communicate(), 60)
    assert dev.returncode == 0, output.decode()
    assert b"Web UI http://127.0.0.1:" in output
    assert (tmp_path / "home" / "temporal.db").exists()  # dev keeps its history
