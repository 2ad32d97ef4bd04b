"""The apiserver's audit log of the workers' requests: its policy, its incremental reader,
and the requests' classification (per scan, shared watch, preflight)."""

from __future__ import annotations

import json
import urllib.parse
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  # Only service-account identities (the workers): the control plane's own components
  # (admin token) would make the log large and the apiserver slower.
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""


@dataclass
class AuditEvent:
    audit_id: str
    user: str
    user_agent: str
    verb: str
    resource: str
    namespace: str
    uri: str
    received: float
    code: int | None


class AuditLog:
    """The apiserver's audit log, read incrementally; one entry per request (auditID)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.events: dict[str, AuditEvent] = {}

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
            self._offset = f.tell()
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            e = json.loads(line)
            ref = e.get("objectRef") or {}
            resource = ref.get("resource", "")
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            code = (e.get("responseStatus") or {}).get("code")
            known = self.events.get(e["auditID"])
            if known is not None:
                if code is not None:
                    known.code = code
                continue
            self.events[e["auditID"]] = AuditEvent(
                audit_id=e["auditID"], user=(e.get("user") or {}).get("username", ""),
                user_agent=e.get("userAgent", ""), verb=e.get("verb", ""),
                resource=resource, namespace=ref.get("namespace", ""),
                uri=e.get("requestURI", ""),
                received=datetime.fromisoformat(e["requestReceivedTimestamp"]).timestamp(),
                code=code)

    def of(self, user: str, start: float = 0.0, end: float = float("inf")) -> list[AuditEvent]:
        self.poll()
        return [e for e in self.events.values()
                if e.user == user and start <= e.received <= end]


PER_SCAN = ("create jobs", "get jobs", "delete jobs", "list pods (job-name)", "get pods/log")
WATCH = ("list jobs", "watch jobs", "list pods", "watch pods")


def classify(event: AuditEvent) -> str:
    kind = f"{event.verb} {event.resource}"
    if kind == "create jobs" and "dryRun" in event.uri:
        return "preflight (dry-run create)"
    if kind == "create selfsubjectaccessreviews":
        return "preflight (access review)"
    if kind == "list pods" and "job-name" in urllib.parse.unquote(event.uri):
        return "list pods (job-name)"
    return kind


def breakdown(events: Iterable[AuditEvent]) -> dict[str, int]:
    return dict(Counter(classify(e) for e in events))
