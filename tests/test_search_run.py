"""Search end to end on tiny models (digits subset, 1-2 epochs): samplers, pruners, storage,
resume, the best trial retrained, the joint front and its recipes, autotune, NAS, sensitivity."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

optuna = pytest.importorskip("optuna")

import dwindle as dw  # noqa: E402
from dwindle.recipe import load_recipe  # noqa: E402
from dwindle.search import SearchError, layer_sensitivity, search  # noqa: E402
from dwindle.search.trials import _Report  # noqa: E402

DATA = {"name": "digits", "limit": 300}
HPO: dict[str, Any] = {
    "name": "tiny-hpo",
    "model": {"zoo": "mlp", "args": {"hidden": [16]}},
    "data": DATA,
    "baseline": {"train": {"epochs": 1, "optimizer": "adam", "lr": 0.003}},
    "search": {
        "n_trials": 3,
        "retrain": False,
        "space": {
            "baseline.train.lr": {"low": 1e-3, "high": 3e-2, "log": True},
            "model.args.dropout": {"low": 0.0, "high": 0.3},
            "model.args.hidden.0": {"low": 8, "high": 32, "step": 8},
        },
    },
}
JOINT: dict[str, Any] = {
    "name": "tiny-joint",
    "model": {"zoo": "mlp", "args": {"hidden": [32]}},
    "data": DATA,
    "baseline": {"train": {"epochs": 3, "optimizer": "adam", "lr": 0.003}},
    "stages": [
        {
            "prune": {"method": "magnitude", "ratio": 0.5},
            "finetune": {"epochs": 1, "optimizer": "adam", "lr": 0.001},
            "name": "pruned",
        },
        {"share": {"method": "kmeans", "bits": 5}, "name": "shared"},
        {"encode": {"method": "huffman", "index_bits": {"linear": 5}}, "name": "encoded"},
    ],
    "measure": {"batch_sizes": [1], "runs": 3, "warmup": 1, "energy": "off", "memory": False},
    "search": {
        "kind": "joint",
        "n_trials": 3,
        "retrain": False,
        "objectives": ["accuracy", "bytes"],
        "space": {
            "stages.0.prune.ratio": {"low": 0.3, "high": 0.95},
            "stages.1.share.bits": {"choices": [3, 4, 6]},
            "distill": {"choices": [True, False]},
        },
    },
}


def _with(doc: dict[str, Any], **search: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["search"].update(search)
    return out


@pytest.mark.parametrize("sampler", ["random", "tpe", "gp", "cmaes"])
def test_hpo_samplers_complete_the_budget(sampler: str, tmp_path: Path) -> None:
    result = search(_with(HPO, sampler=sampler), tmp_path)
    trials = result.study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert type(result.study.sampler).__name__.lower().startswith(sampler[:3])
    assert (tmp_path / "study.db").exists() and (tmp_path / "history.png").exists()
    best = max(t.value for t in trials)
    assert result.summary["best"]["accuracy"] == best > 0.3
    assert all(8 <= t.params["model.args.hidden.0"] <= 32 for t in trials)


def test_pruner_is_fed_by_the_trainers_validation_metric(tmp_path: Path) -> None:
    class Always:
        def __init__(self) -> None:
            self.reported: list[tuple[float, int]] = []

        def report(self, value: float, step: int) -> None:
            self.reported.append((value, step))

        def should_prune(self) -> bool:
            return True

    model = dw.zoo.create("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[8])
    data = dw.data.load("digits", limit=200)
    trial = Always()
    with pytest.raises(optuna.TrialPruned, match="after epoch 1"):
        dw.train(model, data, dw.TrainConfig(epochs=3, progress=False), callbacks=[_Report(trial)])
    assert len(trial.reported) == 1 and trial.reported[0][1] == 1  # stopped after epoch 1
    last = Always()  # a one-epoch run is never pruned: its training is already done
    dw.train(model, data, dw.TrainConfig(epochs=1, progress=False), callbacks=[_Report(last)])
    assert last.reported and last.reported[0][1] == 1
    doc = _with(HPO, pruner="median", n_trials=4)
    doc["baseline"]["train"]["epochs"] = 2
    result = search(doc, tmp_path)
    for t in result.study.get_trials():
        assert t.state.name in ("COMPLETE", "PRUNED")
        assert 1 <= len(t.intermediate_values) <= 2  # one value per epoch reached


def test_resume_continues_the_study_and_a_fresh_run_refuses_it(tmp_path: Path) -> None:
    first = search(_with(HPO, n_trials=2, sampler="random"), tmp_path)
    params = [t.params for t in first.study.get_trials()]
    with pytest.raises(SearchError, match=r"already exists.*--resume"):
        search(_with(HPO, n_trials=2), tmp_path)
    again = search(_with(HPO, sampler="random"), tmp_path, resume=True, n_trials=3)
    trials = again.study.get_trials()
    assert len(trials) == 3 and [t.params for t in trials[:2]] == params
    with pytest.raises(SearchError, match="no study 'other'"):
        search(HPO, tmp_path / "x", resume=True, study_name="other")


def test_resume_refuses_other_objectives_of_the_same_direction(tmp_path: Path) -> None:
    search(_with(HPO, n_trials=1, sampler="random", objectives=["params"]), tmp_path)
    with pytest.raises(SearchError, match=r"measures objectives \['params'\], not \['flops'\]"):
        search(_with(HPO, objectives=["flops"]), tmp_path, resume=True, n_trials=2)


def test_best_trial_is_retrained_and_saved(tmp_path: Path) -> None:
    result = search(_with(HPO, n_trials=2, retrain=True), tmp_path)
    best = load_recipe(tmp_path / "best.yaml")  # a plain recipe dwindle run accepts
    assert best.baseline.train is not None
    assert best.baseline.train.lr == pytest.approx(result.best_params["baseline.train.lr"])
    assert (tmp_path / "best" / "artifacts" / "baseline.safetensors").exists()
    assert result.summary["retrained"]["rows"][0]["metrics"]["accuracy"] > 0.3


def test_joint_search_front_is_non_dominated_and_exports_runnable_recipes(tmp_path: Path) -> None:
    result = search(JOINT, tmp_path)
    front = result.summary["front"]
    assert front and (tmp_path / "pareto.png").exists()
    done = [r for r in result.summary.get("front", [])]
    for r in done:
        for t in result.study.get_trials():
            if t.state.name != "COMPLETE":
                continue
            acc, size = t.user_attrs["metrics"]["accuracy"], t.user_attrs["metrics"]["bytes"]
            assert not (
                acc >= r["accuracy"]
                and size <= r["bytes"]
                and (acc, size) != (r["accuracy"], r["bytes"])
            )
    member = front[0]["number"]
    path = tmp_path / "front" / f"trial-{member}.yaml"
    doc = yaml.safe_load(path.read_text())
    assert "search" not in doc
    run = dw.run_recipe(path, tmp_path / "rerun")
    final = run.report["rows"][-1]["metrics"]
    assert final["artifact"] == "deepc"
    assert final["bytes"] == pytest.approx(front[0]["bytes"], rel=0.05)


def test_autotune_meets_an_easy_constraint(tmp_path: Path) -> None:
    doc = _with(
        JOINT,
        kind="autotune",
        objectives=["bytes"],
        constraint={"max_drop": 50},
        n_trials=2,
        sampler="tpe",
    )
    result = search(doc, tmp_path)
    s = result.summary
    assert s["constraint_met"] is True
    floor = s["baseline_accuracy"] - 0.5
    chosen = s["chosen"]
    assert chosen["accuracy"] >= floor and (tmp_path / "best.yaml").exists()
    assert result.study.get_trials()[0].params["stages.0.prune.ratio"] >= 0.3  # seeded trial


def test_autotune_fallback_only_keeps_layers_a_stage_compresses() -> None:
    from dwindle.search.autotune import targeted_layers

    doc = {
        "stages": [
            {"prune": {"method": "magnitude", "ratio": 0.5, "targets": ["fc1"]}},
            {"prune_neurons": {"ratio": 0.5, "targets": ["fc*"], "exclude": ["fc3"]}},
            {"precision": {"dtype": "bf16", "targets": ["out"]}},
        ]
    }
    # fc3 is excluded where it is targeted; every layer-targeting stage counts, in the
    # ranking's order
    assert targeted_layers(doc, ["fc3", "fc2", "fc1", "out", "x"]) == ["fc2", "fc1", "out"]


def test_autotune_says_so_when_no_trial_meets_the_constraint(tmp_path: Path) -> None:
    doc = _with(
        JOINT,
        kind="autotune",
        objectives=["bytes"],
        constraint={"max_drop": 0},
        n_trials=2,
        sampler="random",
    )
    doc["search"]["space"] = {
        "stages.0.prune.ratio": {"low": 0.97, "high": 0.99},
        "stages.1.share.bits": {"choices": [1]},
    }
    result = search(doc, tmp_path)
    s = result.summary
    report = (tmp_path / "report.md").read_text()
    assert s["closest"] and "Closest trials (constraint not met)" in report
    assert "no trial meets accuracy" in " ".join(s["notes"])
    if s["constraint_met"]:  # rescued by keeping sensitive layers uncompressed
        assert s["chosen"]["kept_layers"]
        assert s["chosen"]["accuracy"] >= s["baseline_accuracy"]
    else:
        assert "NOT met" in report and not (tmp_path / "best.yaml").exists()


def test_nas_respects_the_parameter_budget_and_can_distil(tmp_path: Path) -> None:
    doc = {
        "name": "tiny-nas",
        "model": {"zoo": "mlp", "args": {"hidden": [32, 32]}},
        "data": DATA,
        "baseline": {"train": {"epochs": 1, "optimizer": "adam", "lr": 0.003}},
        "search": {
            "kind": "nas",
            "n_trials": 4,
            "sampler": "random",
            "pruner": "hyperband",
            "retrain": False,
            "budget": {"params": 1500},
            "space": {
                "model.args.hidden": {"choices": [[8], [16], [64], [8, 8], [64, 64]]},
                "distill": {"choices": [True, False]},
            },
        },
    }
    result = search(doc, tmp_path)
    for t in result.study.get_trials():
        size = t.user_attrs["budget_check"]["params"]
        if t.state.name == "COMPLETE":
            assert size <= 1500
        if size > 1500:
            assert t.state.name == "PRUNED" and "params" in t.user_attrs["over_budget"]


def test_sensitivity_covers_every_layer_technique_and_setting(tmp_path: Path) -> None:
    model = dw.zoo.create("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[16])
    data = dw.data.load("digits", limit=300)
    dw.train(model, data, dw.TrainConfig(epochs=3, optimizer="adam", lr=0.01, progress=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sens = layer_sensitivity(model, data, ratios=(0.5, 0.9), bits=(8, 2), ranks=(0.5, 0.1))
    assert all((before[k] == v).all() for k, v in model.state_dict().items())  # untouched
    assert len(sens.layers) == 2 and len(sens.rows) == 2 * 2 * 3
    for r in sens.rows:
        assert r["drop"] == pytest.approx(sens.baseline - r["accuracy"])
    assert sens.min_bits(sens.layers[0], 1.0) == 2  # anything goes with a 100 pt allowance
    assert sorted(sens.ranking()) == sorted(sens.layers)
    sens.plot(tmp_path / "sens.png")
    assert (tmp_path / "sens.png").stat().st_size > 1000
    assert "**bits**" in sens.to_markdown()


def test_search_examples_validate_and_the_cli_runs_one(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dwindle.cli import app
    from dwindle.search import load_search_recipe

    root = Path(__file__).resolve().parents[1] / "examples" / "search"
    kinds = {load_search_recipe(p)[2].kind for p in sorted(root.glob("*.yaml"))}
    assert kinds == {"hpo", "joint", "autotune", "nas"}
    doc = yaml.safe_load((root / "hpo_digits.yaml").read_text())
    doc["data"]["limit"] = 300  # the example itself, on a smaller budget
    doc["baseline"]["train"]["epochs"] = 1
    path = tmp_path / "hpo.yaml"
    path.write_text(yaml.safe_dump(doc))
    res = CliRunner().invoke(
        app,
        [
            "search",
            str(path),
            "--n-trials",
            "2",
            "--out",
            str(tmp_path),
            "--no-report",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "'complete': " in res.output
    study = optuna.load_study(study_name="digits-hpo", storage=f"sqlite:///{tmp_path}/study.db")
    assert len(study.trials) == 2  # readable by plain Optuna (and so by optuna-dashboard)


def test_cli_sensitivity_writes_tables_and_plots(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dwindle.cli import app

    doc = {k: v for k, v in HPO.items() if k != "search"}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    res = CliRunner().invoke(app, ["sensitivity", str(path), "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "most sensitive first: fc" in res.output
    assert (tmp_path / "s" / "sensitivity.png").stat().st_size > 1000
    assert "**rank**" in (tmp_path / "s" / "sensitivity.md").read_text()


def test_nas_over_cnn_widths_and_kernel_sizes(tmp_path: Path) -> None:
    doc = {
        "name": "tiny-cnn-nas",
        "model": {"zoo": "cnn4bn", "args": {"widths": [4, 4, 8, 8]}},
        "data": DATA,
        "baseline": {"train": {"epochs": 1, "optimizer": "adam", "lr": 0.01}},
        "search": {
            "kind": "nas",
            "n_trials": 3,
            "sampler": "random",
            "retrain": False,
            "objectives": ["accuracy", "params"],
            "space": {
                "model.args.kernel_size": {"choices": [1, 3, 5]},
                "model.args.widths.3": {"low": 4, "high": 16, "step": 4},
            },
        },
    }
    result = search(doc, tmp_path)
    for t in result.study.get_trials():
        assert t.state.name == "COMPLETE"
        k, w = t.params["model.args.kernel_size"], t.params["model.args.widths.3"]
        model = dw.zoo.create(
            "cnn4bn",
            input_shape=(1, 8, 8),
            num_classes=10,
            **result.recipe(t.number)["model"]["args"],
        )
        assert model.features.conv1.kernel_size == (k, k) and model.features.conv4.out_channels == w
        assert t.user_attrs["metrics"]["params"] == sum(p.numel() for p in model.parameters())
