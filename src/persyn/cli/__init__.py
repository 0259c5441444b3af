"""The command line: thin Typer commands over the Python API.

    app.py          the Typer app, its console and the shared config argument
    commands.py     run, the stages one by one, export, report, status, batch-export/-import, models, config-docs
    experiments.py  router-eval, train, eval, compare
    entry.py        main(): runs the app, errors as one line and an exit code
"""

from persyn.cli.app import app
from persyn.cli.entry import main

__all__ = ["app", "main"]
