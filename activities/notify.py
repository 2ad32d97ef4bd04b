"""The notify activity: one signed webhook POST per target. The idempotency key is
derived from the scan's run, so a retried activity never notifies twice as the receiver
sees it. Every delivery attempt is counted (``scanward_webhook_deliveries_total``) so
that failing receivers alert."""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.exceptions import ApplicationError

from scanward import metrics
from scanward.contract import NotifyInput
from scanward.secrets import SecretNotFound, SecretStore
from scanward.webhook import WebhookFailed, WebhookRejected, deliver


def _last_attempt() -> bool:
    """Whether Temporal will not retry this activity after a retryable failure."""
    info = activity.info()
    policy = info.retry_policy
    return policy is not None and 0 < policy.maximum_attempts <= info.attempt


class NotifyActivities:
    def __init__(self, secrets: SecretStore, pusher: metrics.Pusher | None = None) -> None:
        self._secrets = secrets
        self._pusher = pusher

    @activity.defn(name="notify_webhook")
    async def notify_webhook(self, req: NotifyInput) -> int:
        """POST the summary to the target, signed with its secret; returns the status."""
        outcome: str | None = None  # None: cancelled, not a delivery attempt
        try:
            try:
                secret = self._secrets.resolve_for(req.target.secret_ref, req.target.url)
            except SecretNotFound as e:
                outcome = "rejected"
                raise ApplicationError(str(e), type=type(e).__name__,
                                       non_retryable=True) from e
            try:
                status = await deliver(req.target.url, secret, req.summary,
                                       run_id=req.run_id)
            except WebhookRejected as e:
                outcome = "rejected"
                raise ApplicationError(str(e), type="WebhookRejected",
                                       non_retryable=True) from e
            except WebhookFailed:
                outcome = "gave_up" if _last_attempt() else "failed"
                raise
            outcome = "delivered"
            return status
        finally:
            if outcome is not None:
                metrics.record_delivery(req.target.url, outcome)
                if self._pusher is not None:
                    await asyncio.shield(asyncio.to_thread(self._pusher.push))
