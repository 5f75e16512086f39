"""A rich progress bar on stderr for training: step, loss, target tokens/s, learning rate, ETA."""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


def eta_seconds(steps_left: int, seconds_per_step: float | None, deadline: float | None, now: float) -> float | None:
    """Seconds until the run ends: the nearer of max_steps (at the current speed) and the max_minutes deadline
    (a `time.monotonic()` value); None while neither is known."""
    by_steps = steps_left * seconds_per_step if seconds_per_step is not None else math.inf
    by_clock = max(0.0, deadline - now) if deadline is not None else math.inf
    nearer = min(by_steps, by_clock)
    return None if math.isinf(nearer) else nearer


def format_eta(seconds: float | None) -> str:
    """H:MM:SS, or -:--:-- when unknown."""
    if seconds is None:
        return "-:--:--"
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class EtaColumn(ProgressColumn):
    """Time left: the nearer of the step limit and the time limit (the task's `deadline` field)."""

    def render(self, task: Task) -> Text:
        steps_left = int(task.total - task.completed) if task.total is not None else 0
        speed = task.speed  # steps per second over rich's recent window
        per_step = 1.0 / speed if speed else None
        left = eta_seconds(steps_left, per_step, task.fields.get("deadline"), time.monotonic())
        return Text(f"ETA {format_eta(left)}", style="progress.remaining")


class RichReporter:
    """Implements the trainer's Reporter protocol with a rich progress bar and messages on stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tok_s]} tok/s"),
            TextColumn("lr {task.fields[lr]}"),
            TimeElapsedColumn(),
            EtaColumn(),
            console=self.console,
            transient=False,
            refresh_per_second=2,
        )
        self.task: int | None = None

    def start(self, total_steps: int, start_step: int, deadline: float | None = None) -> None:
        """Show the bar from `start_step` of `total_steps`; `deadline` (time.monotonic) is when max_minutes ends it."""
        self.task = self.progress.add_task(
            "train", total=total_steps, completed=start_step, loss="-", tok_s="-", lr="-", deadline=deadline
        )
        self.progress.start()

    def advance(self, step: int) -> None:
        """One update done."""
        if self.task is not None:
            self.progress.update(self.task, completed=step)

    def update(self, values: dict[str, float]) -> None:
        """New loss / tokens per second / learning rate figures."""
        if self.task is not None:
            self.progress.update(
                self.task, loss=f"{values['loss']:.3f}", tok_s=f"{values['tok_s']:,.0f}", lr=f"{values['lr']:.2e}"
            )

    def message(self, text: str) -> None:
        """A line above the bar."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)  # a path in it stays copyable

    def close(self) -> None:
        """Stop drawing the bar."""
        self.progress.stop()
