import copy
import pickle
from pathlib import Path

import pytest
import torch
from model_helpers import clustered_mlp, magnitude_masks, mlp_64
from torch import nn

from dwindle.config import StageContext, apply
from dwindle.errors import ConfigError
from dwindle.export import load_weights, save
from dwindle.metrics import count_flops, count_nonzeros, count_params, effective_flops
from dwindle.pipeline import run_recipe
from dwindle.sharing import (
    ClusteredLayer,
    Encode,
    HashedLinear,
    Share,
    cluster_layer,
    encode_model,
    kmeans_1d,
    load_deepc,
    share_,
    tie_,
)

FAST_MEASURE = {"batch_sizes": [1, 4], "runs": 3, "warmup": 1, "energy": "estimate"}


def _distinct(layer: ClusteredLayer) -> int:
    w = layer.weight.detach()
    kept = w[layer.weight_mask] if layer.weight_mask is not None else w.flatten()
    return int(kept.unique().numel())


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_kmeans_reduces_error_and_uses_k_centroids(init: str) -> None:
    torch.manual_seed(0)
    values = torch.randn(4000)
    centroids, assign = kmeans_1d(values, 16, init, seed=1)
    assert centroids.numel() == 16 and int(assign.max()) < 16
    err = (values.double() - centroids[assign]).square().mean()
    assert err < 0.015  # the optimal 16-level quantiser of N(0, 1) has MSE 0.0095


def test_clustered_layer_has_at_most_k_values_before_and_after_finetuning() -> None:
    model = mlp_64()
    x, y = torch.randn(128, 64), torch.randint(0, 4, (128,))
    ref = model(x)
    share_(model, Share(bits=4))
    assert all(isinstance(model[i], ClusteredLayer) for i in (0, 2, 4))
    assert all(_distinct(model[i]) <= 16 for i in (0, 2, 4))
    rel = (model(x) - ref).norm() / ref.norm()
    assert rel < 0.1
    before = model[0].codebook.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(model[0].codebook.detach(), before)  # the centroids moved
    assert all(_distinct(model[i]) <= 16 for i in (0, 2, 4))


def test_centroid_gradient_is_the_sum_over_its_cluster() -> None:
    torch.manual_seed(0)
    layer = cluster_layer(nn.Linear(10, 6, bias=False), 2)
    x = torch.randn(5, 10)
    w = layer.weight.detach().clone().requires_grad_(True)
    nn.functional.linear(x, w).sum().backward()
    layer(x).sum().backward()
    idx = layer.indices.long()
    want = torch.stack([w.grad[idx == c].sum() for c in range(4)])
    assert torch.allclose(layer.codebook.grad, want, atol=1e-5)


def test_masks_are_respected_zeros_stay_zero() -> None:
    model = mlp_64()
    magnitude_masks(model, 0.2)
    masks = [model[i].weight_mask.clone() for i in (0, 2, 4)]
    share_(model, Share(bits={"linear": 3}))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(16, 64)).square().mean().backward()
    opt.step()
    for i, mask in zip((0, 2, 4), masks, strict=True):
        assert torch.equal(model[i].weight_mask, mask)
        assert (model[i].weight[~mask] == 0).all()
        assert _distinct(model[i]) <= 8


def test_counts_of_a_shared_pruned_model_are_its_weights_not_its_codebooks() -> None:
    model = mlp_64()
    magnitude_masks(model, 0.2)
    params, nonzeros = count_params(model), count_nonzeros(model)
    assert nonzeros < 0.3 * params  # the pruning is visible before sharing
    x = torch.randn(1, 64)
    sparse_flops = effective_flops(model, x)
    assert sparse_flops < 0.5 * count_flops(model, x)  # the zeros still count as skippable
    share_(model, Share(bits={"linear": 3}))
    # sharing stores each weight as a codebook index: as many weights, the same zeros
    assert count_params(model) == params
    assert count_nonzeros(model) == nonzeros
    assert effective_flops(model, x) == sparse_flops


