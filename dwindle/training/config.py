"""TrainConfig: every knob of the trainer in one frozen, validated config."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from dwindle.config import Config

__all__ = ["TrainConfig"]

Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["constant", "step", "multistep", "cosine", "onecycle", "exponential"]
Monitor = Literal["val_accuracy", "val_loss"]


class TrainConfig(Config):
    """How to train: optimizer, learning-rate schedule, early stopping, seed and device.

    ``weight_decay`` is an L2 penalty for ``sgd``/``adam`` and decoupled for ``adamw``.
    Schedules are per step: ``step`` multiplies the lr by ``gamma`` every ``step_size`` epochs,
    ``multistep`` at each epoch in ``milestones``, ``exponential`` every epoch, ``cosine`` anneals
    to 0 after the warm-up, ``onecycle`` warms up over 30 % of the steps from lr/25 then anneals
    to lr/25e4. ``warmup_epochs`` ramps the lr linearly from ~0 first (not with ``onecycle``).
    ``restore_best``: ``None`` restores the best epoch's weights only with early stopping,
    ``True`` always (needs a validation split), ``False`` never. ``compile`` runs the training
    forward through ``torch.compile``: the first steps pay the compilation, then models made of
    many small ops (QAT fake-quant, folded BN) run as fused kernels; measure whether it pays.
    In ``distill`` it compiles the frozen teacher's forward too (unless hints or attention tap
    the teacher's layers).
    """

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, ge=1)
    optimizer: Optimizer = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    schedule: Schedule = "constant"
    step_size: int = Field(30, ge=1)
    milestones: tuple[int, ...] = ()
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    early_stopping: int | None = Field(None, ge=1)
    monitor: Monitor = "val_accuracy"
    restore_best: bool | None = None
    seed: int = Field(0, ge=0)
    device: str = "cpu"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)
    augment: bool = False
    progress: bool = True
    eval_batch_size: int = Field(512, ge=1)
    compile: bool = False

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, ms: tuple[int, ...]) -> tuple[int, ...]:
        if any(m < 1 for m in ms) or any(ms[i + 1] <= ms[i] for i in range(len(ms) - 1)):
            raise ValueError(f"milestones must be increasing positive epochs (got {list(ms)})")
        return ms

    @field_validator("device")
    @classmethod
    def _torch_device(cls, device: str) -> str:
        try:
            torch.device(device)
        except (RuntimeError, ValueError):
            raise ValueError("not a torch device; use e.g. 'cpu', 'cuda', 'cuda:1'") from None
        return device

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0; set momentum (e.g. 0.9)")
        if self.schedule == "multistep" and not self.milestones:
            raise ValueError(
                "schedule='multistep' needs milestones, the epochs at which the lr is "
                "multiplied by gamma, e.g. milestones=[30, 60]"
            )
        if self.schedule == "onecycle" and self.warmup_epochs:
            raise ValueError(
                "warmup_epochs is not used with schedule='onecycle', which warms up by itself; "
                "set warmup_epochs=0"
            )
        if self.epochs and self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs}); "
                "lower warmup_epochs"
            )
        return self
