"""Tests of dwindle.distillation: losses, teachers, cache, transfer sets, students, recovery."""

import copy
import dataclasses
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from distill_helpers import (  # noqa: F401 (fixtures)
    FAST,
    FAST_MEASURE,
    _CountCalls,
    _mlp,
    _one_thread,
    _small_cnn,
    cnn_teacher,
    digits,
    small_digits,
    teacher,
)
from torch import nn

import dwindle as dw
from dwindle.distillation import (
    IGNORE_LABEL,
    AttentionTransfer,
    DistillBatch,
    DistillConfig,
    HintLoss,
    KDLoss,
    LogitMSELoss,
    TeacherCache,
    TeacherSet,
    TransferConfig,
    attention_map,
    build_transfer_set,
    distill,
    distill_chain,
    kd_loss,
    mutual_learning,
    pruned_copy,
    recover_with_distillation,
)
from dwindle.errors import ConfigError
from dwindle.training import Callback, TrainState

# --- losses -------------------------------------------------------------------------------


def test_kd_loss_equals_closed_form_on_hand_case() -> None:
    # T = 2: teacher logits (2 ln 3, 0) soften to (3/4, 1/4); a uniform student to (1/2, 1/2).
    t, alpha = 2.0, 0.5
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[2 * math.log(3), 0.0]])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    want = alpha * t * t * kl + (1 - alpha) * math.log(2)  # CE of the uniform student, label 0
    got = kd_loss(student, teacher, torch.tensor([0]), t, alpha)
    assert abs(float(got) - want) < 1e-6
    batch = DistillBatch(student, teacher, torch.tensor([0]))
    assert abs(float(KDLoss(t, alpha)(batch)) - want) < 1e-6
    # α = 1 ignores the labels; unlabelled samples drop out of the hard term
    unlabelled = torch.tensor([IGNORE_LABEL])
    assert abs(float(kd_loss(student, teacher, unlabelled, t, 0.5)) - alpha * t * t * kl) < 1e-6


def test_t_squared_keeps_gradient_magnitude_t_invariant() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(64, 10) * 3
    base = torch.randn(64, 10) * 3

    def grad_norm(t: float, scaled: bool) -> float:
        z = base.clone().requires_grad_(True)
        loss = kd_loss(z, teacher, torch.zeros(64, dtype=torch.long), t, 1.0)
        (loss if scaled else loss / (t * t)).backward()
        assert z.grad is not None
        return float(z.grad.norm())

    scaled = [grad_norm(t, True) for t in (4.0, 10.0, 20.0)]
    assert max(scaled) / min(scaled) < 1.3, scaled
    unscaled = [grad_norm(t, False) for t in (4.0, 20.0)]
    assert unscaled[0] / unscaled[1] > 15  # without T² the soft term fades as 1/T²


def test_logit_mse_matches_ba_caruana() -> None:
    s, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    loss = LogitMSELoss(alpha=1.0)(DistillBatch(s, t, torch.tensor([1])))
    assert abs(float(loss) - 2.5) < 1e-6  # ((1-0)² + (2-4)²) / 2


def test_hint_adapters_bridge_different_widths_and_sizes() -> None:
    s = {"a": torch.randn(2, 4, 8, 8), "f": torch.randn(2, 16)}
    t = {"b": torch.randn(2, 32, 4, 4), "g": torch.randn(2, 64)}
    hint = HintLoss([("a", "b"), ("f", "g")]).build(s, t)
    conv, linear = hint.adapters
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels) == (4, 32)
    assert isinstance(linear, nn.Linear) and linear.weight.shape == (64, 16)
    batch = DistillBatch(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), s, t)
    loss = hint(batch)
    loss.backward()
    assert loss.item() > 0 and conv.weight.grad is not None
    same = HintLoss([("f", "f")]).build({"f": s["f"]}, {"f": s["f"]})
    assert isinstance(same.adapters[0], nn.Identity)


def test_distill_with_hints_trains_adapters_and_leaves_student_architecture(
    small_digits: Any, cnn_teacher: nn.Module
) -> None:
    teacher, digits = cnn_teacher, small_digits
    student = _small_cnn(digits)
    names = [n for n, _ in student.named_modules()]
    cfg = DistillConfig(hints=[{"student": "features.relu4", "teacher": "features.relu4"}])
    result = distill(student, teacher, digits, cfg, train=FAST)
    assert result.epochs_run == 2
    assert [n for n, _ in student.named_modules()] == names  # no adapter left behind
    assert not student._forward_hooks and not teacher._forward_hooks  # taps removed


