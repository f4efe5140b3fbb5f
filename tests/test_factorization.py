import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from dwindle.config import StageContext, apply
from dwindle.errors import ConfigError
from dwindle.factorization import (
    Factorize,
    LowRankPlusSparse,
    conv_lowrank_sparse_split,
    energy_rank,
    factorize_,
    lowrank_sparse_decompose,
    lowrank_sparse_split,
    spatial_svd_split,
    svd_split,
    tucker2_split,
)
from dwindle.metrics import count_nonzeros, count_params
from dwindle.pipeline import run_recipe

FAST_MEASURE = {"batch_sizes": [1, 4], "runs": 3, "warmup": 1, "energy": "estimate"}


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def test_svd_full_rank_reproduces_the_layer() -> None:
    torch.manual_seed(0)
    layer, x = nn.Linear(40, 24), torch.randn(16, 40)
    pair = svd_split(layer, 24)
    assert torch.allclose(pair(x), layer(x), atol=1e-5)
    assert pair[0].weight.shape == (24, 40) and pair[1].weight.shape == (24, 24)


def test_svd_truncation_error_is_the_dropped_singular_values() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(30, 20, bias=False)
    s = torch.linalg.svdvals(layer.weight.detach().double())
    pair = svd_split(layer, 5)
    w = (pair[1].weight @ pair[0].weight).double()
    err = float(torch.linalg.matrix_norm(w - layer.weight.double()).detach())
    assert err == pytest.approx(float(s[5:].square().sum().sqrt()), rel=1e-4)


def test_energy_rank_keeps_the_asked_fraction() -> None:
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # squares 16, 4, 1, 1 of 22
    assert energy_rank(s, 16 / 22) == 1
    assert energy_rank(s, 0.8) == 2
    assert energy_rank(s, 1.0) == 4
    model = _mlp()
    factorize_(model, Factorize(energy=0.5, targets=("0",)))
    first = model[0][0].weight.shape[0]
    s0 = torch.linalg.svdvals(_mlp()[0].weight.detach().double())
    assert first == energy_rank(s0, 0.5) and first < 32


def test_ratio_budget_bounds_the_parameters() -> None:
    model = _mlp()
    before = count_params(model[0])
    factorize_(model, Factorize(ratio=0.3, targets=("0",)))
    assert count_params(model[0]) <= 0.3 * before + 48  # + bias


def test_no_saving_is_skipped_with_a_note() -> None:
    model, ctx = _mlp(), StageContext()
    apply(model, Factorize(rank=20, exclude=("4",)), ctx)
    assert isinstance(model[0], nn.Sequential)  # 20·(64+48) = 2240 < 3072: replaced
    assert isinstance(model[2], nn.Linear)  # 20·80 = 1600 > 1536: kept
    assert any("skipped '2'" in n and "would not be smaller" in n for n in ctx.notes)


def test_spatial_svd_shapes_and_full_rank() -> None:
    torch.manual_seed(0)
    conv, x = nn.Conv2d(6, 8, 3, stride=2, padding=1), torch.randn(2, 6, 11, 11)
    pair = spatial_svd_split(conv, 4)
    assert pair[0].weight.shape == (4, 6, 3, 1) and pair[1].weight.shape == (8, 4, 1, 3)
    assert pair(x).shape == conv(x).shape
    assert torch.allclose(spatial_svd_split(conv, 18)(x), conv(x), atol=1e-5)


def test_tucker2_full_ranks_reproduce_the_conv() -> None:
    torch.manual_seed(0)
    conv, x = nn.Conv2d(6, 10, 3, padding=1, dilation=1, stride=2), torch.randn(2, 6, 9, 9)
    chain = tucker2_split(conv, (6, 10))
    assert [m.kernel_size for m in chain] == [(1, 1), (3, 3), (1, 1)]
    assert torch.allclose(chain(x), conv(x), atol=1e-5)
    small = tucker2_split(conv, (3, 4))
    assert small[1].weight.shape == (4, 3, 3, 3)


