"""Pruning while training: Han's iterative prune → retrain rounds, and AGP during training.

Han et al. 2015 ("Learning both Weights and Connections for Efficient Neural Networks"):
rounds of pruning then retraining, each retraining at a lower learning rate, with L2
regularisation, and dropout rescaled for the thinner layers as D_r = D_o · sqrt(C_ir / C_io)
(Section 3.2; C_i = connections of layer i, o = original, r = after pruning).

Zhu & Gupta 2017 ("To prune, or not to prune"): masks recomputed every Δt optimizer steps to
the cubic AGP sparsity (:class:`dwindle.pruning.schedules.AGP`), stepped by a trainer callback.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torch import nn

from dwindle.errors import ConfigError
from dwindle.pruning.masks import MaskCallback, apply_masks, get_mask
from dwindle.pruning.schedules import AGP, Iterative
from dwindle.training import Callback, TrainConfig, TrainState, train

if TYPE_CHECKING:
    from dwindle.pruning.unstructured import Prune, Pruner

__all__ = [
    "AGPCallback",
    "agp_schedule",
    "dropout_rescale",
    "rescale_dropouts_",
    "retrain_config",
    "run_agp",
    "run_iterative",
]

_ORIGINAL_P = "dwindle_dropout_p0"


def dropout_rescale(p_original: float, connections_before: int, connections_after: int) -> float:
    """Han et al. 2015, Section 3.2 (dropout ratio adjustment): D_r = D_o · sqrt(C_ir / C_io)."""
    if connections_before <= 0:
        raise ConfigError("connections_before must be positive")
    return p_original * math.sqrt(connections_after / connections_before)


def _followers(model: nn.Module) -> list[tuple[str, nn.Module, nn.Dropout | None]]:
    """Each leaf with a weight and the dropout that follows it before the next weighted leaf."""
    leaves = [(n, m) for n, m in model.named_modules() if n and next(m.children(), None) is None]
    out: list[tuple[str, nn.Module, nn.Dropout | None]] = []
    for name, module in leaves:
        if isinstance(module, nn.modules.dropout._DropoutNd):
            if out and out[-1][2] is None:
                out[-1] = (out[-1][0], out[-1][1], module)  # type: ignore[assignment]
        elif getattr(module, "weight", None) is not None:
            out.append((name, module, None))
    return out


def rescale_dropouts_(model: nn.Module, layers: list[str]) -> dict[str, float]:
    """Rescale the dropout following each pruned layer in ``layers``; returns ``{layer: p}``.

    The original rate D_o is remembered on the dropout module, so repeated rounds rescale
    from it rather than compounding.
    """
    done: dict[str, float] = {}
    for name, module, dropout in _followers(model):
        if dropout is None or name not in layers:
            continue
        p0 = getattr(dropout, _ORIGINAL_P, dropout.p)
        setattr(dropout, _ORIGINAL_P, p0)
        mask = get_mask(module)
        kept = int(mask.sum()) if mask is not None else int((module.weight != 0).sum())
        dropout.p = dropout_rescale(p0, module.weight.numel(), kept)
        done[name] = dropout.p
    return done


def retrain_config(config: Prune, round_index: int) -> TrainConfig:
    """The retraining config of 1-based round ``round_index``: lr × lr_factor^(round − 1)."""
    base = config.finetune
    if base is None:
        raise ConfigError("retraining needs a finetune config")
    changes: dict[str, Any] = {"lr": base.lr * config.lr_factor ** (round_index - 1)}
    if config.l2 is not None:
        changes["weight_decay"] = config.l2
    return TrainConfig.from_dict({**base.model_dump(), **changes})


def retrain(
    model: nn.Module,
    data: Any,
    cfg: TrainConfig,
    callbacks: list[Callback],
    config: Prune,
    teacher: nn.Module | None = None,
) -> Any:
    """One retraining run: plain training, or knowledge distillation from ``teacher`` (the
    model before pruning) when ``config.distill`` is set."""
    if config.distill is None:
        return train(model, data, cfg, callbacks=callbacks)
    from dwindle.distillation import recover_with_distillation

    if teacher is None:
        raise ConfigError("prune: distill needs the unpruned model as teacher")
    return recover_with_distillation(model, teacher, data, cfg, config.distill, callbacks=callbacks)


def _need_data(data: Any, what: str) -> Any:
    if data is None:
        raise ConfigError(
            f"{what} retrains the model and needs data: pass data=... to prune_ "
            "(or run it as a recipe stage)"
        )
    return data


def run_iterative(
    model: nn.Module,
    pruner: Pruner,
    config: Prune,
    data: Any,
    teacher: nn.Module | None = None,
) -> list[dict[str, float]]:
    """Han's rounds: prune to the round's target, rescale dropout, retrain with masks kept."""
    data = _need_data(data, "schedule 'iterative'")
    final = config.ratio if config.method in ("magnitude", "block") else 1.0
    kind = "geometric" if config.method in ("magnitude", "block") else "linear"
    schedule = Iterative(final=float(final or 0.0), steps=config.steps, kind=kind)
    log = []
    for k in range(1, config.steps + 1):
        pruner.step(schedule.value(k))
        if config.rescale_dropout:
            rescale_dropouts_(model, [n for n, _ in pruner.layers])
        cfg = retrain_config(config, k)
        result = retrain(model, data, cfg, [MaskCallback()], config, teacher)
        apply_masks(model)
        log.append(
            {
                "round": k,
                "target": schedule.value(k),
                "density": pruner.density(),
                "lr": cfg.lr,
                "val_accuracy": result.val_accuracy if result.val_accuracy is not None else -1,
            }
        )
    return log


def agp_schedule(config: Prune, steps_per_epoch: int) -> AGP:
    """The AGP schedule of ``config`` in optimizer steps (t0, Δt, n from epochs)."""
    assert config.finetune is not None and config.final_sparsity is not None
    epochs = config.finetune.epochs
    end_epoch = config.end_epoch if config.end_epoch is not None else max(1, 2 * epochs / 3)
    start = round(config.start_epoch * steps_per_epoch)
    span = max(1, round(end_epoch * steps_per_epoch) - start)
    frequency = min(config.frequency, span)
    return AGP(
        initial=config.initial_sparsity,
        final=config.final_sparsity,
        start=start,
        frequency=frequency,
        n=span // frequency,
    )


class AGPCallback(Callback):
    """Recompute masks to the AGP sparsity every Δt steps; re-apply them after every step."""

    def __init__(self, pruner: Pruner, schedule: AGP) -> None:
        self.pruner = pruner
        self.schedule = schedule
        self.history: list[tuple[int, float]] = []

    def _update(self, step: int) -> None:
        target = self.schedule.value(step)
        self.pruner.prune_to(target)
        self.history.append((step, target))

    def on_train_begin(self, state: TrainState) -> None:
        if self.schedule.is_update_step(state.step):
            self._update(state.step)
        apply_masks(state.model)

    def on_step_end(self, state: TrainState) -> None:
        if self.schedule.is_update_step(state.step):
            self._update(state.step)
        apply_masks(state.model)

    def on_train_end(self, state: TrainState) -> None:
        # A run stopped early never reached s_f: reach it now so the target holds.
        if not self.history or self.history[-1][1] < self.schedule.final:
            self._update(self.schedule.end)


def run_agp(
    model: nn.Module,
    pruner: Pruner,
    config: Prune,
    data: Any,
    teacher: nn.Module | None = None,
) -> AGPCallback:
    """Train with ``config.finetune`` while AGP prunes; returns the callback (its history)."""
    data = _need_data(data, "schedule 'agp'")
    assert config.finetune is not None
    cfg = config.finetune
    if config.l2 is not None:
        cfg = TrainConfig.from_dict({**cfg.model_dump(), "weight_decay": config.l2})
    steps_per_epoch = math.ceil(data.size("train") / cfg.batch_size)
    callback = AGPCallback(pruner, agp_schedule(config, steps_per_epoch))
    retrain(model, data, cfg, [callback], config, teacher)
    return callback