def test_attention_map_and_transfer() -> None:
    f = torch.zeros(1, 2, 2, 2)
    f[0, :, 0, 0] = 1.0  # all energy at one position
    assert torch.allclose(attention_map(f), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    s = {"x": torch.randn(2, 3, 8, 8)}
    t = {"y": torch.randn(2, 7, 4, 4)}  # other channels and size: pooled, channel-averaged
    at = AttentionTransfer([("x", "y")])
    batch = DistillBatch(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), s, t)
    assert at(batch).item() > 0
    same = DistillBatch(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), s, {"y": s["x"]})
    assert at(same).item() < 1e-9
    with pytest.raises(ConfigError, match="convolutional feature maps"):
        attention_map(torch.randn(2, 5))


def test_attention_transfer_in_distill(small_digits: Any, cnn_teacher: nn.Module) -> None:
    student = _small_cnn(small_digits)
    cfg = DistillConfig(attention=[{"student": "features.relu*", "teacher": "features.relu*"}])
    result = distill(student, cnn_teacher, small_digits, cfg, train=FAST)
    assert result.val_accuracy is not None


# --- teachers --------------------------------------------------------------------------------


def test_multi_teacher_weighted_soft_targets() -> None:
    a, b = nn.Linear(4, 3).eval(), nn.Linear(4, 3).eval()
    x = torch.randn(5, 4)
    t = 3.0
    mixed = TeacherSet([a, b], weights=[3, 1], temperature=t)(x)
    want = 0.75 * F.softmax(a(x) / t, 1) + 0.25 * F.softmax(b(x) / t, 1)
    assert torch.allclose(F.softmax(mixed / t, 1), want.detach(), atol=1e-6)
    avg = TeacherSet([a, b], combine="logits")(x)
    assert torch.allclose(avg, ((a(x) + b(x)) / 2).detach(), atol=1e-6)
    with pytest.raises(ConfigError, match="one per teacher"):
        TeacherSet([a, b], weights=[1.0])


def test_multi_teacher_distill(digits: Any, teacher: nn.Module) -> None:
    other = _mlp(digits, (32,), seed=5)
    dw.train(other, digits, dw.TrainConfig(epochs=2, lr=0.05, progress=False))
    student = _mlp(digits)
    cfg = DistillConfig(teacher_weights=(2.0, 1.0))
    result = distill(student, [teacher, other.eval()], digits, cfg, train=FAST)
    assert result.val_accuracy is not None and result.val_accuracy > 0.5


def test_deep_mutual_learning_updates_both_students(digits: Any) -> None:
    a, b = _mlp(digits, seed=1), _mlp(digits, seed=2)
    before = [copy.deepcopy(m.state_dict()) for m in (a, b)]
    result = mutual_learning([a, b], digits, {"alpha": 0.5, "temperature": 1.0, "train": FAST})
    for m, old in zip((a, b), before, strict=True):
        assert any(not torch.equal(v, old[k]) for k, v in m.state_dict().items())
    assert result.val_accuracy is not None and result.val_accuracy > 0.5
    assert dw.evaluate(b, digits)["accuracy"] > 0.5
    with pytest.raises(ConfigError, match="two or more"):
        mutual_learning([a], digits)


def test_teacher_assistant_chain(digits: Any, teacher: nn.Module) -> None:
    assistant, student = _mlp(digits, (64,), seed=3), _mlp(digits, (8,), seed=4)
    results = distill_chain([teacher, assistant, student], digits, {"train": FAST})
    assert len(results) == 2
    assert dw.evaluate(student, digits)["accuracy"] > 0.4


# --- cache -------------------------------------------------------------------------------


def test_cache_runs_teacher_once_per_sample(digits: Any, teacher: nn.Module) -> None:
    counter = _CountCalls(teacher)
    steps = math.ceil(digits.size("train") / 64)
    distill(_mlp(digits), teacher, digits, {"train": {**FAST, "epochs": 3}})
    assert counter.n == 1 + steps  # the probe, then the first epoch only
    counter.n = 0
    distill(_mlp(digits), teacher, digits, {"cache_mb": 0, "train": {**FAST, "epochs": 3}})
    assert counter.n == 1 + 3 * steps
    counter.n = 0  # augmented batches change every epoch: the cache must step aside
    noisy = dataclasses.replace(digits, augment=lambda x, g: x + torch.randn(x.shape, generator=g))
    distill(_mlp(digits), teacher, noisy, {"train": {**FAST, "epochs": 2, "augment": True}})
    assert counter.n == 1 + 2 * steps


def test_cache_respects_memory_bound_and_returns_teacher_outputs() -> None:
    net = nn.Linear(6, 4)
    calls = []

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(len(x))
        return {"logits": net(x).detach()}

    x = torch.randn(50, 6)
    cache = TeacherCache(run, n=50, max_bytes=10 * 4 * 4)  # room for 10 samples' logits
    for _ in range(3):
        for idx in torch.randperm(50).split(16):
            assert torch.allclose(cache.get(idx, x[idx])["logits"], net(x[idx]), atol=1e-6)
    assert cache.capacity == 10 and cache.nbytes <= 10 * 4 * 4
    assert sum(calls) == 50 + 2 * 40  # 10 samples served from memory after the first pass
    assert cache.hits == 20


