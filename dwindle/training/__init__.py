"""The trainer: ``train``, ``finetune``, ``evaluate``, their config, callbacks and primitives."""

from dwindle.training.callbacks import Callback, CallbackList, LossFn, TrainState
from dwindle.training.checkpoint import average_snapshots
from dwindle.training.config import TrainConfig
from dwindle.training.evaluate import evaluate, input_dtype, logits_of
from dwindle.training.loop import TrainResult, finetune, save_checkpoint, train
from dwindle.training.optim import LRMultiplier, build_optimizer, build_scheduler

__all__ = [
    "Callback",
    "CallbackList",
    "LRMultiplier",
    "LossFn",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "average_snapshots",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "finetune",
    "input_dtype",
    "logits_of",
    "save_checkpoint",
    "train",
]
