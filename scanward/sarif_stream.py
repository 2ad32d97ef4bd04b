"""A SARIF file read as a stream (ijson), never held whole in memory.

:class:`SarifSource` opens the file (or bytes) once per pass; :func:`read_layout` is the
first pass: it checks the document's structure and reads the small per-run parts (tool,
rules, URI bases, artifacts) while only counting results; :func:`results` is each later
pass, yielding the results one at a time. Errors are :class:`SarifError` naming the file
and what is wrong, as precise as with a full read (line and column for broken JSON).
"""

from __future__ import annotations

import codecs
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import ijson  # type: ignore[import-untyped]
from ijson.common import ObjectBuilder  # type: ignore[import-untyped]

__all__ = ["Layout", "Progress", "SarifError", "SarifSource", "fail", "read_layout",
           "results", "short"]

Progress = Callable[[str, int], None]
"""Called now and then while reading, with the stage and a count (for heartbeats)."""

PROGRESS_EVERY = 1000  # results between two progress calls
_RESULTS_PREFIX = "runs.item.results.item"
# Keys that would make ijson's dotted prefixes ambiguous ({"runs.item": {"results": ..}}
# reads like runs[].results[]): refused, SARIF has no such keys.
_AMBIGUOUS_TOP_KEYS = frozenset({"runs.item", "runs.item.results", _RESULTS_PREFIX})
_AMBIGUOUS_RUN_KEYS = frozenset({"results.item"})
_RUN_PARTS = ("tool", "originalUriBaseIds", "artifacts", "invocations")
_EXACT_ERRORS_UP_TO = 8 * 1024 * 1024  # re-read small broken files for line/column
# Real SARIF nests a dozen levels or so. ijson's prefixed passes build a prefix as long as
# the nesting for every event: a 400 KB file of "[[[..." took a worker to 23 GB. The
# first pass (basic_parse, which keeps no prefix) refuses anything deeper than this.
MAX_DEPTH = 256
_MISSING: Any = object()
_START = frozenset({"start_map", "start_array"})
_END = frozenset({"end_map", "end_array"})
_EVENT_KIND = {"start_map": "an object", "start_array": "an array", "string": "a string",
               "number": "a number", "boolean": "a boolean", "null": "null"}

Events = Iterator[tuple[str, Any]]


class SarifError(ValueError):
    """The SARIF cannot be used. The message names the file and exactly what is wrong,
    e.g. ``results.sarif: runs[0].results[2] has no ruleId``."""


def fail(origin: str, what: str) -> NoReturn:
    raise SarifError(f"{origin}: {what}")