def test_lowrank_plus_sparse_beats_lowrank_alone() -> None:
    torch.manual_seed(0)
    low_true = torch.randn(40, 4) @ torch.randn(4, 30)
    spikes = torch.zeros(40, 30)
    spikes.view(-1)[torch.randperm(1200)[:30]] = 10 * torch.randn(30)
    w = low_true + spikes
    low, sparse = lowrank_sparse_decompose(w, rank=4, nonzeros=30)
    err = torch.linalg.matrix_norm(w.double() - low - sparse) / torch.linalg.matrix_norm(w.double())
    u, s, vh = torch.linalg.svd(w.double())
    lr_only = torch.linalg.matrix_norm(w.double() - (u[:, :4] * s[:4]) @ vh[:4])
    # the same parameter budget spent on L + S fits far better than on L alone
    assert err * torch.linalg.matrix_norm(w.double()) < 0.4 * lr_only
    assert int((sparse != 0).sum()) <= 30
    layer = nn.Linear(30, 40)
    layer.weight.data.copy_(w)
    split = lowrank_sparse_split(layer, 4, 30)
    x = torch.randn(8, 30)
    assert isinstance(split, LowRankPlusSparse)
    assert (split(x) - layer(x)).norm() < 0.4 * (layer(x) - layer.bias).norm()
    assert count_nonzeros(split.sparse) <= 30


def test_conv_lowrank_sparse_full_rank_is_exact() -> None:
    torch.manual_seed(0)
    conv, x = nn.Conv2d(3, 5, 3, padding=1), torch.randn(1, 3, 8, 8)
    split = conv_lowrank_sparse_split(conv, 5, 0)
    assert torch.allclose(split(x), conv(x), atol=1e-5)


def test_factorized_model_trains_and_pickles() -> None:
    model = factorize_(_mlp(), Factorize(rank=8, targets=("0", "2")))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 64), torch.randint(0, 4, (64,))
    losses = []
    for _ in range(40):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    restored = pickle.loads(pickle.dumps(model))
    assert torch.equal(restored(x), model(x))


def test_lowrank_sparse_stage_keeps_sparse_part_sparse_in_training() -> None:
    model = factorize_(
        _mlp(), Factorize(method="lowrank_sparse", rank=4, sparse_fraction=0.05, targets=("0",))
    )
    sparse = model[0].sparse.layer
    support = sparse.weight_mask.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(8, 64)).square().mean()
    loss.backward()
    opt.step()
    assert torch.equal(sparse.weight_mask, support)
    assert count_nonzeros(model[0].sparse) == int(support.sum()) <= 0.05 * 64 * 48 + 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 0}, r"rank.*greater than or equal to 1"),
        ({"rank": -3}, r"rank.*greater than or equal to 1"),
        ({"energy": 0.0}, r"energy.*greater than 0"),
        ({"energy": 1.5}, r"energy.*less than or equal to 1"),
        ({}, "give exactly one of rank"),
        ({"rank": 4, "energy": 0.9}, "give exactly one of rank"),
        ({"ratio": 1.0}, r"ratio.*less than 1"),
    ],
)
def test_bad_config_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Factorize(**kwargs)


def test_rank_at_least_min_dimension_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"rank 32 ≥ min\(m, n\) = 32 for layer '2'"):
        factorize_(_mlp(), Factorize(rank=32, targets=("2",)))
    with pytest.raises(ConfigError, match=r"rank 25 exceeds min\(m, n\) = 24"):
        svd_split(nn.Linear(40, 24), 25)
    with pytest.raises(ConfigError, match="rank must be a positive integer"):
        svd_split(nn.Linear(40, 24), 0)


def test_unfactorizable_layer_is_named() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match=r"cannot factorize layer 1 \(BatchNorm1d\)"):
        factorize_(model, Factorize(rank=2, targets=("1",)))
    conv_model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ConfigError, match=r"cannot factorize layer 0 \(Conv2d\).*'spatial'"):
        factorize_(conv_model, Factorize(rank=2, targets=("0",)))
    with pytest.raises(ConfigError, match=r"needs an nn\.Conv2d"):
        tucker2_split(nn.Linear(3, 3), (1, 1))  # type: ignore[arg-type]


def test_recipe_factorize_with_finetune(tmp_path: Path) -> None:
    doc = {
        "name": "fact",
        "model": {"zoo": "mlp", "args": {"hidden": [64, 64]}},
        "data": {"name": "synthetic", "options": {"n_samples": 400, "num_classes": 3}},
        "baseline": {"train": {"epochs": 3, "optimizer": "adam", "lr": 0.01, "progress": False}},
        "stages": [
            {
                "factorize": {"method": "svd", "energy": 0.8},
                "name": "svd",
                "finetune": {"epochs": 2, "optimizer": "adam", "lr": 0.005, "progress": False},
            }
        ],
        "measure": FAST_MEASURE,
    }
    result = run_recipe(doc, tmp_path / "run")
    rows = {r["variant"]: r["metrics"] for r in result.report["rows"]}
    assert rows["svd"]["params"] < rows["baseline"]["params"]
    assert rows["svd"]["accuracy"] >= rows["baseline"]["accuracy"] - 0.1
    assert any("factorize" in n for n in result.report["notes"])
