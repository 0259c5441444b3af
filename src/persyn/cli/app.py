"""The Typer app, its console and what every command shares (the config argument and its loader)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from persyn.config import RunConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="PerSyn: route each prompt to the teacher that suits your student, then generate.")
models_app = typer.Typer(no_args_is_help=True, help="Fetch and inspect the model registry.")
app.add_typer(models_app, name="models")
console = Console(soft_wrap=True)

ConfigArg = Annotated[Path, typer.Argument(help="Run configuration (YAML).")]


def load_run_config(path: Path) -> RunConfig:
    from persyn.config import load_config  # imported here: `persyn --help` stays fast

    return load_config(path)
