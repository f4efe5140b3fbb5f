"""Trainer hooks: a :class:`Callback` base with no-op methods, and the state they receive."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dwindle.errors import ConfigError
from dwindle.training.config import TrainConfig

__all__ = ["Callback", "CallbackList", "LossFn", "TrainState", "check_callbacks"]

LossFn = Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]
"""``loss_fn(model, inputs, targets, outputs) -> scalar loss`` (e.g. a distillation loss)."""


@dataclass
class TrainState:
    """What a callback sees: the live objects of the run and where it stands.

    ``epoch`` is 1-based (0 before the first epoch), ``step`` counts optimizer steps so far,
    ``loss`` is the last batch's loss, ``metrics`` the last finished epoch's history row.
    Setting ``stop_training = True`` ends the run: the current epoch stops after this step,
    is validated and closed as usual, and no further epoch starts.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    config: TrainConfig
    epoch: int = 0
    step: int = 0
    batch: int = 0
    loss: float = float("nan")
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    stop_training: bool = False


class Callback:
    """Base class of trainer hooks; override only the methods you need.

    ``on_step_end`` runs right after ``optimizer.step()`` (and the scheduler step), so a
    pruning callback can re-apply its masks before the next forward pass.
    """

    def on_train_begin(self, state: TrainState) -> None:
        """Before the first epoch."""

    def on_epoch_begin(self, state: TrainState) -> None:
        """Before the first batch of ``state.epoch``."""

    def on_step_end(self, state: TrainState) -> None:
        """After each optimizer step; ``state.loss`` holds the batch's loss."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After validation; ``state.metrics`` holds the epoch's history row.

        Weights changed here were not validated this epoch; the snapshot used for divergence
        recovery and ``restore_best`` is the validated one, taken before this hook.
        """

    def on_train_end(self, state: TrainState) -> None:
        """After the last epoch (and after best weights are restored)."""


class CallbackList(Callback):
    """Several callbacks called in order, as one."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def _each(self, hook: str, state: TrainState) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(state)

    def on_train_begin(self, state: TrainState) -> None:
        self._each("on_train_begin", state)

    def on_epoch_begin(self, state: TrainState) -> None:
        self._each("on_epoch_begin", state)

    def on_step_end(self, state: TrainState) -> None:
        self._each("on_step_end", state)

    def on_epoch_end(self, state: TrainState) -> None:
        self._each("on_epoch_end", state)

    def on_train_end(self, state: TrainState) -> None:
        self._each("on_train_end", state)


def check_callbacks(callbacks: Any) -> CallbackList:
    """Validate ``callbacks`` into a :class:`CallbackList`."""
    items = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
    for cb in items:
        if not isinstance(cb, Callback):
            raise ConfigError(
                f"callbacks must be dwindle.training.Callback instances (got {type(cb).__name__}); "
                "subclass Callback and override its on_* methods"
            )
    return CallbackList(items)
