import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dwindle.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def test_zoo_list_and_stages() -> None:
    result = runner.invoke(app, ["zoo", "list"])
    assert result.exit_code == 0
    for name in ("lenet300", "lenet5", "cnn4bn", "mlp", "resnet", "cnn1d"):
        assert name in result.output
    result = runner.invoke(app, ["stages"])
    assert result.exit_code == 0 and "precision" in result.output


def test_run_example_recipe_and_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["run", str(ROOT / "examples" / "byo_model.yaml"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "Compression (bytes)" in result.output
    assert (out / "report.html").is_file()
    (out / "report.md").unlink()
    again = runner.invoke(app, ["report", str(out)])
    assert again.exit_code == 0 and (out / "report.md").is_file()


def test_run_bad_recipe_prints_error_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("model: {zoo: mlp}\nstages:\n  - precision: {dtyp: fp16}\n")
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2
    assert "did you mean 'dtype'" in result.output


def test_measure_any_model_writes_json(tmp_path: Path) -> None:
    js = tmp_path / "m.json"
    result = runner.invoke(
        app,
        [
            "measure",
            f"{ROOT / 'examples' / 'my_model.py'}:build",
            "--data",
            "digits",
            "--arg",
            "hidden=16",
            "--energy",
            "off",
            "--json",
            str(js),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(js.read_text())["rows"][0]["metrics"]
    assert metrics["params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert metrics["energy_j"] is None and metrics["energy_source"] == "off"


def test_measure_unknown_zoo_model_suggests() -> None:
    result = runner.invoke(app, ["measure", "lenet30", "--data", "digits"])
    assert result.exit_code == 2
    assert "lenet300" in result.output


def test_measure_without_weights_says_the_model_is_untrained() -> None:
    argv = ["measure", "mlp", "--data", "digits", "--arg", "hidden=8", "--energy", "off"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "untrained mlp" in " ".join(result.output.split())


def test_measure_keeps_a_half_precision_file_in_half_precision(tmp_path: Path) -> None:
    import dwindle as dw
    from dwindle.export import save

    model = dw.zoo.create("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[8])
    sizes = {}
    half = dw.cast_(copy.deepcopy(model), dw.Precision(dtype="fp16"))
    for name, net in (("f32", model), ("f16", half)):
        path = save(net, tmp_path / f"{name}.safetensors")
        js = tmp_path / f"{name}.json"
        argv = ["measure", "mlp", "--weights", str(path), "--data", "digits", "--arg", "hidden=8"]
        result = runner.invoke(app, [*argv, "--energy", "off", "--json", str(js)])
        assert result.exit_code == 0, result.output
        sizes[name] = json.loads(js.read_text())["rows"][0]["metrics"]["bytes"]
    assert "measured in fp16" in " ".join(result.output.split())
    assert sizes["f16"] < 0.6 * sizes["f32"]  # the file's own precision, not an fp32 copy


def test_measure_bad_arg_syntax() -> None:
    result = runner.invoke(app, ["measure", "mlp", "--data", "digits", "--arg", "hidden"])
    assert result.exit_code != 0
    assert "key=value" in result.output


def test_measure_arg_lists_as_typed_in_a_shell(tmp_path: Path) -> None:
    js = tmp_path / "m.json"
    for shape in ("1,8,8", "[1, 8, 8]"):
        argv = ["measure", "lenet300", "--data", "digits", "--arg", f"input_shape={shape}"]
        result = runner.invoke(app, [*argv, "--energy", "off", "--json", str(js)])
        assert result.exit_code == 0, result.output
        assert json.loads(js.read_text())["rows"][0]["metrics"]["params"] == (
            64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
        )


def test_report_on_non_run_dir(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "metrics.json" in result.output


def test_measure_refuses_bad_targets_and_misfit_models_without_traceback(tmp_path: Path) -> None:
    from dwindle.export import save
    from dwindle.models import create

    mine = tmp_path / "mine.safetensors"
    save(create("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[16]), mine)
    before = mine.read_bytes()
    base = ["measure", "mlp", "--data", "digits", "--arg", "hidden=16", "--energy", "off"]
    cases = [
        (["--weights", str(mine), "--json", str(mine)], "is an input of this command"),
        (["--json", str(tmp_path)], "is a directory"),
        (["--weights", str(tmp_path)], "is a directory; give the weights file"),
        (["--arg", "input_shape=1,2"], "build the model for input_shape=(1, 8, 8)"),
    ]
    for extra, words in cases:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())  # rich wraps long lines
        assert words in text and "Traceback" not in text
    assert mine.read_bytes() == before


def test_report_of_a_corrupt_metrics_file(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text('{"rows": [')
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "is not valid JSON" in " ".join(result.output.split())


@pytest.mark.timeout(900)
def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for needle in ("baseline", "Accuracy", "Size on disk", "Energy / sample", "Speed-up b32"):
        assert needle in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rows"]) >= 2
    base = metrics["rows"][0]["metrics"]
    assert base["accuracy"] > 0.9  # the demo baseline really learns the digits
    assert all(r["metrics"]["energy_source"] for r in metrics["rows"])
    assert (out / "accuracy_vs_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
