"""What the Temporal Web UI shows of a scan without a query: a one-line static summary
set at start, and the current details (markdown) the workflow keeps up to date. Pure
functions: the workflow calls them (deterministic), tests call them directly."""

from __future__ import annotations

from scanward.contract import ScannerRun, ScanRequest, ScanSummary

REASON_CHARS = 160


def static_summary(request: ScanRequest) -> str:
    """``repo@ref (commit) · scanners · tenant``: the Web UI's list and scan page title."""
    at = f"{request.ref} ({request.commit[:12]})" if request.commit else request.ref
    return (f"{request.repository}@{at} · {', '.join(request.scanners)} · "
            f"tenant {request.tenant}")


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def _reason(run: ScannerRun) -> str:
    """The reason's first line; for a scanner that succeeded, what it said it could not
    do (its warning)."""
    text = (run.reason or run.warning or "").strip()
    if not text:
        return ""
    first = text.splitlines()[0]
    more = " …" if len(first) > REASON_CHARS or "\n" in text else ""
    return _cell(first[:REASON_CHARS]) + more


def current_details(summary: ScanSummary) -> str:
    """A markdown table of the scanners: status, attempts, memory, findings, reason."""
    head = f"**{summary.status.value}**"
    if summary.commit:
        head += f" at `{summary.commit[:12]}`"
    if summary.reason:
        head += f": {_cell(summary.reason)[:REASON_CHARS * 2]}"
    lines = [head, "", "| scanner | status | attempts | memory | findings | reason |",
             "|---|---|---|---|---|---|"]
    for run in summary.scanners:
        memory = f"{run.resources.memory_mib} MiB" if run.resources else ""
        found = "" if run.finding_count is None else str(run.finding_count)
        lines.append(f"| {run.scanner} | {run.status.value} | {run.attempts} | {memory} | "
                     f"{found} | {_reason(run)} |")
    if summary.undelivered_webhooks:
        lines += ["", "Webhooks not delivered: "
                  + "; ".join(_cell(w) for w in summary.undelivered_webhooks)]
    dead = [r.scanner for r in summary.scanners if r.status.value == "dead"]
    if dead:
        lines += ["", f"Dead: {', '.join(dead)}. Retry with `scanward retry "
                      f"{summary.scan_id}` (or the `retry` update), give up with "
                      f"`scanward abandon {summary.scan_id}`."]
    return "\n".join(lines)
