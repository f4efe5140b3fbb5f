import copy
import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dwindle as dw
from dwindle.config import StageContext, apply
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
    student_from_zoo,
)
from dwindle.errors import ConfigError, ModelSpecError
from dwindle.pipeline import run_recipe
from dwindle.training import Callback, TrainState

FAST_MEASURE = {"batch_sizes": [1, 4], "runs": 3, "warmup": 1, "energy": "estimate"}
FAST = {"epochs": 2, "lr": 0.05, "batch_size": 64, "progress": False}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    # Tiny models on a shared CPU: more threads only add contention.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> Any:
    return dw.data.load("digits")


@pytest.fixture(scope="module")
def teacher(digits: Any) -> nn.Module:
    torch.manual_seed(0)
    model = student_from_zoo("mlp", digits, hidden=(64,))
    dw.train(model, digits, dw.TrainConfig(epochs=4, lr=0.05, progress=False))
    return model.eval()


@pytest.fixture(scope="module")
def small_digits() -> Any:
    return dw.data.load("digits", limit=300)


@pytest.fixture(scope="module")
def cnn_teacher(small_digits: Any) -> nn.Module:
    torch.manual_seed(0)
    model = student_from_zoo("cnn4bn", small_digits, widths=(8, 8, 16, 16))
    dw.train(model, small_digits, dw.TrainConfig(epochs=2, lr=0.05, progress=False))
    return model.eval()


def _small_cnn(data: Any) -> nn.Module:
    torch.manual_seed(1)
    return student_from_zoo("cnn4bn", data, widths=(4, 4, 8, 8))


def _mlp(data: Any, hidden: tuple[int, ...] = (16,), seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return student_from_zoo("mlp", data, hidden=hidden)


class _CountCalls:
    def __init__(self, model: nn.Module) -> None:
        self.n = 0
        model.register_forward_hook(self)

    def __call__(self, *_: Any) -> None:
        self.n += 1


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
    if source in ("train", "heldout"):
        split = "train" if source == "train" else "val"
        assert len(x) == round(digits.size(split) * 0.5) and (y >= 0).all()
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


# --- bad inputs -----------------------------------------------------------------------------


def test_different_output_sizes_name_both(digits: Any, teacher: nn.Module) -> None:
    student = student_from_zoo("mlp", digits, hidden=(8,), num_classes=7)
    with pytest.raises(ModelSpecError, match=r"teacher outputs \(10,\).*student \(7,\)"):
        distill(student, teacher, digits, {"train": FAST})


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("temperature", 0.0, "temperature.*greater than 0"),
        ("temperature", -1.0, "temperature.*greater than 0"),
        ("alpha", 1.5, "alpha.*less than or equal to 1"),
        ("alpha", -0.1, "alpha.*greater than or equal to 0"),
    ],
)
def test_bad_temperature_and_alpha(field: str, value: float, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DistillConfig(**{field: value})
    with pytest.raises(ConfigError, match=field):
        KDLoss(**{field: value})


def test_layer_pattern_matching_nothing(small_digits: Any, cnn_teacher: nn.Module) -> None:
    digits, teacher = small_digits, cnn_teacher
    cfg = DistillConfig(hints=[{"student": "features.nope*", "teacher": "features.relu4"}])
    with pytest.raises(ConfigError, match=r"hint student layer pattern 'features.nope\*' matches"):
        distill(_small_cnn(digits), teacher, digits, cfg, train=FAST)
    cfg = DistillConfig(attention=[{"student": "features.relu*", "teacher": "features.relu4"}])
    with pytest.raises(ConfigError, match=r"match 4 student layers.*and 1 teacher layers"):
        distill(_small_cnn(digits), teacher, digits, cfg, train=FAST)


def test_teacher_in_training_mode_is_put_in_eval_with_warning(digits: Any) -> None:
    trainee = _mlp(digits, (32,), seed=7).train()
    with pytest.warns(UserWarning, match="was in training mode; distillation put it in eval"):
        distill(_mlp(digits), trainee, digits, {"train": {**FAST, "epochs": 1}})
    assert not trainee.training
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distill(_mlp(digits), trainee, digits, {"train": {**FAST, "epochs": 1}})


def test_transfer_set_without_the_inputs_the_models_need(digits: Any, teacher: nn.Module) -> None:
    flat = digits.x_test.flatten(1)  # (N, 64), the models take (1, 8, 8)
    with pytest.raises(ConfigError, match=r"inputs shaped \(64,\).*models take \(1, 8, 8\)"):
        distill(
            _mlp(digits),
            teacher,
            digits,
            {"transfer": {"source": "unlabelled"}},
            transfer_inputs=flat,
        )
    empty = dw.data.DataBundle(
        "e",
        digits.x_train,
        digits.y_train,
        digits.x_val[:0],
        digits.y_val[:0],
        digits.x_test,
        digits.y_test,
        10,
    )
    with pytest.raises(ConfigError, match=r"'heldout'.*holds no inputs"):
        distill(_mlp(digits), teacher, empty, {"transfer": {"source": "heldout"}})


# --- recipe ---------------------------------------------------------------------------------


def test_recipe_distill_stage(tmp_path: Path) -> None:
    recipe = {
        "name": "kd",
        "model": {"zoo": "mlp", "args": {"hidden": [64]}},
        "data": {"name": "digits"},
        "baseline": {"train": {"epochs": 3, "lr": 0.05, "progress": False}},
        "stages": [
            {
                "name": "kd",
                "distill": {
                    "temperature": 4,
                    "alpha": 0.9,
                    "student": {"zoo": "mlp", "args": {"hidden": [16]}},
                    "hints": [{"student": "fc1", "teacher": "fc1"}],
                    "transfer": {"source": "train"},
                    "train": {"epochs": 2, "lr": 0.05, "progress": False},
                },
            },
            {
                "name": "ta",
                "distill": {
                    "student": {"zoo": "mlp", "args": {"hidden": [8]}},
                    "assistant": {"zoo": "mlp", "args": {"hidden": [32]}},
                    "train": {"epochs": 1, "lr": 0.05, "progress": False},
                },
            },
        ],
        "measure": FAST_MEASURE,
    }
    result = run_recipe(recipe, tmp_path / "run")
    rows = {r["variant"]: r["metrics"] for r in result.report["rows"]}
    assert rows["kd"]["params"] < rows["baseline"]["params"] / 3
    assert rows["kd"]["accuracy"] > 0.6
    assert any("distill:" in n for n in result.report["notes"])


def test_stage_peers_extra_teachers_and_pruned_student(digits: Any, teacher: nn.Module) -> None:
    ctx = StageContext(data=digits, baseline=teacher)
    train = {**FAST, "epochs": 1}
    current = _mlp(digits, (32,))
    dml = DistillConfig(peers=[{"zoo": "mlp", "args": {"hidden": [16]}}], alpha=0.5, train=train)
    out = apply(current, dml, ctx)
    assert out is current and not out.training
    extra = {"zoo": "mlp", "args": {"hidden": [8]}}
    two = DistillConfig(teachers=("baseline", extra), teacher_weights=(3, 1), train=train)
    apply(_mlp(digits), two, ctx)
    pruned = DistillConfig(student={"prune_teacher": 0.5}, train=train)
    student = apply(_mlp(digits), pruned, ctx)
    assert sum(p.numel() for p in student.parameters()) < sum(
        p.numel() for p in teacher.parameters()
    )
    assert sum("distill:" in n for n in ctx.notes) == 3
    with pytest.raises(ConfigError, match="exactly one of 'zoo'"):
        DistillConfig(student={"zoo": "mlp", "prune_teacher": 0.5})
