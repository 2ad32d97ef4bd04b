"""The command line's application, consoles, exit codes and the error handling every
command shares."""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from temporalio.service import RPCError

from scanward import client as api
from scanward.contract import NotifyTarget
from scanward.devserver import DevServerError
from scanward.env_values import ConfigError
from scanward.inputs import InputError
from scanward.settings import Settings

if TYPE_CHECKING:
    from scanward.store import Store


# markdown: docstrings wrapped at 88 columns reflow to the terminal instead of
# breaking mid-sentence in the command list.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Durable security scans on Temporal.")
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

# Exit codes (the README lists them): 0 the command did what it says; 1 it did not
# (the one-line reason is on stderr); 2 bad usage (typer/click); 3 `scan --wait
# --no-wait-dead` stopped waiting because a scanner is dead.
EXIT_ERROR = 1
EXIT_DEAD = 3
# `scan --wait --fail-on/--fail-on-new S`: the scan has (new) open findings at or above S.
EXIT_GATE = 4


class CliError(Exception):
    """A failure to report as one line and exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def run_command(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine on a Temporal runtime that is shut down before the
    interpreter exits (see :func:`scanward.client.run`), turning every expected error
    into one line and a non-zero exit."""
    try:
        return api.run(coro)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        fail(f"invalid request: {where}: {msg}" if where else f"invalid request: {msg}")
    except CliError as e:
        fail(str(e), e.code)
    except (InputError, DevServerError, api.RefNotResolved, api.ScanNotFound,
            api.ScanNotRunning, api.Rejected) as e:
        fail(str(e))
    except ConfigError as e:  # met while running: `dev`'s worker reads the backend's own
        fail(str(e))
    except RPCError as e:
        fail(f"temporal: {e.message}")
    except RuntimeError as e:  # cannot connect to Temporal; StoreError (one line)
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        fail("interrupted")
    raise AssertionError("unreachable")


@app.callback()
def _check_configuration() -> None:
    # Before any command: a bad SCANWARD_* value is one line naming the variable and
    # exit 1, whichever command meets it first (or none would, like `list`).
    try:
        settings = Settings.from_env()
        if settings.backend == "kubernetes":  # a worker's environment (`dev`, a pod)
            from activities.backends.kubernetes import KubeSettings

            KubeSettings.from_env(settings.env)
    except ConfigError as e:
        fail(str(e))


def fail(message: str, code: int = EXIT_ERROR) -> None:
    err.print(f"scanward: error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def one_line(text: str) -> str:
    """``text`` with its line breaks folded, for one-line error messages."""
    return " ".join(text.split())


def repository_url(repo: str) -> str:
    """A local directory becomes a file:// URL (only local workers accept those)."""
    path = Path(repo)
    if "://" not in repo and path.is_dir():
        return path.resolve().as_uri()
    return repo


def notify_targets(specs: list[str]) -> tuple[NotifyTarget, ...]:
    targets = []
    for spec in specs:
        url, sep, secret = spec.rpartition("=")
        if not sep or not url:
            raise CliError(f"--notify {spec!r}: expected URL=SECRET_NAME")
        targets.append(NotifyTarget(url=url, secret_ref=secret))
    return tuple(targets)


def open_store() -> Store:
    # Imported here: the store pulls in SQLAlchemy and Alembic, which most commands
    # (and their start-up time) do not need.
    from scanward.store import Store

    return Store.open(Settings.from_env().database_url)


