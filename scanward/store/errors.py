"""The one exception type the store raises."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The database URL is malformed or unsupported, the database cannot be reached,
    or a statement failed. The message is one line and never contains a password."""
