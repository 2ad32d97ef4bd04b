"""scanward: the command line for services and operators.

Every command exits non-zero with a one-line reason on error. Temporal connection
settings follow Temporal's conventions (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``,
``TEMPORAL_PROFILE``); scanward's own settings are ``SCANWARD_*`` (see the README).
The commands live in ``scanward/cli/``, one module per group; this module only wires
them to the application, in the order ``--help`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable

from scanward import tracing
from scanward.cli.app import app
from scanward.cli.dev_commands import demo, dev
from scanward.cli.load_command import load
from scanward.cli.operator_commands import abandon, cancel, retry
from scanward.cli.replay_command import replay
from scanward.cli.scan_commands import findings, history, list_scans, logs, scan, status, triage

COMMANDS: list[tuple[str | None, Callable[..., None]]] = [
    (None, scan), (None, status), (None, findings), (None, triage), (None, history),
    (None, logs), ("list", list_scans), (None, retry), (None, abandon), (None, cancel),
    (None, replay), (None, load), (None, dev), (None, demo),
]
for name, command in COMMANDS:
    app.command(name=name)(command)

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point ``scanward``."""
    tracing.configure("scanward-cli")
    app(prog_name="scanward")


if __name__ == "__main__":
    main()
