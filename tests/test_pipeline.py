import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import nn

from dwindle.config import Config, StageContext, register_technique
from dwindle.errors import (
    CheckpointError,
    ConfigError,
    DataNotFoundError,
    ModelSpecError,
    OutputDirError,
    TrainingDivergedError,
)
from dwindle.pipeline import run_recipe

FAST_MEASURE = {"batch_sizes": [1, 4], "runs": 3, "warmup": 1, "energy": "estimate"}


class _Flaky(Config):
    fail: bool = False


CALLS: list[str] = []


@register_technique("test-flaky", _Flaky, "fails on request (tests only)")
def _flaky(model: nn.Module, config: _Flaky, ctx: StageContext) -> nn.Module:
    CALLS.append("flaky")
    if config.fail and CALLS.count("flaky") == 1:
        raise RuntimeError("simulated interruption")
    return model


def _recipe(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "t",
        "model": {"zoo": "mlp", "args": {"hidden": [16]}},
        "data": {"name": "synthetic", "options": {"n_samples": 300, "num_classes": 3}},
        "baseline": {"train": {"epochs": 2, "optimizer": "adam", "lr": 0.01, "progress": False}},
        "stages": [{"precision": {"dtype": "fp16"}, "name": "fp16"}],
        "measure": FAST_MEASURE,
    }
    doc.update(over)
    return doc


