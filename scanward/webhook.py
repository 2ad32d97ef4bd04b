"""Signed webhook delivery of a finished scan's summary.

The body is ``{"event": "scan.finished", "scan": <ScanSummary as JSON>}``, serialised
deterministically (sorted keys, no whitespace), so every retry sends the same bytes.
For a completed or partial scan, ``scan.lifecycle`` says what changed since the previous
completed scan of the same tenant, repository, ref and scanners (what a PR bot needs for
"2 new high findings"): ``new``, ``existing``, ``fixed`` and ``suppressed`` counts,
``new_by_severity``, ``previous_scan_id``/``previous_commit``, and ``new_findings``: the
new findings, most severe first, at most :data:`scanward.lifecycle.NEW_FINDINGS_CAP`
(``truncated`` is true when there were more), each with its ``match_fingerprint`` (what
``scanward triage`` takes). Suppressed and triaged findings are never in ``new``;
``scan.by_severity`` then counts open findings only.
Each request carries:

* :data:`TIMESTAMP_HEADER`: Unix time in whole seconds, as decimal digits;
* :data:`SIGNATURE_HEADER`: ``sha256=<hex>``, HMAC-SHA256 with the target's secret over
  ``f"{timestamp}.".encode() + body``: receivers check it with :func:`verify`, which also
  refuses timestamps outside a tolerance window (replays);
* :data:`IDEMPOTENCY_HEADER`: :func:`idempotency_key` of the scan's run and the target
  URL, the same on every retry, so a receiver can drop duplicates; a scan started again
  under the same id (after a failure or a cancel) is a new run with a new key. A
  receiver that answers ``409 Conflict`` to a key it has seen is treated as having been
  delivered to.

:func:`deliver` raises :class:`WebhookFailed` when retrying may help (5xx, 408, 425,
429, timeouts, connection errors) and :class:`WebhookRejected` when it cannot (other
4xx, redirects, a bad URL or an empty secret). Messages name the URL without its
credentials, query string or fragment, and never contain the secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from scanward.contract import ScanSummary

__all__ = [
    "EVENT",
    "IDEMPOTENCY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookError",
    "WebhookFailed",
    "WebhookRejected",
    "body_for",
    "deliver",
    "idempotency_key",
    "redact_url",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-Scanward-Signature"
TIMESTAMP_HEADER = "X-Scanward-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "X-Scanward-Event"
EVENT = "scan.finished"
USER_AGENT = "scanward-webhook/1"

_RETRYABLE_4XX = frozenset({408, 425, 429})
_ALREADY_DELIVERED = 409
_MAX_TIMESTAMP_DIGITS = 12
_ERROR_BODY_CHARS = 200


class WebhookError(Exception):
    """A webhook was not delivered. ``url`` is the target without credentials, query or
    fragment; ``status`` the HTTP status, if the receiver answered."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class WebhookRejected(WebhookError):
    """Not retryable: the receiver refused the request (4xx other than 408/409/425/429,
    or a redirect), or the target or secret is unusable."""


class WebhookFailed(WebhookError):
    """Retryable: 5xx, 408, 425, 429, a timeout or a connection error.
    ``retry_after_s`` is the receiver's ``Retry-After``, when it sent a usable one."""

    def __init__(self, message: str, *, url: str, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message, url=url, status=status)
        self.retry_after_s = retry_after_s


def idempotency_key(scan_id: str, target_url: str, run_id: str | None = None) -> str:
    """The delivery's idempotency key: 64 hex digits, a function of the scan's run and
    the target only, so it is the same on every retry (and reveals neither). A scan id
    started again after a failure or a cancel is a new run, with a new key: its result is
    news to a receiver that already has the first run's. ``run_id`` None: the key of
    deliveries scheduled before runs were part of it."""
    material = f"scanward-webhook/1\x00{EVENT}\x00{scan_id}\x00{target_url}"
    if run_id is not None:
        material = f"scanward-webhook/2\x00{EVENT}\x00{scan_id}\x00{run_id}\x00{target_url}"
    return hashlib.sha256(material.encode()).hexdigest()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 with ``secret`` over ``f"{timestamp}.{body}"``."""
    if not secret:
        raise ValueError("webhook secret is empty")
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes, headers: Mapping[str, str], body: bytes, *,
           now: float | None = None, tolerance_s: int = 300) -> bool:
    """True when ``headers`` carry a valid signature of ``body`` made with ``secret`` and a
    timestamp within ``tolerance_s`` seconds of ``now`` (default: the current time).

    For receivers. Header names are matched case-insensitively; the signature is
    compared in constant time. Any missing or malformed header gives False.
    """
    if not secret:
        return False
    timestamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    if timestamp is None or signature is None:
        return False
    timestamp = timestamp.strip()
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > _MAX_TIMESTAMP_DIGITS:
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).encode("ascii")
    given = signature.strip().encode("utf-8", "replace")
    return hmac.compare_digest(expected, given)


def body_for(summary: ScanSummary) -> bytes:
    """The exact bytes :func:`deliver` POSTs for ``summary``."""
    payload: dict[str, Any] = {"event": EVENT, "scan": summary.model_dump(mode="json")}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def redact_url(url: str) -> str:
    """``url`` without credentials, query string or fragment, for messages and logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<malformed URL>"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else "<malformed URL>"


