"""The command line's application, consoles, exit codes and the error handling every
command shares."""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from temporalio.service import RPCError
from typer import _click  # typer vendors click: its usage errors are these classes
from typer.core import TyperCommand, TyperGroup, TyperOption
from typer.models import CommandFunctionType

from scanward import client as api
from scanward.contract import NotifyTarget
from scanward.devserver import DevServerError
from scanward.env_values import ConfigError
from scanward.inputs import InputError
from scanward.settings import Settings

if TYPE_CHECKING:
    from scanward.store import Store


out = Console()
err = Console(stderr=True)
T = TypeVar("T")


def _flags_without_metavar(params: list[_click.Parameter]) -> list[_click.Parameter]:
    """Typer's rich help shows every option's type, a flag's too (`--new <bool>`, as if
    it took a value): a flag gets an empty metavar, which that help shows instead."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A scanward command: flags shown without a value in --help."""

    def get_params(self, ctx: _click.Context) -> list[_click.Parameter]:
        return _flags_without_metavar(super().get_params(ctx))


class Group(TyperGroup):
    """The scanward application: usage errors are one line on stderr and exit 2, as
    every other error is one line (typer prints a usage line, a hint and a box)."""

    def get_params(self, ctx: _click.Context) -> list[_click.Parameter]:
        return _flags_without_metavar(super().get_params(ctx))

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        if not standalone_mode:  # the caller handles errors (typer's test runner)
            return super().main(args, prog_name, complete_var, standalone_mode,
                                windows_expand_args, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False,
                                  windows_expand_args, **extra)
        except _click.exceptions.NoArgsIsHelpError as e:
            sys.exit(e.exit_code)  # the help has been printed (no command given)
        except _click.exceptions.UsageError as e:
            ctx = e.ctx
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _error_line(one_line(e.format_message()).rstrip(".") + hint)
            sys.exit(e.exit_code)
        except _click.exceptions.ClickException as e:
            _error_line(one_line(e.format_message()))
            sys.exit(e.exit_code)
        except typer.Abort:
            _error_line("aborted")
            sys.exit(EXIT_ERROR)
        # Not standalone, click returns an Exit's code instead of exiting with it.
        sys.exit(result if isinstance(result, int) else 0)


class _Typer(typer.Typer):
    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None,
                **kwargs: Any) -> Callable[[CommandFunctionType], CommandFunctionType]:
        return super().command(name, cls=cls or Command, **kwargs)


# markdown: docstrings wrapped at 88 columns reflow to the terminal instead of
# breaking mid-sentence in the command list.
app = _Typer(cls=Group, add_completion=False, no_args_is_help=True,
             rich_markup_mode="markdown", help="Durable security scans on Temporal.")

# Exit codes (the README lists them): 0 the command did what it says; 1 it did not
# (the one-line reason is on stderr); 2 bad usage (typer/click); 3 `scan --wait
# --no-wait-dead` stopped waiting because a scanner is dead.
EXIT_ERROR = 1
EXIT_USAGE = 2  # also for what typer cannot check: options that exclude each other
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
            api.ScanNotRunning, api.Rejected, api.NoWorker, api.RequestConflict) as e:
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


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    _error_line(message)
    raise typer.Exit(code)


def _error_line(message: str) -> None:
    err.print(f"scanward: error: {message}", markup=False, highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """A one-line note on stderr: something the output alone does not say."""
    err.print(f"scanward: note: {message}", markup=False, highlight=False, soft_wrap=True)


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
            raise CliError(f"--notify {spec!r}: expected URL=SECRET_NAME", EXIT_USAGE)
        targets.append(NotifyTarget(url=url, secret_ref=secret))
    return tuple(targets)


def open_store() -> Store:
    # Imported here: the store pulls in SQLAlchemy and Alembic, which most commands
    # (and their start-up time) do not need.
    from scanward.store import Store

    return Store.open(Settings.from_env().database_url)


