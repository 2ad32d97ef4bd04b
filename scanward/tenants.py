"""Per-tenant fairness settings, parsed once with errors that name the bad entry.

* ``SCANWARD_TENANT_WEIGHTS="acme=3,small=1"``: each tenant's share of task dispatch
  when the task queue is backlogged (Temporal's task-queue fairness: the client starts
  a scan with ``Priority(fairness_key=tenant, fairness_weight=w)`` and its activities
  inherit it). Unlisted tenants weigh 1.
* ``SCANWARD_TENANT_MAX_JOBS="4"`` or ``"acme=8,*=2"``: at most N scanner jobs of a tenant
  run at once per worker (``*`` for every tenant not listed); unset means no cap. A job
  that finds its tenant's cap reached goes back to the task queue for a while
  (:func:`requeue_delay`) rather than wait in a worker slot.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from temporalio.common import Priority

from scanward.inputs import InputError

WEIGHTS_ENV = "SCANWARD_TENANT_WEIGHTS"
MAX_JOBS_ENV = "SCANWARD_TENANT_MAX_JOBS"
ANY_TENANT = "*"
# Temporal clamps weights to [0.001, 1000]: refuse what it would silently change.
MIN_WEIGHT, MAX_WEIGHT = 0.001, 1000.0
# A capped job's time back in the task queue: doubling from the first, up to the most.
REQUEUE_FIRST, REQUEUE_MOST = timedelta(milliseconds=500), timedelta(seconds=10)
# Attempts a requeued job leaves unspent: one to wait on the worker, one to retry a real
# failure.
SPARE_ATTEMPTS = 2


def _pairs(text: str, variable: str) -> list[tuple[str, str]]:
    pairs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        tenant, sep, value = item.partition("=")
        tenant, value = tenant.strip(), value.strip()
        if not sep or not tenant or not value:
            raise InputError(f"{variable}: {item!r} is not TENANT=VALUE")
        pairs.append((tenant, value))
    return pairs


def parse_weights(text: str | None, variable: str = WEIGHTS_ENV) -> dict[str, float]:
    """``"acme=3,small=0.5"`` → ``{"acme": 3.0, "small": 0.5}``; empty → ``{}``."""
    weights: dict[str, float] = {}
    for tenant, value in _pairs(text or "", variable):
        try:
            weight = float(value)
        except ValueError:
            raise InputError(f"{variable}: weight of {tenant!r} is not a number: "
                             f"{value!r}") from None
        if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
            raise InputError(f"{variable}: weight of {tenant!r} must be between "
                             f"{MIN_WEIGHT} and {MAX_WEIGHT:g}, not {value}")
        if tenant in weights:
            raise InputError(f"{variable}: tenant {tenant!r} listed twice")
        weights[tenant] = weight
    return weights


@functools.lru_cache(maxsize=8)
def _weights_of(text: str) -> Mapping[str, float]:
    return parse_weights(text)


def weights_from_env(env: Mapping[str, str] | None = None) -> Mapping[str, float]:
    """The weights ``SCANWARD_TENANT_WEIGHTS`` sets (parsed once per distinct value)."""
    return _weights_of((os.environ if env is None else env).get(WEIGHTS_ENV, ""))


def priority_for(tenant: str, weights: Mapping[str, float]) -> Priority:
    """The start priority of a scan of ``tenant``: its own fairness key, its weight."""
    return Priority(fairness_key=tenant, fairness_weight=weights.get(tenant))


@dataclass(frozen=True)
class JobCaps:
    """Concurrent scanner jobs allowed per tenant on one worker (None: no cap)."""

    per_tenant: Mapping[str, int]
    default: int | None = None

    def cap(self, tenant: str) -> int | None:
        return self.per_tenant.get(tenant, self.default)

    @property
    def enabled(self) -> bool:
        return self.default is not None or bool(self.per_tenant)


def parse_job_caps(text: str | None, variable: str = MAX_JOBS_ENV) -> JobCaps:
    """``"4"`` (every tenant) or ``"acme=8,*=2"``; empty → no cap."""
    text = (text or "").strip()
    if not text:
        return JobCaps({})
    if "=" not in text:
        return JobCaps({}, _count(variable, ANY_TENANT, text))
    caps: dict[str, int] = {}
    for tenant, value in _pairs(text, variable):
        if tenant in caps:
            raise InputError(f"{variable}: tenant {tenant!r} listed twice")
        caps[tenant] = _count(variable, tenant, value)
    default = caps.pop(ANY_TENANT, None)
    return JobCaps(caps, default)


def _count(variable: str, tenant: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InputError(f"{variable}: cap of {tenant!r} is not a whole number: "
                         f"{value!r}") from None
    if n < 1:
        raise InputError(f"{variable}: cap of {tenant!r} must be at least 1, not {n}")
    return n


def requeue_delay(attempt: int, maximum_attempts: int) -> timedelta | None:
    """How long a scanner job that finds its tenant's cap reached on a worker goes back
    to the task queue (failing this activity attempt: a retry, no history event) before
    its next attempt; ``None`` when its retry policy (``maximum_attempts``, 0: no limit)
    has no attempt to spare: then it waits on the worker, its worker slot lent back."""
    if maximum_attempts and maximum_attempts - attempt < SPARE_ATTEMPTS:
        return None
    doublings = min(max(attempt - 1, 0), 16)  # bounded: timedelta overflows otherwise
    return min(REQUEUE_FIRST * (1 << doublings), REQUEUE_MOST)
