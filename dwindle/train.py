"""Trainer API (``dwindle.train``): re-exports of :mod:`dwindle.training`."""

from dwindle.training import (
    Callback,
    CallbackList,
    LossFn,
    LRMultiplier,
    TrainConfig,
    TrainResult,
    TrainState,
    build_optimizer,
    build_scheduler,
    evaluate,
    finetune,
    input_dtype,
    logits_of,
    save_checkpoint,
    train,
)

__all__ = [
    "Callback",
    "CallbackList",
    "LRMultiplier",
    "LossFn",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "finetune",
    "input_dtype",
    "logits_of",
    "save_checkpoint",
    "train",
]
