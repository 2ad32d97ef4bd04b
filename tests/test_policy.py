"""Pure policy: sizing from checkout size and the failure-class retry table."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.common import Priority

from scanward.catalog import Catalog
from scanward.contract import FailureClass, ResourceOverrides, Resources, RetryTuning
from scanward.policy import GIB, activity_priority, after_failure, backoff, size_resources

BANDIT = Catalog.load().get("bandit")


def test_sizing_grows_with_checkout_and_is_capped() -> None:
    small = size_resources(BANDIT, 10_000)
    big = size_resources(BANDIT, 4 * GIB)
    huge = size_resources(BANDIT, 1000 * GIB)
    assert small.memory_mib == 320  # 256 base + 1 MiB, rounded up to 64
    assert big.memory_mib == 256 + 4 * 512
    assert huge.memory_mib == BANDIT.max_memory_mib
    assert small.memory_mib % 64 == 0 and big.memory_mib % 64 == 0
    assert size_resources(BANDIT, 0).memory_mib == 256  # the floor is the base


def test_overrides_win() -> None:
    r = size_resources(BANDIT, 4 * GIB, ResourceOverrides(memory_mib=700))
    assert r == Resources(cpu_millis=BANDIT.base.cpu_millis, memory_mib=700)


R = Resources(cpu_millis=250, memory_mib=512)


@pytest.mark.parametrize("failure", [FailureClass.BAD_IMAGE, FailureClass.BAD_INPUT,
                                     FailureClass.BROKEN_SARIF,
                                     FailureClass.DEADLINE_EXCEEDED])
def test_terminal_failures_are_dead_at_once(failure: FailureClass) -> None:
    d = after_failure(failure, resources=R, counted_attempts=1, max_attempts=5,
                      max_memory_mib=4096, message="why")
    assert not d.retry and d.reason == f"{failure.value}: why"


def test_oom_doubles_memory_up_to_the_cap_then_dead() -> None:
    d = after_failure(FailureClass.OOM_KILLED, resources=R, counted_attempts=1, max_attempts=5,
                      max_memory_mib=1536)
    assert d.retry and d.resources.memory_mib == 1024
    d = after_failure(FailureClass.OOM_KILLED, resources=d.resources, counted_attempts=2,
                      max_attempts=5, max_memory_mib=1536)
    assert d.retry and d.resources.memory_mib == 1536
    d = after_failure(FailureClass.OOM_KILLED, resources=d.resources, counted_attempts=3,
                      max_attempts=5, max_memory_mib=1536)
    assert not d.retry and "memory cap" in d.reason


def test_eviction_retries_without_counting() -> None:
    d = after_failure(FailureClass.EVICTED, resources=R, counted_attempts=99, max_attempts=3,
                      max_memory_mib=4096)
    assert d.retry and not d.counts


def test_crashes_retry_until_attempts_are_spent() -> None:
    assert after_failure(FailureClass.CRASHED, resources=R, counted_attempts=2, max_attempts=3,
                         max_memory_mib=4096).retry
    d = after_failure(FailureClass.CRASHED, resources=R, counted_attempts=3, max_attempts=3,
                      max_memory_mib=4096, message="exit 1")
    assert not d.retry and d.reason == "crashed after 3 attempt(s): exit 1"
    # Dead again after an operator retry: the reason said "after 3 attempt(s)" beside an
    # attempts column of 6.
    again = after_failure(FailureClass.CRASHED, resources=R, counted_attempts=3,
                          max_attempts=3, max_memory_mib=4096, message="exit 1",
                          total_attempts=6)
    assert again.reason == ("crashed after 3 attempt(s) since the last operator retry "
                            "(6 in all): exit 1")


def test_backoff_is_exponential_and_capped() -> None:
    t = RetryTuning(initial_interval=timedelta(seconds=10), backoff_coefficient=2.0,
                    maximum_interval=timedelta(seconds=60))
    assert [backoff(t, n).total_seconds() for n in (0, 1, 2, 3, 4, 5)] == [10, 10, 20, 40, 60, 60]


def test_activities_weigh_their_tenants_weight_by_their_cost() -> None:
    acme = Priority(fairness_key="acme", fairness_weight=2.0)
    assert activity_priority(acme, "clone_repository") == Priority(
        fairness_key="acme", fairness_weight=0.25)
    assert activity_priority(acme, "run_scanner").fairness_weight == 0.25
    assert activity_priority(acme, "persist_results") == acme
    # An unweighted tenant weighs 1; Temporal's floor is kept.
    assert activity_priority(Priority(fairness_key="small"), "run_scanner").fairness_weight \
        == 0.125
    assert activity_priority(Priority(fairness_key="tiny", fairness_weight=0.001),
                             "clone_repository").fairness_weight == 0.001
    # A scan's priority key stays; a scan without a fairness key stays first come, first
    # served (its activities inherit).
    urgent = Priority(priority_key=1, fairness_key="acme")
    assert activity_priority(urgent, "clone_repository").priority_key == 1
    assert activity_priority(Priority.default, "clone_repository") is Priority.default
