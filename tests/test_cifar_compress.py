"""Compressing CIFAR ResNets the messy way real checkpoints come (issue 11), on tiny models.

No test reads the real CIFAR-10 data or the published checkpoints: models are tiny option-A
ResNets, data tiny synthetic CIFAR-format files.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from dwindle import data as dwdata
from dwindle.errors import CheckpointError, ConfigError
from dwindle.export import load_weights
from dwindle.models import create
from dwindle.pruning import FilterPruning, TracingError, prune_filters_
from dwindle.pruning.verify import check_forward, output_shapes
from dwindle.quantization import QAT, convert_qat
from dwindle.quantization.lsq import LSQActivation, LSQWeight
from dwindle.quantization.packing import PackedLayer
from dwindle.quantization.qat import prepare_qat

RGB = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return create("resnet", depth=8, width=8).eval()


def test_torch_pruning_broken_model_is_caught_naming_layer_and_fix() -> None:
    """Torch-Pruning's MagnitudePruner returns a model whose forward fails (option-A pad)."""
    tp = pytest.importorskip("torch_pruning")
    model = tiny_resnet()
    expected = output_shapes(model, RGB)
    pruner = tp.pruner.MagnitudePruner(
        model,
        RGB,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=[model.linear],
    )
    pruner.step()  # returns without error ...
    with pytest.raises(TracingError, match=r"layer 'linear' fails with RuntimeError.*Fix: exclude"):
        check_forward(model, RGB, expected, ["conv1"])  # ... but the model no longer runs


