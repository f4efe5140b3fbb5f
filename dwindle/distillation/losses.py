"""Distillation losses as small plug-in classes, plus the hooks that capture layer features.

Every loss reads one :class:`DistillBatch` (student and teacher logits, labels, captured
features) and returns a scalar. Labels equal to ``IGNORE_LABEL`` (unlabelled or synthetic
transfer samples) drop out of the hard-label term.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dwindle.errors import ConfigError
from dwindle.targets import matches

__all__ = [
    "IGNORE_LABEL",
    "AttentionTransfer",
    "DistillBatch",
    "DistillLoss",
    "FeatureTap",
    "HintLoss",
    "KDLoss",
    "LogitMSELoss",
    "attention_map",
    "hard_label_loss",
    "kd_loss",
    "resolve_layers",
]

IGNORE_LABEL = -100
"""Label of a transfer sample without a ground-truth class (F.cross_entropy's ignore_index)."""


@dataclass
class DistillBatch:
    """What a loss sees for one batch."""

    student_logits: Tensor
    teacher_logits: Tensor
    targets: Tensor
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)


class DistillLoss(ABC):
    """Base of the plug-in losses: one method, ``__call__(batch) -> scalar tensor``."""

    @abstractmethod
    def __call__(self, batch: DistillBatch) -> Tensor: ...

    def modules(self) -> list[nn.Module]:
        """Trainable modules the loss owns (hint adapters); they train with the student."""
        return []


def hard_label_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over the labelled samples only; 0 (with a graph) when none is labelled."""
    labelled = targets != IGNORE_LABEL
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float()[labelled], targets[labelled])


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float,
    alpha: float,
) -> Tensor:
    """Hinton et al. 2015: ``α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE(s, y)``.

    The T² factor keeps the soft term's gradients the same size as T changes (its gradients
    scale as 1/T²), so α keeps meaning the same share at every temperature.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    loss = alpha * t * t * soft
    if alpha < 1:
        loss = loss + (1 - alpha) * hard_label_loss(student_logits, targets)
    return loss


class KDLoss(DistillLoss):
    """Softened-softmax KL at ``temperature`` blended with the label loss by ``alpha``."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9) -> None:
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0 (got {temperature})")
        if not 0 <= alpha <= 1:
            raise ConfigError(f"alpha must be in [0, 1] (got {alpha})")
        self.temperature, self.alpha = float(temperature), float(alpha)

    def __call__(self, batch: DistillBatch) -> Tensor:
        return kd_loss(
            batch.student_logits, batch.teacher_logits, batch.targets, self.temperature, self.alpha
        )


class LogitMSELoss(DistillLoss):
    """Ba & Caruana 2014: regress the teacher's logits with MSE, blended with labels by alpha."""

    def __init__(self, alpha: float = 1.0) -> None:
        if not 0 <= alpha <= 1:
            raise ConfigError(f"alpha must be in [0, 1] (got {alpha})")
        self.alpha = float(alpha)

    def __call__(self, batch: DistillBatch) -> Tensor:
        loss = self.alpha * F.mse_loss(batch.student_logits.float(), batch.teacher_logits.float())
        if self.alpha < 1:
            loss = loss + (1 - self.alpha) * hard_label_loss(batch.student_logits, batch.targets)
        return loss


def resolve_layers(model: nn.Module, patterns: Sequence[str], who: str) -> list[str]:
    """Module names matching ``patterns`` (in model order); a pattern matching none raises."""
    names = [n for n, _ in model.named_modules() if n]
    chosen = []
    for pattern in patterns:
        hit = [n for n in names if matches(n, [pattern])]
        if not hit:
            shown = ", ".join(names[:16]) + (" ..." if len(names) > 16 else "")
            raise ConfigError(
                f"{who} layer pattern {pattern!r} matches no module of "
                f"{type(model).__name__}; module names are: {shown or '(none)'}"
            )
        chosen += [n for n in hit if n not in chosen]
    return chosen


