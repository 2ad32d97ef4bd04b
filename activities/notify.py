"""The notify activity: one signed webhook POST per target. The idempotency key is
derived from the scan, so a retried activity never notifies twice as the receiver
sees it."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from scanward.contract import NotifyInput
from scanward.secrets import SecretNotFound, SecretStore
from scanward.webhook import WebhookRejected, deliver


class NotifyActivities:
    def __init__(self, secrets: SecretStore) -> None:
        self._secrets = secrets

    @activity.defn(name="notify_webhook")
    async def notify_webhook(self, req: NotifyInput) -> int:
        """POST the summary to the target, signed with its secret; returns the status."""
        try:
            secret = self._secrets.resolve(req.target.secret_ref)
        except SecretNotFound as e:
            raise ApplicationError(str(e), type="SecretNotFound", non_retryable=True) from e
        try:
            return await deliver(req.target.url, secret, req.summary)
        except WebhookRejected as e:
            raise ApplicationError(str(e), type="WebhookRejected", non_retryable=True) from e
