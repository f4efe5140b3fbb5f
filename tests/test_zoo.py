"""Model zoo: parameter counts, shapes on every dataset's inputs, checkpoints, user specs."""

from __future__ import annotations

import copy
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from dwindle.errors import ModelSpecError
from dwindle.models import (
    DownsampleA,
    available_models,
    build_model,
    create,
    load_model_spec,
    register_model,
)
from dwindle.models import zoo as zoo_module

MNIST, DIGITS, MNIST1D, CIFAR = (1, 28, 28), (1, 8, 8), (1, 40), (3, 32, 32)
CKPT_DIR = Path(__file__).resolve().parents[2] / "shared" / "models" / "cifar10-resnet"


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "expected"),
    [("lenet300", 266_610), ("lenet5", 431_080), ("resnet20", 269_722), ("resnet56", 853_018)],
)
def test_published_parameter_counts(name: str, expected: int) -> None:
    assert n_params(create(name)) == expected


def test_resnet_depth_aliases_match() -> None:
    assert n_params(create("resnet", depth=56)) == n_params(create("resnet56"))
    assert n_params(create("resnet", depth=32)) == 464_154


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("mlp", {}, MNIST),
        ("mlp", {"input_shape": DIGITS, "hidden": (32,)}, DIGITS),
        ("mlp", {"input_shape": MNIST1D, "dropout": 0.1}, MNIST1D),
        ("mlp", {"input_shape": CIFAR}, CIFAR),
        ("lenet300", {}, MNIST),
        ("lenet300", {"input_shape": DIGITS}, DIGITS),
        ("lenet300", {"input_shape": MNIST1D}, MNIST1D),
        ("lenet5", {}, MNIST),
        ("lenet5", {"input_shape": DIGITS, "padding": 2}, DIGITS),
        ("lenet5", {"input_shape": CIFAR}, CIFAR),
        ("cnn4bn", {}, MNIST),
        ("cnn4bn", {"in_channels": 1, "dropout": 0.2}, DIGITS),
        ("cnn4bn", {"input_shape": CIFAR}, CIFAR),
        ("resnet", {"depth": 8, "in_channels": 1}, MNIST),
        ("resnet", {"depth": 8, "input_shape": DIGITS}, DIGITS),
        ("resnet20", {}, CIFAR),
        ("cnn1d", {}, MNIST1D),
        ("cnn1d", {"input_shape": (1, 40), "batch_norm": False, "channels": 25}, MNIST1D),
    ],
)
def test_forward_shapes(name: str, kwargs: dict, shape: tuple[int, ...]) -> None:
    model = create(name, num_classes=7, **kwargs).eval()
    assert model(torch.randn(3, *shape)).shape == (3, 7)


@pytest.mark.parametrize("name", sorted(available_models()))
def test_every_zoo_model_conforms(name: str) -> None:
    """Conformance suite: every registered model takes num_classes/input_shape and pickles."""
    shape = MNIST1D if name == "cnn1d" else CIFAR if name.startswith("resnet") else MNIST
    model = create(name, num_classes=5, input_shape=shape).eval()
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 5)
    clone = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(clone(x), out)
    torch.testing.assert_close(copy.deepcopy(model)(x), out)
    assert available_models()[name]


def test_module_names_are_stable() -> None:
    names = dict(create("lenet300").named_modules())
    assert {"fc1", "fc2", "fc3"} <= set(names)
    names = dict(create("cnn4bn").named_modules())
    assert {"features.conv1", "features.bn4", "features.pool2", "classifier"} <= set(names)
    keys = set(create("resnet20").state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "linear.bias"} <= keys
    assert "layer3.2.bn2.num_batches_tracked" in keys
    assert not any("shortcut" in k for k in keys)


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.randn(2, 16, 32, 32)
    out = DownsampleA(8)(x)
    assert out.shape == (2, 32, 16, 16)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0
    block = create("resnet20").layer2[0]
    assert isinstance(block.shortcut, DownsampleA)
    assert block(torch.randn(1, 16, 32, 32)).shape == (1, 32, 16, 16)


