"""Persistence of scans, scanner results and findings (SQLAlchemy 2 + Alembic).

``Store.open("sqlite:////var/lib/scanward/scanward.db")`` or
``Store.open("postgresql://user:password@host:5432/scanward")``; the schema is upgraded
on open. See :class:`Store`.
"""

from scanward.store.errors import StoreError
from scanward.store.store import (
    FINAL_STATUSES,
    ScannerResultRecord,
    ScanRecord,
    Store,
    StoredFindings,
    scrub_repository,
)
from scanward.store.urls import mask_url, normalize_url, sqlite_url

__all__ = [
    "FINAL_STATUSES",
    "ScanRecord",
    "ScannerResultRecord",
    "Store",
    "StoreError",
    "StoredFindings",
    "mask_url",
    "normalize_url",
    "scrub_repository",
    "sqlite_url",
]
