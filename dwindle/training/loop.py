"""The training loop: :func:`train`, :func:`finetune` and their :class:`TrainResult`."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dwindle.data.bundle import DataBundle
from dwindle.errors import ConfigError, TrainingDivergedError
from dwindle.training.callbacks import Callback, LossFn, TrainState, check_callbacks
from dwindle.training.checkpoint import StateDict, save_checkpoint, snapshot
from dwindle.training.config import TrainConfig
from dwindle.training.display import EpochDisplay
from dwindle.training.evaluate import (
    check_data,
    checked_forward,
    evaluate,
    input_dtype,
    logits_of,
    resolve_device,
)
from dwindle.training.optim import build_optimizer, build_scheduler

__all__ = ["TrainResult", "finetune", "train"]


@dataclass
class TrainResult:
    """Per-epoch ``history`` rows and the outcome of a :func:`train` run.

    ``val_accuracy``/``val_loss`` describe the weights the model holds at the end (the best
    epoch's when they were restored); None without a validation split.
    """

    history: list[dict[str, float]]
    best_epoch: int | None
    stopped_early: bool
    val_accuracy: float | None
    val_loss: float | None
    restored_best: bool = False
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready) of the result."""
        return asdict(self)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _default_loss(label_smoothing: float) -> LossFn:
    def loss_fn(model: nn.Module, inputs: Tensor, targets: Tensor, outputs: Any) -> Tensor:
        logits = logits_of(outputs)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # half-precision softmax loses too much
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)

    return loss_fn


def _loss_value(loss: Any) -> float:
    if not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.requires_grad:
        raise ConfigError(
            f"loss_fn must return a scalar tensor with a graph back to the model's parameters "
            f"(got {type(loss).__name__}"
            f"{' of shape ' + str(tuple(loss.shape)) if isinstance(loss, Tensor) else ''}); "
            "reduce it with .mean() and do not detach it"
        )
    return float(loss.item())


def _check_inputs(cfg: TrainConfig, data: DataBundle, loss_fn: Any) -> bool:
    """Reject unusable inputs before any work; returns whether a validation split exists."""
    if loss_fn is not None and not callable(loss_fn):
        raise ConfigError(
            f"loss_fn must be callable as loss_fn(model, inputs, targets, outputs) "
            f"(got {type(loss_fn).__name__})"
        )
    if cfg.epochs and data.size("train") == 0:
        raise ConfigError(f"dataset {data.name!r} has an empty train split; nothing to train on")
    has_val = data.size("val") > 0
    if not has_val and (cfg.early_stopping is not None or cfg.restore_best):
        raise ConfigError(
            f"early_stopping/restore_best need validation data but dataset {data.name!r} has "
            "an empty val split; add one or set early_stopping=None, restore_best=None"
        )
    return has_val


