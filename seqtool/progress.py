"""A rich progress bar on stderr for training: step, loss, target tokens/s, learning rate, ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


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
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            refresh_per_second=2,
        )
        self.task: int | None = None

    def start(self, total_steps: int, start_step: int) -> None:
        """Show the bar from `start_step` of `total_steps`."""
        self.task = self.progress.add_task(
            "train", total=total_steps, completed=start_step, loss="-", tok_s="-", lr="-"
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
        self.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        """Stop drawing the bar."""
        self.progress.stop()
