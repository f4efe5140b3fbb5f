import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import dwindle as dw
from dwindle.config import StageContext
from dwindle.errors import ConfigError
from dwindle.export import get_format
from dwindle.metrics import count_nonzeros, count_params
from dwindle.pipeline import run_recipe
from dwindle.pruning import (
    AGP,
    HanThreshold,
    Iterative,
    MaskCallback,
    Prune,
    Pruner,
    agp_schedule,
    apply_masks,
    decode_relative,
    dropout_rescale,
    encode_relative,
    encoded_bytes,
    get_mask,
    load_sparse,
    nm_mask,
    prune_,
    remove_masks,
    retrain_config,
    save_sparse,
    sensitivity_scan,
    set_mask,
)
from dwindle.training import TrainConfig, train

FAST_MEASURE = {"batch_sizes": [1, 4], "runs": 3, "warmup": 1, "energy": "estimate"}
QUIET = {"epochs": 1, "lr": 0.05, "batch_size": 32, "progress": False}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 48),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(48, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


@pytest.fixture(scope="module")
def data() -> Any:
    return dw.data.load("synthetic", n_samples=400, num_classes=10, shape=(1, 8, 8))


def _density(module: nn.Module) -> float:
    return float((module.weight != 0).float().mean())


def test_masks_stay_zero_after_training_steps(data: Any) -> None:
    model = _mlp()
    prune_(model, Prune(method="magnitude", ratio=0.8))
    masks = {n: get_mask(m).clone() for n, m in model.named_modules() if get_mask(m) is not None}
    assert len(masks) == 3
    train(model, data, TrainConfig(**QUIET), callbacks=[MaskCallback()])
    for name, mask in masks.items():
        weight = dict(model.named_modules())[name].weight
        assert torch.all(weight[~mask] == 0)
        assert torch.count_nonzero(weight[mask]) > 0.99 * mask.sum()


def test_masks_hold_even_without_the_callback() -> None:
    model = _mlp()
    prune_(model, Prune(method="magnitude", ratio=0.5, targets=("1",)))
    layer, mask = model[1], get_mask(model[1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(3):  # a foreign loop: the pre-hook re-applies masks before each forward
        opt.zero_grad()
        model(torch.randn(8, 64)).sum().backward()
        opt.step()
    model.eval()
    model(torch.randn(2, 64))
    assert torch.all(layer.weight[~mask] == 0)


def test_layerwise_vs_global_magnitude() -> None:
    layer = _mlp()
    prune_(layer, Prune(method="magnitude", ratio=0.75))
    for i in (1, 4, 6):
        assert _density(layer[i]) == pytest.approx(0.25, abs=0.01)
    glob = _mlp()
    with torch.no_grad():
        glob[6].weight.mul_(10)  # the last layer's weights dominate a global ranking
    prune_(glob, Prune(method="magnitude", ratio=0.75, scope="global"))
    weights = [glob[i].weight for i in (1, 4, 6)]
    kept = sum(int((w != 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert kept == pytest.approx(0.25, abs=0.002)
    assert _density(glob[6]) > 0.9 and _density(glob[1]) < 0.25
    threshold = min(float(w.detach()[w != 0].abs().min()) for w in weights)
    assert all(float(w.detach()[w == 0].abs().max()) <= threshold for w in weights)


def test_han_threshold_is_quality_times_std() -> None:
    model = _mlp()
    weight = model[1].weight.detach().clone()
    assert HanThreshold(0.7).threshold(weight) == pytest.approx(0.7 * weight.std().item())
    prune_(model, Prune(method="han", quality=0.7))
    expected = weight.abs() > 0.7 * weight.std()
    assert torch.equal(get_mask(model[1]), expected)
    # per-layer qualities by pattern; unmatched layers are left alone
    other = _mlp()
    prune_(other, Prune(method="han", quality={"1": 1.5, "4": 0.2}))
    assert get_mask(other[6]) is None
    assert _density(other[1]) < _density(other[4])


def test_agp_values_follow_the_cubic_formula() -> None:
    s_i, s_f, t0, dt, n = 0.1, 0.9, 10, 5, 8
    agp = AGP(initial=s_i, final=s_f, start=t0, frequency=dt, n=n)
    for t in range(t0, t0 + n * dt + 1, dt):
        formula = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3
        assert agp.value(t) == pytest.approx(formula, abs=1e-12)
    assert agp.value(0) == s_i and agp.value(10_000) == pytest.approx(s_f)
    assert agp.value(t0 + 7) == agp.value(t0 + 5)  # held between updates
    assert [t for t in range(80) if agp.is_update_step(t)] == list(range(10, 51, 5))


def test_agp_prunes_during_training(data: Any) -> None:
    model = _mlp()
    cfg = Prune(
        method="magnitude",
        schedule="agp",
        final_sparsity=0.8,
        frequency=2,
        finetune=TrainConfig(**{**QUIET, "epochs": 3}),
    )
    steps = math.ceil(data.size("train") / 32)
    assert agp_schedule(cfg, steps).end == 2 * steps
    prune_(model, cfg, data=data)
    for i in (1, 4, 6):
        assert _density(model[i]) == pytest.approx(0.2, abs=0.01)


def test_iterative_rounds_lower_the_lr_and_rescale_dropout(data: Any) -> None:
    cfg = Prune(
        method="magnitude",
        ratio=0.9,
        schedule="iterative",
        steps=3,
        lr_factor=0.5,
        l2=1e-4,
        finetune=TrainConfig(**QUIET),
    )
    lrs = [retrain_config(cfg, k).lr for k in (1, 2, 3)]
    assert lrs == pytest.approx([0.05, 0.025, 0.0125])
    assert retrain_config(cfg, 2).weight_decay == 1e-4
    assert Iterative(final=0.9, steps=3).value(3) == pytest.approx(0.9)
    model = _mlp()
    context = StageContext()
    prune_(model, cfg, data=data, context=context)
    assert "at lrs 0.05, 0.025, 0.0125" in context.notes[0]  # the rounds really ran at those
    assert _density(model[1]) == pytest.approx(0.1, abs=0.01)
    # Han eq. 2: the dropout after layer 1 is rescaled from its original rate
    assert model[3].p == pytest.approx(dropout_rescale(0.5, 64 * 48, int(get_mask(model[1]).sum())))
    assert dropout_rescale(0.5, 100, 25) == pytest.approx(0.25)


def test_nm_keeps_exactly_n_per_group_of_m() -> None:
    conv = nn.Conv2d(8, 4, 3)
    mask = nm_mask(conv.weight, 2, 4)
    groups = mask.movedim(1, -1).reshape(-1, 4).sum(1)
    assert torch.all(groups == 2)
    model = _mlp()
    prune_(model, Prune(method="nm", n=2, m=4))
    rows = model[1].weight.reshape(-1, 4)
    assert torch.all((rows != 0).sum(1) == 2)


def test_block_masks_drop_whole_tiles() -> None:
    model = _mlp()
    prune_(model, Prune(method="block", ratio=0.5, block=(4, 1), targets=("1",)))
    tiles = (model[1].weight != 0).reshape(12, 4, 64).any(1)  # 48 rows in 4x1 tiles
    full = (model[1].weight != 0).reshape(12, 4, 64).all(1)
    assert torch.equal(tiles, full)
    assert tiles.float().mean() == pytest.approx(0.5, abs=0.01)
    odd = nn.Sequential(nn.Linear(10, 10))
    prune_(odd, Prune(method="block", ratio=0.5, block=(8, 8)))  # ragged edge tiles work
    assert 0.0 < _density(odd[0]) < 1.0  # 2 of the 4 tiles (64, 16, 16, 4 entries) kept


def test_sparse_roundtrip_is_bit_exact_and_smaller(tmp_path: Path) -> None:
    model = _mlp()
    prune_(model, Prune(method="magnitude", ratio=0.9, scope="global"))
    assert model.dwindle_format == "sparse"
    path = save_sparse(model, tmp_path / "m.sparse")
    dense = dw.export.save(model, tmp_path / "m.safetensors", "safetensors")
    assert path.stat().st_size < 0.3 * dense.stat().st_size
    fresh = _mlp()  # no masks: the file restores the dense model
    load_sparse(fresh, path)
    x = torch.randn(5, 64)
    assert torch.equal(fresh.eval()(x), model.eval()(x))
    for key, value in fresh.state_dict().items():
        assert torch.equal(value.view(torch.uint8), model.state_dict()[key].view(torch.uint8))
    assert get_format("sparse").load is not None
    w = torch.zeros(3000)
    w[[0, 5, 700, 2999]] = torch.tensor([1.0, -0.0, 2.0, 3.0])  # -0.0 survives; a 695 gap
    for bits in (4, 8, 16):
        values, codes = encode_relative(w, bits)
        back = decode_relative(values, codes, w.numel())
        assert torch.equal(back.view(torch.int32), w.view(torch.int32))
    torch.manual_seed(0)
    w = torch.randn(300, 784).masked_fill(torch.rand(300, 784) > 0.1, 0.0)  # 10 % dense
    sizes = {e: encoded_bytes(w, e) for e in ("dense", "coo", "csr", "relative")}
    assert sizes["relative"] < sizes["csr"] < sizes["coo"] < sizes["dense"]
    assert sizes["relative"] < 5.2 * int((w != 0).sum())  # 4-byte value + 1-byte index


def test_remove_masks_bakes_zeros() -> None:
    model = _mlp()
    prune_(model, Prune(method="magnitude", ratio=0.5))
    nz = count_nonzeros(model)
    remove_masks(model)
    assert not any(k.endswith("_mask") for k in model.state_dict())
    assert count_nonzeros(model) == nz < count_params(model)
    set_mask(model[1], torch.ones_like(model[1].weight, dtype=torch.bool))
    assert apply_masks(model) is model


def test_sensitivity_scan_shape_and_plot(data: Any, tmp_path: Path) -> None:
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = sensitivity_scan(model, data, ratios=(0.5, 0.9), split="test")
    assert len(result.rows) == 3 * 2 and result.layers == ["1", "4", "6"]
    assert all(set(r) >= {"layer", "ratio", "accuracy", "drop"} for r in result.rows)
    assert "| 1 |" in result.to_markdown()
    result.plot(tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_pruner_primitive_prunes_to_a_sparsity() -> None:
    model = _mlp()
    pruner = Pruner(model, Prune(method="magnitude", ratio=0.5))
    pruner.prune_to(0.3)
    pruner.prune_to(0.6)
    assert pruner.density() == pytest.approx(0.4, abs=0.01)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_unit_interval(ratio: float) -> None:
    with pytest.raises(ConfigError, match=r"ratio: Input should be (greater|less) than"):
        Prune(method="magnitude", ratio=ratio)


def test_unsupported_layer_type_names_path_and_types() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Embedding(3, 4))
    with pytest.raises(ConfigError, match=r"'1' \(BatchNorm1d\).*nn\.Linear, nn\.Conv1d"):
        prune_(model, Prune(method="magnitude", ratio=0.5, targets=("1",)))
    with pytest.raises(ConfigError, match=r"'2' \(Embedding\).*supported layer types"):
        prune_(model, Prune(method="magnitude", ratio=0.5, targets=("2",)))


def test_target_matching_nothing() -> None:
    with pytest.raises(ConfigError, match=r"target pattern 'fc9\*' matches no module"):
        prune_(_mlp(), Prune(method="magnitude", ratio=0.5, targets=("fc9*",)))


def test_nm_on_indivisible_dimension_names_the_layer() -> None:
    model = nn.Sequential(nn.Linear(6, 4))
    with pytest.raises(
        ConfigError, match=r"dimension of 0 \(Linear\) to be divisible by m=4, but it is 6"
    ):
        prune_(model, Prune(method="nm", n=2, m=4))


def test_bad_option_combinations_are_named() -> None:
    with pytest.raises(ConfigError, match="option 'quality' is not used by method 'magnitude'"):
        Prune(method="magnitude", ratio=0.5, quality=0.7)
    with pytest.raises(ConfigError, match="method 'han' needs quality"):
        Prune(method="han")
    with pytest.raises(ConfigError, match="schedule 'agp' needs final_sparsity"):
        Prune(schedule="agp", finetune={"epochs": 2})
    with pytest.raises(ConfigError, match="ratio is not used: give final_sparsity"):
        Prune(schedule="agp", ratio=0.5, final_sparsity=0.9, finetune={"epochs": 2})
    with pytest.raises(ConfigError, match="schedule 'iterative' retrains between rounds"):
        Prune(method="han", quality=1.0, schedule="iterative")
    with pytest.raises(ConfigError, match="needs n < m"):
        Prune(method="nm", n=4, m=4)
    with pytest.raises(ConfigError, match="needs data"):
        prune_(_mlp(), Prune(method="han", quality=1, schedule="iterative", finetune=QUIET))


def test_sparse_roundtrip_keeps_batch_norm_state_and_all_zero_tensors(tmp_path: Path) -> None:
    """BN's 0-dim num_batches_tracked and an all-zero bias (relative-coded with no values)
    once broke the sparse file: the writer could not view a 0-dim tensor as bytes and the
    reader could not decode zero values."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    model(torch.randn(2, 1, 6, 6))  # running statistics and num_batches_tracked move
    prune_(model, Prune(method="magnitude", ratio=0.5))
    path = dw.export.save(model, tmp_path / "m.sparse")
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    load_sparse(fresh, path)
    saved = model.state_dict()
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert int(fresh[1].num_batches_tracked) == 1
    assert not fresh[1].bias.any()


def test_recipe_stage_prunes_and_reports_sparse_bytes(tmp_path: Path) -> None:
    doc = {
        "name": "prune",
        "model": {"zoo": "mlp", "args": {"hidden": [64]}},
        "data": {"name": "synthetic", "options": {"n_samples": 300, "num_classes": 3}},
        "baseline": {"train": {"epochs": 2, "optimizer": "adam", "lr": 0.01, "progress": False}},
        "stages": [
            {
                "prune": {
                    "method": "han",
                    "schedule": "iterative",
                    "quality": 1.0,
                    "steps": 2,
                    "finetune": {"epochs": 1, "lr": 0.01, "progress": False},
                },
                "name": "han",
            },
            {"prune": {"method": "magnitude", "ratio": 0.9, "scope": "global"}, "name": "mag"},
        ],
        "measure": FAST_MEASURE,
    }
    result = run_recipe(doc, tmp_path / "run")
    rows = {r["variant"]: r["metrics"] for r in result.report["rows"]}
    assert rows["mag"]["nonzeros"] < 0.15 * rows["baseline"]["nonzeros"]
    assert rows["mag"]["bytes"] < 0.35 * rows["baseline"]["bytes"]
    assert rows["han"]["nonzeros"] < rows["baseline"]["nonzeros"]
    assert any("NO speed-up" in n for n in result.report["notes"])
    with pytest.raises(ConfigError, match=r"stages\[0\]\.prune.*ratio"):
        run_recipe({**doc, "stages": [{"prune": {"method": "magnitude", "ratio": 2}}]}, tmp_path)


def test_retraining_distils_from_the_unpruned_model(data: Any, monkeypatch) -> None:
    import dwindle.distillation as distillation

    calls: list[float] = []
    real = distillation.recover_with_distillation

    def spy(model, teacher, *args, **kwargs):
        first = next(m for m in teacher.modules() if isinstance(m, nn.Linear))
        calls.append(_density(first))
        assert not teacher.training
        return real(model, teacher, *args, **kwargs)

    monkeypatch.setattr(distillation, "recover_with_distillation", spy)
    cfg = Prune(
        method="magnitude",
        ratio=0.8,
        schedule="iterative",
        steps=2,
        finetune=TrainConfig(**QUIET),
        distill={"temperature": 4, "alpha": 0.9},
    )
    model = _mlp()
    prune_(model, cfg, data=data)
    assert len(calls) == 2  # one distillation run per round, never plain training
    assert calls == [1.0, 1.0]  # the teacher is the unpruned model
    assert _density(model[1]) == pytest.approx(0.2, abs=0.01)
    with pytest.raises(ConfigError, match="give finetune"):
        Prune(method="magnitude", ratio=0.5, distill={"temperature": 4})
    with pytest.raises(ConfigError, match=r"distill\.temprature"):
        Prune(
            method="magnitude", ratio=0.5, finetune=TrainConfig(**QUIET), distill={"temprature": 4}
        )
