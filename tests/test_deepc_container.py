"""Deep Compression's container: Huffman coding, sparse positions, encode → decode bit-exact."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import clustered_mlp, magnitude_masks, mlp_64
from torch import nn

from dwindle.errors import CheckpointError
from dwindle.export import save
from dwindle.metrics import artifact_bytes
from dwindle.sharing import (
    Encode,
    Share,
    code_lengths,
    decode_state,
    encode_,
    encode_model,
    huffman_decode,
    huffman_encode,
    load_deepc,
    share_,
)
from dwindle.sharing.container import _gaps, _positions


@pytest.mark.parametrize("alphabet", [1, 2, 7, 33])
def test_huffman_round_trip(alphabet: int) -> None:
    rng = np.random.default_rng(alphabet)
    symbols = np.minimum(rng.geometric(0.35, 5000) - 1, alphabet - 1)
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    data, nbits = huffman_encode(symbols, lengths)
    assert np.array_equal(huffman_decode(data, nbits, lengths, len(symbols)), symbols)
    if alphabet > 2:  # entropy coding beats the fixed-width code on a skewed stream
        assert nbits < len(symbols) * np.ceil(np.log2(alphabet))


def _loads_into_a_scrambled_copy(model: nn.Module, path: Path, x: torch.Tensor) -> None:
    """``path`` loaded into a copy of ``model`` with other weights gives ``model``'s outputs."""
    twin = copy.deepcopy(model)
    for p in twin.parameters():
        p.data.normal_()
    load_deepc(twin, path)
    assert torch.equal(twin(x), model(x))


def test_encode_decode_is_bit_exact_including_sparse_indices(tmp_path: Path) -> None:
    model = clustered_mlp()
    encode_(model, Encode(index_bits={"linear": 3}))  # 3 bits: forces filler entries
    path = save(model, tmp_path / "m.deepc")
    assert model.dwindle_format == "deepc" and path.stat().st_size == artifact_bytes(model)[0]
    state = decode_state(path.read_bytes())
    for name, tensor in model.state_dict().items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
    # into the same (clustered) architecture with other values
    x = torch.randn(8, 64)
    _loads_into_a_scrambled_copy(model, path, x)
    # into the plain architecture: clustered layers load their dense effective weights
    plain = mlp_64(seed=3)
    load_deepc(plain, path)
    assert torch.equal(plain(x), model(x))


def test_auto_index_bits_pick_each_layers_width(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 256))
    for layer, keep in ((model[0], 0.02), (model[2], 0.6)):  # long gaps / short gaps
        w = layer.weight.detach()
        mask = w.abs() > w.abs().flatten().kthvalue(int((1 - keep) * w.numel())).values
        layer.register_buffer("weight_mask", mask)
        layer.weight.data.mul_(mask)
    share_(model, Share(bits=4))
    encode_(model, Encode())  # pruned zeros made +0.0, so every layer is coded
    sizes = {}
    for b in range(2, 13):
        data, stats = encode_model(model, {"linear": b})
        sizes[b] = (len(data), {s["name"]: s["bytes"] for s in stats if "index_bits" in s})
    auto = encode_(copy.deepcopy(model), Encode(index_bits={"linear": "auto"}))  # round-trips
    data, stats = encode_model(auto, auto.dwindle_index_bits)
    layers = {s["name"]: s for s in stats if "index_bits" in s}
    for name, row in layers.items():  # coded as that layer alone at its width would be
        assert row["bytes"] == sizes[row["index_bits"]][1][name]
    # the sparse layer takes wide gaps, the dense one narrow; the file beats the default
    # widths' and matches the best single width (each layer's manifest share is estimated)
    assert layers["0"]["index_bits"] > layers["2"]["index_bits"]
    assert len(data) < sizes[5][0] and len(data) <= 1.001 * min(n for n, _ in sizes.values())
    path = save(auto, tmp_path / "auto.deepc")
    assert path.stat().st_size == len(data)
    _loads_into_a_scrambled_copy(auto, path, torch.randn(4, 512))


def test_gaps_bridge_long_runs_with_fillers() -> None:
    positions = np.array([0, 3, 4, 40, 41, 300])
    gaps, filler = _gaps(positions, 3)  # span 8
    # 0; 3 (gap 3); 4 (gap 1); 40 (gap 36 = 4 fillers of 8, then 4); 41; 300 (259 = 32 x 8 + 3)
    assert gaps[:8].tolist() == [0, 2, 0, 7, 7, 7, 7, 3] and filler[:8].tolist() == [
        False,
        False,
        False,
        True,
        True,
        True,
        True,
        False,
    ]
    assert int(filler.sum()) == 4 + 32 and len(gaps) == 6 + 36
    assert np.array_equal(_positions(gaps, filler), positions)
    assert _gaps(np.array([], dtype=np.int64), 5)[0].size == 0


def test_fully_pruned_layer_round_trips(tmp_path: Path) -> None:
    model = mlp_64()
    magnitude_masks(model, 0.2)
    model[4].weight_mask.zero_()  # nothing kept in the last layer
    model[4].weight.data.zero_()
    encode_(model, Encode(index_bits={"linear": "auto"}))
    path = save(model, tmp_path / "empty.deepc")
    twin = mlp_64(seed=5)
    magnitude_masks(twin, 0.2)
    load_deepc(twin, path)
    x = torch.randn(4, 64)
    assert torch.equal(twin(x), model(x)) and not twin[4].weight.any()


def test_container_is_much_smaller_than_fp32() -> None:
    model = encode_(clustered_mlp(keep=0.1, bits=4), Encode())
    data, stats = encode_model(model)
    fp32 = sum(p.numel() for p in mlp_64().parameters()) * 4
    assert len(data) < fp32 / 8  # raw biases and the manifest weigh most in a model this small
    assert {s["kind"] for s in stats} == {"clustered", "sparse", "raw"}


def test_corrupted_or_truncated_file_is_refused(tmp_path: Path) -> None:
    model = encode_(clustered_mlp(), Encode())
    path = save(model, tmp_path / "m.deepc")
    data = path.read_bytes()
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x40
    (tmp_path / "bad.deepc").write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="corrupted: CRC32 mismatch"):
        load_deepc(mlp_64(), tmp_path / "bad.deepc")
    (tmp_path / "short.deepc").write_bytes(data[:-7])
    with pytest.raises(CheckpointError, match=r"truncated or padded: the header says \d+"):
        load_deepc(mlp_64(), tmp_path / "short.deepc")
    with pytest.raises(CheckpointError, match="shorter than the header"):
        decode_state(data[:10])
    with pytest.raises(CheckpointError, match="not a dwindle deepc file"):
        decode_state(b"PK\x03\x04" + data[4:])
    with pytest.raises(CheckpointError, match=r"does not fit Sequential"):
        load_deepc(nn.Sequential(nn.Linear(64, 4)), path)