# --- transfer sets -----------------------------------------------------------------------


@pytest.mark.parametrize("source", ["train", "heldout", "unlabelled", "noise", "mixup"])
def test_transfer_sets(digits: Any, source: str) -> None:
    cfg = TransferConfig(source=source, size=100, fraction=0.5)
    ts = build_transfer_set(digits, cfg)
    x, y = ts.split("train")
    assert x.shape[1:] == digits.x_train.shape[1:]
    if source == "train":
        assert len(x) == round(digits.size("train") * 0.5) and (y >= 0).all()
    elif source == "heldout":  # a quarter of the validation split stays validation
        n_val = digits.size("val") // 4
        assert len(x) == round((digits.size("val") - n_val) * 0.5) and (y >= 0).all()
        x_val, _ = ts.split("val")
        assert len(x_val) == n_val
        seen = {tuple(v.flatten().tolist()) for v in x}
        assert not any(tuple(v.flatten().tolist()) in seen for v in x_val)
    else:
        assert (y == IGNORE_LABEL).all()
    if source == "mixup":
        assert len(x) == 50
        assert x.min() >= digits.x_train.min() - 1e-5 and x.max() <= digits.x_train.max() + 1e-5


def test_distill_on_unlabelled_inputs(digits: Any, teacher: nn.Module) -> None:
    student = _mlp(digits)
    cfg = {"transfer": {"source": "unlabelled"}, "alpha": 0.5, "train": FAST}
    distill(
        student,
        teacher,
        digits,
        {**cfg, "train": {**FAST, "epochs": 4}},
        transfer_inputs=digits.x_train,
    )
    agree = (student(digits.x_val).argmax(1) == teacher(digits.x_val).argmax(1)).float().mean()
    assert agree > 0.6


# --- students -------------------------------------------------------------------------------


def test_pruned_copy_student_is_smaller_and_teacher_untouched(
    small_digits: Any, cnn_teacher: nn.Module
) -> None:
    digits, teacher = small_digits, cnn_teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = pruned_copy(teacher, 0.5, digits.example_input(2))
    n_s = sum(p.numel() for p in student.parameters())
    n_t = sum(p.numel() for p in teacher.parameters())
    assert n_s < 0.4 * n_t
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert student(digits.example_input(3)).shape == (3, 10)


def test_distill_between_unrelated_architectures(digits: Any, teacher: nn.Module) -> None:
    student = _small_cnn(digits)  # a CNN student of an MLP teacher
    distill(student, teacher, digits, {"temperature": 4, "alpha": 0.7, "train": FAST})
    agree = (student.eval()(digits.x_val).argmax(1) == teacher(digits.x_val).argmax(1)).float()
    assert agree.mean() > 0.5


# --- recovery -------------------------------------------------------------------------------


class _Steps(Callback):
    def __init__(self) -> None:
        self.n = 0

    def on_step_end(self, state: TrainState) -> None:
        self.n += 1


def test_recover_with_distillation_restores_accuracy(digits: Any) -> None:
    torch.manual_seed(0)
    base = _mlp(digits, (64,))
    dw.train(base, digits, dw.TrainConfig(epochs=4, lr=0.05, progress=False))
    base.eval()
    damaged = copy.deepcopy(base)
    with torch.no_grad():
        for p in damaged.parameters():
            p.add_(torch.randn_like(p) * p.std())
    low = dw.evaluate(damaged, digits)["accuracy"]
    steps = _Steps()
    recover_with_distillation(
        damaged, base, digits, {**FAST, "lr": 0.02}, {"alpha": 0.5}, callbacks=[steps]
    )
    assert steps.n > 0
    assert dw.evaluate(damaged, digits)["accuracy"] > max(low + 0.05, 0.85)


def test_recovery_takes_its_schedule_once(digits: Any) -> None:
    model, teacher = _mlp(digits, (8,)), _mlp(digits, (16,)).eval()
    own = recover_with_distillation(
        model, teacher, digits, None, {"train": {**FAST, "epochs": 2}, "alpha": 0.5}
    )
    assert len(own.history) == 2  # the distill settings' schedule runs when it is the only one
    with pytest.raises(ConfigError, match="two schedules"):
        recover_with_distillation(model, teacher, digits, FAST, {"train": FAST})
    with pytest.raises(ConfigError, match=r"distill\.train is not used"):
        dw.Prune(method="magnitude", ratio=0.5, finetune=FAST, distill={"train": FAST})
