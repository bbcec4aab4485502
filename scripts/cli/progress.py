"""Progress of long operations (a rebuild, the demo's workload): items done of the total,
the rate, and the time left.

On a terminal, a rich progress bar stays below the lines the command prints, and log records
go through rich's logging handler, which prints them above the bar instead of over it.
Elsewhere (tests, CI logs) there is no bar: the lag lines the demo prints every few
seconds carry the same figures as plain text (:meth:`Completion.describe`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from eventkit.cli.logs import RedactingFormatter


@dataclasses.dataclass(frozen=True)
class Completion:
    """How far along a run of ``total`` items is, ``elapsed_s`` seconds after it began."""

    done: int
    total: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        """Items done per second so far (0 before the first is done)."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None while no item is done."""
        return (self.total - self.done) / self.rate if self.rate else None

    def describe(self, unit: str) -> str:
        """The percentage, the rate and the ETA (or the time taken, once all are done)."""
        percent = 100 * self.done // self.total if self.total else 100
        rate = f"{self.rate:,.0f} {unit}/s"
        if self.done >= self.total:
            return f"{percent}%, {rate}, all done in {self.elapsed_s:.1f} s"
        eta = self.eta_s
        return f"{percent}%, {rate}, ETA {'-' if eta is None else _clock(eta)}"


def _clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


class Pacer:
    """Says when a periodic line is due: every ``first_s`` seconds for the first
    ``first_lines`` lines, then every ``later_s``, so a long run prints fewer lines."""

    def __init__(
        self, first_s: float, later_s: float, first_lines: int, *, at_once: bool = False
    ) -> None:
        self.first_s = first_s
        self.later_s = later_s
        self.first_lines = first_lines
        self.lines = 0
        self.last: float | None = None if at_once else time.monotonic()

    def is_due(self) -> bool:
        """True (and counted as shown) when the next line is due."""
        now = time.monotonic()
        interval = self.first_s if self.lines < self.first_lines else self.later_s
        if self.last is not None and now - self.last < interval:
            return False
        self.last = now
        self.lines += 1
        return True


class _RateColumn(ProgressColumn):
    """Items per second, in the bar's unit (rich's own speed column counts bytes)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-" if speed is None else f"{speed:,.0f} {self.unit}/s")


@contextlib.contextmanager
def progress_bar(
    description: str, total: int, unit: str, console: Console | None = None
) -> Iterator[Callable[[int], None]]:
    """Show a bar of items done out of ``total`` on a terminal; yield what sets the count.

    Off a terminal the yielded function does nothing: the caller's periodic lines say how
    far along the run is.
    """
    console = console or Console()
    if not console.is_terminal:
        yield lambda done: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        # Gone once done: the caller's last line says how the run ended.
        transient=True,
    )
    with bar, _logs_above(bar.console):
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)


@contextlib.contextmanager
def _logs_above(console: Console) -> Iterator[None]:
    """While the bar shows, print eventkit's log records above it through ``console``.

    Only where the log goes to the same terminal: eventkit's handler (``logs.configure``)
    holds standard error itself, so its lines would land on the bar; a log sent elsewhere
    (a file, a host's own handler) is left alone.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "eventkit", False)]
    if not ours or not sys.stderr.isatty():
        yield
        return
    rich_handler = RichHandler(console=console, show_path=False)
    rich_handler.setFormatter(RedactingFormatter("%(name)s: %(message)s"))
    for handler in ours:
        root.removeHandler(handler)
    root.addHandler(rich_handler)
    try:
        yield
    finally:
        root.removeHandler(rich_handler)
        for handler in ours:
            root.addHandler(handler)
