"""Terminal output of the trainer: a transient rich progress bar per epoch, one line per epoch."""

from __future__ import annotations

import math
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["EpochDisplay", "format_epoch"]


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}%"


def format_epoch(row: dict[str, float], epochs: int) -> str:
    """One-line summary of a history row."""
    line = (
        f"epoch {int(row['epoch'])}/{epochs}  "
        f"train loss {row['train_loss']:.4f} acc {_pct(row['train_accuracy'])}"
    )
    if not math.isnan(row["val_loss"]):
        line += f"  val loss {row['val_loss']:.4f} acc {_pct(row['val_accuracy'])}"
    return line + f"  lr {row['lr']:.3g}  {row['seconds']:.1f}s"


class EpochDisplay:
    """Shows a bar while an epoch runs and a summary line after; silent when disabled.

    Output goes to stderr so that a command's stdout stays machine-readable.
    """

    def __init__(self, enabled: bool, epochs: int, steps_per_epoch: int) -> None:
        self.enabled = enabled
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.console = Console(stderr=True) if enabled else None
        self._progress: Progress | None = None
        self._task: int | None = None

    def __enter__(self) -> EpochDisplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def begin_epoch(self, epoch: int) -> None:
        # A bar in a log file is noise; redirected output gets the summary lines only.
        if self.console is None or not self.console.is_terminal:
            return
        self._progress = Progress(
            TextColumn(f"epoch {epoch}/{self.epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=self.steps, loss="-")

    def step(self, loss: float) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, loss=f"{loss:.4f}")

    def end_epoch(self, row: dict[str, float]) -> None:
        self._close()
        if self.console is not None:
            self.console.print(format_epoch(row, self.epochs), highlight=False, soft_wrap=True)

    def _close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None