class _HardCodedWidth(nn.Module):
    """Its forward reshapes to a constant channel count, a dependency no tracer can follow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.linear = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.linear(x.reshape(x.shape[0], 8, -1).mean(-1))


def test_prune_filters_refuses_a_broken_graph_and_restores_the_model() -> None:
    model = _HardCodedWidth().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TracingError, match=r"no longer runs: layer 'linear' fails.*Fix: exclude"):
        prune_filters_(model, FilterPruning(ratio=0.5), example_input=RGB)
    after = model.state_dict()
    assert model.conv.out_channels == 8 and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model(RGB).shape == (1, 10)


def test_resnet_block_pruning_keeps_shortcuts_and_runs() -> None:
    model = tiny_resnet()
    notes: list[str] = []
    prune_filters_(model, FilterPruning(ratio=0.5), example_input=RGB, notes=notes)
    assert any("option-A" in n for n in notes)  # residual path left whole, said so
    assert model.layer1[0].conv1.out_channels == 4 and model.layer1[0].conv2.out_channels == 8
    assert model(RGB).shape == (1, 10)


def test_kept_down_rounds_like_li2017() -> None:
    # 16 filters at p = 0.6: Li et al.'s code keeps int(0.4 * 16) = 6, "up" keeps 16 - 9 = 7.
    for kept, n in (("down", 6), ("up", 7)):
        model = create("resnet", depth=8).eval()
        cfg = FilterPruning(ratio=0.6, kept=kept, targets=("layer1.*.conv1",))
        prune_filters_(model, cfg, example_input=RGB)
        assert model.layer1[0].conv1.out_channels == n


def test_lsq_qat_learns_steps_and_converts_exactly() -> None:
    model = tiny_resnet()
    cfg = QAT(
        weight_bits=4, act_bits=4, learned_ranges=True, input_bits=8, exclude=("conv1", "linear")
    )
    q = prepare_qat(model, cfg)
    acts = [m for m in q.modules() if isinstance(m, LSQActivation)]
    weights = [m for m in q.modules() if isinstance(m, LSQWeight)]
    assert acts and len(weights) == 6  # every block conv, not the stem or the classifier
    # the input image and the float classifier's input at 8 bits, everything else at 4
    assert [n for n, m in q.named_modules() if isinstance(m, LSQActivation) and m.bits == 8] == [
        "x_aq",
        "adaptive_avg_pool2d_aq",
    ]
    names = {n for n, _ in q.named_parameters()}
    assert any(n.endswith("weight_quant.step_size") for n in names)
    q.train()
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    q(x).logsumexp(1).sum().backward()
    assert all(a.scale.grad is not None and a.scale.grad.abs() > 0 for a in acts)
    assert all(w.step_size.grad.abs().sum() > 0 for w in weights)
    q.eval()
    with torch.no_grad():
        assert torch.allclose(convert_qat(q)(x), q(x), atol=1e-4)


def test_weight_only_lsq_learns_its_steps() -> None:
    model = tiny_resnet()
    q = prepare_qat(model, QAT(weight_bits=4, act_bits=None, fold_bn=False, learned_ranges=True))
    weights = [m for m in q.modules() if isinstance(m, LSQWeight)]
    assert weights and not [m for m in q.modules() if isinstance(m, LSQActivation)]
    assert all(w.step_size.numel() > 0 for w in weights)  # started from the layer's weights
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    q.train()
    q(x).logsumexp(1).sum().backward()
    assert all(w.step_size.grad.abs().sum() > 0 for w in weights)


def test_lsq_full_range_weights_use_the_extra_negative_code() -> None:
    w = torch.linspace(-1.0, 1.0, 64).reshape(4, 16)
    narrow, full = LSQWeight(4), LSQWeight(4, full_range=True)
    for wq in (narrow, full):
        wq.init_from(w)
        with torch.no_grad():
            wq.step_size.fill_(1 / 8)  # -1 is exactly code -8
    assert narrow.codes(w)[0].min() == -7 and full.codes(w)[0].min() == -8
    assert full.codes(w)[0].max() == 7
    assert float(full(w)[0, 0]) == -1.0 and float(narrow(w)[0, 0]) == -7 / 8
    # a full-range QAT model packs its codes in 4 bits and converts to the same outputs
    cfg = QAT(
        weight_bits=4, act_bits=4, learned_ranges=True, weight_range="full", exclude=("conv1",)
    )
    q = prepare_qat(tiny_resnet(), cfg)
    assert all(m.full_range for m in q.modules() if isinstance(m, LSQWeight))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    q(x)  # materialise the activation ranges
    q.eval()
    packed = convert_qat(q)
    with torch.no_grad():
        assert torch.allclose(packed(x), q(x), atol=1e-4)
    codes = [m.codes() for m in packed.modules() if isinstance(m, PackedLayer)]
    assert codes and min(int(c.min()) for c in codes) == -8  # the extra level is stored


def test_add_bits_sets_the_residual_branch_outputs_only() -> None:
    cfg = QAT(
        weight_bits=4, act_bits=4, learned_ranges=True, input_bits=8, add_bits=8,
        exclude=("conv1", "linear"),
    )  # fmt: skip
    q = prepare_qat(tiny_resnet(), cfg)
    bits = {n: m.bits for n, m in q.named_modules() if isinstance(m, LSQActivation)}
    branch = sorted(n for n in bits if n.endswith("conv2_aq"))
    assert len(branch) == 3  # each block's second conv feeds its residual addition
    assert {n for n, b in bits.items() if b == 8} == {"x_aq", "adaptive_avg_pool2d_aq", *branch}
    assert sum(b == 4 for b in bits.values()) == len(bits) - 5  # ReLU outputs stay at 4 bits
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    q(x)
    q.eval()
    with torch.no_grad():
        assert torch.allclose(convert_qat(q)(x), q(x), atol=1e-4)


def test_qat_learned_ranges_validation() -> None:
    with pytest.raises(ValueError, match="learned_ranges \\(LSQ\\) needs uniform weights"):
        QAT(weight_method="ternary", weight_bits=2, learned_ranges=True)
    with pytest.raises(ValueError, match="input_bits=9 is not supported"):
        QAT(input_bits=9)
    with pytest.raises(ValueError, match="add_bits=9 is not supported"):
        QAT(add_bits=9)
    with pytest.raises(ValueError, match="act_bits=None keeps activations float"):
        QAT(act_bits=None, add_bits=8)
    with pytest.raises(ValueError, match="weight_range='full' is LSQ's weight grid"):
        QAT(weight_bits=4, weight_range="full")


# --- bad input ---------------------------------------------------------------------------


def test_checkpoint_with_other_prefix_suggests_strip_prefix(tmp_path: Path) -> None:
    model = create("resnet20")
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "wrapped.th"
    torch.save({"epoch": 3, "state_dict": sd}, path)
    with pytest.raises(CheckpointError) as err:
        load_weights(create("resnet20"), path)
    msg = str(err.value)
    assert "missing keys (in the model, not in the checkpoint): conv1.weight" in msg
    assert "unexpected keys (in the checkpoint, not the model): model.conv1.weight" in msg
    assert "strip_prefix='model.'" in msg and "--strip-prefix model." in msg
    fresh = create("resnet20")
    load_weights(fresh, path, strip_prefix="model.")  # the suggested fix
    assert torch.equal(fresh.linear.weight, model.linear.weight)


def test_checkpoint_of_another_model_lists_first_keys(tmp_path: Path) -> None:
    path = tmp_path / "lenet.pt"
    torch.save({"state_dict": create("lenet5").state_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        load_weights(create("resnet20"), path)
    msg = str(err.value)
    assert "missing keys (in the model, not in the checkpoint): bn1.weight, bn1.bias" in msg
    assert "unexpected keys (in the checkpoint, not the model): conv1.bias, conv2.weight" in msg
    assert "... and 86 more" in msg and "strip_prefix='<prefix>.'" in msg


def test_normalisation_with_wrong_channel_count(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mean has 1 value\(s\) but CIFAR-10 images have 3"):
        dwdata.load("cifar10", tmp_path, mean=[0.5])
    with pytest.raises(ConfigError, match=r"std must be > 0"):
        dwdata.load("cifar10", tmp_path, std=[0.2, 0.0, 0.2])


def test_custom_normalisation_is_applied(tmp_path: Path) -> None:
    from tests.test_cifar import _write_batch

    for i in range(1, 6):
        _write_batch(tmp_path / f"data_batch_{i}.bin", 8, i, gz=False)
    _write_batch(tmp_path / "test_batch.bin", 8, 9, gz=False)
    plain = dwdata.load("cifar10", tmp_path, val_size=4, normalize=False)
    custom = dwdata.load("cifar10", tmp_path, val_size=4, mean=[0.5] * 3, std=[0.25] * 3)
    assert torch.allclose(custom.x_test, (plain.x_test - 0.5) / 0.25, atol=1e-5)


def test_truncated_batch_names_file_and_expected_size(tmp_path: Path) -> None:
    from tests.test_cifar import _write_batch

    for i in range(1, 6):
        _write_batch(tmp_path / f"data_batch_{i}.bin", 4, i, gz=False)
    _write_batch(tmp_path / "test_batch.bin", 4, 9, gz=False)
    bad = tmp_path / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(ConfigError, match=r"data_batch_3\.bin: 12192 bytes .*30,730,000 bytes"):
        dwdata.load("cifar10", tmp_path)


def test_cli_device_cuda_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device exists here")
    from typer.testing import CliRunner

    from dwindle.cli import app

    result = CliRunner().invoke(
        app, ["measure", "resnet20", "--data", "cifar10", "--device", "cuda"]
    )
    assert result.exit_code == 2
    assert "CUDA is not available" in result.output and "Traceback" not in result.output


def test_pruned_resnet_exports_to_onnx_and_runs_without_dwindle(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from dwindle.export import export_onnx

    model = tiny_resnet()
    reference = copy.deepcopy(model)
    prune_filters_(model, FilterPruning(ratio=0.5, targets=("layer*.*.conv1",)), example_input=RGB)
    path = export_onnx(model, RGB, tmp_path / "pruned.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: RGB.numpy()})[0]
    assert out.shape == (1, 10)
    assert torch.allclose(torch.from_numpy(out), model(RGB).detach(), atol=1e-4)
    assert reference.layer1[0].conv1.out_channels == 8  # the copy was not touched


# --- example recipes, on tiny synthetic CIFAR-format files and a tiny model ---------------


@pytest.mark.parametrize(
    "example", ["cifar10_resnet56_prune.yaml", "cifar10_resnet20_quantize.yaml"]
)
def test_cifar_example_recipes_run_on_tiny_data(tmp_path: Path, example: str) -> None:
    import yaml

    from dwindle.pipeline import run_recipe
    from tests.test_cifar import _write_batch

    root = tmp_path / "cifar"
    root.mkdir()
    for i in range(1, 6):
        _write_batch(root / f"data_batch_{i}.bin", 24, i, gz=i == 1)
    _write_batch(root / "test_batch.bin", 32, 9, gz=False)
    path = Path(__file__).resolve().parents[1] / "examples" / example
    doc = yaml.safe_load(path.read_text())
    assert doc["model"]["weights"].endswith(".th")  # the published checkpoint, as users copy it
    # a tiny model of the same family replaces the published checkpoint (no real data here)
    # depth 14: two blocks per stage, so each stage keeps a block its exclude list leaves in
    doc["model"] = {"zoo": "resnet", "args": {"depth": 14, "width": 16}}
    doc["data"] = {"name": "cifar10", "root": str(root), "val_size": 16}
    doc["measure"] = {"batch_sizes": [1, 4], "runs": 2, "warmup": 1, "energy": "off"}
    for stage in doc["stages"]:
        for key in ("finetune",):
            if key in stage:
                stage[key]["epochs"] = 1
        if "qat" in stage:
            stage["qat"]["train"]["epochs"] = 1
    result = run_recipe(doc, tmp_path / "run")
    variants = [r["variant"] for r in result.report["rows"]]
    assert variants[0] == "baseline" and len(variants) == 1 + len(doc["stages"])
    final = result.models[variants[-1]]
    with torch.no_grad():
        assert final(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    if "prune" in example:
        pruned = result.models["pruned-b"]
        # stage 1 at 60 % keeps int(0.4 * 16) = 6 filters, the skipped blocks keep 16
        assert pruned.layer1[0].conv1.out_channels == 6
        assert (tmp_path / "run" / "artifacts" / "final.onnx").is_file()


SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "data" / "cifar10").is_dir(), reason="no shared CIFAR-10")
@pytest.mark.parametrize(
    ("name", "file", "published"),
    [("resnet20", "resnet20-12fca82f.th", 0.9173), ("resnet56", "resnet56-4bfd9763.th", 0.9339)],
)
def test_cli_measure_reproduces_published_accuracy(
    tmp_path: Path, name: str, file: str, published: float
) -> None:
    import json

    from typer.testing import CliRunner

    from dwindle.cli import app

    weights = SHARED / "models" / "cifar10-resnet" / file
    out = tmp_path / "m.json"
    args = ["measure", name, "--weights", str(weights), "--data", "cifar10", "--energy", "off"]
    result = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    acc = json.loads(out.read_text())["rows"][0]["metrics"]["accuracy"]
    assert abs(acc - published) <= 0.0005


def test_int8_onnx_artifact_carries_no_exporter_metadata() -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from dwindle.quantization import Int8Static, quantize_int8

    model = tiny_resnet()
    q = quantize_int8(model, Int8Static(), calibration=torch.randn(16, 3, 32, 32))
    proto = onnx.load_from_string(q.onnx_bytes)
    # the exporter's graph signature (text) would cost more bytes than a small layer's weights
    assert len(proto.metadata_props) == 0 and len(proto.graph.metadata_props) == 0