class _Run:
    """One training run's mutable bookkeeping, so the loop itself stays readable."""

    def __init__(
        self,
        model: nn.Module,
        data: DataBundle,
        cfg: TrainConfig,
        callbacks: Callback,
        loss_fn: LossFn,
        checkpoint_path: Path | None,
    ) -> None:
        self.model, self.data, self.cfg = model, data, cfg
        self.callbacks, self.loss_fn, self.checkpoint = callbacks, loss_fn, checkpoint_path
        self.device = resolve_device(cfg.device)
        self.steps_per_epoch = math.ceil(data.size("train") / cfg.batch_size)
        model.to(self.device)
        # the same parameters, traced and fused (the first step compiles)
        self.forward: Any = torch.compile(model) if cfg.compile else model
        self.dtype = input_dtype(model)
        optimizer = build_optimizer(model, cfg) if cfg.epochs else None
        scheduler = (
            build_scheduler(optimizer, cfg, self.steps_per_epoch) if optimizer is not None else None
        )
        self.state = TrainState(model=model, optimizer=optimizer, scheduler=scheduler, config=cfg)
        self.last_good = snapshot(model)
        self.last_good_epoch = 0
        self.masks = _masked_params(model)

    def run_epoch(self, epoch: int, display: EpochDisplay) -> tuple[float, float, float]:
        """Train one epoch; returns (mean loss, accuracy, lr at the epoch's start)."""
        st, cfg, model = self.state, self.cfg, self.model
        assert st.optimizer is not None and st.scheduler is not None
        lr = float(st.optimizer.param_groups[0]["lr"])
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = self.data.batches(
            "train",
            cfg.batch_size,
            shuffle=True,
            seed=cfg.seed * 1000 + epoch,
            augment=cfg.augment,
            device=self.device,
            dtype=self.dtype,
        )
        for b, (x, y) in enumerate(batches, start=1):
            if st.step == 0:
                outputs, logits = checked_forward(model, x, self.data)
            else:
                first = cfg.compile and st.step == 1
                outputs = self.first_compiled(x) if first else self.forward(x)
                logits = logits_of(outputs)
            loss = self.loss_fn(model, x, y, outputs)
            value = _loss_value(loss)
            if not math.isfinite(value):
                self.diverge(
                    f"the loss became {value} at epoch {epoch}, batch {b} "
                    f"(optimizer step {st.step + 1})"
                )
            st.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            st.optimizer.step()
            _reapply(self.masks)
            st.scheduler.step()
            st.step, st.batch, st.loss = st.step + 1, b, value
            loss_sum += value * len(y)
            correct += int((logits.detach().argmax(1) == y).sum().item())
            seen += len(y)
            self.callbacks.on_step_end(st)
            display.step(value)
            if st.stop_training:
                break
        return loss_sum / max(1, seen), correct / max(1, seen), lr

    def first_compiled(self, x: torch.Tensor) -> Any:
        """The first call of the compiled forward, where torch.compile traces and compiles; a
        failure there restores the weights from before training and says how to go on."""
        try:
            return self.forward(x)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # dynamo/inductor raise many types; all mean the same here
            self.model.load_state_dict(self.last_good, strict=False)
            raise ConfigError(
                f"torch.compile could not compile the forward of {type(self.model).__name__} "
                f"({type(exc).__name__}: {str(exc).strip()[:300]}); train it with "
                "compile=False. The model was reset to its weights from before training."
            ) from exc

    def diverge(self, what: str) -> None:
        """Restore the last good weights, save them if asked, and raise."""
        self.model.load_state_dict(self.last_good, strict=False)
        where = (
            f"the end of epoch {self.last_good_epoch}"
            if self.last_good_epoch
            else "before training (its initial weights)"
        )
        msg = (
            f"training diverged: {what}; "
            f"lower the learning rate (lr={self.cfg.lr}) or set grad_clip (e.g. 1.0). "
            f"The model was reset to its weights from {where}"
        )
        if self.checkpoint is not None:
            self.save(self.last_good, self.last_good_epoch)
            msg += f", saved to {self.checkpoint}"
        raise TrainingDivergedError(msg + ".")

    def save(self, state: StateDict, epoch: int) -> None:
        if self.checkpoint is not None:
            save_checkpoint(state, self.checkpoint, {"epoch": str(epoch), "writer": "dwindle"})

    def end_epoch(self, epoch: int) -> None:
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self.diverge(f"the weights became non-finite during epoch {epoch}")
        self.last_good = snapshot(self.model)
        self.last_good_epoch = epoch
        self.save(self.last_good, epoch)


def _improved(value: float, best: float | None, monitor: str) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if monitor == "val_accuracy" else value < best


