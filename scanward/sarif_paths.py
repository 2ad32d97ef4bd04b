"""Artifact URIs of a SARIF file as paths of the checkout.

Scanners disagree on what they write: SARIF says URIs are percent-encoded, but semgrep
writes raw paths (``pct%41.py`` is a file named so, not ``pctA.py``) and Windows tools
write ``\\``. Each URI therefore gives candidate readings, in this order: as written,
with ``\\`` read as ``/``, percent-decoded, both; each resolved through ``uriBaseId``
(``originalUriBaseIds``) or, when absolute (``/src/a.py``, ``file:///src/a.py``), made
relative to the checkout as the scanner saw it (the source root).

With the checkout at hand, the first candidate that exists in it wins (looked up without
leaving it through a symlinked directory). A candidate with a ``..`` segment, or an
absolute one outside the source root, is never used. A URI none of whose candidates
exists is not stored as a path: it becomes ``unresolved://<reason>/<the URI,
percent-encoded>`` (:func:`mark`), which no path of a checkout can equal (it contains
``//``), with the reason ``outside-checkout`` (some reading leaves the checkout),
``not-in-checkout`` (no such file) or ``invalid`` (e.g. a NUL). Without the checkout
(parsing a SARIF on its own), the percent-decoded reading is taken.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import NoReturn
from urllib.parse import quote, unquote, urlsplit

__all__ = ["UNRESOLVED", "BaseLookup", "CheckoutPaths", "SourceText", "UriResolver", "mark",
           "source_roots"]

UNRESOLVED = "unresolved://"
"""Prefix of the path of a finding whose location is not a file of the checkout."""

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):")
_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")
_CACHE_LIMIT = 50_000  # paths kept per file (paths repeat across results)
_MAX_MARKED_URI = 1000  # characters of a URI kept in its unresolved:// mark
_MAX_TEXT_BYTES = 4 * 1024 * 1024  # larger files are not read for their lines
# Files whose lines are kept (a tool reports the results of one file together): at most
# this many, of at most this many bytes in all (the newest is kept whatever its size).
_TEXT_CACHE = 16
_TEXT_CACHE_BYTES = 8 * 1024 * 1024
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # SARIF §3.30.2: CR, LF and CRLF end a line

BaseLookup = Callable[[str], "tuple[str | None, str | None] | None"]
"""A uriBaseId's (uri, parent uriBaseId), or None if the run does not define it."""


def mark(reason: str, uri: str) -> tuple[str, str]:
    """(the stored path, the reason) of a finding whose location is not a checkout file."""
    return f"{UNRESOLVED}{reason}/{quote(uri, safe='')[:_MAX_MARKED_URI]}", reason


def source_roots(source_root: PurePath | str | None) -> list[tuple[str, ...]]:
    """The source root as path segments, lexically normalised and symlink-resolved."""
    if source_root is None:
        return []
    raw = os.fspath(source_root)
    if not posixpath.isabs(raw):
        raw = os.path.abspath(raw)
    roots: list[tuple[str, ...]] = []
    for c in (posixpath.normpath(raw), os.path.realpath(raw)):
        segments = tuple(s for s in c.split("/") if s)
        if segments not in roots:
            roots.append(segments)
    return roots


@dataclass(frozen=True, slots=True)
class _Candidate:
    """One reading of a URI as a path relative to the checkout."""

    path: str | None  # None: it would leave the checkout
    canonical: bool  # the SARIF-conformant reading (percent-decoded, '/' separators)


