"""Unstructured pruning: the ``prune`` stage, its :class:`Prune` config and the ``prune_`` verb.

Methods: ``magnitude`` (layer-wise or global), ``han`` (threshold = quality × std of the
layer's weights; Han et al. 2015), ``block`` (whole tiles) and ``nm`` (N:M semi-structured).
Schedules: ``oneshot``, ``iterative`` (prune → retrain rounds at a decaying lr, with L2 and
dropout rescaling; Han et al. 2015) and ``agp`` (gradual pruning during training with the cubic
schedule of Zhu & Gupta 2017). Everything leaves boolean masks behind (see
:mod:`dwindle.pruning.masks`) and sets the model's export format to ``sparse``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from dwindle.config import StageContext, TargetedConfig, apply, register_technique
from dwindle.distillation.distill import DistillConfig
from dwindle.errors import ConfigError
from dwindle.pruning.blocks import expand_tile_mask, nm_mask, tile_scores
from dwindle.pruning.criteria import HanThreshold, Magnitude
from dwindle.pruning.gradual import retrain, retrain_config, run_agp, run_iterative
from dwindle.pruning.masks import (
    MaskCallback,
    get_mask,
    global_magnitude_masks,
    magnitude_mask,
    prunable_modules,
    remove_masks,
    set_mask,
    threshold_mask,
)
from dwindle.targets import matches
from dwindle.training import TrainConfig

__all__ = ["Prune", "Pruner", "prune_"]

Method = Literal["magnitude", "han", "block", "nm"]
ScheduleName = Literal["oneshot", "iterative", "agp"]

# Which options each method / schedule reads: any other option given is an error, so a typo'd
# combination (``quality`` with ``magnitude``) fails loudly instead of being ignored.
_METHOD_OPTIONS: dict[str, set[str]] = {
    "ratio": {"magnitude", "block"},
    "scope": {"magnitude", "block"},
    "quality": {"han"},
    "n": {"nm"},
    "m": {"nm"},
    "block": {"block"},
}
_SCHEDULE_OPTIONS: dict[str, set[str]] = {
    "steps": {"iterative"},
    "lr_factor": {"iterative"},
    "rescale_dropout": {"iterative"},
    "initial_sparsity": {"agp"},
    "final_sparsity": {"agp"},
    "start_epoch": {"agp"},
    "end_epoch": {"agp"},
    "frequency": {"agp"},
}


class Prune(TargetedConfig):
    """Unstructured / semi-structured pruning of the ``targets`` layers (Linear and Conv).

    ``method``: ``magnitude`` (prune the ``ratio`` smallest |w|, per layer or ``scope:
    global``), ``han`` (prune |w| <= ``quality`` × std of the layer's weights; ``quality`` is
    a number or ``{pattern: quality}`` per layer), ``block`` (drop whole ``block`` tiles of
    smallest mean |w|), ``nm`` (keep ``n`` of every ``m`` weights along the input dimension).

    ``schedule``: ``oneshot``; ``iterative`` — ``steps`` prune → retrain rounds, round k
    retraining with ``finetune`` at lr × ``lr_factor``^(k−1) and weight decay ``l2``, and
    dropout after a pruned layer rescaled to D_o·sqrt(C_ir/C_io); ``agp`` — prune during the
    ``finetune`` run from ``initial_sparsity`` to ``final_sparsity`` between ``start_epoch``
    and ``end_epoch`` (default: 2/3 of the epochs), updating masks every ``frequency`` steps.
    ``bake`` removes the mask buffers at the end (zeros stay). ``distill`` (e.g.
    ``{temperature: 4, alpha: 0.9}``, any :class:`~dwindle.distillation.DistillConfig` keys)
    makes every retraining — iterative rounds, the AGP run, a one-shot ``finetune`` — distil
    from a frozen copy of the model as it was before this pruning (Hinton et al. 2015).
    """

    method: Method = "magnitude"
    ratio: float | None = Field(None, ge=0, lt=1)
    scope: Literal["layer", "global"] = "layer"
    quality: float | dict[str, float] | None = None
    n: int = Field(2, ge=1)
    m: int = Field(4, ge=2)
    block: tuple[int, int] = (4, 1)
    schedule: ScheduleName = "oneshot"
    steps: int = Field(4, ge=1)
    lr_factor: float = Field(0.5, gt=0, le=1)
    rescale_dropout: bool = True
    initial_sparsity: float = Field(0.0, ge=0, lt=1)
    final_sparsity: float | None = Field(None, ge=0, lt=1)
    start_epoch: float = Field(0.0, ge=0)
    end_epoch: float | None = Field(None, gt=0)
    frequency: int = Field(100, ge=1)
    finetune: TrainConfig | None = None
    l2: float | None = Field(None, ge=0)
    bake: bool = False
    distill: DistillConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Prune:
        given = self.model_fields_set
        for opt, methods in _METHOD_OPTIONS.items():
            if opt in given and self.method not in methods:
                raise ValueError(
                    f"option {opt!r} is not used by method {self.method!r}; "
                    f"it belongs to method {' / '.join(sorted(methods))}"
                )
        for opt, schedules in _SCHEDULE_OPTIONS.items():
            if opt in given and self.schedule not in schedules:
                raise ValueError(
                    f"option {opt!r} is not used by schedule {self.schedule!r}; "
                    f"it belongs to schedule {' / '.join(sorted(schedules))}"
                )
        if self.method == "han":
            qualities = self.quality.values() if isinstance(self.quality, dict) else [self.quality]
            if self.quality is None or any(q is None or q < 0 for q in qualities):
                raise ValueError("method 'han' needs quality >= 0 (e.g. quality: 0.7)")
        if self.method == "nm" and not self.n < self.m:
            raise ValueError(f"method 'nm' needs n < m (got n={self.n}, m={self.m})")
        if self.method == "nm" and self.schedule != "oneshot":
            raise ValueError("method 'nm' is one-shot; use schedule: oneshot and finetune after")
        if any(b < 1 for b in self.block):
            raise ValueError(f"block sizes must be >= 1 (got {list(self.block)})")
        if self.schedule == "agp":
            if self.method not in ("magnitude", "block"):
                raise ValueError("schedule 'agp' works with method 'magnitude' or 'block'")
            if "ratio" in given:
                raise ValueError(
                    "schedule 'agp' ramps the sparsity from initial_sparsity to final_sparsity; "
                    "ratio is not used: give final_sparsity instead"
                )
            if self.final_sparsity is None:
                raise ValueError("schedule 'agp' needs final_sparsity (e.g. 0.9)")
            if self.final_sparsity < self.initial_sparsity:
                raise ValueError("final_sparsity must be >= initial_sparsity")
            if self.finetune is None or self.finetune.epochs == 0:
                raise ValueError(
                    "schedule 'agp' prunes during training: give finetune: {epochs: N, lr: ...}"
                )
            if self.end_epoch is not None and self.end_epoch > self.finetune.epochs:
                raise ValueError(
                    f"end_epoch ({self.end_epoch}) exceeds finetune.epochs ({self.finetune.epochs})"
                )
            if self.end_epoch is not None and self.end_epoch <= self.start_epoch:
                raise ValueError("end_epoch must be after start_epoch")
        elif self.method in ("magnitude", "block") and self.ratio is None:
            raise ValueError(f"method {self.method!r} needs ratio in [0, 1) (e.g. ratio: 0.9)")
        if self.distill is not None and self.distill.train is not None:
            raise ValueError(
                "distill.train is not used: Prune's retraining follows finetune; move the "
                "schedule to finetune: {epochs: N, lr: ...}"
            )
        if self.distill is not None and self.finetune is None:
            raise ValueError(
                "distill retrains with the unpruned model as teacher: give finetune: "
                "{epochs: N, lr: ...} too"
            )
        if self.schedule == "iterative" and self.finetune is None:
            raise ValueError(
                "schedule 'iterative' retrains between rounds: give finetune: {epochs: N, lr: ...}"
            )
        return self


class Pruner:
    """Computes and sets masks on the layers a :class:`Prune` config selects.

    The primitive under the verb: ``Pruner(model, config).prune_to(0.8)`` masks 80 % of the
    selected weights (magnitude / block), ``.prune_han(quality)`` applies Han's threshold
    rule, ``.prune_nm()`` the N:M pattern. Already-pruned weights stay pruned.
    """

    def __init__(self, model: nn.Module, config: Prune) -> None:
        self.config = config
        self.layers = prunable_modules(model, config.targets, config.exclude)
        # Han's threshold uses each layer's std before any pruning by this stage.
        self.reference_std = {
            name: HanThreshold(1.0).threshold(module.weight) for name, module in self.layers
        }

    def _scores(self, module: nn.Module) -> torch.Tensor:
        weight = module.weight
        mask = get_mask(module)
        scores = Magnitude().scores(weight if mask is None else weight * mask)
        if mask is not None:
            scores = scores.masked_fill(~mask, -1.0)  # pruned entries rank below any weight
        return scores

    def prune_to(self, sparsity: float) -> None:
        """Mask ``sparsity`` of the selected weights by magnitude (or by block)."""
        cfg = self.config
        if cfg.method == "block":
            scores = [tile_scores(self._scores(m).clamp_min(0), cfg.block) for _, m in self.layers]
            for (_, m), s in zip(self.layers, scores, strict=True):
                old = get_mask(m)
                if old is not None:  # a block with any pruned entry scores by its survivors
                    s.masked_fill_(tile_scores(old.float(), cfg.block) == 0, -1.0)
        else:
            scores = [self._scores(m) for _, m in self.layers]
        if cfg.scope == "global":
            masks = global_magnitude_masks(scores, sparsity)
        else:
            masks = [magnitude_mask(s, sparsity) for s in scores]
        for (_, module), mask in zip(self.layers, masks, strict=True):
            if cfg.method == "block":
                mask = expand_tile_mask(mask, cfg.block, module.weight.shape)
            set_mask(module, mask)

    def quality_of(self, name: str) -> float | None:
        """The Han quality for layer ``name`` (first matching pattern of a per-layer dict)."""
        q = self.config.quality
        if not isinstance(q, dict):
            return q
        return next((v for pattern, v in q.items() if matches(name, [pattern])), None)

    def prune_han(self, scale: float = 1.0) -> None:
        """Prune |w| <= ``scale`` × quality × (the layer's reference std); Han et al. 2015."""
        for name, module in self.layers:
            quality = self.quality_of(name)
            if quality is None:
                continue
            threshold = scale * quality * self.reference_std[name]
            mask = threshold_mask(Magnitude().scores(module.weight), threshold)
            old = get_mask(module)
            set_mask(module, mask if old is None else mask & old)

    def prune_nm(self) -> None:
        """Keep ``n`` of every ``m`` weights along the input dimension of each layer."""
        cfg = self.config
        for name, module in self.layers:
            mask = nm_mask(module.weight, cfg.n, cfg.m, where=f"{name} ({type(module).__name__})")
            old = get_mask(module)
            set_mask(module, mask if old is None else mask & old)

    def step(self, amount: float) -> None:
        """One pruning step: ``amount`` is a sparsity (magnitude, block) or a quality scale."""
        if self.config.method == "han":
            self.prune_han(amount)
        elif self.config.method == "nm":
            self.prune_nm()
        else:
            self.prune_to(amount)

    def density(self) -> float:
        """Kept fraction of the selected layers' weights."""
        kept = total = 0
        for _, module in self.layers:
            mask = get_mask(module)
            total += module.weight.numel()
            kept += int(mask.sum()) if mask is not None else int((module.weight != 0).sum())
        return kept / max(1, total)


def prune_(
    model: nn.Module,
    config: Any,
    *,
    data: Any = None,
    context: StageContext | None = None,
) -> nn.Module:
    """Prune ``model`` in place as ``config`` (any registered pruning config) says; returns it.

    ``data`` (a :class:`dwindle.data.DataBundle`) is needed by schedules that retrain
    (``iterative``, ``agp``) and by data-driven criteria.
    """
    ctx = context or StageContext(data=data)
    if data is not None:
        ctx.data = data
    return apply(model, config, ctx)


def _one_shot_amount(config: Prune) -> float:
    if config.method == "han":
        return 1.0
    return float(config.ratio or 0.0)


@register_technique("prune", Prune, "unstructured / block / N:M pruning with masks")
def _prune_stage(model: nn.Module, config: Prune, context: StageContext) -> nn.Module:
    teacher = copy.deepcopy(model).eval() if config.distill is not None else None
    pruner = Pruner(model, config)
    if config.schedule == "iterative":
        log = run_iterative(model, pruner, config, context.data, teacher)
        context.note(
            f"prune ({config.method}, iterative): densities per round "
            f"{_sequence([r['density'] for r in log])} at lrs {_sequence([r['lr'] for r in log])}"
        )
    elif config.schedule == "agp":
        callback = run_agp(model, pruner, config, context.data, teacher)
        context.note(
            f"prune ({config.method}, AGP): {len(callback.history)} mask updates, "
            f"final sparsity {callback.history[-1][1]:.3f}"
        )
    else:
        pruner.step(_one_shot_amount(config))
        if config.finetune is not None:
            if context.data is None:
                raise ConfigError("prune: finetune needs data; pass data=... to prune_")
            cfg = retrain_config(config, 1)
            retrain(model, context.data, cfg, [MaskCallback()], config, teacher)
    density = pruner.density()
    if config.bake:
        remove_masks(model)
    model.dwindle_format = "sparse"
    context.note(
        f"prune: {len(pruner.layers)} layers keep {100 * density:.1f} % of their weights. "
        "Masked weights are still stored and multiplied by dense kernels: expect NO speed-up "
        "from this stage; the size saving is real only in the 'sparse' file format."
    )
    return model


def _sequence(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3g}" for v in values)
