"""The volumes scanward writes to (workspace, results, an SQLite store) running out of
space: how much a volume has, and which errors mean it is full."""

from __future__ import annotations

import errno
import os
from pathlib import Path

# ENOSPC, or a quota, or RLIMIT_FSIZE (EFBIG): the write needs room the volume lacks.
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def free_bytes(path: Path) -> int | None:
    """Bytes free on the volume at ``path`` (for an unprivileged writer); None if
    unknown."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def volume_free(path: Path) -> str:
    """Free space of the volume at ``path``, for a message."""
    try:
        st = os.statvfs(path)
    except OSError as e:
        return f"free space unknown: {e.strerror}"
    return (f"{st.f_bavail * st.f_frsize // 1024} KiB free of "
            f"{st.f_blocks * st.f_frsize // 1024} KiB")
