"""Whether a process still runs, from /proc: one answer for every test and fixture."""

from __future__ import annotations

from pathlib import Path


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        # Gone before the open, or between the open and the read (the kernel answers
        # ESRCH then: a CI run failed on it).
        return False
