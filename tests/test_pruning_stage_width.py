"""Stage-width pruning of option-A CIFAR ResNets (dwindle.pruning.stage_width)."""

import copy
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from model_helpers import RGB, STAGES, X, silence, stream_width, stream_writers, tiny_resnet
from torch import nn

import dwindle as dw
from dwindle import data as dwdata
from dwindle.config import StageContext, apply, get_technique
from dwindle.errors import ConfigError
from dwindle.metrics import count_flops, count_params
from dwindle.models import create
from dwindle.models.resnet import DownsampleA
from dwindle.pipeline import run_recipe
from dwindle.pruning import (
    ChannelGather,
    FilterPruning,
    StageWidthPruning,
    keep_stage_channels_,
    prune_filters_,
    prune_stage_widths_,
    remove_block,
)


def _silence_stage(model: nn.Module, stage: str, channels: list[int]) -> None:
    """Zero ``channels`` of a stage's stream at every conv→bn writing it."""
    for conv, bn in stream_writers(model, stage):
        silence(conv, bn, channels)


def _masked(model: nn.Module, keep: Mapping[str, Sequence[int]]) -> nn.Module:
    """A copy of ``model`` whose dropped stream channels are forced to zero after every writer.

    Removing a channel of the stream is the same as holding it at zero everywhere, so the
    pruned model must compute exactly what this reference computes.
    """
    ref = copy.deepcopy(model)

    def zero_dropped(mask: torch.Tensor):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            return out * mask.view(1, -1, 1, 1)

        return hook

    for stage in STAGES:
        mask = torch.zeros(stream_width(ref, stage))
        mask[list(keep.get(stage, range(len(mask))))] = 1
        if stage == "layer1":  # relu(0) = 0: masking the stem's bn1 zeroes the stem's output
            ref.bn1.register_forward_hook(zero_dropped(mask))
        for block in getattr(ref, stage):
            if not isinstance(block, nn.Identity):
                block.register_forward_hook(zero_dropped(mask))
    return ref


# --- ChannelGather ---------------------------------------------------------------------------


def test_channel_gather_reproduces_option_a_pads_copies_and_pickles() -> None:
    x = torch.randn(2, 6, 8, 8)
    index = torch.tensor([6, 0, 1, 2, 3, 4, 5, 6])  # zero, six copies, zero: DownsampleA(1)
    gather = ChannelGather(index, in_channels=6, stride=2)
    assert torch.equal(gather(x), DownsampleA(1)(x))
    picked = ChannelGather(torch.tensor([5, 6, 0]), in_channels=6, stride=1)(x)
    assert torch.equal(picked[:, 0], x[:, 5]) and torch.equal(picked[:, 2], x[:, 0])
    assert not picked[:, 1].any()
    for clone in (copy.deepcopy(gather), pickle.loads(pickle.dumps(gather))):
        assert torch.equal(clone(x), gather(x))
    assert repr(gather) == "ChannelGather(in_channels=6, out_channels=8, stride=2, zeros=2)"
    assert "index" in gather.state_dict() and not list(gather.parameters())
    with pytest.raises(ValueError, match=r"entries in \[0, 6\]"):
        ChannelGather(torch.tensor([0, 7]), in_channels=6)


# --- exactness ------------------------------------------------------------------------------

