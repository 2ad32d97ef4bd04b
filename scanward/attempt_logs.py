"""Each scanner attempt's log on the results volume: where it is, how long it is kept,
and reading it back (``scanward logs``).

Layout, the same for both job backends:
``<results>/<scan>/<scanner>/attempt-N/scanner.log`` beside the attempt's SARIF (the
local backend writes it, a Kubernetes pod tees its output into it). When a scan ends,
``cleanup_workspace`` calls :func:`keep_logs`: everything else of the scan's results goes
(SARIF, caches) and the scan is marked ``.cleaned``. :func:`sweep` expires the logs of
scans cleaned more than the retention ago (``SCANWARD_LOG_RETENTION_DAYS``, 14 by
default), leaving ``scanner.log.expired`` in each log's place so that ``scanward logs``
can say "expired" rather than "unknown"; :data:`TOMBSTONE_DAYS` later the scan's
directory goes too. The retention counts from the scan's end, not from the log's last
write, and only cleaned scans are swept: a dead scanner may wait weeks for an operator,
who needs its log most after ``abandon``.

Logs stay on the volume, never in the database: the store is the bottleneck.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from scanward.inputs import InputError, check_scanner_name
from scanward.job_spec import LOG_FILE

_log = logging.getLogger("scanward.attempt_logs")
EXPIRED_FILE = f"{LOG_FILE}.expired"
CLEANED = ".cleaned"  # in <results>/<scan>: the scan ended, its logs' retention runs
EXPIRED = ".expired"  # replaces CLEANED once the logs are gone: the tombstone's age
DEFAULT_RETENTION_DAYS = 14.0
TOMBSTONE_DAYS = 90.0
RETENTION_ENV = "SCANWARD_LOG_RETENTION_DAYS"
# A reason keeps this much of a log: the workflow stores 2,000 characters of a reason,
# and the log's last lines, which say why, must fit after the failure's own message.
REASON_TAIL_BYTES = 1500

_DAY = 86400.0
_SCAN_ID = re.compile(r"[a-z0-9-]{1,128}")
_ATTEMPT = re.compile(r"attempt-([1-9][0-9]{0,8})")


class LogUnavailable(Exception):
    """No such scan, scanner, attempt or log; the message says which, for operators."""


class LogExpired(LogUnavailable):
    """The log existed and was removed by the retention sweep."""


@dataclass(frozen=True)
class AttemptLog:
    scanner: str
    attempt: int
    attempts: tuple[int, ...]  # every attempt of the scanner, in order
    path: Path


@dataclass(frozen=True)
class SweepResult:
    expired_logs: int = 0
    removed_scans: int = 0


def retention_days(env: Mapping[str, str]) -> float:
    """``SCANWARD_LOG_RETENTION_DAYS`` (default 14); raises ``ValueError`` if invalid."""
    raw = env.get(RETENTION_ENV) or str(DEFAULT_RETENTION_DAYS)
    try:
        days = float(raw)
    except ValueError:
        days = -1.0
    if not days > 0:  # also NaN
        raise ValueError(f"{RETENTION_ENV}={raw!r}: expected a positive number of days")
    return days


def read_tail(path: Path, lines: int = 20, max_bytes: int = REASON_TAIL_BYTES) -> str:
    """The last lines of a log, for a failure's reason; "" if there is none. A symlink
    is not followed: a pod writes this directory, and a link to a worker's file must not
    carry that file into a reason (and the workflow's history)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return ""
        f.seek(max(0, st.st_size - max_bytes))
        text = f.read(max_bytes).decode(errors="replace")
    return "\n".join(text.strip().splitlines()[-lines:])


def with_log_tail(message: str, attempt_dir: Path) -> str:
    """``message`` followed by the last lines of the attempt's log, when it has any."""
    logs = read_tail(attempt_dir / LOG_FILE)
    return f"{message}; last log lines:\n{logs}" if logs else message


def find_log(results_root: Path, scan_id: str, scanner: str,
             attempt: int | None = None) -> AttemptLog:
    """The log of one attempt (default: the last) of one scanner of a scan; raises
    :class:`LogUnavailable` (or :class:`LogExpired`) with the reason."""
    if not _SCAN_ID.fullmatch(scan_id):
        raise LogUnavailable(f"invalid scan id {scan_id!r}")
    try:
        check_scanner_name(scanner)
    except InputError as e:
        raise LogUnavailable(str(e)) from e
    scan = results_root / scan_id
    if not scan.is_dir():
        raise LogUnavailable(
            f"unknown scan {scan_id}: it has nothing under {results_root} (SCANWARD_RESULTS),"
            f" or its logs expired more than {TOMBSTONE_DAYS:g} days ago")
    numbers = _attempts(scan / scanner)
    if not numbers:
        known = ", ".join(sorted(p.name for p in scan.iterdir() if _attempts(p))) or "none"
        raise LogUnavailable(f"scan {scan_id} has no scanner {scanner!r} (its scanners: "
                             f"{known})")
    number = attempt if attempt is not None else numbers[-1]
    if number not in numbers:
        raise LogUnavailable(f"{scanner} of scan {scan_id} has no attempt {number} (its "
                             f"attempts: {', '.join(map(str, numbers))})")
    attempt_dir = scan / scanner / f"attempt-{number}"
    log = attempt_dir / LOG_FILE
    if log.is_file() and not log.is_symlink():
        return AttemptLog(scanner, number, tuple(numbers), log)
    expired = _mtime(attempt_dir / EXPIRED_FILE)
    if expired is not None:
        day = datetime.fromtimestamp(expired, UTC).strftime("%Y-%m-%d")
        raise LogExpired(f"the log of {scanner} attempt {number} of scan {scan_id} expired "
                         f"on {day} (logs are kept {RETENTION_ENV} days after a scan ends)")
    raise LogUnavailable(f"{scanner} attempt {number} of scan {scan_id} left no log")


def copy_log(log: AttemptLog, out: BinaryIO) -> None:
    """Write the log to ``out`` as it is, without following a symlink."""
    fd = os.open(log.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise LogUnavailable(f"{log.path} is not a regular file")
        shutil.copyfileobj(f, out)


def keep_logs(scan: Path, now: float) -> int:
    """A scan's results directory reduced to its attempts' logs, and marked cleaned at
    ``now`` (the retention starts). Returns the logs kept. Idempotent. What cannot be
    removed (a scanner's unreadable directory) stays: cleaning up must not fail a scan;
    only a marker that cannot be written raises ``OSError``."""
    if not scan.is_dir():
        return 0
    kept = 0
    for scanner in _entries(scan):
        if scanner.name in (CLEANED, EXPIRED):
            continue
        if scanner.is_symlink() or not scanner.is_dir():
            _remove(scanner)
            continue
        for entry in _entries(scanner):
            if entry.is_symlink() or not (entry.is_dir() and _ATTEMPT.fullmatch(entry.name)):
                _remove(entry)
                continue
            for item in _entries(entry):
                if item.name in (LOG_FILE, EXPIRED_FILE) and _regular(item):
                    kept += item.name == LOG_FILE
                else:
                    _remove(item)
    marker = scan / CLEANED
    if not (scan / EXPIRED).exists():
        marker.touch()
        os.utime(marker, (now, now))
    return kept


def sweep(results_root: Path, days: float, now: float) -> SweepResult:
    """Expire the logs of scans cleaned more than ``days`` ago; remove the directories
    of scans whose logs expired :data:`TOMBSTONE_DAYS` ago. A stat or two per scan
    directory; safe to run from several workers at once."""
    expired = removed = 0
    try:
        scans = list(os.scandir(results_root))
    except FileNotFoundError:
        return SweepResult()
    for entry in scans:
        if not (_SCAN_ID.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)):
            continue
        scan = Path(entry.path)
        tombstone = _mtime(scan / EXPIRED)
        if tombstone is not None:
            if tombstone < now - TOMBSTONE_DAYS * _DAY:
                shutil.rmtree(scan, ignore_errors=True)
                removed += 1
            continue
        cleaned = _mtime(scan / CLEANED)
        if cleaned is None or cleaned >= now - days * _DAY:
            continue  # running (or dead, waiting for an operator), or within retention
        try:
            for log in scan.glob(f"*/attempt-*/{LOG_FILE}"):
                with contextlib.suppress(FileNotFoundError):
                    # The log becomes its own marker, emptied: no new inode or block is
                    # needed, so this works on the full volume it is there to relieve.
                    expired_marker = log.parent / EXPIRED_FILE
                    log.rename(expired_marker)
                    os.truncate(expired_marker, 0)
                    expired += 1
            with contextlib.suppress(FileNotFoundError):
                (scan / CLEANED).rename(scan / EXPIRED)
                os.utime(scan / EXPIRED, (now, now))
        except OSError as e:  # one scan's trouble does not stop the sweep of the others
            _log.warning("expiring the logs of %s failed: %s", scan.name, e)
    return SweepResult(expired, removed)


def _attempts(scanner_dir: Path) -> list[int]:
    if scanner_dir.is_symlink() or not scanner_dir.is_dir():
        return []
    found = (_ATTEMPT.fullmatch(p.name) for p in scanner_dir.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []


def _regular(path: Path) -> bool:
    with contextlib.suppress(OSError):
        return stat.S_ISREG(path.lstat().st_mode)
    return False


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(OSError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)
