"""A run directory never takes files a run did not write (dwindle.run_dir)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from dwindle.cli import app
from dwindle.errors import CheckpointError, ConfigError, OutputDirError
from dwindle.pipeline import run_recipe

MEASURE = {"batch_sizes": [1], "runs": 2, "warmup": 0, "energy": "off", "memory": False}


def _recipe(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "t",
        "model": {"zoo": "mlp", "args": {"hidden": [8]}},
        "data": {"name": "synthetic", "options": {"n_samples": 120, "num_classes": 3}},
        "baseline": {"train": {"epochs": 1, "progress": False}},
        "stages": [{"precision": {"dtype": "fp16"}, "name": "fp16"}],
        "measure": MEASURE,
    }
    doc.update(over)
    return doc


def test_a_folder_with_other_files_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    mine = tmp_path / "proj"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputDirError, match=r"did not write \(notes\.txt\)"):
            run_recipe(_recipe(), mine, overwrite=overwrite)
    assert (mine / "notes.txt").read_text() == "mine"


def test_overwrite_removes_only_what_the_previous_run_recorded(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_recipe(_recipe(export=["safetensors", "onnx"]), out)
    assert (out / "artifacts" / "final.onnx").exists()
    user_ckpt = out / "checkpoints" / "my_model.pt"
    user_ckpt.write_bytes(b"user data")
    run_recipe(_recipe(stages=[]), out, overwrite=True)
    assert user_ckpt.read_bytes() == b"user data"  # not a checkpoint the run recorded
    assert not (out / "checkpoints" / "fp16.pt").exists()
    assert not (out / "artifacts" / "final.onnx").exists()  # the old run's exports are gone
    assert (out / "artifacts" / "baseline.safetensors").exists()


def test_recipe_inputs_inside_the_run_directory_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_recipe(_recipe(stages=[]), out)
    weights = out / "artifacts" / "baseline.safetensors"
    before = weights.read_bytes()
    model = {"zoo": "mlp", "args": {"hidden": [8]}, "weights": str(weights)}
    with pytest.raises(OutputDirError, match=r"reads .*baseline\.safetensors from inside"):
        run_recipe(_recipe(model=model), out, overwrite=True)
    assert weights.read_bytes() == before


def test_a_corrupt_state_file_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_recipe(_recipe(stages=[]), out)
    (out / "state.json").write_text('{"recipe_hash": ')
    with pytest.raises(CheckpointError, match=r"state\.json is not a readable run state"):
        run_recipe(_recipe(stages=[]), out, resume=True)
    run_recipe(_recipe(stages=[]), out, overwrite=True)  # the way out it names works


def test_demo_refuses_to_replace_another_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_recipe(_recipe(stages=[]), out)
    result = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert result.exit_code != 0
    assert "not the demo's" in result.output and "Traceback" not in result.output
    assert (out / "state.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_device_anywhere_in_the_recipe_fails_before_training(tmp_path: Path) -> None:
    stage = {"precision": {"dtype": "fp16"}, "finetune": {"epochs": 1, "device": "cuda"}}
    with pytest.raises(ConfigError, match=r"stages\[0\]\.finetune\.device"):
        run_recipe(_recipe(stages=[stage]), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()  # no baseline was trained


def test_resume_and_overwrite_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pass one"):
        run_recipe(_recipe(), tmp_path / "run", resume=True, overwrite=True)
