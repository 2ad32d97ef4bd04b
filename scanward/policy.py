"""Pure policy: resource sizing and what to do after a failed scanner attempt.

Plain functions with no I/O, called by the workflow (so they must stay deterministic)
and directly by tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio.common import Priority

from scanward.catalog import ScannerSpec
from scanward.contract import FailureClass, ResourceOverrides, Resources, RetryTuning
from scanward.tenants import MIN_WEIGHT

GIB = 1024**3

# Failures retrying cannot fix: the scanner is dead at once.
TERMINAL = frozenset(
    {FailureClass.BAD_IMAGE, FailureClass.BAD_INPUT, FailureClass.BROKEN_SARIF,
     FailureClass.DEADLINE_EXCEEDED, FailureClass.CLUSTER}
)


def size_resources(
    spec: ScannerSpec, checkout_bytes: int, overrides: ResourceOverrides | None = None
) -> Resources:
    """Requests for one scanner run: the catalog's base plus memory in proportion to
    the checkout's size (rounded up to 64 MiB), capped; explicit overrides win."""
    extra = -(-checkout_bytes * spec.memory_mib_per_gib // GIB)  # ceil
    memory = spec.base.memory_mib + extra
    memory = min(-(-memory // 64) * 64, spec.max_memory_mib)
    cpu = spec.base.cpu_millis
    if overrides is not None:
        memory = overrides.memory_mib or memory
        cpu = overrides.cpu_millis or cpu
    return Resources(cpu_millis=cpu, memory_mib=memory)


@dataclass(frozen=True)
class RetryDecision:
    """``retry`` with ``resources`` (and whether the attempt counts), or dead."""

    retry: bool
    resources: Resources
    counts: bool = True
    reason: str = ""


def after_failure(
    failure: FailureClass,
    *,
    resources: Resources,
    counted_attempts: int,
    max_attempts: int,
    max_memory_mib: int,
    message: str = "",
    total_attempts: int | None = None,
) -> RetryDecision:
    """Decide what follows a failed attempt.

    ``counted_attempts`` includes the one that just failed. OOM doubles memory up to the
    cap (and is dead once the cap did not help); eviction retries without counting;
    terminal classes are dead at once; everything else retries until attempts run out.
    ``total_attempts`` (all of the scanner's, operator retries included) only words the
    reason, where it differs from the counted ones.
    """
    detail = f": {message}" if message else ""
    if failure in TERMINAL:
        return RetryDecision(False, resources, reason=f"{failure.value}{detail}")
    if failure is FailureClass.EVICTED:
        return RetryDecision(True, resources, counts=False)
    if counted_attempts >= max_attempts:
        return RetryDecision(
            False, resources,
            reason=f"{failure.value} after {counted_attempts} attempt(s)"
                   + (f" since the last operator retry ({total_attempts} in all)"
                      if total_attempts and total_attempts != counted_attempts else "")
                   + detail,
        )
    if failure is FailureClass.OOM_KILLED:
        if resources.memory_mib >= max_memory_mib:
            return RetryDecision(
                False, resources,
                reason=f"oom_killed at the memory cap ({max_memory_mib} MiB){detail}",
            )
        bigger = Resources(
            cpu_millis=resources.cpu_millis,
            memory_mib=min(resources.memory_mib * 2, max_memory_mib),
        )
        return RetryDecision(True, bigger)
    return RetryDecision(True, resources)


def job_deadline(tuning: RetryTuning) -> int:
    """Seconds a scanner attempt may run, enforced by every backend (a Job's
    ``activeDeadlineSeconds``, the local backend's kill): a minute inside the activity's
    timeout, so that a runaway scanner ends as ``deadline_exceeded`` (dead at once) rather
    than as an activity timeout that Temporal would retry."""
    seconds = int(tuning.scanner_timeout.total_seconds())
    return max(seconds - 60, seconds // 2, 1)


def backoff(tuning: RetryTuning, counted_attempts: int) -> timedelta:
    """Delay before the next attempt: exponential from ``initial_interval``, capped.
    An attempt that did not count (eviction) waits the initial interval."""
    exponent = max(counted_attempts - 1, 0)
    try:
        factor = tuning.backoff_coefficient**exponent
    except OverflowError:
        return tuning.maximum_interval
    # Past what a timedelta holds the product overflows (a request's tuning can ask for
    # that); below it the result is exactly what it always was.
    if tuning.initial_interval.total_seconds() * factor > _TIMEDELTA_SECONDS / 2:
        return tuning.maximum_interval
    return min(tuning.initial_interval * factor, tuning.maximum_interval)


_TIMEDELTA_SECONDS = timedelta.max.total_seconds()


# Task-queue fairness counts tasks, not work: each task moves its tenant's place in the
# queue by 1/weight. A clone or a scanner run holds a worker slot about eight times as
# long as a store write, a finalize or a cleanup (bench/README.md, "Fairness by cost"),
# so with equal counts a tenant whose backlog was all clones held most of the slots.
# Their tasks weigh less in proportion: tenants get equal slot time, not equal counts.
ACTIVITY_COST: dict[str, float] = {"clone_repository": 8.0, "run_scanner": 8.0}


def activity_priority(scan: Priority, activity: str) -> Priority:
    """The priority of one of a scan's activities: its tenant's fairness key, with the
    scan's weight divided by the activity's cost. ``Priority.default`` (inherit the
    scan's) when the scan has no fairness key."""
    if not scan.fairness_key:
        return Priority.default
    weight = (scan.fairness_weight or 1.0) / ACTIVITY_COST.get(activity, 1.0)
    return Priority(priority_key=scan.priority_key, fairness_key=scan.fairness_key,
                    fairness_weight=max(weight, MIN_WEIGHT))
