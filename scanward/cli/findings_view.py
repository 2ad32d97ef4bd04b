"""Stored findings as the CLI shows them (table, JSON, SARIF) and the --fail-on gate."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TextIO

from rich.table import Table

from scanward.cli.app import EXIT_GATE, CliError, note, one_line, open_store, out
from scanward.contract import ScannerStatus, ScanStatus, Severity

if TYPE_CHECKING:
    from scanward.sarif_export import Item
    from scanward.store import FindingRecord, ScanRecord, Store


class ScanNotStored(CliError):
    """The store has no row for the scan (Temporal may know why: see ``findings``)."""


class FindingsFormat(StrEnum):
    table = "table"
    json = "json"
    sarif = "sarif"


class FindingsView(StrEnum):
    open = "open"  # new and existing, not suppressed (the default)
    new = "new"  # new, not suppressed
    fixed = "fixed"  # the previous scan's findings this one no longer has
    all = "all"  # every finding of the scan, suppressed ones too


def _shown_state(record: FindingRecord) -> str:
    """What the state column says: the lifecycle state, or why it is not counted."""
    if record.finding.suppression is not None:
        return f"suppressed ({record.finding.suppression})"[:40]
    if record.triage is not None and record.triage.state.value != "open":
        return record.triage.state.value
    return record.state.value if record.state is not None else ""


def _first_seen(record: FindingRecord) -> str:
    """The commit a finding was first seen at (its date is in --format json)."""
    return (record.first_seen_commit or "")[:7]


def _findings_table(records: list[FindingRecord], title: str) -> Table:
    """One finding a line: every column but the message keeps its width (the message is
    cut to what is left; --format json has it whole)."""
    rows = []
    for r in records:
        f = r.finding
        where = f"{f.path}:{f.start_line}" if f.start_line else f.path
        rows.append([_shown_state(r), f.severity.value, f.scanner, f.rule_id, where,
                     _first_seen(r), r.key[:12], f.message])
    table = Table(title=title, title_justify="left")
    names = ("state", "severity", "scanner", "rule", "location", "since", "fingerprint")
    widths = [max([len(col), *(len(row[i]) for row in rows)]) for i, col in enumerate(names)]
    for col, width in zip(names, widths, strict=True):
        table.add_column(col, no_wrap=True, width=width)
    # What is left of the terminal after the other columns and the borders (3 a column).
    left = max(10, out.width - sum(widths) - 3 * (len(names) + 1) - 1)
    table.add_column("message", no_wrap=True, width=min(left, max(
        [len("message"), *(len(row[-1]) for row in rows)])))
    for row in rows:
        message = row[-1] if len(row[-1]) <= left else row[-1][:left - 1] + "…"
        table.add_row(*row[:-1], message)
    return table


def _lifecycle_line(store: Store, scan_id: str) -> str:
    lifecycle = store.lifecycle(scan_id)
    if lifecycle is None:
        return ("no lifecycle: the scan has not finished, failed, or was stored before "
                "findings were tracked")
    since = (f"since {lifecycle.previous_scan_id} ({(lifecycle.previous_commit or '')[:7]})"
             if lifecycle.previous_scan_id else "(first scan of this ref and scanners)")
    return (f"{lifecycle.new} new, {lifecycle.existing} existing, {lifecycle.fixed} fixed "
            f"{since}; {lifecycle.suppressed} suppressed")


def _record_json(r: FindingRecord) -> dict[str, Any]:
    return {
        **r.finding.model_dump(mode="json"),
        "state": r.state.value if r.state is not None else None,
        "suppressed": r.suppressed,
        "first_seen": None if r.first_seen_scan_id is None else {
            "scan_id": r.first_seen_scan_id, "commit": r.first_seen_commit,
            "at": r.first_seen_at.isoformat() if r.first_seen_at else None},
        "triage": None if r.triage is None else {
            "state": r.triage.state.value, "reason": r.triage.reason, "by": r.triage.by,
            "at": r.triage.at.isoformat()},
    }


def _unfinished(scan: ScanRecord) -> str | None:
    """Why the stored findings of ``scan`` are not all its findings (None: they are).
    Raises :class:`CliError` for a failed or cancelled scan: it has no result, and an
    empty list (or SARIF run) would read as a clean one."""
    summary = scan.summary
    if scan.status in (ScanStatus.FAILED, ScanStatus.CANCELLED):
        why = one_line(summary.reason or "")[:300] if summary else ""
        raise CliError(f"scan {scan.scan_id} {scan.status.value}"
                       + (f" ({why})" if why else "")
                       + ": it has no result, so no findings to report (not: none found)")
    if scan.status is ScanStatus.PARTIAL:
        abandoned = [r.scanner for r in summary.scanners
                     if r.status is ScannerStatus.ABANDONED] if summary else []
        what = f" ({', '.join(abandoned)} abandoned)" if abandoned else ""
        return (f"scan {scan.scan_id} ended partial{what}: these are the findings of the "
                "scanners that finished")
    if scan.status in (ScanStatus.RUNNING, ScanStatus.DEAD):
        return (f"scan {scan.scan_id} has not ended (stored as {scan.status.value}): these "
                "are the findings of the scanners finished so far")
    return None


def print_findings(scan_id: str, fmt: FindingsFormat = FindingsFormat.table,
                    view: FindingsView = FindingsView.open,
                    severities: tuple[Severity, ...] = ()) -> list[FindingRecord]:
    """The scan's stored findings in ``view``; a scan the store has never heard of is an
    error, not an empty list, and so is a failed or cancelled one (in every format: a
    SARIF upload must not read it as clean). The findings of a partial (or unfinished)
    scan are shown with a note saying so: under the table, or on stderr for JSON and
    SARIF, whose output stays the document. Returns the findings the table shows; JSON
    and SARIF are written to stdout as the findings are read, so that memory does not
    grow with their number, and for them it returns an empty list."""
    from scanward.store.tracking import shown_by

    store = open_store()
    try:
        scan = store.get_scan(scan_id)
        if scan is None:
            raise ScanNotStored(f"no such scan in the store: {scan_id} (unknown id, or no "
                                "scanner of it has finished yet; see `scanward status`)")
        caveat = _unfinished(scan)
        shows = shown_by(new_only=view is FindingsView.new,
                         include_suppressed=view in (FindingsView.all, FindingsView.fixed),
                         severities=severities)
        if fmt is FindingsFormat.table:
            return _print_table(store, scan_id, view, shows, caveat)
        # Every scanner that ran gets a SARIF run, with no results too: a code-scanning
        # upload closes only the alerts of the runs it has.
        ran = [r.scanner for r in store.scanner_results(scan_id)
               if r.status is ScannerStatus.SUCCEEDED]
        with store.findings_reader(scan_id) as reader:
            def shown(*, by_scanner: bool) -> Iterator[FindingRecord]:
                records = reader.records(fixed=view is FindingsView.fixed,
                                         by_scanner=by_scanner)
                return (r for r in records if shows(r))

            if fmt is FindingsFormat.json:
                _write_json(sys.stdout, (_record_json(r) for r in shown(by_scanner=False)))
            else:
                _write_sarif(sys.stdout, scan, lambda: shown(by_scanner=True), ran)
    finally:
        store.close()
    if caveat:  # stdout stays the document
        note(caveat)
    return []


def _print_table(store: Store, scan_id: str, view: FindingsView,
                 shows: Callable[[FindingRecord], bool], caveat: str | None
                 ) -> list[FindingRecord]:
    """The table (for people: its column widths need every row first), the lifecycle
    line and the caveat; returns the records shown."""
    if view is FindingsView.fixed:
        records = store.fixed_findings(scan_id)
    else:
        records = store.scan_findings(scan_id)
    shown = [r for r in records if shows(r)]
    hidden = sum(r.suppressed for r in records) if view is not FindingsView.all else 0
    summary = _lifecycle_line(store, scan_id)
    what = {FindingsView.open: "open (new and existing)", FindingsView.new: "new",
            FindingsView.fixed: "fixed (gone since the previous scan)",
            FindingsView.all: "all, suppressed ones too"}[view]
    out.print(_findings_table(shown, f"{len(shown)} finding(s), {what}"),
              markup=False, highlight=False)
    hint = " (not shown: --all shows them)" if hidden and view is FindingsView.open else ""
    out.print(f"{scan_id}: {summary}{hint}", markup=False, highlight=False, soft_wrap=True)
    if caveat:
        out.print(f"note: {caveat}", markup=False, highlight=False, soft_wrap=True)
    return shown


def _write_json(stream: TextIO, values: Iterable[Any]) -> None:
    """What ``print(json.dumps(list(values), indent=2))`` prints, a value at a time."""
    first = True
    for value in values:
        stream.write("[\n  " if first else ",\n  ")
        stream.write(json.dumps(value, indent=2).replace("\n", "\n  "))
        first = False
    stream.write("[]\n" if first else "\n]\n")


def _write_sarif(stream: TextIO, scan: ScanRecord,
                 shown: Callable[[], Iterator[FindingRecord]], ran: list[str]) -> None:
    """The SARIF log, as ``print(json.dumps(to_sarif(...), indent=2))`` prints it, in two
    passes over the findings (grouped by scanner): each run's rules, then its results."""
    from scanward.sarif_export import sarif_rules, write_sarif

    def items() -> Iterator[Item]:
        return ((r.finding, r.state, r.triage) for r in shown())

    write_sarif(stream, items(), rules=sarif_rules(items()), repository=scan.repository,
                commit=scan.commit, ref=scan.ref, scanners=ran)
    stream.write("\n")


def check_gate(records: list[FindingRecord], fail_on: Severity | None,
          fail_on_new: Severity | None) -> None:
    """Exit :data:`EXIT_GATE` when open findings (new ones, for ``fail_on_new``) at or
    above the threshold remain; suppressed and triaged findings never count."""
    from scanward.lifecycle import FindingState, gate

    def severity(r: FindingRecord) -> Severity:
        return r.finding.severity

    def is_open(r: FindingRecord) -> bool:
        return not r.suppressed

    def is_new(r: FindingRecord) -> bool:
        # A scan without a lifecycle (a worker before it): every finding counts as new.
        return not r.suppressed and r.state in (FindingState.NEW, None)

    failed: list[str] = []
    for threshold, new_only in ((fail_on, False), (fail_on_new, True)):
        if threshold is None:
            continue
        hits = gate(records, threshold, severity=severity,
                    counted=is_new if new_only else is_open)
        if hits:
            kind = "new " if new_only else ""
            failed.append(f"{len(hits)} {kind}finding(s) at or above {threshold.value} "
                          f"(--fail-on{'-new' if new_only else ''} {threshold.value})")
    if failed:
        raise CliError("gate failed: " + "; ".join(failed), EXIT_GATE)


