"""`persyn`'s entry point: runs the app and turns errors and Ctrl-C into one line and an exit code."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from rich.markup import escape

from persyn.cli import commands, experiments  # noqa: F401 - importing them registers their commands on `app`
from persyn.cli.app import app
from persyn.errors import PersynError
from persyn.progress import quiet_libraries


def _interrupted() -> None:
    Console(stderr=True).print("\ninterrupted: everything finished so far is saved; run the same command "
                               "again to resume.", highlight=False, soft_wrap=True)
    sys.exit(130)


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage errors, aborts) of click and of the copy of click that typer >= 0.24 vendors as typer._click."""
    import importlib

    usage: list[type] = []
    abort: list[type] = [typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        usage.append(mod.ClickException)
        if hasattr(mod, "Abort"):  # typer keeps its own Abort (typer.Abort) out of the vendored module
            abort.append(mod.Abort)
    return tuple(usage), tuple(abort)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    try:
        # Outside standalone mode Typer returns exit codes instead of exiting: 130 is its Ctrl-C.
        code = app(args=argv, standalone_mode=False)
    except PersynError as exc:
        # escape: "p.jsonl:2 [prompt]" and "teachers[b]" are not Rich markup
        Console(stderr=True).print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors: an unknown command or option, a missing argument
        usage, abort = _click_exceptions()
        if isinstance(exc, usage):
            exc.show()  # click's usage line, a hint and one "Error: ..." line; no traceback
            sys.exit(2)
        if isinstance(exc, abort):
            _interrupted()
        raise
    if code == 130:
        _interrupted()
    if isinstance(code, int) and code:
        sys.exit(code)
