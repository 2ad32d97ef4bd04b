"""The one exception type the store raises."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The database URL is malformed or unsupported, the database cannot be reached,
    or a statement failed. The message is one line and never contains a password."""


class UnknownFingerprint(StoreError):
    """No stored finding has the given match fingerprint (or prefix), or several do in
    different repositories and nothing says which one is meant."""
