"""The typed contract between services, the ScanWorkflow and its activities.

Everything here is a pydantic model serialised by
``temporalio.contrib.pydantic.pydantic_data_converter``. Only small summaries and
references travel through workflow history: SARIF and findings live in storage.
Secrets never appear here: requests name a secret (``credentials_ref``,
``secret_ref``) that the worker resolves from its own environment.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from enum import StrEnum
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from scanward.inputs import check_ref, check_repository_url, check_scanner_name

# A secret *reference*: the name of a secret the worker knows, never its value.
SecretRef = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
# What git may be pointed at (scanward.inputs: no ext::, no credentials, no "-" refs).
RepositoryUrl = Annotated[str, Field(max_length=2048), AfterValidator(check_repository_url)]
GitRef = Annotated[str, Field(max_length=255), AfterValidator(check_ref)]


class Frozen(BaseModel):
    """What people and other programs send (the start request, operator signals and
    updates): an unknown field is a mistake, refused with its name."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Message(BaseModel):
    """What workers send each other through history (activity inputs and results, the
    summary): during a rolling deploy old and new workers read each other's messages, so
    a field added later (always with a default) is ignored by code that predates it."""

    model_config = ConfigDict(frozen=True, extra="ignore")


def explain(e: ValidationError) -> str:
    """Every problem of a validation error on one line: ``field: message; ...``."""
    parts = []
    for problem in e.errors():
        where = ".".join(str(p) for p in problem["loc"])
        msg = str(problem["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


class Severity(StrEnum):
    """Normalised severity; SARIF levels and tool-specific ranks map onto it."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"


class ScanStatus(StrEnum):
    """Value of the ``ScanStatus`` search attribute and of stored scans."""

    RUNNING = "running"
    DEAD = "dead"  # at least one scanner exhausted its retries; waiting for an operator
    COMPLETED = "completed"
    PARTIAL = "partial"  # completed, but an operator abandoned at least one scanner
    FAILED = "failed"  # the scan as a whole could not run (e.g. the clone failed)
    CANCELLED = "cancelled"


class ScannerStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    ABANDONED = "abandoned"
    CANCELLED = "cancelled"


class FailureClass(StrEnum):
    """Why a scanner attempt failed; the retry policy is keyed on this."""

    CRASHED = "crashed"  # non-zero exit that does not mean "findings"; retry with backoff
    OOM_KILLED = "oom_killed"  # retry with more memory, up to the cap
    EVICTED = "evicted"  # node pressure / disruption: retry, not counted against the scanner
    BAD_IMAGE = "bad_image"  # image cannot be pulled: retrying cannot fix it
    BAD_INPUT = "bad_input"  # the scanner rejected its input: retrying cannot fix it
    DEADLINE_EXCEEDED = "deadline_exceeded"  # ran past its deadline
    BROKEN_SARIF = "broken_sarif"  # the scanner's output is not valid SARIF
    TIMED_OUT = "timed_out"  # Temporal gave up on the activity (heartbeat/start-to-close)
    CLUSTER = "cluster_error"  # forbidden, missing namespace: fix the configuration, then retry


class Resources(Frozen):
    """Requested resources of one scanner run (Kubernetes requests/limits)."""

    cpu_millis: int = Field(ge=10, le=64_000)
    memory_mib: int = Field(ge=16, le=262_144)


class ResourceOverrides(Frozen):
    """Optional per-request overrides; unset fields use the sizing policy."""

    cpu_millis: int | None = Field(default=None, ge=10, le=64_000)
    memory_mib: int | None = Field(default=None, ge=16, le=262_144)


class NotifyTarget(Frozen):
    """A webhook to call once when the scan ends.

    ``secret_ref`` names the HMAC key in the worker's secret store
    (``SCANWARD_SECRET_<NAME>`` or a file in ``SCANWARD_SECRETS_DIR``).
    """

    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    secret_ref: SecretRef


class RetryTuning(Frozen):
    """Retry and timeout durations the workflow applies. The defaults are production's;
    tests pass shorter ones through the request (configuration, not patching)."""

    initial_interval: timedelta = timedelta(seconds=10)
    backoff_coefficient: float = Field(default=2.0, ge=1.0)
    maximum_interval: timedelta = timedelta(minutes=5)
    scanner_attempts: int = Field(default=3, ge=1, le=20)
    io_attempts: int = Field(default=5, ge=1, le=50)  # clone, persist, notify
    clone_timeout: timedelta = timedelta(minutes=15)
    scanner_timeout: timedelta = timedelta(hours=1)
    # Well under a minute: a killed worker's activity is retried elsewhere this soon.
    heartbeat_timeout: timedelta = timedelta(seconds=20)
    notify_timeout: timedelta = timedelta(seconds=30)


MAX_BACKOFF_COEFFICIENT = 10.0
MAX_TUNED_DURATION = timedelta(days=30)


def request_problems(request: ScanRequest) -> list[str]:
    """What in ``request`` the workflow refuses beyond the models' own validation (it
    applies these behind the ``request-checked`` patch; ``start_scan`` before starting):
    tuning Temporal cannot apply, an abbreviated commit (git cannot fetch one, and it
    would name a second scan of the same commit), and credentials in a webhook URL
    (they would enter the workflow's history: use ``secret_ref`` for the key)."""
    problems = tuning_problems(request.tuning)
    if request.commit is not None and len(request.commit) not in (40, 64):
        problems.append(f"commit: {request.commit!r} is abbreviated: give the full "
                        "40-hex SHA (git cannot fetch an abbreviated one)")
    for i, target in enumerate(request.notify):
        if _has_credentials(target.url):
            problems.append(f"notify.{i}.url: credentials in a webhook URL would enter the "
                            "scan's history; the receiver authenticates the signature made "
                            "with secret_ref")
    return problems


def _has_credentials(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.username is not None or parts.password is not None
    except ValueError:
        return False


def tuning_problems(tuning: RetryTuning) -> list[str]:
    """What in ``tuning`` the workflow cannot apply: Temporal refuses a timeout or an
    interval that is not positive, and a maximum interval below the initial one, by
    failing the workflow task again and again (the scan would hang "running"). A check,
    not a validator on the model: the workflow applies it behind a patch, so histories
    recorded before it replay as they ran (the versioning rule in the README)."""
    problems = []
    for name in ("initial_interval", "maximum_interval", "clone_timeout", "scanner_timeout",
                 "heartbeat_timeout", "notify_timeout"):
        value: timedelta = getattr(tuning, name)
        if not timedelta(0) < value <= MAX_TUNED_DURATION:
            problems.append(f"tuning.{name}: {value} is not in (0, {MAX_TUNED_DURATION.days} "
                            "days]")
    if tuning.maximum_interval < tuning.initial_interval:
        problems.append(f"tuning.maximum_interval: {tuning.maximum_interval} is below "
                        f"initial_interval {tuning.initial_interval}")
    if tuning.backoff_coefficient > MAX_BACKOFF_COEFFICIENT:
        problems.append(f"tuning.backoff_coefficient: {tuning.backoff_coefficient:g} is above "
                        f"{MAX_BACKOFF_COEFFICIENT:g}")
    return problems


class ScanRequest(Frozen):
    """What a service asks for: scan ``repository`` at ``ref`` (or ``commit``)."""

    repository: RepositoryUrl
    ref: GitRef = "HEAD"
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{7,64}$")
    scanners: tuple[str, ...] = Field(min_length=1, max_length=32)
    tenant: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    notify: tuple[NotifyTarget, ...] = Field(default=(), max_length=8)
    resources: ResourceOverrides | None = None
    credentials_ref: SecretRef | None = None
    cluster: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    # Distinguishes deliberate re-scans of the same request (e.g. a push event id).
    dedupe_key: str = Field(default="", max_length=128)
    tuning: RetryTuning = RetryTuning()

    @field_validator("scanners")
    @classmethod
    def _scanners(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            check_scanner_name(name)
        if len(set(v)) != len(v):
            twice = sorted(n for n in set(v) if v.count(n) > 1)
            raise ValueError(f"scanners listed twice: {twice}")
        return tuple(sorted(v))

    @model_validator(mode="after")
    def _ids(self) -> ScanRequest:
        if self.commit is None and not self.ref:
            raise ValueError("either ref or commit is required")
        return self

    def scan_id(self) -> str:
        """Workflow id derived from the request: a duplicate start joins or is
        rejected instead of scanning twice."""
        key = "\x00".join(
            [self.tenant, self.repository, self.ref, self.commit or "", ",".join(self.scanners),
             self.dedupe_key]
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        return f"scan-{self.tenant}-{digest}"


SCAN_ID_RE = re.compile(r"^scan-[a-z0-9-]{1,63}-[0-9a-f]{20}$")


# ---------------------------------------------------------------- activity contract


class ResolveInput(Message):
    """Which commit does ``ref`` name now? Asked of a worker, where the credentials are."""

    repository: RepositoryUrl
    ref: GitRef = "HEAD"
    credentials_ref: SecretRef | None = None


class ResolvedRef(Message):
    ref: str  # the full name it resolved through, e.g. refs/heads/main
    commit: str = Field(pattern=r"^[0-9a-f]{40,64}$")


class CloneInput(Message):
    scan_id: str
    repository: str
    ref: str
    commit: str | None = None
    credentials_ref: SecretRef | None = None
    scanners: tuple[str, ...]
    resources: ResourceOverrides | None = None


class Checkout(Message):
    """Where the shared checkout lives, relative to the workspace root."""

    scan_id: str
    source_subpath: str  # "<scan_id>/src": the PVC subPath / directory under the root
    commit: str
    size_bytes: int = Field(ge=0)
    file_count: int = Field(ge=0)


class ScannerPlan(Message):
    """Sizing for one scanner, decided by the worker from its catalog and the checkout."""

    scanner: str
    resources: Resources
    max_memory_mib: int


class CloneResult(Message):
    checkout: Checkout
    plan: tuple[ScannerPlan, ...]


class ScannerJobInput(Message):
    """One attempt of one scanner against a checkout."""

    scan_id: str
    scanner: str
    attempt: int = Field(ge=1)
    checkout: Checkout
    resources: Resources
    tenant: str = "default"
    deadline_seconds: int | None = Field(default=None, ge=1)  # the Job's activeDeadlineSeconds


class ScannerJobResult(Message):
    """A finished scanner attempt: where its SARIF was written, not the SARIF itself."""

    scanner: str
    attempt: int
    sarif_subpath: str  # relative to the results root
    exit_code: int
    duration_seconds: float
    source_root: str | None = None  # the checkout's path as the scanner saw it


class PersistInput(Message):
    scan_id: str
    tenant: str
    repository: str
    ref: str
    commit: str
    scanner: str
    attempt: int
    sarif_subpath: str
    source_root: str | None = None  # the checkout's path as the scanner saw it


class PersistResult(Message):
    scanner: str
    finding_count: int  # distinct findings after dedupe (not those the tool suppressed)
    by_severity: dict[Severity, int]
    suppressed_count: int = 0  # stored too, but reported suppressed by the tool
    # What the tool said it could not do (scanward.sarif.SarifStats.tool_errors), the
    # first few, and how many there were.
    tool_errors: tuple[str, ...] = ()
    tool_error_count: int = 0


class Finding(Message):
    """One normalised finding; ``fingerprint`` is stable across runs of the same code."""

    scanner: str
    rule_id: str
    severity: Severity
    path: str
    start_line: int | None = None
    end_line: int | None = None
    start_column: int | None = None
    end_column: int | None = None
    message: str
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    # Follows the finding from scan to scan whatever its line (scanward.lifecycle); None
    # for findings stored before schema 0003.
    match_fingerprint: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # Set when the tool reports the result suppressed (SARIF ``suppressions``, e.g.
    # ``# nosemgrep``): its kind and justification. Stored and shown, never counted.
    suppression: str | None = Field(default=None, max_length=600)


class ScannerRun(Message):
    """Live and final per-scanner status, as the progress query reports it."""

    scanner: str
    status: ScannerStatus = ScannerStatus.PENDING
    attempts: int = 0
    resources: Resources | None = None
    failure_class: FailureClass | None = None
    reason: str | None = None
    finding_count: int | None = None
    # A scanner that succeeded but said it could not do everything (files it could not
    # parse were not scanned): "N error(s) the tool reported: <the first few>".
    warning: str | None = None


class ScanLifecycle(Message):
    """What changed since the previous completed scan of the same (tenant, repository,
    ref) and scanners (``previous_scan_id``; None for the first). Findings suppressed by
    the tool or triaged (false positive, accepted risk) count only in ``suppressed``."""

    previous_scan_id: str | None = None
    previous_commit: str | None = None
    new: int = Field(default=0, ge=0)
    existing: int = Field(default=0, ge=0)
    fixed: int = Field(default=0, ge=0)
    suppressed: int = Field(default=0, ge=0)
    by_severity: dict[Severity, int] = Field(default_factory=dict)  # new + existing
    new_by_severity: dict[Severity, int] = Field(default_factory=dict)
    new_findings: tuple[Finding, ...] = ()  # most severe first, capped (see truncated)
    truncated: bool = False  # more new findings than new_findings holds


class ScanSummary(Message):
    """The workflow's result and the webhook's body."""

    scan_id: str
    tenant: str
    repository: str
    ref: str
    commit: str | None
    status: ScanStatus
    scanners: tuple[ScannerRun, ...]
    finding_count: int = 0
    by_severity: dict[Severity, int] = Field(default_factory=dict)
    checkout_bytes: int | None = None
    reason: str | None = None
    # Set when the scan finished with a lifecycle (completed or partial scans recorded
    # with the "lifecycle-in-summary" patch); by_severity and finding_count then count
    # the open findings only (not suppressed, not triaged).
    lifecycle: ScanLifecycle | None = None
    # Webhooks given up on (the URL without credentials or query, and why): in the
    # workflow's result and its progress query, never in a webhook's body.
    undelivered_webhooks: tuple[str, ...] = ()
    # Scanner attempts a cancel could not stop ("<scanner> attempt <n>: why"): the scan
    # ended cancelled, but they may still be running (a Job the API would not delete).
    not_stopped: tuple[str, ...] = ()

    def with_lifecycle(self, lifecycle: ScanLifecycle) -> ScanSummary:
        """This summary with ``lifecycle``, counting open findings only."""
        return self.model_copy(update={
            "lifecycle": lifecycle, "by_severity": dict(lifecycle.by_severity),
            "finding_count": sum(lifecycle.by_severity.values())})


class NotifyInput(Message):
    scan_id: str
    target: NotifyTarget
    summary: ScanSummary
    # The workflow run the delivery belongs to: part of its Idempotency-Key, so a scan
    # started again under the same id (after a failure or a cancel) is not dropped as a
    # duplicate. None in inputs scheduled before it existed: the key as it was.
    run_id: str | None = None


class FinalizeInput(Message):
    summary: ScanSummary


# ------------------------------------------------------------------- operator signals


class RetrySignal(Frozen):
    """``retry``: run dead scanners again (all, or one), optionally with overrides."""

    scanner: str | None = None
    memory_mib: int | None = Field(default=None, ge=16, le=262_144)
    cpu_millis: int | None = Field(default=None, ge=10, le=64_000)


class AbandonSignal(Frozen):
    """``abandon``: give up on dead scanners (all, or one); the scan ends ``partial``."""

    scanner: str | None = None
    reason: str = Field(default="abandoned by operator", max_length=500)
