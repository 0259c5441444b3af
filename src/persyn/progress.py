"""Progress of long stages: a Rich bar on a terminal; elsewhere (a file, a CI log) plain lines, one per stage and a
count every PLAIN_EVERY_S seconds, since a bar redrawn into a log wraps into fragments. Quiet when PERSYN_QUIET is
set (tests)."""

from __future__ import annotations

import os
import sys
import time
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
PLAIN_EVERY_S = 30.0  # seconds between count lines when output is not a terminal


def quiet_libraries() -> None:
    """Silence the libraries' own bars (transformers' "Loading weights" at every model load, datasets' map bars,
    hub downloads): persyn reports progress itself. Takes effect for libraries imported after this call; an
    explicit setting of these variables wins."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow the hub's switch
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if (hf_logging := sys.modules.get("transformers.utils.logging")) is not None:  # imported already
        hf_logging.disable_progress_bar()
    if (datasets := sys.modules.get("datasets")) is not None:
        datasets.disable_progress_bars()


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
    if not console.is_terminal:
        with _plain(description, total, unit) as advance:
            yield advance
        return
    rate = [RateColumn(unit)] if unit else []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *rate,
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


@contextmanager
def _plain(description: str, total: int, unit: str | None) -> Iterator[Callable[[int], None]]:
    """Plain lines: `label: 120/605 (40 texts/s)` every PLAIN_EVERY_S seconds, and `label: 605/605 in 12 s` at the
    end (or where it stopped)."""
    start = last = time.monotonic()
    done = 0

    def line(final: bool) -> str:
        elapsed = time.monotonic() - start
        rate = f" ({done / elapsed:,.0f} {unit}/s)" if unit and elapsed > 0 and not final else ""
        return f"{description}: {done}/{total}{rate}" + (f" in {elapsed:.0f} s" if final else "")

    def advance(n: int = 1) -> None:
        nonlocal done, last
        done += n
        if time.monotonic() - last >= PLAIN_EVERY_S and done < total:
            last = time.monotonic()
            console.print(line(False), highlight=False, markup=False, soft_wrap=True)

    try:
        yield advance
    finally:
        console.print(line(True), highlight=False, markup=False, soft_wrap=True)