def test_run_writes_report_metrics_and_artifacts(tmp_path: Path) -> None:
    result = run_recipe(_recipe(export=["safetensors", "onnx"]), tmp_path / "run")
    out = result.out_dir
    for name in ("report.md", "report.html", "metrics.json", "accuracy_vs_size.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {r["variant"]: r["metrics"] for r in metrics["rows"]}
    assert set(rows) == {"baseline", "fp16"}
    assert rows["fp16"]["compression_rate"] > 1.8  # fp16 halves the real file
    assert rows["fp16"]["energy_source"].startswith("estimate")
    assert (out / "artifacts" / "fp16.safetensors").stat().st_size == rows["fp16"]["bytes"]
    assert (out / "artifacts" / "final.onnx").is_file()
    assert any("onnxruntime" in n for n in metrics["notes"])
    assert "fp16" in (out / "report.md").read_text()


def test_resume_skips_finished_stages(tmp_path: Path) -> None:
    CALLS.clear()
    doc = _recipe(
        stages=[
            {"precision": {"dtype": "bf16"}, "name": "a"},
            {"test-flaky": {"fail": True}, "name": "b"},
        ]
    )
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run_recipe(doc, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert set(state["done"]) == {"baseline", "a"}
    baseline_ckpt = tmp_path / "run" / "checkpoints" / "baseline.pt"
    mtime = baseline_ckpt.stat().st_mtime_ns
    result = run_recipe(doc, tmp_path / "run", resume=True)
    assert baseline_ckpt.stat().st_mtime_ns == mtime  # not retrained, not rewritten
    assert CALLS == ["flaky", "flaky"]
    assert {r["variant"] for r in result.report["rows"]} == {"baseline", "a", "b"}


def test_resume_after_an_edit_reruns_only_the_changed_stages(tmp_path: Path) -> None:
    CALLS.clear()
    out, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    stages = [
        {"precision": {"dtype": "bf16"}, "name": "a"},
        {"test-flaky": {"fail": True}, "name": "b"},
    ]
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run_recipe(_recipe(stages=stages), out)
    mtimes = {f.name: f.stat().st_mtime_ns for f in ckpts.iterdir()}
    # the stage that did not finish is edited before resuming: nothing finished is redone
    stages[1] = {"test-flaky": {}, "name": "b"}
    run_recipe(_recipe(stages=stages), out, resume=True)
    assert CALLS == ["flaky", "flaky"]
    assert {f: ckpts.joinpath(f).stat().st_mtime_ns for f in mtimes} == mtimes
    # measuring differently changes no checkpoint: every step is restored
    log = io.StringIO()
    measure = {**FAST_MEASURE, "runs": 2}
    run_recipe(_recipe(stages=stages, measure=measure), out, resume=True, console=Console(file=log))
    assert CALLS == ["flaky", "flaky"] and "recipe changed" not in log.getvalue()
    # an edit of stage a runs a and everything after it again, on the kept baseline
    stages[0] = {"precision": {"dtype": "fp16"}, "name": "a"}
    result = run_recipe(_recipe(stages=stages), out, resume=True, console=Console(file=log))
    assert CALLS == ["flaky", "flaky", "flaky"]
    assert "recipe changed since a, b ran" in " ".join(log.getvalue().split())
    assert ckpts.joinpath("baseline.pt").stat().st_mtime_ns == mtimes["baseline.pt"]
    assert ckpts.joinpath("a.pt").stat().st_mtime_ns != mtimes["a.pt"]
    assert result.models["a"].fc1.weight.dtype == torch.float16
    # undoing the edit brings the set-aside checkpoints back instead of running a and b again
    stages[0] = {"precision": {"dtype": "bf16"}, "name": "a"}
    result = run_recipe(_recipe(stages=stages), out, resume=True)
    assert CALLS == ["flaky", "flaky", "flaky"]
    assert result.models["a"].fc1.weight.dtype == torch.bfloat16
    # --overwrite removes every checkpoint the run recorded, the set-aside ones too
    run_recipe(_recipe(stages=[]), out, overwrite=True)
    assert sorted(f.name for f in ckpts.iterdir()) == ["baseline.pt"]


def test_resume_never_touches_a_file_outside_its_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_recipe(_recipe(), out)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    state = json.loads((out / "state.json").read_text())
    state["done"]["fp16"]["file"] = "../../victim.txt"  # a tampered state
    (out / "state.json").write_text(json.dumps(state))
    run_recipe(_recipe(stages=[{"precision": {"dtype": "bf16"}, "name": "fp16"}]), out, resume=True)
    assert victim.read_text() == "keep me"


def test_resume_of_a_run_without_step_keys_needs_the_same_recipe(tmp_path: Path) -> None:
    run_recipe(_recipe(), tmp_path / "run")
    path = tmp_path / "run" / "state.json"
    state = json.loads(path.read_text())
    for entry in state["done"].values():  # as state.json was written before steps had keys
        del entry["key"]
    path.write_text(json.dumps(state))
    run_recipe(_recipe(), tmp_path / "run", resume=True)  # same recipe: fine
    state = json.loads(path.read_text())
    assert all("key" in e for e in state["done"].values())  # and now it knows its steps
    for entry in state["done"].values():
        del entry["key"]
    path.write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="did not record what each step depends on"):
        run_recipe(
            _recipe(stages=[{"precision": {"dtype": "bf16"}}]), tmp_path / "run", resume=True
        )


def test_existing_run_needs_resume_or_overwrite(tmp_path: Path) -> None:
    run_recipe(_recipe(stages=[]), tmp_path / "run")
    with pytest.raises(OutputDirError, match=r"already holds a run\. Pass --resume"):
        run_recipe(_recipe(stages=[]), tmp_path / "run")
    run_recipe(_recipe(stages=[]), tmp_path / "run", overwrite=True)


def test_resume_with_changed_recipe_is_refused(tmp_path: Path) -> None:
    run_recipe(_recipe(stages=[]), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"changed since that run started: its model.*seed"):
        run_recipe(_recipe(seed=1, stages=[]), tmp_path / "run", resume=True)


def test_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    run_recipe(_recipe(stages=[]), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "baseline.pt"
    ckpt.write_bytes(ckpt.read_bytes() + b"x")
    with pytest.raises(CheckpointError, match="was modified after it was written"):
        run_recipe(_recipe(stages=[]), tmp_path / "run", resume=True)


def test_unwritable_output_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputDirError, match=re.escape(str(blocker / "out"))):
        run_recipe(_recipe(), blocker / "out")


def test_user_model_weights_are_never_overwritten(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    (tmp_path / "net.py").write_text(
        "from torch import nn\n"
        "def build(num_classes=3):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"
    )
    torch.manual_seed(0)
    weights = tmp_path / "w.safetensors"
    save_file({"1.weight": torch.randn(3, 64), "1.bias": torch.zeros(3)}, str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    doc = _recipe(model={"path": str(tmp_path / "net.py") + ":build", "weights": str(weights)})
    result = run_recipe(doc, tmp_path / "run")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest
    assert result.report["rows"][0]["metrics"]["params"] == 3 * 64 + 3


def test_checkpoint_with_wrong_shapes_names_the_key(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    (tmp_path / "net.py").write_text(
        "from torch import nn\n"
        "def build(num_classes=3):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"
    )
    weights = tmp_path / "w.safetensors"
    save_file({"1.weight": torch.randn(5, 64), "1.bias": torch.zeros(5)}, str(weights))
    doc = _recipe(model={"path": str(tmp_path / "net.py") + ":build", "weights": str(weights)})
    with pytest.raises(CheckpointError, match=r"1\.weight"):
        run_recipe(doc, tmp_path / "run")


def test_model_file_without_factory(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text("def other():\n    return None\n")
    doc = _recipe(model={"path": str(tmp_path / "net.py")})
    with pytest.raises(ModelSpecError, match="factory"):
        run_recipe(doc, tmp_path / "run")


def test_missing_data_directory(tmp_path: Path) -> None:
    doc = _recipe(data={"name": "mnist", "root": str(tmp_path / "nowhere")})
    with pytest.raises(DataNotFoundError, match="nowhere"):
        run_recipe(doc, tmp_path / "run")


def test_divergence_stops_with_message_and_keeps_last_good(tmp_path: Path) -> None:
    doc = _recipe(baseline={"train": {"epochs": 2, "lr": 1e30, "momentum": 0.0, "progress": False}})
    with pytest.raises(TrainingDivergedError, match=r"baseline-last-good\.safetensors"):
        run_recipe(doc, tmp_path / "run")
    assert (tmp_path / "run" / "baseline-last-good.safetensors").is_file()


def test_stage_finetune_runs_trainer(tmp_path: Path) -> None:
    doc = _recipe(
        stages=[
            {
                "precision": {"dtype": "fp64"},
                "name": "f64",
                "finetune": {"epochs": 1, "lr": 0.001, "optimizer": "adam", "progress": False},
            }
        ]
    )
    result = run_recipe(doc, tmp_path / "run")
    model = result.models["f64"]
    assert next(model.parameters()).dtype == torch.float64
    assert not torch.equal(
        next(model.parameters()).float(), next(result.models["baseline"].parameters())
    )


def test_stage_from_branches_off_an_earlier_stage(tmp_path: Path) -> None:
    doc = _recipe(
        stages=[
            {"precision": {"dtype": "fp64"}, "name": "a"},
            {"test-flaky": {}, "name": "b", "from": "baseline"},
        ]
    )
    result = run_recipe(doc, tmp_path / "run")
    assert next(result.models["a"].parameters()).dtype == torch.float64
    assert next(result.models["b"].parameters()).dtype == torch.float32


def test_stage_from_unknown_stage_is_an_error() -> None:
    from dwindle.recipe import load_recipe

    with pytest.raises(ConfigError, match=r"stages\[0\]\.from: 'later' is not 'baseline'"):
        load_recipe(_recipe(stages=[{"precision": {}, "from": "later"}]))


def test_recover_with_distillation_fine_tunes_against_the_baseline(tmp_path: Path) -> None:
    doc = _recipe(
        stages=[
            {
                "precision": {"dtype": "fp32"},
                "name": "kd",
                "finetune": {"epochs": 1, "optimizer": "adam", "lr": 0.01, "progress": False},
                "recover": {"distill": {"temperature": 4.0, "alpha": 0.9}},
            }
        ]
    )
    result = run_recipe(doc, tmp_path / "run")
    before = next(result.models["baseline"].parameters())
    after = next(result.models["kd"].parameters())
    assert not torch.equal(before, after)


def test_recover_needs_distill_key() -> None:
    from dwindle.recipe import load_recipe

    with pytest.raises(ConfigError, match=r"stages\[0\]\.recover: expected \{distill"):
        load_recipe(_recipe(stages=[{"precision": {}, "recover": {"labels": {}}}]))
    with pytest.raises(ConfigError, match=r"recover\.distill\.temperature"):
        load_recipe(
            _recipe(stages=[{"precision": {}, "recover": {"distill": {"temperature": -1}}}])
        )
