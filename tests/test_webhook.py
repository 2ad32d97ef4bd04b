"""Tests of signed webhook delivery (``scanward.webhook``) against a real local HTTP
server (``scanward/webhook_receiver.py``) that verifies signatures and dedupes by key."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from scanward.contract import ScannerRun, ScannerStatus, ScanStatus, ScanSummary, Severity
from scanward.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookFailed,
    WebhookRejected,
    body_for,
    deliver,
    idempotency_key,
    redact_url,
    sign,
    verify,
)
from scanward.webhook_receiver import WebhookReceiver

SECRET = b"webhook-test-secret-7f3a"


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=SECRET) as r:
        yield r


@pytest.fixture
def summary() -> ScanSummary:
    return ScanSummary(
        scan_id="scan-default-0123456789abcdef0123",
        tenant="default",
        repository="https://github.com/example/app.git",
        ref="main",
        commit="0123456789abcdef0123456789abcdef01234567",
        status=ScanStatus.COMPLETED,
        scanners=(ScannerRun(scanner="bandit", status=ScannerStatus.SUCCEEDED, attempts=1,
                             finding_count=3),),
        finding_count=3,
        by_severity={Severity.HIGH: 1, Severity.LOW: 2},
    )


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --------------------------------------------------------------------------- delivery


async def test_delivery_is_signed_and_verifies(hook: WebhookReceiver,
                                               summary: ScanSummary) -> None:
    assert await deliver(hook.url, SECRET, summary) == 200
    (d,) = hook.deliveries
    assert d.verified
    assert d.key == idempotency_key(summary.scan_id, hook.url)
    assert d.body == {"event": "scan.finished", "scan": summary.model_dump(mode="json")}
    assert ScanSummary.model_validate(d.body["scan"]) == summary
    assert hook.statuses == [200]


async def test_wrong_secret_fails_verification(hook: WebhookReceiver,
                                               summary: ScanSummary) -> None:
    with pytest.raises(WebhookRejected, match=r"HTTP 401") as info:
        await deliver(hook.url, b"not-the-secret", summary)
    assert info.value.status == 401
    assert [d.verified for d in hook.deliveries] == [False]
    assert hook.accepted == []


async def test_retry_with_the_same_key_is_deduped_by_the_receiver(
        hook: WebhookReceiver, summary: ScanSummary) -> None:
    assert await deliver(hook.url, SECRET, summary) == 200
    # The activity is retried (e.g. the worker died after the POST): same key, 409.
    assert await deliver(hook.url, SECRET, summary) == 409
    first, second = hook.deliveries
    assert first.key == second.key
    assert first.body == second.body
    assert second.verified  # a fresh timestamp and signature, the same body
    assert hook.statuses == [200, 409]
    assert len(hook.accepted) == 1


async def test_a_timed_out_delivery_retried_counts_once(summary: ScanSummary) -> None:
    with WebhookReceiver(secret=SECRET, delay_s=2.0) as slow:
        with pytest.raises(WebhookFailed, match=r"timed out after 0.3s"):
            await deliver(slow.url, SECRET, summary, timeout_s=0.3)
        slow.delay_s = 0
        assert await deliver(slow.url, SECRET, summary) == 409  # it had arrived
        assert len(slow.accepted) == 1


async def test_server_error_is_retryable(hook: WebhookReceiver, summary: ScanSummary) -> None:
    hook.respond_with(500)
    with pytest.raises(WebhookFailed) as info:
        await deliver(hook.url, SECRET, summary)
    assert info.value.status == 500
    assert str(info.value).startswith(f"webhook to {hook.url} failed: HTTP 500 "
                                      "Internal Server Error")
    assert await deliver(hook.url, SECRET, summary) == 200  # the retry goes through


async def test_bad_request_is_not_retryable(hook: WebhookReceiver,
                                            summary: ScanSummary) -> None:
    hook.respond_with(400)
    with pytest.raises(WebhookRejected) as info:
        await deliver(hook.url, SECRET, summary)
    assert info.value.status == 400
    assert str(info.value) == (f"webhook to {hook.url} rejected: HTTP 400 Bad Request: "
                               "'{\"status\": 400}'")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, None), (201, None), (202, None), (204, None), (409, None),
     (408, WebhookFailed), (425, WebhookFailed), (429, WebhookFailed), (502, WebhookFailed),
     (503, WebhookFailed), (504, WebhookFailed),
     (401, WebhookRejected), (403, WebhookRejected), (404, WebhookRejected),
     (410, WebhookRejected), (413, WebhookRejected), (422, WebhookRejected),
     (301, WebhookRejected), (307, WebhookRejected)],
)
async def test_status_classification(hook: WebhookReceiver, summary: ScanSummary,
                                     status: int, outcome: type[Exception] | None) -> None:
    hook.respond_with(status)
    if outcome is None:
        assert await deliver(hook.url, SECRET, summary) == status
    else:
        with pytest.raises(outcome, match=f"HTTP {status}"):
            await deliver(hook.url, SECRET, summary)


async def test_retry_after_is_reported(hook: WebhookReceiver, summary: ScanSummary) -> None:
    hook.respond_with(429, retry_after="7")
    with pytest.raises(WebhookFailed) as info:
        await deliver(hook.url, SECRET, summary)
    assert info.value.retry_after_s == 7.0
    assert info.value.status == 429


async def test_connection_refused_names_the_url_but_not_query_or_secret(
        summary: ScanSummary) -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}/hook?token=query-secret-123"
    with pytest.raises(WebhookFailed) as info:
        await deliver(url, SECRET, summary, timeout_s=5)
    message = str(info.value)
    assert message.startswith(f"webhook to http://127.0.0.1:{port}/hook failed: ConnectError")
    assert "query-secret-123" not in message
    assert SECRET.decode() not in message
    assert info.value.url == f"http://127.0.0.1:{port}/hook"
    assert info.value.status is None


async def test_credentials_in_the_url_never_reach_messages(hook: WebhookReceiver,
                                                           summary: ScanSummary) -> None:
    url = hook.url.replace("http://", "http://user:pa55word@") + "?sig=abc"
    hook.respond_with(400)
    with pytest.raises(WebhookRejected) as info:
        await deliver(url, SECRET, summary)
    assert "pa55word" not in str(info.value)
    assert "sig=abc" not in str(info.value)
    assert hook.url in str(info.value)


async def test_unusable_targets_are_rejected(summary: ScanSummary) -> None:
    with pytest.raises(WebhookRejected, match=r"is not an http\(s\) URL"):
        await deliver("ftp://example.com/hook", SECRET, summary)
    with pytest.raises(WebhookRejected, match=r"secret for http://127.0.0.1:9/hook is empty"):
        await deliver("http://127.0.0.1:9/hook", b"", summary)


async def test_a_caller_supplied_client_is_used(hook: WebhookReceiver,
                                                summary: ScanSummary) -> None:
    async with httpx.AsyncClient() as client:
        assert await deliver(hook.url, SECRET, summary, client=client) == 200
        assert not client.is_closed
    assert hook.deliveries[0].verified


# --------------------------------------------------------------- signing and keys


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"event":"scan.finished"}'
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, "1700000000", body) == f"sha256={expected}"
    with pytest.raises(ValueError, match="secret is empty"):
        sign(b"", "1", body)


def test_verify() -> None:
    body = b'{"event":"scan.finished","scan":{}}'
    now = time.time()
    ts = str(int(now))
    good = {SIGNATURE_HEADER: sign(SECRET, ts, body), TIMESTAMP_HEADER: ts}
    assert verify(SECRET, good, body)
    assert verify(SECRET, {k.lower(): v for k, v in good.items()}, body)  # any header case
    assert not verify(b"wrong-secret", good, body)
    assert not verify(SECRET, good, body + b" ")  # tampered body
    assert not verify(SECRET, {**good, TIMESTAMP_HEADER: str(int(now) + 1)}, body)
    assert not verify(SECRET, {TIMESTAMP_HEADER: ts}, body)
    assert not verify(SECRET, {SIGNATURE_HEADER: good[SIGNATURE_HEADER]}, body)
    assert not verify(SECRET, {**good, SIGNATURE_HEADER: "sha256=ünïcode"}, body)
    assert not verify(SECRET, {**good, TIMESTAMP_HEADER: "-12"}, body)
    assert not verify(b"", good, body)


def test_verify_refuses_timestamps_outside_the_tolerance() -> None:
    body = b"{}"
    ts = 1_700_000_000
    headers = {SIGNATURE_HEADER: sign(SECRET, str(ts), body), TIMESTAMP_HEADER: str(ts)}
    assert verify(SECRET, headers, body, now=ts + 300)
    assert not verify(SECRET, headers, body, now=ts + 301)  # a replay, too late
    assert not verify(SECRET, headers, body, now=ts - 301)  # from the future
    assert verify(SECRET, headers, body, now=ts + 1000, tolerance_s=1000)
    assert not verify(SECRET, headers, body)  # now: years later


def test_idempotency_key_is_deterministic() -> None:
    key = idempotency_key("scan-default-0123456789abcdef0123", "https://a.example/hook")
    assert key == idempotency_key("scan-default-0123456789abcdef0123", "https://a.example/hook")
    assert len(key) == 64
    assert int(key, 16) >= 0
    assert key != idempotency_key("scan-default-0123456789abcdef0124", "https://a.example/hook")
    assert key != idempotency_key("scan-default-0123456789abcdef0123", "https://b.example/hook")


def test_body_is_deterministic(summary: ScanSummary) -> None:
    body = body_for(summary)
    assert body == body_for(summary.model_copy())
    assert json.loads(body) == {"event": "scan.finished", "scan": summary.model_dump(mode="json")}


def test_header_names_and_url_redaction() -> None:
    assert (SIGNATURE_HEADER, TIMESTAMP_HEADER, IDEMPOTENCY_HEADER) == (
        "X-Scanward-Signature", "X-Scanward-Timestamp", "Idempotency-Key")
    assert redact_url("https://u:p@h.example:8443/x/y?q=1#f") == "https://h.example:8443/x/y"
    assert redact_url("http://[::1]:80/x") == "http://[::1]:80/x"
