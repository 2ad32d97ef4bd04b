"""Result activities: read a scanner's SARIF from the results volume, normalise and
deduplicate its findings, and store them idempotently; record the scan's outcome."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from scanward.contract import FailureClass, FinalizeInput, PersistInput, PersistResult, Severity
from scanward.sarif import SarifError, dedupe, load_findings
from scanward.store import Store


class ResultActivities:
    """Database writes are one transaction per scanner: the store is the bottleneck."""

    def __init__(self, store: Store, workspace_root: Path, results_root: Path) -> None:
        self._store = store
        self._workspace_root = workspace_root
        self._results_root = results_root

    @activity.defn(name="persist_results")
    def persist_results(self, req: PersistInput) -> PersistResult:
        """Parse, normalise, dedupe and upsert one scanner's findings. Idempotent."""
        path = self._results_root / req.sarif_subpath
        source = req.source_root or self._workspace_root / req.scan_id / "src"
        try:
            findings = dedupe(load_findings(path, scanner=req.scanner,
                                            source_root=Path(source)))
        except SarifError as e:
            raise ApplicationError(str(e), type=FailureClass.BROKEN_SARIF.value,
                                   non_retryable=True) from e
        count = self._store.record_scanner_result(
            scan_id=req.scan_id, tenant=req.tenant, repository=req.repository, ref=req.ref,
            commit=req.commit, scanner=req.scanner, attempt=req.attempt, findings=findings,
        )
        by_severity = Counter(f.severity for f in findings)
        return PersistResult(scanner=req.scanner, finding_count=count,
                             by_severity={s: by_severity[s] for s in Severity if by_severity[s]})

    @activity.defn(name="finalize_scan")
    def finalize_scan(self, req: FinalizeInput) -> None:
        """Record the scan's final status and summary. Idempotent."""
        self._store.finish_scan(req.summary)