# Width 8 → stages of 8, 16 (pad 4), 32 (pad 8) channels. Each dropped channel of a stage copies,
# through the option-A shortcut, a pad (zero) channel or a channel dropped in the stage before,
# so silencing its writers makes it exactly zero; kept channels 10 (layer2) and 13, 23 (layer3)
# copy dropped sources, so the gather must map them to zero.
DROP = {
    "layer1": [1, 6],
    "layer2": [2, 5, 13, 15],
    "layer3": [0, 5, 7, 10, 21, 24, 27, 31],
}


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_pruning_silenced_channels_keeps_outputs_exact(criterion: str) -> None:
    model = tiny_resnet()
    for stage, drop in DROP.items():
        _silence_stage(model, stage, drop)
    ref = model(X)
    keep = prune_stage_widths_(
        model, StageWidthPruning(ratio=0.25, criterion=criterion), example_input=RGB
    )
    widths = dict(zip(STAGES, (8, 16, 32), strict=True))
    assert keep == {s: sorted(set(range(widths[s])) - set(DROP[s])) for s in STAGES}
    assert [stream_width(model, s) for s in STAGES] == [6, 12, 24]
    assert model.layer1[0].conv1.in_channels == 6 and model.layer2[0].conv1.in_channels == 6
    assert model.layer2[1].conv1.in_channels == 12 and model.linear.in_features == 24
    assert isinstance(model.layer2[1].shortcut, nn.Identity)
    gather = model.layer2[0].shortcut
    assert isinstance(gather, ChannelGather) and gather.in_channels == 6
    # kept outputs 0 1 3 | 4 6 7 8 9 | 10 | 11 | 12 14: pads, sources 0 2 3 4 5 (now 0-4),
    # source 6 (dropped), source 7 (now 5), pads; 6 means zero
    assert gather.index.tolist() == [6, 6, 6, 0, 1, 2, 3, 4, 6, 5, 6, 6]
    assert torch.allclose(model(X), ref, atol=1e-5), (model(X) - ref).abs().max()


