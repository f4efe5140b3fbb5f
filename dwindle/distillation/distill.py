"""The ``distill`` verb, its config, the teacher-assistant chain, recovery, and the recipe stage.

``distill(student, teacher, data, DistillConfig(...))`` trains ``student`` in place with
:func:`dwindle.training.train`, using a distillation ``loss_fn``: the KD or logit-MSE loss on
the (cached) teacher outputs, plus FitNets hints and attention transfer on layers named by
module-name patterns. Hint adapters train with the student inside a wrapper and are dropped
afterwards, so the student keeps its own architecture.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from dwindle.config import Config, StageContext, register_technique
from dwindle.distillation.cache import TeacherCache
from dwindle.distillation.losses import (
    AttentionTransfer,
    DistillBatch,
    DistillLoss,
    FeatureTap,
    HintLoss,
    KDLoss,
    LogitMSELoss,
    resolve_layers,
)
from dwindle.distillation.students import ModelSource, build_model_from
from dwindle.distillation.teachers import MoveTeachers, TeacherSet, mutual_learning
from dwindle.distillation.transfer import TransferConfig, TransferSet, build_transfer_set
from dwindle.errors import ConfigError, ModelSpecError
from dwindle.training import Callback, TrainConfig, TrainResult, logits_of
from dwindle.training import train as run_training
from dwindle.training.evaluate import check_data

__all__ = [
    "AttentionConfig",
    "DistillConfig",
    "HintConfig",
    "distill",
    "distill_chain",
    "recover_with_distillation",
]


class HintConfig(Config):
    """FitNets hint: student layers (pattern) regressed onto teacher layers (pattern)."""

    student: str
    teacher: str
    weight: float = Field(1.0, gt=0)


class AttentionConfig(Config):
    """Attention transfer between student and teacher layers named by patterns."""

    student: str
    teacher: str
    beta: float = Field(1000.0, gt=0)
    p: float = Field(2.0, gt=0)


class DistillConfig(Config):
    """How to distil.

    ``loss``: ``kd`` (Hinton et al. 2015; ``alpha`` weighs the T²-scaled soft term against the
    label loss) or ``mse`` (logit matching, Ba & Caruana 2014; ``alpha`` weighs it likewise).
    At a high temperature the T²-scaled term's gradient approaches the logit difference
    (z_s - z_t)/K, which can be larger than the label loss's, so a student often wants a lower
    learning rate than it would train with alone (benchmarks/results/distill_hinton.md picks
    each student's lr on the validation split).
    ``hints``/``attention`` add feature losses. ``teacher_weights`` and ``combine`` mix several
    teachers. ``transfer`` picks the inputs; ``cache_mb`` bounds the memory for cached teacher
    outputs (0 disables the cache). ``train`` is the trainer's config.

    Recipe-only keys: ``teachers`` (``"baseline"`` or model sources; default the baseline),
    ``student`` (default: the current model), ``assistant`` (a teacher-assistant chain),
    ``peers`` (deep mutual learning with these peer students; no teacher).
    """

    loss: Literal["kd", "mse"] = "kd"
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)
    hints: tuple[HintConfig, ...] = ()
    attention: tuple[AttentionConfig, ...] = ()
    teacher_weights: tuple[float, ...] | None = None
    combine: Literal["probs", "logits"] = "probs"
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    cache_mb: float = Field(256.0, ge=0)
    train: TrainConfig | None = None
    teachers: tuple[Literal["baseline"] | ModelSource, ...] = ("baseline",)
    student: ModelSource | None = None
    assistant: ModelSource | None = None
    peers: tuple[ModelSource, ...] = ()

    @model_validator(mode="after")
    def _weights_fit(self) -> DistillConfig:
        if self.teacher_weights is not None and any(w < 0 for w in self.teacher_weights):
            raise ValueError(f"teacher_weights must be >= 0 (got {list(self.teacher_weights)})")
        return self


class _Distillee(nn.Module):
    """The student plus the losses' trainable adapters, trained as one module."""

    def __init__(self, student: nn.Module, extras: Sequence[nn.Module]) -> None:
        super().__init__()
        self.student = student
        self.extras = nn.ModuleList(extras)

    def forward(self, x: Tensor) -> Any:
        return self.student(x)


def _build_losses(
    cfg: DistillConfig, student: nn.Module, teacher: nn.Module
) -> tuple[list[DistillLoss], list[str], list[str]]:
    main: DistillLoss = (
        KDLoss(cfg.temperature, cfg.alpha) if cfg.loss == "kd" else LogitMSELoss(cfg.alpha)
    )
    losses: list[DistillLoss] = [main]
    s_layers: list[str] = []
    t_layers: list[str] = []
    for kind, items in (("hint", cfg.hints), ("attention", cfg.attention)):
        for item in items:
            s = resolve_layers(student, [item.student], f"{kind} student")
            t = resolve_layers(teacher, [item.teacher], f"{kind} teacher")
            if len(s) != len(t):
                raise ConfigError(
                    f"{kind} patterns pair layers in order but match {len(s)} student layers "
                    f"({', '.join(s)}) and {len(t)} teacher layers ({', '.join(t)})"
                )
            pairs = list(zip(s, t, strict=True))
            s_layers += s
            t_layers += t
            if isinstance(item, HintConfig):
                losses.append(HintLoss(pairs, item.weight))
            else:
                losses.append(AttentionTransfer(pairs, item.beta, item.p))
    return losses, sorted(set(s_layers)), sorted(set(t_layers))


def _forward_or_explain(who: str, run: Any, x: Tensor) -> Tensor:
    try:
        with torch.no_grad():
            return run(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ModelSpecError(
            f"the {who} failed on transfer-set inputs of shape {tuple(x.shape)}: {exc}; "
            "the transfer set must hold the inputs the models take"
        ) from exc


def _probe(
    student: nn.Module, teachers: TeacherSet, x: Tensor, s_tap: FeatureTap, t_tap: FeatureTap
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Run both models on a few transfer inputs (clear errors when they do not fit) and
    return the tapped student and teacher features, which size the hint adapters."""
    was_training = student.training
    student.eval()  # no batch-statistics update from the probe
    try:
        t_logits = _forward_or_explain("teacher", teachers, x)
        s_logits = _forward_or_explain("student", lambda v: logits_of(student(v)), x)
    finally:
        student.train(was_training)
    if t_logits.shape[1:] != s_logits.shape[1:]:
        raise ModelSpecError(
            f"teacher and student predict different output sizes: the teacher outputs "
            f"{tuple(t_logits.shape[1:])} per sample, the student {tuple(s_logits.shape[1:])}; "
            "build the student with the teacher's number of classes"
        )
    return dict(s_tap.features), dict(t_tap.features)


class _TeacherOutputs:
    """Teacher logits + tapped features for a batch, through the cache when it is valid."""

    def __init__(self, teachers: TeacherSet, tap: FeatureTap, transfer: TransferSet, cfg: Any):
        self.teachers, self.tap, self.transfer = teachers, tap, transfer
        budget = int(cfg.cache_mb * 2**20)
        self.cache = TeacherCache(self._run, transfer.size("train"), budget) if budget else None

    def _run(self, x: Tensor) -> dict[str, Tensor]:
        logits = self.teachers(x)
        return {"logits": logits, **{k: v.detach() for k, v in self.tap.features.items()}}

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        idx = self.transfer.last_indices
        if self.cache is None or idx is None or self.transfer.last_augmented or len(idx) != len(x):
            return self._run(x)
        return self.cache.get(idx, x)


def distill(
    student: nn.Module,
    teacher: nn.Module | Sequence[nn.Module],
    data: Any,
    config: DistillConfig | dict[str, Any] | None = None,
    *,
    train: TrainConfig | dict[str, Any] | None = None,
    transfer_inputs: Tensor | None = None,
    losses: Sequence[DistillLoss] = (),
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``student`` in place to imitate ``teacher`` (one model or several) on ``data``.

    ``train`` overrides ``config.train``; ``transfer_inputs`` are the inputs of an
    ``unlabelled`` transfer set; ``losses`` are extra :class:`DistillLoss` plug-ins added to
    the configured ones; ``callbacks`` go to the trainer (e.g. a pruning mask keeper).
    Returns the trainer's :class:`~dwindle.training.TrainResult` (validation on ``data.val``).
    """
    cfg = DistillConfig.from_dict(config) if config is not None else DistillConfig()
    data = check_data(data)
    teachers = TeacherSet(teacher, cfg.teacher_weights, cfg.combine, cfg.temperature)
    transfer = build_transfer_set(data, cfg.transfer, transfer_inputs)
    loss_list, s_names, t_names = _build_losses(cfg, student, teachers.first)
    loss_list += list(losses)
    s_tap, t_tap = FeatureTap(student, s_names), FeatureTap(teachers.first, t_names)
    try:
        device = next(iter(student.parameters()), torch.empty(0)).device
        teachers.to(device)
        s_feat, t_feat = _probe(student, teachers, transfer.x_train[:2].to(device), s_tap, t_tap)
        teachers.calls = 0
        tcfg = TrainConfig.from_dict(train if train is not None else (cfg.train or TrainConfig()))
        if tcfg.compile and not t_names:  # hooks on the teacher need its eager forward
            teachers.compile()
        for loss in loss_list:
            if isinstance(loss, HintLoss):
                loss.build(s_feat, t_feat).adapters.to(device)
        extras = [m for loss in loss_list for m in loss.modules()]
        model = _Distillee(student, extras)
        teacher_out = _TeacherOutputs(teachers, t_tap, transfer, cfg)

        def loss_fn(_: nn.Module, x: Tensor, y: Tensor, outputs: Any) -> Tensor:
            got = teacher_out(x)
            logits = logits_of(outputs)
            batch = DistillBatch(
                student_logits=logits,
                teacher_logits=got["logits"],
                targets=y,
                student_features=s_tap.features,
                teacher_features={k: v for k, v in got.items() if k != "logits"},
            )
            return sum((loss(batch) for loss in loss_list), logits.new_zeros(()))

        cbs = [MoveTeachers(teachers), *callbacks]
        result = run_training(model, transfer, tcfg, loss_fn=loss_fn, callbacks=cbs)
    finally:
        s_tap.close()
        t_tap.close()
    return result


def distill_chain(
    models: Sequence[nn.Module],
    data: Any,
    config: DistillConfig | dict[str, Any] | None = None,
    *,
    train: TrainConfig | dict[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> list[TrainResult]:
    """Teacher-assistant chain (Mirzadeh et al. 2020): ``models[0]`` teaches ``models[1]``,
    which then teaches ``models[2]``, and so on; every model after the first is trained in
    place. Returns one result per distillation step.
    """
    if len(models) < 2:
        raise ConfigError(f"a distillation chain needs a teacher and a student (got {len(models)})")
    results = []
    for teacher, student in itertools.pairwise(models):
        teacher.eval()  # a freshly trained assistant is still in training mode; no warning due
        results.append(distill(student, teacher, data, config, train=train, callbacks=callbacks))
    return results


def recover_with_distillation(
    model: nn.Module,
    teacher: nn.Module,
    data: Any,
    train_config: TrainConfig | dict[str, Any] | None = None,
    distill_config: DistillConfig | dict[str, Any] | None = None,
    *,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Fine-tune a compressed ``model`` in place with the uncompressed ``teacher`` as teacher.

    For recovery after pruning or quantization, e.g. a stage's ``recover: {distill: {...}}``:
    ``train_config`` is the fine-tuning schedule (as for plain fine-tuning; default lr 0.01,
    1 epoch), ``distill_config`` the distillation settings (default KD, T=4, α=0.9), and
    ``callbacks`` the stage's own trainer hooks (e.g. ones re-applying pruning masks after every
    step). Same-architecture models can use hints, e.g. ``hints: [{student: "fc1", teacher:
    "fc1"}]``.
    """
    cfg = DistillConfig.from_dict(distill_config) if distill_config is not None else None
    own = cfg.train if cfg is not None else None
    if own is not None and train_config is not None:
        raise ConfigError(
            "recovery by distillation got two schedules: the distill settings' train and the "
            "fine-tuning schedule (a stage's finetune, or Prune's finetune); give it once, "
            "as the fine-tuning schedule"
        )
    tcfg = train_config if train_config is not None else own or TrainConfig(lr=0.01, epochs=1)
    return distill(model, teacher, data, cfg, train=tcfg, callbacks=callbacks)


def _teacher_models(cfg: DistillConfig, context: StageContext) -> list[nn.Module]:
    out = []
    for item in cfg.teachers:
        if item == "baseline":
            if context.baseline is None:
                raise ConfigError("the distill stage's teacher 'baseline' needs a baseline model")
            out.append(context.baseline.eval())  # the pipeline's baseline: no warning due
        else:
            assert isinstance(item, ModelSource)
            model = build_model_from(item, context.baseline, context.data, context.resolve)
            out.append(model.eval())
    return out


@register_technique("distill", DistillConfig, "knowledge distillation from the baseline (teacher)")
def _distill_stage(model: nn.Module, config: DistillConfig, context: StageContext) -> nn.Module:
    if context.data is None:
        raise ConfigError("the distill stage needs data (a transfer set)")
    data = context.data
    teachers = _teacher_models(config, context) if not config.peers else []
    first = teachers[0] if teachers else context.baseline
    build = functools.partial(build_model_from, data=data, resolve=context.resolve)
    student = model if config.student is None else build(config.student, first)
    if config.peers:
        peers = [build(p, context.baseline) for p in config.peers]
        result = mutual_learning([student, *peers], data, config)
        how = f"deep mutual learning with {len(peers)} peer(s)"
    elif config.assistant is not None:
        assistant = build(config.assistant, first)
        results = distill_chain([teachers[0], assistant, student], data, config)
        result, how = results[-1], "teacher → assistant → student"
    else:
        result = distill(student, teachers if len(teachers) > 1 else teachers[0], data, config)
        how = f"{len(teachers)} teacher(s)"
    params = sum(p.numel() for p in student.parameters())
    acc = f", val accuracy {result.val_accuracy:.4f}" if result.val_accuracy is not None else ""
    context.note(
        f"distill: {how}, "
        + ("loss: labels + KL to the peers' mean" if config.peers else f"loss {config.loss}")
        + f", T={config.temperature}, α={config.alpha}, "
        f"transfer {config.transfer.source}; student {type(student).__name__} with "
        f"{params} parameters{acc}"
    )
    return student.eval()
