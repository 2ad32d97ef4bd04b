"""Parsing, normalising and masking database URLs.

Accepted forms:

* ``sqlite:////absolute/path.db`` (also ``sqlite+pysqlite://``): an embedded SQLite file;
  the path must be absolute (:func:`sqlite_url` builds one from any path).
* ``postgresql+psycopg://user:password@host:port/db``; ``postgresql://`` and
  ``postgres://`` are rewritten to the psycopg (3) driver.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from scanward.store.errors import StoreError

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
# "scheme://user:password@" -> "scheme://user:***@", for strings that do not parse.
_USERINFO_PASSWORD = re.compile(r"(?P<head>^[^:/?#]*://[^:/?#@]*:)[^@/]*@")
_POSTGRES_DRIVERS = {"postgres", "postgresql", "postgresql+psycopg"}
_SQLITE_DRIVERS = {"sqlite", "sqlite+pysqlite"}


def mask_url(url: str | URL) -> str:
    """Render ``url`` with its password replaced by ``***``; never raises."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a malformed URL: mask by pattern instead
        return _USERINFO_PASSWORD.sub(r"\g<head>***@", url)


def scrub(text: str, url: URL) -> str:
    """Remove ``url``'s password from ``text`` and fold it onto one line."""
    if url.password:
        # Only where it stands alone: a short password replaced inside words garbled the
        # driver's message ("***ort 9 failed ... acce***ting" for the password "p").
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(str(url.password))}(?![A-Za-z0-9])",
                      "***", text)
    return " ".join(text.split())


def sqlite_url(path: str | Path) -> str:
    """The ``sqlite:////abs/path.db`` URL of ``path`` (made absolute)."""
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def normalize_url(url: str) -> URL:
    """Parse ``url`` and pin the driver; raise :class:`StoreError` if it is malformed or
    names an unsupported database."""
    if not isinstance(url, str) or not url.strip():
        raise StoreError("database URL is empty: expected sqlite:////abs/path.db or "
                         "postgresql://user:password@host:port/db")
    url = url.strip()
    m = _SCHEME.match(url)
    if m is None:
        raise StoreError(
            f"malformed database URL {mask_url(url)!r}: expected sqlite:////abs/path.db or "
            "postgresql://user:password@host:port/db"
        )
    scheme = m.group("scheme").lower()
    if scheme in _POSTGRES_DRIVERS:
        url = "postgresql+psycopg://" + url[m.end():]
    elif scheme not in _SQLITE_DRIVERS:
        raise StoreError(
            f"unsupported database URL scheme {scheme!r} in {mask_url(url)!r}: use sqlite:// "
            "or postgresql:// (driver psycopg)"
        )
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StoreError(f"malformed database URL {mask_url(url)!r}: {exc}") from None
    if parsed.get_backend_name() == SQLITE:
        _check_sqlite(parsed)
        return parsed.set(drivername="sqlite+pysqlite")
    if not parsed.host and "host" not in parsed.query:
        raise StoreError(f"database URL {mask_url(parsed)!r} names no host")
    if not parsed.database:
        raise StoreError(f"database URL {mask_url(parsed)!r} names no database")
    return parsed


def _check_sqlite(url: URL) -> None:
    db = url.database or ""
    if db in ("", ":memory:") or db.startswith("file::memory:"):
        raise StoreError(
            f"in-memory SQLite ({mask_url(url)!r}) is not supported: the store must be durable; "
            "use sqlite:////abs/path.db"
        )
    if url.host or url.username or url.password:
        raise StoreError(
            f"malformed SQLite URL {mask_url(url)!r}: expected sqlite:////abs/path.db (no host)"
        )
    if not db.startswith("/"):
        raise StoreError(
            f"SQLite URL {mask_url(url)!r} names the relative path {db!r}: use an absolute path "
            "(sqlite:////abs/path.db)"
        )