def test_primitive_equals_zeroed_stream_on_pruned_and_layer_pruned_models() -> None:
    model = tiny_resnet()
    remove_block(model, "layer2.1")  # a removed block passes the stream through
    prune_filters_(model, FilterPruning(ratio=0.5, targets=("layer*.*.conv1",)), example_input=RGB)
    gen = torch.Generator().manual_seed(3)
    for round_ in range(2):  # the second round starts from ChannelGather shortcuts
        widths = {s: stream_width(model, s) for s in STAGES}
        keep = {s: torch.randperm(w, generator=gen)[: w * 3 // 4] for s, w in widths.items()}
        keep = {s: sorted(k.tolist()) for s, k in keep.items()}
        ref = _masked(model, keep)(X)
        changed = keep_stage_channels_(model, keep, example_input=RGB)
        assert "layer3.0.shortcut" in changed and "linear" in changed
        assert [stream_width(model, s) for s in STAGES] == [len(keep[s]) for s in STAGES], round_
        assert torch.allclose(model(X), ref, atol=1e-5), (round_, (model(X) - ref).abs().max())
    assert model.layer1[0].conv1.out_channels == 4  # FilterPruning's narrowing is untouched


# --- size, training, export -----------------------------------------------------------------


def test_params_and_flops_drop_output_shape_kept_and_model_trains() -> None:
    model = create("resnet20").train()
    before_p, before_f = count_params(model), count_flops(model, RGB)
    prune_stage_widths_(model, StageWidthPruning(ratio=0.5), example_input=RGB)
    assert [stream_width(model, s) for s in STAGES] == [8, 16, 32]
    after_p, after_f = count_params(model), count_flops(model, RGB)
    # every conv2 halves its outputs, every conv1 its inputs, the head its features
    assert 1.9 < before_p / after_p < 2.1 and 1.9 < before_f / after_f < 2.1
    assert model.training  # the check runs in eval mode and restores the mode
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    y = torch.randint(0, 10, (6,))
    loss = F.cross_entropy(model(X), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    assert model(X).shape == (6, 10) and torch.isfinite(F.cross_entropy(model(X), y))


def test_onnx_export_is_plain_ops_and_matches_torch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from dwindle.export.onnx_io import check_onnx, export_onnx

    model = tiny_resnet()
    prune_stage_widths_(model, StageWidthPruning(ratio=0.5), example_input=RGB)
    path = export_onnx(model, RGB, tmp_path / "narrow.onnx")
    assert check_onnx(path, model, X, atol=1e-4) < 1e-4
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"Gather", "Pad"} <= ops
    assert all(n.domain in ("", "ai.onnx") for n in graph.node)  # loads without dwindle


# --- options ---------------------------------------------------------------------------------


def test_per_stage_ratios_and_targets() -> None:
    model = tiny_resnet()
    cfg = StageWidthPruning(ratio=0.25, ratios={"layer3": 0.5, "layer1": 0.0})
    keep = prune_stage_widths_(model, cfg, example_input=RGB)
    assert [len(keep[s]) for s in STAGES] == [8, 12, 16]
    assert isinstance(model.layer2[0].shortcut, ChannelGather)
    assert model.layer2[0].shortcut.in_channels == 8

    only3 = tiny_resnet()
    keep = prune_stage_widths_(
        only3, StageWidthPruning(ratio=0.5, targets=("layer3",)), example_input=RGB
    )
    assert [len(keep[s]) for s in STAGES] == [8, 16, 16]
    assert isinstance(only3.layer2[0].shortcut, DownsampleA)  # nothing changed at that boundary
    assert isinstance(only3.layer3[0].shortcut, ChannelGather)
    excl = tiny_resnet()
    prune_stage_widths_(excl, StageWidthPruning(ratio=0.5, exclude=("layer1",)), example_input=RGB)
    assert [stream_width(excl, s) for s in STAGES] == [8, 8, 16]


@pytest.mark.parametrize(
    ("round_to", "widths"),
    [(1, [12, 23, 45]), (4, [12, 24, 44]), (8, [16, 24, 48])],  # from 16 - 4, 32 - 9, 64 - 19
)
def test_round_to_keeps_nearest_multiple(round_to: int, widths: list[int]) -> None:
    model = create("resnet20")
    prune_stage_widths_(model, StageWidthPruning(ratio=0.3, round_to=round_to), example_input=RGB)
    assert [stream_width(model, s) for s in STAGES] == widths


def test_l1_and_l2_rank_channels_differently() -> None:
    model = tiny_resnet(depth=8)  # one block per stage; layer3.0.conv2 is 32 → 32
    conv, bn = model.layer3[0].conv2, model.layer3[0].bn2
    bn.weight.data.fill_(1.0)
    conv.weight.data.fill_(1.0)  # every channel: l1 = 288, l2 ≈ 17
    conv.weight.data[3] = 0
    conv.weight.data[3, 0, 1, 1] = 3.0  # one large weight: l1 = 3, l2 = 3
    conv.weight.data[7] = 0.02  # many small weights: l1 = 5.76, l2 = 0.34
    cfg = {"ratio": 0.05, "targets": ("layer3",)}  # removes int(0.05 · 32) = 1 channel
    l1 = prune_stage_widths_(copy.deepcopy(model), StageWidthPruning(**cfg), example_input=RGB)
    l2 = prune_stage_widths_(
        copy.deepcopy(model), StageWidthPruning(**cfg, criterion="l2"), example_input=RGB
    )
    assert set(range(32)) - set(l1["layer3"]) == {3}
    assert set(range(32)) - set(l2["layer3"]) == {7}
    conv.weight.data.fill_(0.01)  # equal filters: the batch-norm scale |γ| decides
    bn.weight.data[11] = 0.1
    bn.weight.data[12] = -2.0  # a large scale, whatever its sign
    l1 = prune_stage_widths_(copy.deepcopy(model), StageWidthPruning(**cfg), example_input=RGB)
    assert set(range(32)) - set(l1["layer3"]) == {11}


# --- chaining with filter pruning ------------------------------------------------------------


def test_filter_pruning_after_stage_widths() -> None:
    model = tiny_resnet()
    prune_stage_widths_(model, StageWidthPruning(ratio=0.25), example_input=RGB)
    ref_p = count_params(model)
    notes: list[str] = []
    cfg = FilterPruning(ratio=0.5, scope="group", targets=("layer*.*.conv1",))
    prune_filters_(model, cfg, example_input=RGB, notes=notes)
    assert [model.get_submodule(f"{s}.{i}.conv1").out_channels for s in STAGES for i in (0, 1)] \
        == [4, 4, 8, 8, 16, 16]  # fmt: skip
    assert [stream_width(model, s) for s in STAGES] == [6, 12, 24] and count_params(model) < ref_p
    assert not notes and model(X).shape == (6, 10)


def test_filter_pruning_follows_a_channel_gather_exactly() -> None:
    # A pruned shortcut is a ChannelGather, which Torch-Pruning follows (gather_pruner): the
    # stream on both of its sides can be filter-pruned, with its index updated.
    model = tiny_resnet()
    prune_stage_widths_(model, StageWidthPruning(ratio=0.25), example_input=RGB)
    zeros = (model.layer2[0].shortcut.index == 6).nonzero().flatten().tolist()
    silenced = {"layer1": [0, 3, 4], "layer2": zeros[:6]}  # layer2: channels fed a zero
    for stage, chans in silenced.items():
        _silence_stage(model, stage, chans)
    ref = model(X)
    targets = ("conv1", "layer1.*.conv2", "layer2.*.conv2")  # the writers of two streams
    notes: list[str] = []
    prune_filters_(model, FilterPruning(ratio=0.5, targets=targets), example_input=RGB, notes=notes)
    assert [stream_width(model, s) for s in STAGES] == [3, 6, 24] and not notes
    assert model.layer2[0].shortcut.in_channels == 3 and len(model.layer2[0].shortcut.index) == 6
    assert torch.allclose(model(X), ref, atol=1e-5), (model(X) - ref).abs().max()
    # equal widths on both sides of a gather do not fool the graph into coupling the streams
    same = tiny_resnet()
    prune_stage_widths_(
        same, StageWidthPruning(ratio=0.5, ratios={"layer1": 0, "layer3": 0.75}), example_input=RGB
    )
    assert [stream_width(same, s) for s in STAGES] == [8, 8, 8]
    ref = _masked(same, {"layer2": [1, 3, 4, 6]})
    for conv, bn in stream_writers(same, "layer2"):
        for t in (conv.weight.data, bn.weight.data, bn.bias.data):
            t[[0, 2, 5, 7]] = 0
    prune_filters_(same, FilterPruning(ratio=0.5, targets=("layer2.*.conv2",)), example_input=RGB)
    assert [stream_width(same, s) for s in STAGES] == [8, 4, 8]
    assert torch.allclose(same(X), ref(X), atol=1e-5)


# --- registry, verb and recipe ---------------------------------------------------------------


def test_registered_stage_and_prune_verb_dispatch() -> None:
    assert get_technique("prune_stage_widths").config is StageWidthPruning
    data = dwdata.load("synthetic", n_samples=20, shape=[3, 8, 8], num_classes=10)
    model = tiny_resnet()
    out = dw.prune_(model, StageWidthPruning(ratio=0.5), data=data)
    assert out is model and [stream_width(model, s) for s in STAGES] == [4, 8, 16]
    ctx = StageContext(data=data)
    apply(model, StageWidthPruning(ratio=0.5), ctx)
    assert [stream_width(model, s) for s in STAGES] == [2, 4, 8]
    assert any("layer3 16→8" in n for n in ctx.notes)
    with pytest.raises(ConfigError, match="stage-width pruning needs an input"):
        dw.prune_(tiny_resnet(), StageWidthPruning())


def test_recipe_runs_stage_width_stage_and_exports_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    doc = {
        "name": "stage_widths",
        "model": {"zoo": "resnet", "args": {"depth": 8, "width": 8, "num_classes": 3,
                                            "input_shape": [3, 8, 8]}},
        "data": {"name": "synthetic",
                 "options": {"n_samples": 60, "shape": [3, 8, 8], "num_classes": 3}},
        "stages": [{"prune_stage_widths": {"ratio": 0.5, "ratios": {"layer3": 0.25}},
                    "name": "narrow"}],
        "measure": {"batch_sizes": [1, 4], "runs": 2, "warmup": 1, "energy": "estimate"},
        "export": ["onnx"],
    }  # fmt: skip
    result = run_recipe(doc, tmp_path / "run")
    rows = {r["variant"]: r["metrics"] for r in result.report["rows"]}
    assert rows["narrow"]["params"] < rows["baseline"]["params"]
    narrow = result.models["narrow"]
    assert [stream_width(narrow, s) for s in STAGES] == [4, 8, 24]
    assert any("prune_stage_widths: residual-stream widths" in n for n in result.report["notes"])
    assert any("ONNX export checked" in n for n in result.report["notes"])
