import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from model_helpers import randomize_bn, silence
from torch import nn

from dwindle import data as dwdata
from dwindle.config import apply, get_technique
from dwindle.errors import ConfigError
from dwindle.metrics import count_flops, count_params
from dwindle.models import create
from dwindle.pipeline import run_recipe
from dwindle.pruning import (
    FilterPruning,
    LayerPruning,
    NeuronPruning,
    TracingError,
    merge_plan,
    prune_filters_,
    prune_layers_,
    prune_neurons_,
    removable_blocks,
    remove_channels,
    trace_channels,
)

FAST_MEASURE = {"batch_sizes": [1, 4], "runs": 3, "warmup": 1, "energy": "estimate"}
IMG = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
RGB = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# --- physical removal ------------------------------------------------------------------------


def test_removing_zero_channels_keeps_outputs_identical() -> None:
    torch.manual_seed(0)
    model = randomize_bn(create("cnn4bn"))
    f = model.features
    for i, width in enumerate((32, 32, 64, 64), start=1):
        silence(getattr(f, f"conv{i}"), getattr(f, f"bn{i}"), list(range(0, width, 4)))
    x = torch.randn(8, 1, 28, 28)
    ref = model(x)
    prune_filters_(model, FilterPruning(ratio=0.25, criterion="l1"), example_input=IMG)
    assert [getattr(f, f"conv{i}").out_channels for i in range(1, 5)] == [24, 24, 48, 48]
    assert model.classifier.in_features == 48
    assert torch.allclose(model(x), ref, atol=1e-5), (model(x) - ref).abs().max()


def test_params_and_flops_equal_the_narrower_architecture() -> None:
    model = create("cnn4bn")
    before_p, before_f = count_params(model), count_flops(model, IMG)
    prune_filters_(model, FilterPruning(ratio=0.5), example_input=IMG)
    narrow = create("cnn4bn", widths=(16, 16, 32, 32))
    assert count_params(model) == count_params(narrow)
    assert count_flops(model, IMG) == count_flops(narrow, IMG)
    assert before_p / count_params(model) > 3.8 and before_f / count_flops(model, IMG) > 3.8
    assert type(model.features.conv2) is nn.Conv2d  # a plain dense layer, no masks or wrappers
    assert not any(n.endswith("_mask") for n, _ in model.named_buffers())


def test_remove_channels_primitive_prunes_one_group_by_hand() -> None:
    model = randomize_bn(create("cnn4bn"))
    silence(model.features.conv3, model.features.bn3, [1, 5, 9])
    x = torch.randn(4, 1, 28, 28)
    ref = model(x)
    touched = remove_channels(model, "features.conv3", [1, 5, 9], IMG)
    assert set(touched) == {"features.conv3", "features.bn3", "features.conv4"}
    assert model.features.conv3.out_channels == 61 and model.features.conv4.in_channels == 61
    assert torch.allclose(model(x), ref, atol=1e-5)


