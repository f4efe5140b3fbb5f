"""Tests of dwindle.distillation's bad-input errors and its recipe stage."""

import warnings
from pathlib import Path
from typing import Any

import pytest
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
from dwindle.config import StageContext, apply
from dwindle.distillation import (
    DistillConfig,
    KDLoss,
    distill,
    student_from_zoo,
)
from dwindle.errors import ConfigError, ModelSpecError
from dwindle.pipeline import run_recipe

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


def test_recipe_teacher_weights_resolve_against_the_recipe_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    other = dw.zoo.create("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[12])
    dw.export.save(other, folder / "other.safetensors")
    (folder / "r.yaml").write_text(
        "model: {zoo: mlp, args: {hidden: [16]}}\n"
        "data: {name: digits, limit: 200}\n"
        "baseline: {train: {epochs: 1, progress: false}}\n"
        "measure: {batch_sizes: [1], runs: 2, warmup: 0, energy: off, memory: false}\n"
        "stages:\n"
        "  - distill:\n"
        "      teachers: [baseline, {zoo: mlp, args: {hidden: [12]}, weights: other.safetensors}]\n"
        "      train: {epochs: 1, progress: false}\n"
    )
    monkeypatch.chdir(tmp_path)  # not the recipe's folder: the weights are found anyway
    result = run_recipe(folder / "r.yaml", tmp_path / "run")
    assert any("2 teacher(s)" in n for n in result.report["notes"])
