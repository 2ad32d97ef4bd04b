"""The bench's progress log on stderr: time, load average, message."""

from __future__ import annotations

import os
import sys
import time


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {message}",
          file=sys.stderr, flush=True)