def _first_tensor(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ConfigError(f"a matched layer returned {type(output).__name__}, not a tensor")


class _Store:
    """Forward hook writing a module's output into a shared dict (a class: picklable)."""

    def __init__(self, sink: dict[str, Tensor], name: str) -> None:
        self.sink, self.name = sink, name

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.sink[self.name] = _first_tensor(output)


class FeatureTap:
    """Forward hooks capturing the outputs of named layers; ``close()`` removes them."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.features: dict[str, Tensor] = {}
        modules = dict(model.named_modules())
        self._handles = [modules[n].register_forward_hook(_Store(self.features, n)) for n in names]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.features.clear()


def _adapter(student: Tensor, teacher: Tensor) -> nn.Module:
    """FitNets regressor from the student's width to the teacher's (1×1 conv or linear)."""
    cs, ct = student.shape[1], teacher.shape[1]
    if student.dim() != teacher.dim():
        raise ConfigError(
            f"hint layers must have the same rank: student {tuple(student.shape)} vs teacher "
            f"{tuple(teacher.shape)}"
        )
    if cs == ct:
        return nn.Identity()
    if student.dim() == 4:
        return nn.Conv2d(cs, ct, 1, bias=False)
    if student.dim() == 3:
        return nn.Conv1d(cs, ct, 1, bias=False)
    return nn.Linear(cs, ct, bias=False)


def _match_spatial(x: Tensor, size: torch.Size) -> Tensor:
    if x.shape[2:] == size:
        return x
    pool = F.adaptive_avg_pool2d if x.dim() == 4 else F.adaptive_avg_pool1d
    return pool(x, tuple(size))


class HintLoss(DistillLoss):
    """FitNets (Romero et al. 2015): regress teacher layer outputs from student layers.

    ``pairs`` are ``(student_name, teacher_name)``; :meth:`build` creates one learned adapter
    per pair from example features, needed when the widths differ. Feature maps of different
    spatial sizes are average-pooled to the teacher's size.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], weight: float = 1.0) -> None:
        self.pairs = list(pairs)
        self.weight = float(weight)
        self.adapters = nn.ModuleList()

    def build(self, student: dict[str, Tensor], teacher: dict[str, Tensor]) -> HintLoss:
        self.adapters = nn.ModuleList(_adapter(student[s], teacher[t]) for s, t in self.pairs)
        return self

    def modules(self) -> list[nn.Module]:
        return [self.adapters]

    def __call__(self, batch: DistillBatch) -> Tensor:
        total = batch.student_logits.new_zeros(())
        for (s, t), adapter in zip(self.pairs, self.adapters, strict=True):
            target = batch.teacher_features[t].float()
            guess = adapter(batch.student_features[s].float())
            if guess.dim() > 2:
                guess = _match_spatial(guess, target.shape[2:])
            total = total + F.mse_loss(guess, target)
        return self.weight * total / max(1, len(self.pairs))


def attention_map(features: Tensor, p: float = 2.0) -> Tensor:
    """Zagoruyko & Komodakis 2017: ``normalize(mean_c |A_c|^p)`` flattened per sample."""
    if features.dim() < 3:
        raise ConfigError(
            f"attention transfer needs convolutional feature maps (batch, channels, ...); "
            f"a matched layer gives shape {tuple(features.shape)}"
        )
    return F.normalize(features.float().abs().pow(p).mean(1).flatten(1), dim=1)


class AttentionTransfer(DistillLoss):
    """Attention transfer: ``β/2 · Σ_pairs mean((Q_s − Q_t)²)`` (the authors' code, β = 1000).

    Channel counts may differ (maps are averaged over channels); a student map of another
    spatial size is average-pooled to the teacher's.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], beta: float = 1000.0, p: float = 2.0):
        self.pairs, self.beta, self.p = list(pairs), float(beta), float(p)

    def __call__(self, batch: DistillBatch) -> Tensor:
        total = batch.student_logits.new_zeros(())
        for s, t in self.pairs:
            fs, ft = batch.student_features[s], batch.teacher_features[t]
            if fs.dim() > 2 and fs.shape[2:] != ft.shape[2:]:
                fs = _match_spatial(fs, ft.shape[2:])
            diff = attention_map(fs, self.p) - attention_map(ft, self.p)
            total = total + diff.pow(2).mean()
        return self.beta / 2 * total
