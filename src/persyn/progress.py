"""Rich progress bars for long stages; quiet when PERSYN_QUIET is set (tests)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, e.g. `412 texts/s`."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed or (task.completed / task.elapsed if task.elapsed else None)
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"? {self.unit}/s", style="progress.data.speed")


@contextmanager
def progress(description: str, total: int, unit: str | None = None) -> Iterator[Callable[[int], None]]:
    """A bar with count, elapsed time and ETA (and a rate, when `unit` names what is counted)."""
    if os.environ.get("PERSYN_QUIET") or total == 0:
        yield lambda n=1: None
        return
    rate = [RateColumn(unit)] if unit else []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *rate,
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
