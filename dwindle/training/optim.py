"""Optimizer and per-step learning-rate schedule built from a :class:`TrainConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dwindle.errors import ModelSpecError
from dwindle.training.config import TrainConfig

__all__ = ["LRMultiplier", "build_optimizer", "build_scheduler"]

# OneCycle constants of torch.optim.lr_scheduler.OneCycleLR's defaults.
_ONECYCLE_PCT = 0.3
_ONECYCLE_DIV = 25.0
_ONECYCLE_FINAL_DIV = 1e4


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelSpecError(
            f"{type(model).__name__} has no trainable parameters; unfreeze some "
            "(requires_grad=True) or use epochs=0 to only evaluate"
        )
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


@dataclass(frozen=True)
class LRMultiplier:
    """The factor applied to the base lr before optimizer step ``step`` (0-based).

    A picklable callable (not a lambda) so the scheduler's ``state_dict`` can be saved.
    """

    config: TrainConfig
    steps_per_epoch: int

    def __call__(self, step: int) -> float:
        cfg, spe = self.config, max(1, self.steps_per_epoch)
        total = max(1, cfg.epochs * spe)
        epoch = step // spe
        warmup = cfg.warmup_epochs * spe
        if cfg.schedule == "onecycle":
            return _onecycle(step, total)
        if cfg.schedule == "step":
            factor = cfg.gamma ** (epoch // cfg.step_size)
        elif cfg.schedule == "multistep":
            factor = cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
        elif cfg.schedule == "exponential":
            factor = cfg.gamma**epoch
        elif cfg.schedule == "cosine":
            progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            factor = 1.0
        if warmup and step < warmup:
            factor *= (step + 1) / warmup
        return factor


def _onecycle(step: int, total: int) -> float:
    up = max(1, round(_ONECYCLE_PCT * total))
    start, end = 1.0 / _ONECYCLE_DIV, 1.0 / (_ONECYCLE_DIV * _ONECYCLE_FINAL_DIV)
    if step < up:
        t, lo, hi = step / up, start, 1.0
    else:
        t, lo, hi = min(1.0, (step - up) / max(1, total - up - 1)), 1.0, end
    # Cosine interpolation from lo (t = 0) to hi (t = 1).
    return hi + (lo - hi) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler stepped after every optimizer step, following ``config.schedule``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRMultiplier(config, steps_per_epoch))
