"""The webhook receiver of the ``webhook`` scenario: :class:`WebhookReceiver` (it
verifies the signature, 401 if it does not, and deduplicates by idempotency key: 200 the
first time, 409 after) that is *down* (answers 503) for its first ``down_seconds`` and
*slow* (waits ``delay_seconds`` before answering) throughout, so the report can say
whether every scan was delivered exactly once despite the outage."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from scanward.webhook_receiver import WebhookReceiver


class FlakyReceiver(WebhookReceiver):
    def __init__(self, secret: bytes, *, down_seconds: float = 0.0,
                 delay_seconds: float = 0.0) -> None:
        super().__init__(secret, delay_s=delay_seconds)
        self.down_seconds = down_seconds
        self._up_at = 0.0

    def start(self) -> FlakyReceiver:
        self._up_at = time.monotonic() + self.down_seconds
        super().start()
        return self

    def refusal(self) -> int | None:
        return 503 if time.monotonic() < self._up_at else None

    def delivered_scan_ids(self) -> set[str]:
        """The scans whose webhook the receiver accepted (2xx), from the bodies
        (``{"event": ..., "scan": <ScanSummary>}``, scanward.webhook.body_for)."""
        ids = set()
        for delivery in self.accepted:
            scan = delivery.body.get("scan") if isinstance(delivery.body, dict) else None
            if isinstance(scan, dict) and isinstance(scan.get("scan_id"), str):
                ids.add(scan["scan_id"])
        return ids

    def summary(self) -> dict[str, Any]:
        answers = Counter(self.statuses)
        return {"down_seconds": self.down_seconds, "delay_seconds": self.delay_s,
                "requests": sum(answers.values()),
                "answers": {str(k): v for k, v in sorted(answers.items())},
                "delivered_scans": len({d.key for d in self.accepted})}