async def deliver(target_url: str, secret: bytes, summary: ScanSummary, *,
                  timeout_s: float = 10.0, client: httpx.AsyncClient | None = None,
                  run_id: str | None = None) -> int:
    """POST ``summary`` to ``target_url``, signed with ``secret``; return the HTTP status.

    Returns on 2xx, and on 409 (the receiver already has this idempotency key). Raises
    :class:`WebhookFailed` (retryable) or :class:`WebhookRejected` (not retryable).
    ``timeout_s`` bounds the whole exchange, not just each read. Redirects are not
    followed (the signature is for this URL). ``client`` may be shared; by default a
    client is created for the call.
    """
    shown = redact_url(target_url)
    parts = urlsplit(target_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRejected(f"webhook URL {shown} is not an http(s) URL", url=shown)
    if not secret:
        raise WebhookRejected(f"webhook secret for {shown} is empty", url=shown)
    body = body_for(summary)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: EVENT,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        IDEMPOTENCY_HEADER: idempotency_key(summary.scan_id, target_url, run_id),
    }
    try:
        async with asyncio.timeout(timeout_s):
            if client is not None:
                status, reason, retry_after, text = await _post(client, target_url, body,
                                                                headers, timeout_s)
            else:
                async with httpx.AsyncClient(follow_redirects=False) as own:
                    status, reason, retry_after, text = await _post(own, target_url, body,
                                                                    headers, timeout_s)
    except TimeoutError:
        raise WebhookFailed(f"webhook to {shown} timed out after {timeout_s:g}s",
                            url=shown) from None
    except httpx.TimeoutException:
        raise WebhookFailed(f"webhook to {shown} timed out after {timeout_s:g}s",
                            url=shown) from None
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as e:
        raise WebhookRejected(f"webhook URL {shown} is unusable: {type(e).__name__}",
                              url=shown) from None
    except httpx.TransportError as e:
        raise WebhookFailed(f"webhook to {shown} failed: {type(e).__name__}"
                            f"{_safe_detail(e, target_url)}", url=shown) from None

    described = f"HTTP {status}{' ' + reason if reason else ''}"
    if 200 <= status < 300 or status == _ALREADY_DELIVERED:
        return status
    if status >= 500 or status in _RETRYABLE_4XX:
        raise WebhookFailed(f"webhook to {shown} failed: {described}{text}", url=shown,
                            status=status, retry_after_s=retry_after)
    if 300 <= status < 400:
        raise WebhookRejected(f"webhook to {shown} was redirected ({described}); webhooks "
                              "do not follow redirects: configure the final URL",
                              url=shown, status=status)
    raise WebhookRejected(f"webhook to {shown} rejected: {described}{text}", url=shown,
                          status=status)


async def _post(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str],
                timeout_s: float) -> tuple[int, str, float | None, str]:
    """POST and return (status, reason, Retry-After seconds, ": <start of error body>")."""
    async with client.stream("POST", url, content=body, headers=headers,
                             timeout=timeout_s, follow_redirects=False) as resp:
        status = resp.status_code
        text = ""
        if status >= 400 and status != _ALREADY_DELIVERED:
            # Read only the start of an error body: it is for the message, and untrusted.
            chunk = b""
            async for part in resp.aiter_bytes():
                chunk += part
                if len(chunk) >= _ERROR_BODY_CHARS * 4:
                    break
            shown = " ".join(chunk.decode("utf-8", "replace").split())[:_ERROR_BODY_CHARS]
            text = f": {shown!r}" if shown else ""
        return status, resp.reason_phrase, _retry_after(resp.headers.get("Retry-After")), text


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _safe_detail(exc: Exception, url: str) -> str:
    """``str(exc)`` with the full URL (and so its query string) removed."""
    detail = str(exc).replace(url, redact_url(url))
    parts = urlsplit(url)
    for secret_part in (parts.query, parts.fragment, parts.password):
        if secret_part:
            detail = detail.replace(secret_part, "…")
    detail = " ".join(detail.split())[:300]
    return f" ({detail})" if detail else ""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None
