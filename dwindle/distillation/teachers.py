"""Teachers: one model, several with averaged or weighted soft targets, and peer students.

A :class:`TeacherSet` is frozen: its models are put in eval mode (with a warning when one was
training, since dropout or batch statistics would make its targets noisy) and run without
gradients. Several teachers are combined into one set of logits; with ``combine="probs"`` the
combined logits are ``T·log Σ_i w_i softmax(z_i / T)``, whose softmax at temperature T is
exactly the weighted mean of the teachers' softened distributions (Hinton et al. 2015 §2.1
average the ensemble's soft targets); ``combine="logits"`` averages the logits instead.

:func:`mutual_learning` trains a cohort of students that teach each other (Zhang et al. 2018,
deep mutual learning).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dwindle.distillation.losses import hard_label_loss
from dwindle.errors import ConfigError
from dwindle.training import Callback, TrainConfig, TrainResult, TrainState, logits_of
from dwindle.training import train as run_training

__all__ = ["Cohort", "TeacherSet", "freeze_teacher", "mutual_learning"]

Combine = Literal["probs", "logits"]


def freeze_teacher(teacher: nn.Module, label: str = "teacher") -> nn.Module:
    """Put ``teacher`` in eval mode, warning when it was in training mode."""
    if not isinstance(teacher, nn.Module):
        raise ConfigError(f"{label} must be a torch.nn.Module (got {type(teacher).__name__})")
    if teacher.training:
        warnings.warn(
            f"{label} {type(teacher).__name__} was in training mode; distillation put it in eval "
            "mode so that dropout and batch statistics do not make its targets noisy",
            UserWarning,
            stacklevel=3,
        )
        teacher.eval()
    return teacher


class TeacherSet:
    """One or more frozen teachers producing one set of (combined) logits per batch.

    ``weights`` (default equal) are normalised to sum to 1. ``calls`` counts teacher forward
    passes over batches, so tests and benchmarks can see what the cache saved.
    """

    def __init__(
        self,
        teachers: nn.Module | Sequence[nn.Module],
        weights: Sequence[float] | None = None,
        combine: Combine = "probs",
        temperature: float = 1.0,
    ) -> None:
        models = [teachers] if isinstance(teachers, nn.Module) else list(teachers)
        if not models:
            raise ConfigError("give at least one teacher model")
        label = "teacher" if len(models) == 1 else "teacher #{}"
        self.models = [freeze_teacher(m, label.format(i)) for i, m in enumerate(models)]
        if weights is None:
            weights = [1.0] * len(models)
        if len(weights) != len(models) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(
                f"teacher weights must be {len(models)} non-negative numbers with a positive "
                f"sum, one per teacher (got {list(weights)})"
            )
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self.combine, self.temperature = combine, float(temperature)
        self.calls = 0
        self._forwards: list[Any] = list(self.models)
        self._first_compiled_call = False

    def compile(self) -> None:
        """Run the teachers' forwards through ``torch.compile`` from the next call on (the
        training loop's ``compile`` option; the frozen teacher's forward can cost as much as
        the student's step). Should compiling fail on that first call, the teachers run
        eagerly, with a warning; errors of later calls, and running out of memory, are raised.
        Feature taps (hooks) on a teacher need the eager forward: do not
        compile a set whose first teacher feeds hints or attention."""
        self._forwards = [torch.compile(m) for m in self.models]
        self._first_compiled_call = True

    @property
    def first(self) -> nn.Module:
        """The teacher whose layers feature losses (hints, attention) read."""
        return self.models[0]

    def to(self, device: torch.device | str) -> TeacherSet:
        for model in self.models:
            model.to(device)
        return self

    def combined(self, logits: Sequence[Tensor]) -> Tensor:
        """Combine the teachers' logits as ``combine`` says (see the module doc)."""
        if len(logits) == 1:
            return logits[0].float()
        if self.combine == "logits":
            return sum(w * z.float() for w, z in zip(self.weights, logits, strict=True))
        t = self.temperature
        stacked = torch.stack([F.log_softmax(z.float() / t, 1) for z in logits])
        log_w = torch.tensor([math.log(w) if w > 0 else -math.inf for w in self.weights])
        mixed = torch.logsumexp(stacked + log_w.to(stacked).view(-1, 1, 1), dim=0)
        return t * mixed

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        self.calls += 1
        if not self._first_compiled_call:
            return self.combined([logits_of(m(x)) for m in self._forwards])
        self._first_compiled_call = False
        try:  # the first compiled call is where torch.compile traces and compiles
            return self.combined([logits_of(m(x)) for m in self._forwards])
        except torch.OutOfMemoryError:
            raise
        except Exception as err:  # a compiler failure must not end a long training
            warnings.warn(
                f"torch.compile could not compile the teacher's forward ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); the teachers run eagerly",
                UserWarning,
                stacklevel=2,
            )
            self._forwards = list(self.models)
            return self.combined([logits_of(m(x)) for m in self.models])


class Cohort(nn.Module):
    """Peer students trained together; the forward returns the first student's logits first."""

    def __init__(self, students: Sequence[nn.Module]) -> None:
        super().__init__()
        self.students = nn.ModuleList(students)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        outs = [logits_of(s(x)) for s in self.students]
        return outs[0], outs


def mutual_loss(outputs: list[Tensor], targets: Tensor, temperature: float, alpha: float) -> Tensor:
    """Deep mutual learning: each student's label loss plus KL from the mean of its peers.

    With ``alpha=0.5`` and ``temperature=1`` this is Zhang et al.'s ``CE + KL`` per student,
    halved; peers' distributions are treated as constants (their own terms update them).
    """
    t = temperature
    log_ps = [F.log_softmax(z.float() / t, 1) for z in outputs]
    total = outputs[0].new_zeros(())
    for k, z in enumerate(outputs):
        peers = [lp.detach() for j, lp in enumerate(log_ps) if j != k]
        peer_log_p = torch.logsumexp(torch.stack(peers), 0) - math.log(len(peers))
        soft = F.kl_div(log_ps[k], peer_log_p, reduction="batchmean", log_target=True)
        total = total + alpha * t * t * soft + (1 - alpha) * hard_label_loss(z, targets)
    return total


def mutual_learning(
    students: Sequence[nn.Module],
    data: Any,
    config: Any = None,
    *,
    train: TrainConfig | dict[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``students`` (two or more) together, each distilled from the others' predictions.

    ``config`` is a :class:`~dwindle.distillation.DistillConfig` (its ``temperature``,
    ``alpha`` and ``train`` are used; the ``train`` argument overrides the latter). The
    students are trained in place; the result's validation figures are the first student's.
    """
    from dwindle.distillation.distill import DistillConfig

    cfg = DistillConfig.from_dict(config) if config is not None else DistillConfig(alpha=0.5)
    if len(students) < 2:
        raise ConfigError(f"mutual learning needs two or more students (got {len(students)})")
    cohort = Cohort(students)

    def loss_fn(model: nn.Module, x: Tensor, y: Tensor, outputs: Any) -> Tensor:
        return mutual_loss(outputs[1], y, cfg.temperature, cfg.alpha)

    tcfg = train if train is not None else (cfg.train or TrainConfig())
    return run_training(cohort, data, tcfg, loss_fn=loss_fn, callbacks=callbacks)


class MoveTeachers(Callback):
    """Moves the teachers to the student's device when training starts."""

    def __init__(self, teachers: TeacherSet) -> None:
        self.teachers = teachers

    def on_train_begin(self, state: TrainState) -> None:
        device = next(iter(state.model.parameters())).device
        self.teachers.to(device)
