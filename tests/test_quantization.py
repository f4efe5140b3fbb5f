import copy
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import dwindle as dw
from dwindle.config import StageContext, apply, get_technique
from dwindle.errors import ConfigError
from dwindle.metrics import artifact_bytes
from dwindle.quantization import (
    QAT,
    BinaryWeight,
    FakeQuantize,
    LowBit,
    MinMaxObserver,
    MixedBits,
    MovingAverageObserver,
    MSEObserver,
    PercentileObserver,
    QATLayer,
    StochasticRounding,
    TernaryWeight,
    check_bits,
    choose_bit_widths,
    compute_qparams,
    convert_qat,
    dequantize,
    fake_quant,
    fold_bn,
    kmeans_codebook,
    log_codebook,
    pack_bits,
    prepare_qat,
    qat,
    quantize,
    quantize_weights_,
    unpack_bits,
)
from dwindle.quantization.packing import PackedLayer

FAST_MEASURE = {"batch_sizes": [1, 4], "runs": 3, "warmup": 1, "energy": "estimate"}


def _qp(x: torch.Tensor, bits: int, symmetric: bool, axis: int | None = None):
    if axis is None:
        return compute_qparams(x.min(), x.max(), bits, symmetric)
    rows = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    return compute_qparams(rows.amin(1), rows.amax(1), bits, symmetric, axis)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_round_trip_error_is_at_most_half_a_step(bits: int, symmetric: bool) -> None:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(bits))
    qp = _qp(x, bits, symmetric)
    err = (dequantize(quantize(x, qp), qp) - x).abs().max()
    assert err <= qp.scale * 0.5 + 1e-6
    levels = quantize(x, qp).unique().numel()
    assert levels <= 2**bits


def test_per_channel_beats_per_tensor_on_skewed_weight() -> None:
    w = torch.randn(8, 64) * torch.logspace(-3, 0, 8).reshape(-1, 1)  # channel scales 1000x apart
    t, c = _qp(w, 4, True), _qp(w, 4, True, axis=0)

    def rel(qp):  # noise relative to each channel's own power, averaged over channels
        return ((dequantize(quantize(w, qp), qp) - w).pow(2).mean(1) / w.pow(2).mean(1)).mean()

    assert rel(c) < 0.05 * rel(t)


def test_observers() -> None:
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    x[0] = 50.0  # one outlier
    mm = MinMaxObserver()
    mm.update(x)
    assert float(mm.hi) == 50.0
    pct = PercentileObserver(percentile=99.9)
    pct.update(x)
    assert float(pct.range(8, False)[1]) < 5.0
    ma = MovingAverageObserver(momentum=0.5)
    ma.update(torch.tensor([0.0, 1.0]))
    ma.update(torch.tensor([0.0, 3.0]))
    assert float(ma.hi) == pytest.approx(2.0)
    mse = MSEObserver()
    mse.update(x)
    lo, hi = mse.range(4, True)
    qp = compute_qparams(lo, hi, 4, True)
    q_mm = compute_qparams(mm.lo, mm.hi, 4, True)
    err = lambda p: (dequantize(quantize(x, p), p) - x).pow(2).mean()  # noqa: E731
    assert err(qp) < err(q_mm)
    with pytest.raises(ConfigError, match="has seen no data"):
        MinMaxObserver().range(8, False)


def test_ste_gradient_passes_inside_and_stops_outside_range() -> None:
    x = torch.tensor([-0.5, 0.2, 0.9, 3.0], requires_grad=True)
    qp = compute_qparams(torch.tensor(-1.0), torch.tensor(1.0), 8, True)
    fake_quant(x, qp).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_stochastic_rounding_is_unbiased() -> None:
    x = torch.full((200_000,), 0.3)
    r = StochasticRounding(torch.Generator().manual_seed(0))(x)
    assert set(r.unique().tolist()) == {0.0, 1.0}
    assert float(r.mean()) == pytest.approx(0.3, abs=0.005)