@pytest.mark.parametrize(
    ("name", "file"), [("resnet20", "resnet20-12fca82f.th"), ("resnet56", "resnet56-4bfd9763.th")]
)
def test_published_checkpoint_loads_strict(name: str, file: str) -> None:
    path = CKPT_DIR / file
    if not path.exists():
        pytest.skip(f"{path} not present")
    blob = torch.load(path, weights_only=True, map_location="cpu")
    state = {k.removeprefix("module."): v for k, v in blob["state_dict"].items()}
    model = create(name)
    model.load_state_dict(state, strict=True)
    out = model.eval()(torch.randn(2, *CIFAR))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: create("lenet30"), "did you mean 'lenet300'"),
        (lambda: create("nope"), "available: cnn1d, cnn4bn"),
        (lambda: create("mlp", num_class=3), "did you mean 'num_classes'"),
        (lambda: create("lenet5", depth=3), "accepted: num_classes, input_shape, padding"),
        (lambda: create("resnet", depth=21), "depth must be 6n+2"),
        (lambda: create("resnet", width=15), "width must be even"),
        (lambda: create("lenet5", input_shape=DIGITS), "pass padding=2"),
        (lambda: create("mlp", input_shape=(1, -2)), "input_shape must be a tuple of positive"),
        (lambda: create("mlp", input_shape="abc"), "input_shape must be a tuple of positive"),
        (lambda: create("cnn4bn", input_shape=MNIST1D), "input_shape must have 3 dimensions"),
        (lambda: create("cnn1d", input_shape=MNIST), "input_shape must have 2 dimensions"),
        (lambda: create("cnn4bn", input_shape=CIFAR, in_channels=3), "not both"),
        (lambda: create("cnn4bn", input_shape=(1, 2, 2)), "at least 4×4"),
        (lambda: create("cnn4bn", widths=(8, 8)), "widths must be 4 positive ints"),
        (lambda: create("mlp", hidden=(0, 4)), "hidden must be a sequence of positive ints"),
        (lambda: create("mlp", dropout=1.0), "dropout must be a float in [0, 1)"),
        (lambda: create("lenet300", num_classes=0), "num_classes must be a positive integer"),
        (lambda: create("cnn1d", channels=0), "channels must be a positive integer"),
    ],
)
def test_bad_zoo_arguments_raise_with_message(call, message: str) -> None:
    with pytest.raises(ModelSpecError) as info:
        call()
    assert message in str(info.value)


def test_register_model_adds_to_zoo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zoo_module, "_REGISTRY", dict(zoo_module._REGISTRY))

    @register_model("tiny", "one linear layer")
    def tiny(num_classes: int = 10, input_shape: tuple[int, ...] = (4,)) -> nn.Module:
        return nn.Linear(input_shape[0], num_classes)

    assert available_models()["tiny"] == "one linear layer"
    assert create("tiny", num_classes=3).out_features == 3


# --- user model specs -----------------------------------------------------------------------

USER_FILE = """
import torch
from torch import nn
from helper_layers import WIDTH


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(WIDTH, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def build(num_classes=10):
    return Net(num_classes)


def not_a_model():
    return 42


def broken():
    raise RuntimeError("boom")
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    (tmp_path / "helper_layers.py").write_text("WIDTH = 6\n")
    path = tmp_path / "my_model.py"
    path.write_text(USER_FILE)
    return path


def test_user_factory_builds_and_pickles(user_file: Path) -> None:
    model = load_model_spec(f"{user_file}:build", num_classes=3)
    assert model(torch.randn(2, 6)).shape == (2, 3)
    clone = pickle.loads(pickle.dumps(model))  # the file's module stays importable by name
    assert clone.fc.out_features == 3
    assert str(user_file.parent) not in sys.path
    assert isinstance(load_model_spec(f"{user_file}:Net"), nn.Module)


def test_spec_with_zoo_name() -> None:
    assert n_params(load_model_spec("lenet300")) == 266_610
    assert load_model_spec("mlp", num_classes=4, hidden=(8,)).fc2.out_features == 4


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("{dir}/missing.py:build", {}, "does not exist"),
        ("{file}", {}, "names no factory; use the form 'path/to/file.py:factory'"),
        ("{file}:", {}, "callables defined in"),
        ("{file}:nothere", {}, "defines no callable 'nothere' (callables defined there: Net"),
        ("{file}:not_a_model", {}, "returned int, not a torch.nn.Module"),
        ("{file}:build", {"depth": 3}, "it accepts: num_classes"),
        ("{file}:broken", {}, "raised RuntimeError: boom"),
        ("{dir}/bad.py:build", {}, "importing model file"),
        ("weights.pt:build", {}, "not a zoo name nor of the form"),
        ("", {}, "a model spec must be a zoo name"),
        ("lenet3000", {}, "did you mean 'lenet300'"),
    ],
)
def test_bad_user_specs_raise_with_message(
    user_file: Path, spec: str, kwargs: dict, message: str
) -> None:
    (user_file.parent / "bad.py").write_text("def build(:\n")
    spec = spec.format(file=user_file, dir=user_file.parent)
    with pytest.raises(ModelSpecError) as info:
        load_model_spec(spec, **kwargs)
    assert message in str(info.value)
    if "missing.py" in spec:
        assert "missing.py" in str(info.value)
    if spec == str(user_file):
        assert "Net, broken, build, not_a_model" in str(info.value)


def test_build_model_loads_weights(monkeypatch: pytest.MonkeyPatch, user_file: Path) -> None:
    calls = []
    fake = types.ModuleType("dwindle.export")
    fake.load_weights = lambda model, path: calls.append((type(model).__name__, path))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dwindle.export", fake)
    model = build_model(f"{user_file}:build", weights="w.safetensors", num_classes=2)
    assert calls == [("Net", "w.safetensors")]
    assert model.fc.out_features == 2
    build_model("lenet300")
    assert len(calls) == 1