class _TinyResNet(nn.Module):
    """Identity shortcuts only, so the stem is coupled with every block's second conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.blocks = nn.ModuleList()
        for _ in range(2):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "conv1": nn.Conv2d(8, 8, 3, padding=1, bias=False),
                        "bn1": nn.BatchNorm2d(8),
                        "conv2": nn.Conv2d(8, 8, 3, padding=1, bias=False),
                        "bn2": nn.BatchNorm2d(8),
                    }
                )
            )
        self.left = nn.Conv2d(8, 4, 1)
        self.right = nn.Conv2d(8, 4, 1)
        self.head = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        for b in self.blocks:
            x = F.relu(x + b["bn2"](b["conv2"](F.relu(b["bn1"](b["conv1"](x))))))
        x = self.head(torch.cat([self.left(x), self.right(x)], dim=1))  # a concatenation
        return self.fc(x.mean((2, 3)))


def test_residual_adds_and_concat_stay_consistent() -> None:
    model = randomize_bn(_TinyResNet())
    chans = [2, 5]
    silence(model.stem, model.bn, chans)
    for b in model.blocks:
        silence(b["conv2"], b["bn2"], chans)
    model.right.weight.data[[0, 3]] = 0
    model.right.bias.data[[0, 3]] = 0
    x = torch.randn(3, 3, 32, 32)
    ref = model(x)
    touched = remove_channels(model, "stem", chans, RGB)
    assert {"blocks.0.conv2", "blocks.1.bn2", "blocks.1.conv1", "left"} <= set(touched)
    remove_channels(model, "right", [0, 3], RGB)  # its slice of the concat in `head`
    assert model.head.in_channels == 6 and model.blocks[1]["conv2"].out_channels == 6
    assert torch.allclose(model(x), ref, atol=1e-5)


def test_resnet20_blocks_pruned_and_option_a_shortcut_left_whole() -> None:
    model = randomize_bn(create("resnet20"))
    block = model.layer2[1]
    silence(block.conv1, block.bn1, list(range(16)))
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    notes: list[str] = []
    prune_filters_(model, FilterPruning(ratio=0.5), example_input=RGB, notes=notes)
    assert block.conv1.out_channels == 16 and block.conv2.in_channels == 16
    assert model.conv1.out_channels == 16 and model.layer3[2].conv2.out_channels == 64
    assert any("conv1 kept whole" in n and "option-A" in n for n in notes)
    assert torch.allclose(model(x)[:, :0], ref[:, :0])  # runs; shape kept
    # only layer2.1's silent half was removed there, so that block computes the same
    y = model.layer1(F.relu(model.bn1(model.conv1(x))))
    assert y.shape == (2, 16, 32, 32)
    with pytest.raises(TracingError, match=r"option-A shortcut.*Exclude 'conv1'"):
        remove_channels(model, "conv1", [0], RGB)


def test_onnx_export_of_pruned_model_runs_in_onnxruntime(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from dwindle.export.onnx_io import check_onnx, export_onnx

    model = randomize_bn(create("cnn4bn"))
    prune_filters_(model, FilterPruning(ratio=0.5), example_input=IMG)
    path = export_onnx(model, IMG, tmp_path / "pruned.onnx")
    assert check_onnx(path, model, torch.randn(4, 1, 28, 28), atol=1e-4) < 1e-4


# --- criteria ----------------------------------------------------------------------------------


def test_srinivas_babu_merge_equals_closed_form() -> None:
    fc1, fc2 = nn.Linear(2, 3), nn.Linear(3, 2)
    w = torch.tensor([[1.0, -1.0], [0.5, 2.0], [1.0, -1.0]])  # neurons 0 and 2 are twins
    fc1.weight.data, fc1.bias.data = w, torch.tensor([0.1, 0.0, 0.1])
    a = torch.tensor([[1.0, 3.0, 0.5], [2.0, -1.0, 0.25]])  # neuron 2 has less outgoing energy
    fc2.weight.data = a.clone()
    model = nn.Sequential(fc1, nn.ReLU(), fc2)
    x = torch.randn(16, 2)
    ref = model(x)
    prune_neurons_(model, NeuronPruning(ratio=0.34), example_input=x[:1])
    assert model[0].out_features == 2
    want = torch.tensor([[1.0 + 0.5, 3.0], [2.0 + 0.25, -1.0]])  # a_0 ← a_0 + a_2
    assert torch.allclose(model[2].weight, want)
    assert torch.allclose(model(x), ref, atol=1e-6)


def test_merge_plan_picks_least_saliency_pair() -> None:
    # ‖W_i − W_j‖²: d(0,1)=1, d(0,2)=4, d(1,2)=1; ⟨a²⟩ = [4, 1, 9]
    incoming = torch.tensor([[0.0], [1.0], [2.0]])
    outgoing = torch.tensor([[2.0, 1.0, 3.0]])
    # s(i,j) = ⟨a_j²⟩ d(i,j): s(0,1)=1, s(2,1)=1 (tie → first), s(1,0)=4, s(1,2)=9 ...
    assert merge_plan(incoming, outgoing, 1) == [(1, 0)]
    # after the merge a_0 = 3: s(0,2)=9*4=36, s(2,0)=9*4=36 → tie → (0 into 2) first in order
    assert merge_plan(incoming, outgoing, 2)[1] in {(2, 0), (0, 2)}


def test_activation_neuron_pruning_drops_dead_units() -> None:
    data = dwdata.load("synthetic", n_samples=200, shape=[16], num_classes=3)
    torch.manual_seed(0)
    model = create("mlp", num_classes=3, input_shape=(16,), hidden=(12,)).eval()
    model.fc1.bias.data[[3, 7]] = -1e3  # dead after ReLU
    cfg = NeuronPruning(criterion="activation", ratio=0.2, batches=2, batch_size=64)
    x = data.example_input(32)
    ref = model(x)
    notes: list[str] = []
    prune_neurons_(model, cfg, data=data, notes=notes)
    assert model.fc1.out_features == 10 and model.fc2.in_features == 10
    assert torch.allclose(model(x), ref, atol=1e-5)
    assert any("fc2 kept whole" in n for n in notes)


# --- depth ---------------------------------------------------------------------------------


def test_block_removal_keeps_resnet_runnable() -> None:
    model = randomize_bn(create("resnet20"))
    blocks = removable_blocks(model, RGB)
    assert blocks == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3) if (s, i) not in {
        (2, 0), (3, 0)}]  # fmt: skip
    before = count_params(model)
    removed = prune_layers_(model, LayerPruning(blocks=3), example_input=RGB)
    assert len(removed) == 3 and set(removed) <= set(blocks)
    assert all(isinstance(model.get_submodule(n), nn.Identity) for n in removed)
    assert count_params(model) < before and model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_accuracy_criterion_removes_the_least_needed_block() -> None:
    data = dwdata.load("synthetic", n_samples=200, shape=[3, 8, 8], num_classes=3)
    model = create("resnet20", num_classes=3, input_shape=(3, 8, 8)).eval()
    cfg = LayerPruning(blocks=1, criterion="accuracy", eval_samples=40)
    removed = prune_layers_(model, cfg, data=data)
    assert len(removed) == 1 and model(data.example_input(2)).shape == (2, 3)


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [FilterPruning, NeuronPruning])
@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_outside_unit_interval(cls: type, ratio: float) -> None:
    with pytest.raises(ConfigError, match=r"ratio: Input should be (less|greater)"):
        cls(ratio=ratio)


def test_unsupported_layer_type_names_module_and_types() -> None:
    with pytest.raises(
        ConfigError,
        match=r"'features\.bn1' \(BatchNorm2d\); supported layer types: Conv1d, Conv2d, Conv3d",
    ):
        prune_filters_(
            create("cnn4bn"), FilterPruning(targets=("features.bn1",)), example_input=IMG
        )
    with pytest.raises(ConfigError, match=r"'features\.conv1' \(Conv2d\); supported.*: Linear"):
        prune_neurons_(
            create("cnn4bn"), NeuronPruning(targets=("features.conv1",)), example_input=IMG
        )


def test_a_selection_with_nothing_to_prune_is_an_error_not_a_no_op() -> None:
    conv = FilterPruning(targets=("features.conv1",), exclude=("features.conv1",))
    with pytest.raises(ConfigError, match=r"select no Conv1d, Conv2d, Conv3d layer"):
        prune_filters_(create("cnn4bn"), conv, example_input=IMG)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(ConfigError, match=r"select no Linear layer"):
        prune_neurons_(mlp, NeuronPruning(targets=("0",), exclude=("0",)))
    # a model without any supported layer says so once, instead of naming one layer to exclude
    with pytest.raises(ConfigError, match=r"Sequential has none; for Linear layers use prune_neu"):
        prune_filters_(mlp, FilterPruning(ratio=0.5), example_input=torch.randn(1, 6))


def test_target_pattern_matching_nothing() -> None:
    with pytest.raises(ConfigError, match=r"target pattern 'feature\.\*' matches no module"):
        prune_filters_(create("cnn4bn"), FilterPruning(targets=("feature.*",)), example_input=IMG)


class _Detach(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.detach().numpy().copy())


class _Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("data-dependent shape")


def test_untraceable_model_names_the_layer_and_suggests_exclude() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), _Detach(), nn.Conv2d(4, 4, 3), nn.Flatten())
    with pytest.raises(TracingError, match=r"module '1' \(_Detach\) cuts the autograd.*exclude="):
        prune_filters_(net, FilterPruning(), example_input=IMG)
    # the suggested fix; pruning the last conv would change the output shape, which is refused
    with pytest.raises(TracingError, match=r"changed its output shape: \(1, 1152\) instead of"):
        prune_filters_(net, FilterPruning(exclude=("0",)), example_input=IMG)
    assert net[2].out_channels == 4  # restored after the refused change
    net = nn.Sequential(nn.Conv2d(1, 4, 3), _Detach(), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1))
    prune_filters_(net, FilterPruning(exclude=("0", "3")), example_input=IMG)
    assert net[2].out_channels == 2
    boom = nn.Sequential(nn.Conv2d(1, 4, 3), _Boom())
    with pytest.raises(TracingError, match=r"RuntimeError in module '1'.*exclude=\('1',\)"):
        trace_channels(boom, IMG)


def test_missing_inputs_are_explained() -> None:
    with pytest.raises(ConfigError, match="needs an input to trace"):
        prune_filters_(create("cnn4bn"), FilterPruning())
    with pytest.raises(ConfigError, match="'taylor' needs gradients, hence data"):
        prune_filters_(create("cnn4bn"), FilterPruning(criterion="taylor"), example_input=IMG)
    with pytest.raises(ConfigError, match="would remove every removable block"):
        prune_layers_(create("resnet20"), LayerPruning(blocks=7), example_input=RGB)
    with pytest.raises(ConfigError, match=r"idxs must be distinct channel indices in \[0, 32\)"):
        remove_channels(create("cnn4bn"), "features.conv1", [40], IMG)


# --- registry and recipe -------------------------------------------------------------------


def test_stages_registered_and_apply_returns_smaller_model() -> None:
    assert get_technique("prune_filters").config is FilterPruning
    assert get_technique("prune_neurons").config is NeuronPruning
    assert get_technique("prune_layers").config is LayerPruning
    data = dwdata.load("synthetic", n_samples=60, shape=[1, 28, 28], num_classes=10)
    from dwindle.config import StageContext

    model = create("cnn4bn")
    out = apply(copy.deepcopy(model), FilterPruning(ratio=0.5), StageContext(data=data))
    assert count_params(out) < count_params(model) / 3


def test_recipe_runs_structured_stages(tmp_path: Path) -> None:
    doc = {
        "name": "structured",
        "model": {"zoo": "mlp", "args": {"hidden": [32, 16]}},
        "data": {"name": "digits"},
        "baseline": {"train": {"epochs": 3, "optimizer": "adam", "lr": 0.01, "progress": False}},
        "stages": [
            {"prune_neurons": {"ratio": 0.5}, "name": "neurons"},
            {
                "prune_neurons": {"ratio": 0.25, "criterion": "activation"},
                "name": "neurons_act",
                "finetune": {"epochs": 1, "optimizer": "adam", "lr": 0.001, "progress": False},
            },
        ],
        "measure": FAST_MEASURE,
    }
    result = run_recipe(doc, tmp_path / "run")
    rows = {r["variant"]: r["metrics"] for r in result.report["rows"]}
    assert rows["neurons"]["params"] < rows["baseline"]["params"]
    assert rows["neurons_act"]["params"] < rows["neurons"]["params"]
    assert rows["neurons"]["accuracy"] > 0.5
    assert result.models["neurons_act"].fc2.out_features == 6
    assert any("prune_neurons" in n for n in result.report["notes"])