def test_codebooks_have_at_most_two_to_the_bits_values() -> None:
    w = torch.randn(500)
    for bits in (1, 2, 4):
        assert kmeans_codebook(w, bits).numel() <= 2**bits
    cb = log_codebook(w, 3)
    assert cb.numel() <= 8 and float(cb.abs().max()) == pytest.approx(float(w.abs().max()))


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_bn_folding_matches_layer_then_bn_in_eval(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "conv":
        layer, bn, x = nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8), torch.randn(4, 3, 9, 9)
    else:
        layer, bn, x = nn.Linear(6, 8), nn.BatchNorm1d(8), torch.randn(4, 6)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)
    seq = nn.Sequential(layer, bn).eval()
    w, b = fold_bn(layer.weight, layer.bias, bn)
    out = nn.functional.conv2d(x, w, b) if kind == "conv" else nn.functional.linear(x, w, b)
    assert torch.allclose(out, seq(x), atol=1e-5)
    prepared = prepare_qat(seq, QAT(act_bits=None)).eval()
    for m in prepared.modules():
        if isinstance(m, QATLayer):
            m.quant_enabled = False
    assert torch.allclose(prepared(x), seq(x), atol=1e-5)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_pack_unpack_is_bit_exact(bits: int) -> None:
    codes = torch.randint(0, 2**bits, (1001,))
    packed = pack_bits(codes, bits)
    assert packed.numel() == math.ceil(1001 * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, 1001).long(), codes)


@pytest.mark.parametrize(("method", "bits"), [("uniform", 4), ("uniform", 2), ("binary", 1)])
def test_packed_bytes_on_disk_and_reload(method: str, bits: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)).eval()
    fp32_bytes, _ = artifact_bytes(model)
    x = torch.randn(3, 512)
    q = quantize_weights_(copy.deepcopy(model), LowBit(bits=bits, method=method))
    nbytes, fmt = artifact_bytes(q)
    assert fmt == "dwindle-packed"
    assert nbytes / fp32_bytes == pytest.approx(bits / 32, rel=0.15)
    codes = q[0].codes().clone()
    path = dw.export.save(q, tmp_path / "m.packed")
    fresh = quantize_weights_(copy.deepcopy(model), LowBit(bits=bits, method=method))
    fresh[0].packed.zero_()
    fresh[0]._codes = None
    dw.export.get_format("dwindle-packed").load(fresh, path)
    assert torch.equal(fresh[0].codes(), codes)
    assert torch.equal(fresh(x), q(x))


def test_ternary_and_binary_scaling_factors() -> None:
    w = torch.tensor([[1.0, -1.0, 0.1, -0.1], [2.0, 2.0, 2.0, -2.0]])
    codes, alpha, _ = TernaryWeight().codes(w)
    # row 0: delta = 0.7 * 0.55 = 0.385 -> keep ±1, alpha = 1.0; row 1: all kept, alpha = 2
    assert codes[0].tolist() == [1.0, -1.0, 0.0, 0.0]
    assert alpha.tolist() == pytest.approx([1.0, 2.0])
    codes, alpha, _ = BinaryWeight(scaled=True).codes(w)
    assert codes[0].tolist() == [1.0, -1.0, 1.0, -1.0]
    assert alpha.tolist() == pytest.approx([0.55, 2.0])
    assert BinaryWeight(scaled=False).codes(w)[1].tolist() == [1.0, 1.0]


def _digits_data():
    return dw.data.load("digits", seed=0)


def test_qat_int8_trains_and_converts_to_integer_model() -> None:
    data = _digits_data()
    torch.manual_seed(0)
    model = nn.Sequential(  # conv-BN-ReLU twice, pool, linear: a pocket cnn4bn
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    dw.train(model, data, dw.TrainConfig(epochs=2, optimizer="adam", lr=0.02, progress=False))
    base = dw.evaluate(model, data)["accuracy"]
    cfg = QAT(
        train=dw.TrainConfig(epochs=1, optimizer="adam", lr=1e-3, progress=False), convert=False
    )
    prepared = qat(model, cfg, data)
    assert sum(isinstance(m, QATLayer) and m.bn is not None for m in prepared.modules()) == 2
    int8 = convert_qat(prepared)
    packed = [m for m in int8.modules() if isinstance(m, PackedLayer)]
    assert packed and all(m._integer_ok() for m in packed)  # int8 x int8 -> int32 everywhere
    x = data.example_input(16)
    ref, out = prepared.eval()(x), int8(x)
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), 0) > 0.999
    assert dw.evaluate(int8, data)["accuracy"] >= base - 0.03
    weights = sum(
        m.weight_shape.numel() if hasattr(m.weight_shape, "numel") else math.prod(m.weight_shape)
        for m in packed
    )
    assert sum(m.packed.numel() for m in packed) == weights  # one byte per int8 weight
    assert artifact_bytes(int8)[1] == "dwindle-packed"


