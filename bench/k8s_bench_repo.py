"""The repository root, put on sys.path so that the bench's modules, run as scripts from
bench/, import scanward, worker and tests."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