class CheckoutPaths:
    """The checkout (as the scanner saw it, and as this process sees it) that the paths
    of one SARIF file are resolved against; remembers which paths exist."""

    def __init__(self, roots: list[tuple[str, ...]], checkout: Path | None) -> None:
        self.roots = roots
        self._checkout = None if checkout is None else os.path.abspath(checkout)
        self._real = "" if checkout is None else os.path.realpath(checkout)
        self._exists: dict[str, bool] = {}
        self._texts: OrderedDict[str, SourceText | None] = OrderedDict()
        self._text_bytes = 0

    def choose(self, uri: str, candidates: list[_Candidate]) -> tuple[str, str | None]:
        """(path, why it is unresolved or None) for ``uri`` read as ``candidates``."""
        inside = [c.path for c in candidates if c.path is not None]
        if self._checkout is None:
            canonical = next((c for c in candidates if c.canonical), None)
            if canonical is not None and canonical.path is not None:
                return canonical.path, None
            return mark("outside-checkout", uri)
        for path in inside:
            if self.exists(path):
                return path, None
        if len(inside) < len(candidates):
            return mark("outside-checkout", uri)
        return mark("not-in-checkout", uri)

    def text(self, path: str) -> SourceText | None:
        """The lines of the checkout file ``path`` (relative, normalised, as resolved);
        None without a checkout, or for what is not a regular file of it (a symlink
        leaving it, a FIFO, a device), or a file over 4 MiB."""
        if self._checkout is None or not path or "://" in path:
            return None
        if path in self._texts:
            self._texts.move_to_end(path)
            return self._texts[path]
        found = self._read(self._checkout, path) if self.exists(path) else None
        self._texts[path] = found
        self._text_bytes += found.size if found is not None else 0
        while len(self._texts) > 1 and (len(self._texts) > _TEXT_CACHE
                                        or self._text_bytes > _TEXT_CACHE_BYTES):
            _, old = self._texts.popitem(last=False)
            self._text_bytes -= old.size if old is not None else 0
        return found

    def _read(self, checkout: str, path: str) -> SourceText | None:
        try:
            real = os.path.realpath(os.path.join(checkout, path))
            if not real.startswith(self._real + "/"):
                return None
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (OSError, ValueError):
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_TEXT_BYTES:
                return None
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(_MAX_TEXT_BYTES + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(data) > _MAX_TEXT_BYTES or b"\x00" in data:
            return None  # grew meanwhile, or binary
        return SourceText(data.decode("utf-8", "replace").removeprefix("\ufeff"), len(data))

    def exists(self, path: str) -> bool:
        """Whether ``path`` (relative, normalised) is in the checkout."""
        if path == "" or self._checkout is None:
            return True
        known = self._exists.get(path)
        if known is None:
            known = self._lookup(self._checkout, path)
            if len(self._exists) >= _CACHE_LIMIT:
                self._exists.clear()
            self._exists[path] = known
        return known

    def _lookup(self, checkout: str, path: str) -> bool:
        full = os.path.join(checkout, path)
        try:
            os.lstat(full)
            # The file may be a symlink; the directories leading to it must not leave.
            parent = os.path.realpath(os.path.dirname(full))
        except (OSError, ValueError):  # ValueError: a name the file system cannot hold
            return False
        return parent == self._real or parent.startswith(self._real + "/")

    def inside(self, reading: str) -> str | None:
        """An absolute ``reading`` relative to the source root, if it is inside it."""
        if not reading.startswith("/") or ".." in reading.split("/"):
            return None
        segments = tuple(s for s in reading.split("/") if s and s != ".")
        for root in self.roots:
            if segments[: len(root)] == root:
                return "/".join(segments[len(root):])
        return None


class SourceText:
    """The lines of one checkout file, each whitespace-collapsed (as snippets are)."""

    def __init__(self, text: str, size: int) -> None:
        self.size = size  # bytes of the file
        self.lines = [" ".join(line.split()) for line in _LINE_BREAK.split(text)]
        self._joined: str | None = None
        self._starts: set[int] = set()
        self._ends: set[int] = set()

    def region(self, start: int, end: int | None) -> str | None:
        """Lines ``start`` to ``end`` (1-based, inclusive; cut at the end of the file)
        joined by a space, whitespace-collapsed; None if ``start`` is past the end or they
        are blank."""
        if start < 1 or start > len(self.lines):
            return None
        last = min(max(end or start, start), len(self.lines))
        text = " ".join(line for line in self.lines[start - 1:last] if line)
        return text or None

    def has_lines(self, snippet: str) -> bool:
        """Whether ``snippet`` (whitespace-collapsed) is the text of some whole lines of
        the file, one or several in a row (blank ones skipped)."""
        if self._joined is None:
            at = 0
            kept: list[str] = []
            for line in self.lines:
                if line:
                    self._starts.add(at)
                    self._ends.add(at + len(line))
                    kept.append(line)
                    at += len(line) + 1
            self._joined = " ".join(kept)
        i = self._joined.find(snippet)
        while i >= 0:
            if i in self._starts and i + len(snippet) in self._ends:
                return True
            i = self._joined.find(snippet, i + 1)
        return False


class UriResolver:
    """Resolves the artifact URIs of one run (its own ``originalUriBaseIds``)."""

    def __init__(self, paths: CheckoutPaths, base: BaseLookup,
                 on_cycle: Callable[[str], NoReturn]) -> None:
        self._paths = paths
        self._base = base
        self._on_cycle = on_cycle
        self._resolved: dict[tuple[str, str | None], tuple[str, str | None]] = {}

    def resolve(self, uri: str, base_id: str | None) -> tuple[str, str | None]:
        """(path, why it is unresolved or None) of ``uri``, relative to ``base_id``."""
        if "\x00" in uri:
            return mark("invalid", uri)
        m = _SCHEME.match(uri)
        if m is not None and len(m.group("scheme")) > 1 and m.group("scheme").lower() != "file":
            return _remote(uri)
        key = uri, base_id
        done = self._resolved.get(key)
        if done is None:
            done = self._paths.choose(uri, self._candidates(uri, base_id))
            if len(self._resolved) >= _CACHE_LIMIT:
                self._resolved.clear()
            self._resolved[key] = done
        return done

    def _candidates(self, uri: str, base_id: str | None) -> list[_Candidate]:
        m = _SCHEME.match(uri)
        if m is not None and len(m.group("scheme")) > 1:  # file: (others are remote)
            rest = uri[m.end():]
            if rest.startswith("//"):
                host, slash, rest = rest[2:].partition("/")
                if host not in ("", "localhost"):
                    return [_Candidate(None, True)]  # a file on another host
                rest = slash + rest
            # As written (a raw '#' or '?' is part of a file name), and as a URI.
            plain = urlsplit(f"file://{rest}").path if ("?" in rest or "#" in rest) else rest
            texts = [rest] if plain == rest else [rest, plain]
            if not rest.startswith("/"):
                return self._joined([("", True)], texts)
            return [c for text in texts for c in self._absolute(text)]
        if uri.startswith("/") or _WINDOWS_ABSOLUTE.match(uri):
            return self._absolute(uri)
        prefixes = self._base_prefixes(base_id, set()) if base_id else [("", True)]
        return self._joined(prefixes, [uri])

    def _joined(self, prefixes: list[tuple[str, bool]], texts: list[str]) -> list[_Candidate]:
        out: list[_Candidate] = []
        for text in texts:
            for reading, canonical in _readings(text):
                for prefix, prefix_canonical in prefixes:
                    path: str | None
                    if not prefix and reading.startswith("/"):  # e.g. %2Fetc%2Fpasswd
                        path = self._paths.inside(reading)
                    else:
                        path = _relative(f"{prefix}/{reading}" if prefix else reading)
                    candidate = _Candidate(path, canonical and prefix_canonical)
                    if candidate not in out:
                        out.append(candidate)
        return out

    def _absolute(self, text: str) -> list[_Candidate]:
        out: list[_Candidate] = []
        for reading, canonical in _readings(text):
            candidate = _Candidate(self._paths.inside(reading), canonical)
            if candidate not in out:
                out.append(candidate)
        return out

    def _base_prefixes(self, base_id: str, seen: set[str]) -> list[tuple[str, bool]]:
        """Where ``base_id`` points, relative to the checkout, in each reading. A base that
        is not defined, or is an absolute location outside the source root (the scanner
        saw the checkout at another mount path), is taken to be the root of the scan."""
        if base_id in seen:
            self._on_cycle(base_id)
        entry = self._base(base_id)
        if entry is None or entry[0] is None:
            return [("", True)]
        uri: str = entry[0]
        parent = entry[1]
        m = _SCHEME.match(uri)
        if m is not None and len(m.group("scheme")) > 1:
            if m.group("scheme").lower() != "file":
                return [("", True)]
            uri = str(urlsplit(uri).path)
        if uri.startswith("/"):
            found = [(c.path, c.canonical) for c in self._absolute(uri) if c.path is not None]
            return found or [("", True)]
        prefixes = self._base_prefixes(parent, seen | {base_id}) if parent else [("", True)]
        found = [(c.path, c.canonical) for c in self._joined(prefixes, [uri])
                 if c.path is not None]
        return found or [("", True)]


def _remote(uri: str) -> tuple[str, str | None]:
    """A location on another scheme, kept as ``scheme://host/path`` (no credentials,
    query or fragment)."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return mark("invalid", uri)
    if ".." in unquote(parts.path).split("/"):
        return mark("outside-checkout", uri)
    netloc = f"//{host}{port}" if parts.netloc else ""
    return f"{parts.scheme.lower()}:{netloc}{parts.path}", None


def _readings(text: str) -> list[tuple[str, bool]]:
    """``text`` as written, with '\\' as '/', percent-decoded, both: (reading, whether
    it is the percent-decoded one), without repeats."""
    decoded = unquote(text)
    out: list[tuple[str, bool]] = []
    for reading in (text, text.replace("\\", "/"), decoded, decoded.replace("\\", "/")):
        if all(reading != r for r, _ in out):
            out.append((reading, reading == decoded))
    return out


def _relative(path: str) -> str | None:
    """``path`` normalised, or None if it has a ``..`` segment."""
    segments = [s for s in path.split("/") if s and s != "."]
    if ".." in segments:
        return None
    return "/".join(segments)