class _BareAdd(nn.Module):
    """Two convs summed with no activation after the add, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.a(x) + self.b(x), 1))


def _quantised_after(prepared: torch.fx.GraphModule, op: str) -> list[bool]:
    """For each node named ``op*``: whether its value goes through a FakeQuantize."""
    out = []
    for node in prepared.graph.nodes:
        if node.name.startswith(op) and not node.name.endswith("_aq"):
            out.append(
                any(
                    u.op == "call_module"
                    and isinstance(prepared.get_submodule(str(u.target)), FakeQuantize)
                    for u in node.users
                )
            )
    return out


def test_qat_quantises_residual_adds_once_after_their_relu() -> None:
    model = dw.models.create("resnet20", input_shape=(3, 16, 16), num_classes=4)
    prepared = prepare_qat(model, QAT())
    # add+ReLU is one fused op at inference: the add feeds the ReLU in float, the ReLU's output
    # is quantised (Jacob et al. 2018 §3.3)
    adds = _quantised_after(prepared, "add")
    assert len(adds) == 9 and not any(adds)
    assert all(_quantised_after(prepared, "relu"))
    # an addition not followed by an activation is quantised where the integer model adds
    bare = prepare_qat(_BareAdd(), QAT())
    assert _quantised_after(bare, "add") == [True]
    x = torch.randn(2, 3, 16, 16)
    assert convert_qat(bare.eval())(x).shape == (2, 4)


def test_bnn_qat_binarises_activations_and_packs_one_bit() -> None:
    data = _digits_data()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 128), nn.BatchNorm1d(128), nn.Hardtanh(), nn.Linear(128, 10)
    )
    cfg = QAT(
        weight_bits=1,
        weight_method="binary",
        scaled=False,
        act_bits=1,
        fold_bn=False,
        train=dw.TrainConfig(epochs=4, optimizer="adam", lr=0.01, progress=False),
    )
    bnn = qat(model, cfg, data)
    layers = [m for m in bnn.modules() if isinstance(m, PackedLayer)]
    assert [m.bits for m in layers] == [1, 1]
    assert layers[1]._integer_ok() and not layers[0]._integer_ok()  # first layer: real input
    assert dw.evaluate(bnn, data)["accuracy"] > 0.8


def test_mixed_bit_widths_meet_budget_and_protect_sensitive_layer() -> None:
    data = _digits_data()
    torch.manual_seed(0)
    model = dw.models.create("mlp", input_shape=data.input_shape, hidden=(64, 32))
    dw.train(model, data, dw.TrainConfig(epochs=5, optimizer="adam", lr=0.01, progress=False))
    choice = choose_bit_widths(model, MixedBits(avg_bits=3.0, candidates=(2, 4, 8)), data)
    assert choice.avg_bits <= 3.0
    # the smallest, most sensitive layer (classifier) is never given fewer bits than fc1
    assert choice.bits["fc3"] >= choice.bits["fc1"]


def test_bad_bit_widths_list_the_supported_set() -> None:
    with pytest.raises(ConfigError, match="supported bit widths: 2, 3, 4, 5, 6, 7, 8"):
        LowBit(bits=9)
    with pytest.raises(ConfigError, match="supported bit widths: 1"):
        LowBit(bits=2, method="binary")
    with pytest.raises(ConfigError, match="act_bits=16 is not supported; supported bit widths"):
        QAT(act_bits=16)
    with pytest.raises(ConfigError, match="supported bit widths: 2, 3"):
        MixedBits(candidates=(1, 4))
    with pytest.raises(ConfigError, match="supported bit widths: 2, 3, 4"):
        check_bits(12)
    with pytest.raises(ConfigError, match="supported bit widths"):
        FakeQuantize(bits=1)


def test_unsupported_layers_are_named_with_the_float_fallback() -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(16, 4))
    with pytest.raises(ConfigError, match=r"'0' \(Embedding\).*on_unsupported='float'"):
        quantize_weights_(model, LowBit(bits=4))
    ctx = StageContext()
    out = apply(model, LowBit(bits=4, on_unsupported="float"), ctx)
    assert isinstance(out[0], nn.Embedding) and isinstance(out[2], PackedLayer)
    assert any("kept in float" in n for n in ctx.notes)


def test_qat_stage_without_data_says_how_to_pass_it() -> None:
    with pytest.raises(ConfigError, match="qat needs training data"):
        apply(nn.Sequential(nn.Linear(4, 2)), QAT(), StageContext())
    assert get_technique("quantize_lowbit").config is LowBit


def test_qat_warns_when_bn_is_frozen_from_the_start_at_two_bits() -> None:
    data = _digits_data()
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()
    )
    model.append(nn.Linear(4 * 8 * 8, 10))
    train = dw.TrainConfig(epochs=1, progress=False, batch_size=256)
    with pytest.warns(UserWarning, match=r"freeze_bn_epoch=0 .* 2 bits or fewer"):
        qat(model, QAT(weight_bits=2, act_bits=None, freeze_bn_epoch=0, train=train), data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the sound settings stay silent
        qat(model, QAT(weight_bits=2, act_bits=None, freeze_bn_epoch=1, train=train), data)
        qat(model, QAT(weight_bits=4, act_bits=None, freeze_bn_epoch=0, train=train), data)


def test_recipe_with_lowbit_and_qat_stages(tmp_path: Path) -> None:
    from dwindle.pipeline import run_recipe

    doc = {
        "name": "q",
        "model": {"zoo": "mlp", "args": {"hidden": [256]}},
        "data": {"name": "digits"},
        "baseline": {"train": {"epochs": 3, "optimizer": "adam", "lr": 0.01, "progress": False}},
        "stages": [
            {
                "qat": {
                    "train": {"epochs": 1, "optimizer": "adam", "lr": 0.001, "progress": False}
                },
                "name": "qat_int8",
            },
        ],
        "measure": FAST_MEASURE,
    }
    result = run_recipe(doc, tmp_path / "run")
    rows = {r["variant"]: r["metrics"] for r in result.report["rows"]}
    assert rows["qat_int8"]["artifact"] == "dwindle-packed"
    assert rows["qat_int8"]["compression_rate"] > 3.0
    assert rows["qat_int8"]["accuracy"] > rows["baseline"]["accuracy"] - 0.05
    doc["stages"] = [{"quantize_lowbit": {"bits": 4}, "name": "w4"}]
    result = run_recipe(doc, tmp_path / "run2")
    rows = {r["variant"]: r["metrics"] for r in result.report["rows"]}
    assert rows["w4"]["compression_rate"] > 5.0


def test_integer_path_is_exact_against_int64_reference() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(700, 16)
    packed = quantize_weights_(nn.Sequential(layer), LowBit(bits=8))[0]
    packed.set_input_quant(torch.tensor(0.05), torch.tensor(30.0), unsigned=True)
    x = torch.rand(5, 700) * 10
    xq = packed._quantize_input(x)
    want = (xq.long() - int(packed.act_zero_point)) @ packed.codes().long().t()
    assert torch.equal(packed._int_matmul(xq).long(), want)


def test_packed_layers_count_their_weights_not_zero() -> None:
    """Packed codes live in buffers; parameter and non-zero counts still see every weight."""
    from dwindle.metrics import count_nonzeros, count_params

    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    packed = quantize_weights_(copy.deepcopy(model), LowBit(bits=4))
    assert not list(packed.parameters())
    assert count_params(packed) == count_params(model) == 64 * 32 + 32 + 32 * 10 + 10
    layers = [m for m in packed.modules() if isinstance(m, PackedLayer)]
    zeros = sum(int((m.weight() == 0).sum()) + int((m.bias == 0).sum()) for m in layers)
    assert count_nonzeros(packed) == count_params(model) - zeros