def _masked_params(model: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, mask) pairs of the ``<param>_mask`` buffer convention (see dwindle.metrics)."""
    pairs = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            mask = getattr(module, f"{name}_mask", None)
            if isinstance(mask, torch.Tensor) and mask.shape == param.shape:
                pairs.append((param, mask))
    return pairs


@torch.no_grad()
def _reapply(pairs: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
    # Masked weights must stay zero through fine-tuning, whoever set the mask: without this,
    # momentum or weight decay would silently regrow a pruned model.
    for param, mask in pairs:
        param.mul_(mask.to(param.dtype))


def train(
    model: nn.Module,
    data: DataBundle,
    config: TrainConfig | dict[str, Any] | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    loss_fn: LossFn | None = None,
    checkpoint_path: str | Path | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data.train``, validating on ``data.val`` every epoch.

    ``checkpoint_path`` (safetensors) receives the weights after every epoch, the final
    weights, and the last good weights if the loss diverges.
    """
    started = time.perf_counter()
    cfg = TrainConfig.from_dict(config) if config is not None else TrainConfig()
    data = check_data(data)
    cbs = check_callbacks(callbacks)
    has_val = _check_inputs(cfg, data, loss_fn)
    _seed_everything(cfg.seed)
    was_training = model.training
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    run = _Run(model, data, cfg, cbs, loss_fn or _default_loss(cfg.label_smoothing), path)
    st = run.state
    restore = cfg.restore_best if cfg.restore_best is not None else cfg.early_stopping is not None
    best_value: float | None = None
    best_epoch: int | None = None
    best_state: StateDict | None = None
    stale, stopped = 0, False
    cbs.on_train_begin(st)
    try:
        with EpochDisplay(cfg.progress, cfg.epochs, run.steps_per_epoch) as display:
            for epoch in range(1, cfg.epochs + 1):
                st.epoch, st.batch = epoch, 0
                cbs.on_epoch_begin(st)
                display.begin_epoch(epoch)
                tick = time.perf_counter()
                train_loss, train_acc, lr = run.run_epoch(epoch, display)
                run.end_epoch(epoch)
                val = _validate(model, data, cfg, run.device, has_val)
                row = {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "train_accuracy": train_acc,
                    "val_loss": val["loss"],
                    "val_accuracy": val["accuracy"],
                    "lr": lr,
                    "seconds": time.perf_counter() - tick,
                }
                st.history.append(row)
                st.metrics = row
                display.end_epoch(row)
                if has_val and _improved(row[cfg.monitor], best_value, cfg.monitor):
                    best_value, best_epoch, stale = row[cfg.monitor], epoch, 0
                    best_state = run.last_good if restore else None
                else:
                    stale += 1
                cbs.on_epoch_end(st)
                if cfg.early_stopping is not None and stale >= cfg.early_stopping:
                    stopped = epoch < cfg.epochs
                    break
                if st.stop_training:
                    stopped = epoch < cfg.epochs or st.batch < run.steps_per_epoch
                    break
        restored = restore and best_state is not None and best_epoch != len(st.history)
        if restored:
            assert best_state is not None
            model.load_state_dict(best_state, strict=False)
            run.save(best_state, best_epoch or 0)
        final = _final_metrics(
            model, data, cfg, run.device, has_val, st.history, best_epoch, restored
        )
        cbs.on_train_end(st)
    finally:
        model.train(was_training)
    return TrainResult(
        history=st.history,
        best_epoch=best_epoch,
        stopped_early=stopped,
        val_accuracy=final[0],
        val_loss=final[1],
        restored_best=restored,
        seconds=time.perf_counter() - started,
    )


def _validate(
    model: nn.Module, data: DataBundle, cfg: TrainConfig, device: torch.device, has_val: bool
) -> dict[str, float]:
    if not has_val:
        return {"loss": math.nan, "accuracy": math.nan}
    return evaluate(model, data, "val", cfg.eval_batch_size, device)


def _final_metrics(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig,
    device: torch.device,
    has_val: bool,
    history: list[dict[str, float]],
    best_epoch: int | None,
    restored: bool,
) -> tuple[float | None, float | None]:
    if not has_val:
        return None, None
    if not history:
        val = evaluate(model, data, "val", cfg.eval_batch_size, device)
        return val["accuracy"], val["loss"]
    row = history[best_epoch - 1] if restored and best_epoch else history[-1]
    return row["val_accuracy"], row["val_loss"]


def finetune(
    model: nn.Module,
    data: DataBundle,
    config: TrainConfig | dict[str, Any] | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    loss_fn: LossFn | None = None,
    checkpoint_path: str | Path | None = None,
    **overrides: Any,
) -> TrainResult:
    """:func:`train` with fine-tuning defaults (``lr=0.01, epochs=1``) and keyword overrides.

    ``finetune(model, data, lr=1e-4)``; overrides are validated like any config value.
    """
    base = TrainConfig(lr=0.01, epochs=1) if config is None else TrainConfig.from_dict(config)
    if overrides:
        base = TrainConfig.from_dict({**base.model_dump(), **overrides})
    return train(
        model,
        data,
        base,
        callbacks=callbacks,
        loss_fn=loss_fn,
        checkpoint_path=checkpoint_path,
    )