def test_tied_shared_layers_count_their_bias_once_and_each_layers_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    share_(model, Share(bits=2))
    # a tie only groups layers of one shape: the 16->8 layer's codebook has the others' shape
    assert tie_(model) == [["2", "4"]]
    assert model[2].codebook is model[4].codebook and model[2].bias is model[4].bias
    # each layer keeps its own indices (its weights); the tied bias counts once
    assert count_params(model) == (16 * 8 + 8) + 2 * 8 * 8 + 8
    nonzero = [int((model[i].weight != 0).sum()) for i in (0, 2, 4)]
    biases = [int((model[i].bias != 0).sum()) for i in (0, 2)]
    assert count_nonzeros(model) == sum(nonzero) + sum(biases)


def test_bits_per_layer_patterns_win_over_kinds() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    share_(model, Share(bits={"conv": 6, "linear": 2, "0": 3}))
    assert model[0].clusters == 8 and model[2].clusters == 4


def test_too_many_clusters_is_refused() -> None:
    layer = nn.Linear(4, 2)
    with pytest.raises(ConfigError, match=r"cannot make 256 clusters from 8 distinct"):
        cluster_layer(layer, 8)
    with pytest.raises(ConfigError, match=r"share \(kmeans\) layer '4'.*cannot make 32 clusters"):
        share_(
            nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)], nn.Linear(4, 1)),
            Share(bits=5, targets=("4",)),
        )


def test_bad_share_configs() -> None:
    with pytest.raises(ConfigError, match=r"bits must be integers from 1 to 16"):
        Share(bits=0)
    with pytest.raises(ConfigError, match=r"bits must be integers from 1 to 16"):
        Share(bits={"conv": 20})
    with pytest.raises(ConfigError, match=r"ratio.*greater than 0"):
        Share(method="hash", ratio=0)
    with pytest.raises(ConfigError, match=r"index_bits keys are 'conv' and 'linear'"):
        Encode(index_bits={"fc": 5})
    with pytest.raises(ConfigError, match=r"integers from 1 to 16 or 'auto' \(got \{'linear': 0\}"):
        Encode(index_bits={"linear": 0, "conv": "auto"})
    with pytest.raises(
        ConfigError, match=r"integers from 1 to 16 or 'auto' \(got \{'conv': 'Auto'"
    ):
        encode_model(mlp_64(), {"conv": "Auto"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=r"cannot share the weights of layer 1 \(BatchNorm1d\)"):
        share_(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), Share(targets=("1",)))
    with pytest.raises(ConfigError, match=r"no bits for layer '0' \(Conv2d\)"):
        share_(nn.Sequential(nn.Conv2d(1, 2, 3)), Share(bits={"linear": 4}))


def test_hashed_linear_has_k_params_and_trains() -> None:
    torch.manual_seed(0)
    layer = HashedLinear(64, 32, real_params=100)
    assert count_params(layer) == 100 + 32
    w = layer.virtual_weight()
    assert w.shape == (32, 64) and w.abs().unique().numel() <= 100
    x, target = torch.randn(256, 64), torch.randn(256, 32)
    opt = torch.optim.Adam(layer.parameters(), lr=0.02)
    first = None
    for _ in range(60):
        loss = (layer(x) - target).square().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    # the bucket map is rebuilt from the seed: only K weights + bias are in the state dict
    assert set(layer.state_dict()) == {"weight", "bias"}
    clone = HashedLinear(64, 32, 100)
    clone.load_state_dict(layer.state_dict())
    assert torch.equal(clone(x), layer(x))


def test_hash_stage_initialises_from_the_trained_layer() -> None:
    model = mlp_64()
    x = torch.randn(32, 64)
    ref = model(x)
    share_(model, Share(method="hash", ratio=1.0, targets=("0",)))
    assert isinstance(model[0], HashedLinear) and model[0].real_params == 64 * 48
    # ratio 1 maps with collisions, so it is close, not equal; the layer is smaller at 1/8
    assert (model(x) - ref).norm() < ref.norm()


def _three_alike() -> nn.Sequential:
    """Three identically shaped 16x16 layers (0, 2, 4) to tie, and a head."""
    same = [nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)]
    return nn.Sequential(*same, nn.Linear(16, 2))


