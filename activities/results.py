"""Result activities: read a scanner's SARIF from the results volume, normalise its
findings and store them idempotently; record the scan's outcome.

``persist_results`` streams: the SARIF is read incrementally (see
:func:`scanward.sarif.read_findings`) and the findings are written in batches of
:data:`BATCH`, one short transaction each, with a heartbeat after every batch (and every
few hundred results while the file is checked), so that a killed worker is noticed within
the heartbeat timeout and memory does not grow with the file. Findings that fit in one
batch are stored with the scan and the scanner's completion in a single transaction.

Why batches are safe to retry: each batch inserts findings keyed by (scan, fingerprint)
and ignores those already there, and fingerprints are a pure function of the SARIF
file and the checkout (snippets are checked against it), neither of which changes once
the attempt wrote its SARIF. So a retry after a crash re-adds
what was committed (no duplicate) and adds the rest (nothing lost). Only the last step,
:meth:`Store.complete_scanner_result`, marks the scanner as succeeded with its stored
count: until then a reader sees the scanner as not finished. (One transaction per
attempt would also be safe, but would hold SQLite's single write lock for the whole
file, stalling every other scanner's persist, and their heartbeats, meanwhile.)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from scanward.attempt_logs import with_log_tail
from scanward.contract import (
    FailureClass,
    FinalizeInput,
    Finding,
    PersistInput,
    PersistResult,
    ScanLifecycle,
)
from scanward.sarif import SarifError, read_findings
from scanward.store import Store, StoreError

BATCH = 1_000
"""Findings per transaction (and heartbeat)."""
STORE_ERROR = "StoreError"
"""The failure type of a store that did not answer or refused a write (retried)."""
TOOL_ERRORS_SHOWN = 5
"""The tool's own errors carried into the scan's summary (the count is always whole)."""


class ResultActivities:
    """Database writes are short transactions: the store is the bottleneck."""

    def __init__(self, store: Store, workspace_root: Path, results_root: Path) -> None:
        self._store = store
        self._workspace_root = workspace_root
        self._results_root = results_root

    @activity.defn(name="persist_results")
    def persist_results(self, req: PersistInput) -> PersistResult:
        """Parse, normalise and upsert one scanner's findings in batches. Idempotent."""
        path = self._results_root / req.sarif_subpath
        checkout = self._workspace_root / req.scan_id / "src"
        if not checkout.is_dir():
            # Without the checkout no path can be checked; another worker may have it.
            raise ApplicationError(f"the checkout {checkout} is not on this worker",
                                   type="CheckoutMissing")
        try:
            findings = read_findings(path, scanner=req.scanner, checkout=checkout,
                                     source_root=Path(req.source_root or checkout),
                                     progress=_heartbeat)
            batches = _batches(findings, BATCH)
            first = next(batches, [])
            second = next(batches, None)
            if second is None:  # all in one batch: one transaction
                stored = self._store.record_findings(
                    scan_id=req.scan_id, tenant=req.tenant, repository=req.repository,
                    ref=req.ref, commit=req.commit, scanner=req.scanner,
                    attempt=req.attempt, findings=first)
            else:
                self._store.begin_scanner_result(scan_id=req.scan_id, tenant=req.tenant,
                                                 repository=req.repository, ref=req.ref,
                                                 commit=req.commit)
                added = 0
                for batch in itertools.chain((first, second), batches):
                    self._store.add_findings(req.scan_id, batch)
                    added += len(batch)
                    activity.heartbeat("stored", added)
                stored = self._store.complete_scanner_result(
                    scan_id=req.scan_id, scanner=req.scanner, attempt=req.attempt)
        except StoreError as e:
            raise _store_failure(e) from None
        except SarifError as e:
            # The scanner's log, beside its SARIF, usually says why the file is broken.
            raise ApplicationError(with_log_tail(str(e), path.parent),
                                   type=FailureClass.BROKEN_SARIF.value,
                                   non_retryable=True) from e
        stats = findings.stats
        if stats.unresolved:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(stats.unresolved.items()))
            activity.logger.warning(
                "%s: %d of %d findings have a location that is not a file of the checkout, "
                "stored with an unresolved:// path (%s)", req.scanner,
                sum(stats.unresolved.values()), stats.results - stats.skipped, reasons)
        if stats.tool_errors:
            activity.logger.warning("%s reported %d error(s) of its own, e.g. %s",
                                    req.scanner, len(stats.tool_errors), stats.tool_errors[0])
        return PersistResult(scanner=req.scanner, finding_count=stored.count,
                             by_severity=stored.by_severity,
                             suppressed_count=stored.suppressed,
                             tool_errors=tuple(stats.tool_errors[:TOOL_ERRORS_SHOWN]),
                             tool_error_count=len(stats.tool_errors))

    @activity.defn(name="finalize_scan")
    def finalize_scan(self, req: FinalizeInput) -> ScanLifecycle | None:
        """Record the scan's final status and summary, then its lifecycle: each finding
        new or existing against the previous completed scan of the same tenant,
        repository, ref and scanners, and which are fixed. Returns the counts and the
        first new findings (None for a failed or cancelled scan). Idempotent: a retry
        returns what the first run recorded.

        Histories recorded before the "lifecycle-in-summary" patch hold ``null`` here
        (the activity returned nothing): the workflow reads the result only under it."""
        try:
            return self._store.finish_and_track(req.summary, progress=_heartbeat)
        except StoreError as e:
            raise _store_failure(e) from None


def _store_failure(e: StoreError) -> ApplicationError:
    """The store's error as the activity's failure: its one-line message (which names
    the store, masked, and says why), retryable (the workflow retries the store's writes
    until it answers). Without its cause: SQLAlchemy's message holds the statement and
    up to ten rows of parameters (finding data, unmasked), which must not reach Temporal,
    and made the failure larger than the 4 KiB a server keeps of a pending activity's
    last failure (the Web UI then shows only "Failure exceeds size limit.")."""
    return ApplicationError(str(e), type=STORE_ERROR)


def _heartbeat(stage: str, count: int) -> None:
    activity.heartbeat(stage, count)


def _batches(findings: Iterable[Finding], size: int) -> Iterator[list[Finding]]:
    """Lists of up to ``size`` findings (itertools.batched is Python 3.12+)."""
    it = iter(findings)
    while batch := list(itertools.islice(it, size)):
        yield batch