def short(v: Any, limit: int = 60) -> str:
    """``v`` as JSON, cut to ``limit`` characters, for error messages."""
    text = repr(v) if isinstance(v, str) else json.dumps(v)[:limit]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _size(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    return f"{n} bytes"


# ----------------------------------------------------------------------- the input


class SarifSource:
    """Where the SARIF comes from (a file, or its bytes); each pass opens it anew, and a
    file that changes between passes is refused."""

    def __init__(self, source: Path | bytes, origin: str | None, max_bytes: int) -> None:
        self.path = source if isinstance(source, Path) else None
        self.data = source if isinstance(source, bytes) else None
        self.origin = origin or str(source if isinstance(source, Path) else "<sarif>")
        self.max_bytes = max_bytes
        self._identity: tuple[int, ...] | None = None
        if self.data is not None and len(self.data) > max_bytes:
            fail(self.origin, f"larger than {_size(max_bytes)} ({len(self.data)} bytes)")

    def open(self) -> Reader:
        if self.path is None:
            return Reader(io.BytesIO(self.data or b""), self)
        origin = self.origin
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            fail(origin, "file not found")
        except IsADirectoryError:
            fail(origin, "is a directory, not a SARIF file")
        except PermissionError:
            fail(origin, "permission denied")
        except OSError as e:
            fail(origin, f"cannot be read ({e.strerror or e})")
        st = os.fstat(f.fileno())
        if st.st_size > self.max_bytes:  # refused without being read
            f.close()
            fail(origin, f"larger than {_size(self.max_bytes)} ({st.st_size} bytes)")
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self._identity is None:
            self._identity = identity
        elif identity != self._identity:
            f.close()
            fail(origin, "changed while being read")
        return Reader(f, self)

    def read_all(self) -> bytes:
        """The whole file (only to describe a small broken one exactly)."""
        if self.path is None:
            return self.data or b""
        with self.path.open("rb") as f:
            return f.read(self.max_bytes + 1)


class Reader:
    """The file as ijson reads it: checked to be UTF-8 and within the size limit as the
    bytes go by (a BOM is dropped), so those errors are as precise as with a full read."""

    def __init__(self, raw: BinaryIO, source: SarifSource) -> None:
        self._raw = raw
        self._source = source
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.offset = 0
        self.content = False  # anything but whitespace seen

    def read(self, n: int = -1) -> bytes:
        if n == 0:  # ijson probes the type of the stream with read(0)
            return b""
        chunk = self._raw.read(n if n > 0 else 1 << 16)
        start = self.offset
        self.offset += len(chunk)
        if self.offset > self._source.max_bytes:  # the file grew since fstat
            fail(self._source.origin, f"larger than {_size(self._source.max_bytes)}")
        pending = len(self._decoder.getstate()[0])
        try:
            self._decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as e:
            at = start - pending + e.start
            fail(self._source.origin, f"not UTF-8 (invalid byte 0x{e.object[e.start]:02x} "
                                      f"at offset {at})")
        if start == 0 and chunk.startswith(codecs.BOM_UTF8):
            chunk = chunk[len(codecs.BOM_UTF8):]
        if not self.content and chunk.strip():
            self.content = True
        return chunk

    def not_json(self, error: Exception) -> NoReturn:
        """Raise the SarifError for ijson's parse error ``error``."""
        origin = self._source.origin
        if not self.content:  # ijson stops at the end: it was all whitespace
            fail(origin, "file is empty")
        if self.offset <= _EXACT_ERRORS_UP_TO:
            _json_error(self._source.read_all(), origin)
        lines = str(error).strip().splitlines()
        first = lines[0].removeprefix("parse error: ") if lines else "parse error"
        fail(origin, f"not JSON ({first}, within the first {self.offset:,} bytes)")

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()


def _json_error(data: bytes, origin: str) -> None:
    """Raise the json module's exact description (line, column) of what is wrong, if it
    sees a problem (yajl is stricter on a few things, e.g. 1e400)."""
    try:
        json.loads(data.decode("utf-8-sig"), parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        fail(origin, f"not JSON (line {e.lineno}, column {e.colno}: {e.msg})")
    except UnicodeDecodeError:
        return
    except ValueError as e:  # NaN / Infinity
        fail(origin, f"not JSON ({e})")
    except RecursionError:
        fail(origin, "not usable JSON (nested too deeply)")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


# ---------------------------------------------------------- pass 1: the structure


@dataclass(slots=True)
class Layout:
    runs: list[dict[str, Any]]  # each run's tool, originalUriBaseIds and artifacts
    counts: list[int]  # each run's number of results


def read_layout(source: SarifSource, max_results: int, progress: Progress | None) -> Layout:
    """Validate the document's structure and read the small per-run parts, in one pass
    over ijson's events (results are counted, not kept)."""
    origin = source.origin
    problems: list[str] = []  # in document order; reported after the version checks
    version: Any = _MISSING
    runs: Any = _MISSING  # the list of run headers, or the kind of a non-array value
    headers: list[dict[str, Any]] = []
    counts: list[int] = []
    total = 0
    doc_kind = "an object"
    with source.open() as reader:
        events: Events = _depth_limited(ijson.basic_parse(reader, use_float=True), origin)
        try:
            first = next(events)
            if first[0] != "start_map":
                doc_kind = _EVENT_KIND.get(first[0], first[0])
                _skip_rest(first, events)
            for event, key in events if first[0] == "start_map" else ():
                if event == "end_map":
                    break
                if key == "version":
                    version = _build(events)
                elif key == "runs":
                    if runs is not _MISSING:
                        problems.append("has 'runs' twice")
                        _skip(events)
                        continue
                    event, value = next(events)
                    if event != "start_array":
                        runs = None if event == "null" else _EVENT_KIND[event]
                        _skip_rest((event, value), events)
                        continue
                    runs = headers
                    for event, value in events:
                        if event == "end_array":
                            break
                        i = len(headers)
                        header: dict[str, Any] = {}
                        count = 0
                        if event == "start_map":
                            header, count = _read_run(events, i, problems, progress)
                        else:
                            problems.append(f"runs[{i}] is {_EVENT_KIND[event]}, not an object")
                            _skip_rest((event, value), events)
                        headers.append(header)
                        counts.append(count)
                        total += count
                        if total > max_results and count:
                            problems.append(f"more than {max_results:,} results: refusing to "
                                            f"normalise them (runs[{i}] brings the count to "
                                            f"{total:,})")
                elif key in _AMBIGUOUS_TOP_KEYS:
                    problems.append(f"has a key {key!r}, which cannot be read unambiguously")
                    _skip(events)
                else:
                    _skip(events)
            for _ in events:  # the rest must be nothing (trailing garbage is an error)
                pass
        except ijson.JSONError as e:
            reader.not_json(e)
    if doc_kind != "an object":
        fail(origin, f"the JSON document is {doc_kind}, not a SARIF log object")
    if version is _MISSING or version is None:
        fail(origin, "has no 'version': not a SARIF 2.1.0 log")
    if version != "2.1.0":
        fail(origin, f"version {short(version)} is not SARIF 2.1.0")
    if runs is _MISSING:
        fail(origin, "has no 'runs'")
    if runs is None or runs == []:
        fail(origin, "has no runs ('runs' is empty): the tool reported nothing, not even "
                     "an empty result list")
    if isinstance(runs, str):
        fail(origin, f"'runs' is {runs}, not an array")
    if problems:
        fail(origin, problems[0])
    return Layout(runs=headers, counts=counts)


def _depth_limited(events: Events, origin: str) -> Events:
    """``events``, failing once the document nests deeper than :data:`MAX_DEPTH`."""
    depth = 0
    for event in events:
        kind = event[0]
        if kind in _START:
            depth += 1
            if depth > MAX_DEPTH:
                fail(origin, f"nests JSON deeper than {MAX_DEPTH} levels: not a SARIF log a "
                             "scanner writes (refused before it exhausts the worker's memory)")
        elif kind in _END:
            depth -= 1
        yield event


def _read_run(events: Events, i: int, problems: list[str],
              progress: Progress | None) -> tuple[dict[str, Any], int]:
    """One run object (its start already read): its small parts, its result count."""
    header: dict[str, Any] = {}
    count = 0
    seen_results = False
    for event, key in events:
        if event == "end_map":
            break
        if key in _RUN_PARTS:
            header[key] = _build(events)
        elif key == "results":
            if seen_results:
                problems.append(f"runs[{i}] has 'results' twice")
                _skip(events)
                continue
            seen_results = True
            event, value = next(events)
            if event == "start_array":
                count = _count_items(events, progress)
            elif event != "null":
                problems.append(f"runs[{i}].results is {_EVENT_KIND[event]}, not an array")
                _skip_rest((event, value), events)
        elif key in _AMBIGUOUS_RUN_KEYS:
            problems.append(f"runs[{i}] has a key {key!r}, which cannot be read unambiguously")
            _skip(events)
        else:
            _skip(events)
    return header, count


def _count_items(events: Events, progress: Progress | None) -> int:
    """The number of items of an array whose start was read; consumes its end."""
    n = depth = 0
    for event, _ in events:
        if event in _START:
            if depth == 0:
                n += 1
                if progress is not None and n % PROGRESS_EVERY == 0:
                    progress("scanned", n)
            depth += 1
        elif event in _END:
            if depth == 0:
                return n
            depth -= 1
        elif depth == 0 and event != "map_key":
            n += 1
    return n


def _build(events: Events) -> Any:
    """The next value, as Python objects."""
    builder = ObjectBuilder()
    depth = 0
    for event, value in events:
        builder.event(event, value)
        if event in _START:
            depth += 1
        elif event in _END:
            depth -= 1
        if depth == 0:
            return builder.value
    return None


def _skip(events: Events) -> None:
    """Skip the next value."""
    _skip_rest(next(events), events)


def _skip_rest(first: tuple[str, Any], events: Events) -> None:
    """Skip the rest of a value whose first event is ``first``."""
    if first[0] not in _START:
        return
    depth = 1
    for event, _ in events:
        if event in _START:
            depth += 1
        elif event in _END:
            depth -= 1
            if depth == 0:
                return


# ------------------------------------------------------------ later passes: results


def results(source: SarifSource, layout: Layout, stage: str,
            progress: Progress | None) -> Iterator[tuple[int, int, Any]]:
    """(run number, index in the run, the result as Python objects) of every result,
    in document order, for a source :func:`read_layout` accepted."""
    origin = source.origin
    counts = layout.counts
    run_no, index = 0, 0
    left = counts[0] if counts else 0
    seen = 0
    with source.open() as reader:
        try:
            for item in ijson.items(reader, _RESULTS_PREFIX, use_float=True):
                while left == 0:  # runs without (more) results
                    run_no, index = run_no + 1, 0
                    if run_no >= len(counts):
                        fail(origin, "changed while being read (more results)")
                    left = counts[run_no]
                yield run_no, index, item
                index, left, seen = index + 1, left - 1, seen + 1
                if progress is not None and seen % PROGRESS_EVERY == 0:
                    progress(stage, seen)
        except ijson.JSONError as e:
            reader.not_json(e)
    if seen != sum(counts):
        fail(origin, "changed while being read (fewer results)")
