"""Persistence of scans, scanner results and findings (SQLAlchemy 2 + Alembic).

``Store.open("sqlite:////var/lib/scanward/scanward.db")`` or
``Store.open("postgresql://user:password@host:5432/scanward")``; the schema is upgraded
on open. See :class:`Store`.
"""

from scanward.store.errors import StoreError, UnknownFingerprint
from scanward.store.store import (
    FINAL_STATUSES,
    FindingRecord,
    HistoryEntry,
    ScannerResultRecord,
    ScanRecord,
    Store,
    StoredFindings,
    TriageRecord,
    scrub_repository,
)
from scanward.store.urls import mask_url, normalize_url, sqlite_url

__all__ = [
    "FINAL_STATUSES",
    "FindingRecord",
    "HistoryEntry",
    "ScanRecord",
    "ScannerResultRecord",
    "Store",
    "StoreError",
    "StoredFindings",
    "TriageRecord",
    "UnknownFingerprint",
    "mask_url",
    "normalize_url",
    "scrub_repository",
    "sqlite_url",
]