def test_tied_layers_share_storage_after_training(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _three_alike()
    before = count_params(model)
    ctx = StageContext()
    apply(model, Share(method="tie", targets=("0", "2", "4")), ctx)
    assert count_params(model) == before - 2 * (16 * 16 + 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(8, 16)).square().mean().backward()
    opt.step()
    assert model[0].weight is model[2].weight is model[4].weight
    assert model[0].weight.data_ptr() == model[4].weight.data_ptr()
    copy_ = copy.deepcopy(model)
    assert copy_[0].weight is copy_[2].weight
    assert "0 = 2 = 4" in ctx.notes[0]
    path = save(model, tmp_path / "tied.safetensors")
    fresh = _three_alike()
    share_(fresh, Share(method="tie", targets=("0", "2", "4")))  # the file stores the tie once
    load_weights(fresh, path)
    assert torch.equal(fresh[4].weight, model[4].weight)
    with pytest.raises(ConfigError, match="nothing to tie"):
        share_(
            nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), Share(method="tie", targets=("0", "1"))
        )


def test_clustered_model_pickles() -> None:
    model = clustered_mlp()
    x = torch.randn(4, 64)
    assert torch.equal(pickle.loads(pickle.dumps(model))(x), model(x))


def test_recipe_share_encode_with_centroid_finetune(tmp_path: Path) -> None:
    doc = {
        "name": "dc",
        "model": {"zoo": "mlp", "args": {"hidden": [64, 32]}},
        "data": {"name": "synthetic", "options": {"n_samples": 400, "num_classes": 3}},
        "baseline": {"train": {"epochs": 3, "optimizer": "adam", "lr": 0.01, "progress": False}},
        "stages": [
            {
                "share": {"method": "kmeans", "bits": {"linear": 4}},
                "name": "kmeans",
                "finetune": {"epochs": 1, "optimizer": "sgd", "lr": 0.01, "progress": False},
            },
            {"encode": {"method": "huffman"}, "name": "huffman"},
        ],
        "measure": FAST_MEASURE,
    }
    result = run_recipe(doc, tmp_path / "run")
    rows = {r["variant"]: r["metrics"] for r in result.report["rows"]}
    assert rows["huffman"]["artifact"] == "deepc"
    assert rows["baseline"]["bytes"] / rows["huffman"]["bytes"] > 5
    assert rows["huffman"]["accuracy"] >= rows["baseline"]["accuracy"] - 0.1
    assert (tmp_path / "run" / "artifacts" / "huffman.deepc").stat().st_size == rows["huffman"][
        "bytes"
    ]
    final = result.models["huffman"]
    assert all(_distinct(m) <= 16 for m in final.modules() if isinstance(m, ClusteredLayer))


@pytest.mark.slow
def test_deep_compression_example_chain_on_tiny_data(tmp_path: Path) -> None:
    import yaml

    pytest.importorskip("dwindle.pruning")
    doc = yaml.safe_load(Path("examples/deep_compression.yaml").read_text())
    assert [next(k for k in s if k not in ("name", "finetune")) for s in doc["stages"]] == [
        "prune",
        "share",
        "encode",
    ]
    fast = {"epochs": 1, "optimizer": "adam", "lr": 0.003, "progress": False}
    doc["stages"][0]["prune"].update(steps=2, finetune=fast)
    doc["stages"][1]["finetune"] = dict(fast, lr=0.001)
    doc["stages"][1]["share"]["bits"] = {"linear": 2}  # fc3 keeps only ~8 weights here
    doc.update(
        model={"zoo": "mlp", "args": {"hidden": [64, 32]}},
        data={"name": "synthetic", "options": {"n_samples": 400, "num_classes": 3}},
        baseline={"train": dict(fast, epochs=3, lr=0.01)},
        measure=FAST_MEASURE,
    )
    result = run_recipe(doc, tmp_path / "run")
    rows = {r["variant"]: r["metrics"] for r in result.report["rows"]}
    assert rows["encoded"]["artifact"] == "deepc"
    assert rows["encoded"]["bytes"] < rows["pruned"]["bytes"] < rows["baseline"]["bytes"]
    final = result.models["encoded"]
    for layer in final.modules():
        if isinstance(layer, ClusteredLayer):
            assert layer.weight_mask is not None  # the pruning masks survived clustering
            assert float(layer.weight_mask.float().mean()) < 0.2
            assert (layer.weight[~layer.weight_mask] == 0).all()
    plain = copy.deepcopy(result.models["baseline"])
    load_deepc(plain, tmp_path / "run" / "artifacts" / "encoded.deepc")
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(plain.eval()(x), final.eval()(x))
