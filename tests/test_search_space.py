"""Search spaces, objectives, storage URLs and the CLI reject bad input with clear messages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("optuna")

from typer.testing import CliRunner

from dwindle.cli import app
from dwindle.errors import ConfigError
from dwindle.search import (
    SearchError,
    SearchSpec,
    apply_params,
    load_search_recipe,
    mask_url,
    open_storage,
)
from dwindle.search.space import distributions

BASE: dict[str, Any] = {
    "name": "t",
    "model": {"zoo": "mlp", "args": {"hidden": [8]}},
    "data": {"name": "digits", "limit": 100},
    "baseline": {"train": {"epochs": 1}},
    "stages": [
        {"prune": {"method": "magnitude", "ratio": 0.5}, "finetune": {"epochs": 1}, "name": "p"},
        {"share": {"method": "kmeans", "bits": 4}, "name": "s", "from": "p"},
    ],
}


def _recipe(**search: Any) -> dict[str, Any]:
    space = search.pop("space", {"baseline.train.lr": {"low": 0.001, "high": 0.1, "log": True}})
    return {**BASE, "search": {"space": space, **search}}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"baseline.train.lr": {"low": 0.5, "high": 0.1}}, r"low \(0.5\) is greater than high"),
        ({"baseline.train.lr": {"low": 0.0, "high": 0.1, "log": True}}, "log scale needs positive"),
        (
            {"baseline.train.lr": {"low": -1.0, "high": 1.0, "log": True}},
            "log scale needs positive",
        ),
        ({"baseline.train.lr": {"choices": []}}, "choices is empty"),
        ({"baseline.train.lr": {"low": 0.1}}, "needs both low and high"),
        ({"baseline.train.lr": {"low": 0.1, "high": 1.0, "choices": [1]}}, "not both"),
        ({}, "search space is empty"),
    ],
)
def test_bad_spaces_are_rejected_with_the_reason(space: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_search_recipe(_recipe(space=space))


def test_unknown_objective_and_non_positive_trials() -> None:
    with pytest.raises(ConfigError, match=r"unknown objective 'acuracy'; did you mean 'accuracy'"):
        load_search_recipe(_recipe(objectives=["acuracy"]))
    for n in (0, -3):
        with pytest.raises(ConfigError, match="n_trials must be a positive number"):
            load_search_recipe(_recipe(n_trials=n))
    with pytest.raises(ConfigError, match="optimises one objective"):
        load_search_recipe(_recipe(objectives=["accuracy", "bytes"], sampler="gp"))
    with pytest.raises(ConfigError, match="autotune needs constraint"):
        load_search_recipe(_recipe(kind="autotune", objectives=["bytes"]))


def test_paths_that_do_not_fit_the_recipe_are_named() -> None:
    lrr = r"(?s)'baseline\.train\.lrr' does not fit.*did you mean 'lr'"
    with pytest.raises(ConfigError, match=lrr):
        load_search_recipe(_recipe(space={"baseline.train.lrr": {"low": 0.1, "high": 1.0}}))
    with pytest.raises(ConfigError, match="not an index of a list of 2"):
        load_search_recipe(_recipe(space={"stages.5.prune.ratio": {"low": 0.1, "high": 0.9}}))
    with pytest.raises(ConfigError, match="does not start with model, data, baseline or stages"):
        load_search_recipe(_recipe(space={"lr": {"low": 0.1, "high": 1.0}}))
    no_teacher = {**_recipe(space={"distill": {"choices": [True, False]}}), "baseline": {}}
    with pytest.raises(ConfigError, match="the teacher is the recipe's own model"):
        load_search_recipe(no_teacher)
    with pytest.raises(ConfigError, match="no 'search:' section"):
        load_search_recipe(dict(BASE))


def test_distributions_keep_ints_logs_and_choices() -> None:
    spec = SearchSpec(
        space={
            "a": {"low": 16, "high": 64, "step": 16},
            "b": {"low": 1e-4, "high": 1e-1, "log": True},
            "c": {"choices": [True, False]},
        }
    )
    d = distributions(spec)
    assert type(d["a"]).__name__ == "IntDistribution" and d["a"].step == 16
    assert type(d["b"]).__name__ == "FloatDistribution" and d["b"].log
    assert d["c"].choices == (True, False)
    assert spec.directions == ["maximize"] and spec.sampler_name == "tpe"
    multi = SearchSpec(space={"a": {"low": 0, "high": 1}}, objectives=["accuracy", "bytes"])
    assert multi.directions == ["maximize", "minimize"] and multi.sampler_name == "nsga2"


def test_apply_params_sets_paths_toggles_stages_and_distillation() -> None:
    doc = apply_params(
        BASE,
        {
            "stages.0.prune.ratio": 0.9,
            "stages.0.enabled": True,
            "stages.1.enabled": False,
            "distill": True,
            "model.args.hidden.0": 32,
        },
    )
    assert doc["stages"][0]["prune"]["ratio"] == 0.9
    assert doc["stages"][0]["recover"] == {"distill": {}}  # fine-tuning stage distils
    assert len(doc["stages"]) == 1 and doc["model"]["args"]["hidden"] == [32]
    assert BASE["stages"][0]["prune"]["ratio"] == 0.5  # the recipe itself is untouched
    kept = apply_params(BASE, {"stages.0.enabled": False})
    assert "from" not in kept["stages"][0]  # branched from a dropped stage: starts from the last


def test_storage_urls_are_masked_and_unreachable_ones_named() -> None:
    assert mask_url("postgresql://bob:s3cret@db.example:5432/x") == (
        "postgresql://bob:***@db.example:5432/x"
    )
    with pytest.raises(SearchError) as info:
        open_storage("postgresql://bob:s3cret@127.0.0.1:1/nowhere", heartbeat=1)
    msg = str(info.value)
    assert "postgresql://bob:***@127.0.0.1:1/nowhere" in msg and "s3cret" not in msg
    with pytest.raises(SearchError, match="cannot open the study storage sqlite"):
        open_storage("sqlite:////proc/no/such/dir/study.db")


def test_cli_reports_bad_input_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(n_trials=0)))
    res = CliRunner().invoke(app, ["search", str(path)])
    assert res.exit_code == 2 and "n_trials must be a positive number" in res.output
    path.write_text(yaml.safe_dump(_recipe()))
    res = CliRunner().invoke(
        app,
        [
            "search",
            str(path),
            "--storage",
            "postgresql://u:pw123@127.0.0.1:1/db",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert res.exit_code == 2
    out = re.sub(r"\s+", " ", res.output)
    assert "postgresql://u:***@127.0.0.1:1/db" in out and "pw123" not in out
