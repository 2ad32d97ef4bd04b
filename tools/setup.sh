#!/usr/bin/env bash
# Create .venv and install scanward with its test and local-scanner extras, from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "tools/setup.sh: Python 3.11+ is required ($PY is $("$PY" -V 2>&1))" >&2; exit 1; }
command -v git >/dev/null || { echo "tools/setup.sh: git is required" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev,semgrep]'
echo "scanward installed in .venv ($(.venv/bin/python -c 'import temporalio; print("temporalio", temporalio.__version__)'))"
