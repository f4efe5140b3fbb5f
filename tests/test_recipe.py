from pathlib import Path

import pytest

from dwindle.errors import ConfigError
from dwindle.precision import Precision
from dwindle.recipe import load_recipe

BASE = {"model": {"zoo": "mlp"}, "data": {"name": "synthetic"}}


def test_minimal_recipe_defaults() -> None:
    recipe = load_recipe(dict(BASE, stages=[{"precision": {"dtype": "bf16"}}]))
    (stage,) = recipe.parsed_stages()
    assert stage.technique == "precision"
    assert stage.config == Precision(dtype="bf16")
    assert stage.label == "1-precision-bf16"
    assert recipe.export == ["safetensors"]


def test_yaml_file_and_relative_model_path(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text("def build(**kw):\n    return None\n")
    path = tmp_path / "r.yaml"
    path.write_text("model: {path: net.py:build}\ndata: {name: digits}\n")
    recipe = load_recipe(path)
    assert recipe.resolve(recipe.model.spec) == f"{tmp_path / 'net.py'}:build"


def test_unknown_top_level_key_names_nearest() -> None:
    with pytest.raises(ConfigError, match=r"recipe\.stagse: unknown key; did you mean 'stages'"):
        load_recipe(dict(BASE, stagse=[]))


def test_unknown_nested_key_names_path_and_nearest() -> None:
    bad = dict(BASE, baseline={"train": {"epoch": 3}})
    with pytest.raises(
        ConfigError, match=r"recipe\.baseline\.train\.epoch: unknown key; did you mean 'epochs'"
    ):
        load_recipe(bad)


def test_unknown_stage_key_path() -> None:
    bad = dict(BASE, stages=[{"precision": {"dtyp": "fp16"}}])
    with pytest.raises(
        ConfigError,
        match=r"recipe\.stages\[0\]\.precision\.dtyp: unknown key; did you mean 'dtype'",
    ):
        load_recipe(bad)


def test_unknown_stage_name_suggests_nearest() -> None:
    with pytest.raises(
        ConfigError,
        match=r"recipe\.stages\[0\]\.precison: unknown stage 'precison'; did you mean 'precision'",
    ):
        load_recipe(dict(BASE, stages=[{"precison": {}}]))


def test_wrong_type_and_range() -> None:
    with pytest.raises(ConfigError, match=r"recipe\.baseline\.train\.lr: .*'fast'"):
        load_recipe(dict(BASE, baseline={"train": {"lr": "fast"}}))
    with pytest.raises(
        ConfigError, match=r"recipe\.data\.limit: Input should be greater than or equal to 1"
    ):
        load_recipe(dict(BASE, data={"name": "digits", "limit": 0}))
    with pytest.raises(
        ConfigError, match=r"recipe\.export\[0\]: Input should be 'safetensors' or 'onnx'"
    ):
        load_recipe(dict(BASE, export=["tflite"]))


def test_model_needs_exactly_one_source() -> None:
    with pytest.raises(ConfigError, match="give exactly one of 'zoo'"):
        load_recipe({"model": {"zoo": "mlp", "path": "x.py:f"}})
    with pytest.raises(ConfigError, match=r"recipe\.model: Field required"):
        load_recipe({"data": {"name": "digits"}})


def test_stage_with_two_techniques_is_rejected() -> None:
    with pytest.raises(ConfigError, match="a stage names exactly one technique"):
        load_recipe(dict(BASE, stages=[{"precision": {}, "prune": {}}]))


def test_missing_and_invalid_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {zoo: mlp\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_recipe(bad)


def test_bundled_and_example_recipes_validate() -> None:
    root = Path(__file__).resolve().parents[1]
    for path in [
        root / "dwindle" / "recipes" / "demo.yaml",
        *sorted((root / "examples").glob("*.yaml")),
    ]:
        assert load_recipe(path).model is not None


def test_bare_yaml_off_skips_energy(tmp_path: Path) -> None:
    """YAML 1.1 reads ``energy: off`` as False; the documented spelling must still work."""
    path = tmp_path / "r.yaml"
    path.write_text("model: {zoo: mlp}\ndata: {name: digits}\nmeasure: {energy: off}\n")
    assert load_recipe(path).measure.energy == "off"
    with pytest.raises(ConfigError, match=r"energy: Input should be 'auto'"):
        load_recipe(dict(BASE, measure={"energy": True}))


def test_seed_and_name_are_checked_with_the_recipe() -> None:
    with pytest.raises(ConfigError, match=r"recipe\.seed: Input should be greater than or equal"):
        load_recipe(dict(BASE, seed=-1))
    for bad in ("../../escape", ""):  # the name becomes runs/<name>: no path tricks
        with pytest.raises(ConfigError, match=r"recipe\.name: String should match pattern"):
            load_recipe(dict(BASE, name=bad))
    assert load_recipe(dict(BASE, name="digits-joint_v2.1")).name == "digits-joint_v2.1"


def test_a_key_given_twice_is_an_error_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "model: {zoo: mlp}\ndata: {name: digits}\n"
        "stages:\n  - prune: {method: magnitude, ratio: 0.5, ratio: 0.9}\n"
    )
    with pytest.raises(ConfigError, match=r"key 'ratio' is given twice \(line 4\)"):
        load_recipe(path)
