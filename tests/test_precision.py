import pickle

import pytest
import torch
from torch import nn

import dwindle as dw
from dwindle.config import apply, get_technique
from dwindle.errors import ConfigError
from dwindle.precision import Precision, cast_


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))


@pytest.mark.parametrize("dtype", ["fp64", "fp32", "fp16", "bf16"])
def test_whole_model_cast_keeps_float32_interface(dtype: str) -> None:
    model = _net().eval()
    x = torch.randn(8, 16)
    ref = model(x)
    cast_(model, Precision(dtype=dtype))
    want = {
        "fp64": torch.float64,
        "fp32": torch.float32,
        "fp16": torch.float16,
        "bf16": torch.bfloat16,
    }[dtype]
    assert all(p.dtype == want for p in model.parameters())
    out = model(x)
    assert out.dtype == torch.float32
    tol = {"fp64": 1e-6, "fp32": 1e-6, "fp16": 2e-2, "bf16": 1e-1}[dtype]
    assert torch.allclose(out, ref, atol=tol), (out - ref).abs().max()
    assert model.dwindle_accepts_float32 is True


def test_fp64_research_model_to_fp32_halves_state_bytes() -> None:
    model = _net().double()
    before = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    cast_(model, Precision(dtype="fp32"))
    after = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    # num_batches_tracked is int64 and stays as it is
    assert after < before and after == pytest.approx(before / 2, abs=16)


def test_keep_norm_leaves_batchnorm_in_fp32() -> None:
    model = _net().eval()
    cast_(model, Precision(dtype="fp16", keep_norm=True))
    assert model[0].weight.dtype == torch.float16
    assert model[1].weight.dtype == torch.float32
    assert model(torch.randn(4, 16)).dtype == torch.float32


def test_per_layer_targets_cast_only_matching_layers() -> None:
    model = _net().eval()
    x = torch.randn(4, 16)
    ref = model(x)
    cast_(model, Precision(dtype="bf16", targets=("3",)))
    assert model[0].weight.dtype == torch.float32
    assert model[3].weight.dtype == torch.bfloat16
    out = model(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.1)


def test_recasting_replaces_hooks_instead_of_stacking() -> None:
    model = _net().eval()
    cast_(model, Precision(dtype="fp16"))
    cast_(model, Precision(dtype="fp32"))
    assert len(model._forward_pre_hooks) == 1
    assert model[0].weight.dtype == torch.float32


def test_cast_model_pickles_and_trains() -> None:
    model = cast_(_net(), Precision(dtype="bf16"))
    restored = pickle.loads(pickle.dumps(model))
    assert restored(torch.randn(2, 16)).dtype == torch.float32
    loss = model(torch.randn(8, 16)).sum()
    loss.backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.dtype == torch.bfloat16


def test_registry_dispatch_and_stage_note() -> None:
    assert get_technique("precision").config is Precision
    ctx = dw.StageContext()
    model = apply(_net(), Precision(dtype="fp16"), ctx)
    assert model[0].weight.dtype == torch.float16
    assert any("fp16" in n for n in ctx.notes)


def test_bad_dtype_and_unknown_key_messages() -> None:
    with pytest.raises(
        ConfigError, match=r"dtype: Input should be 'fp64', 'fp32', 'fp16' or 'bf16'"
    ):
        Precision.from_dict({"dtype": "fp8"}, "stage")
    with pytest.raises(ConfigError, match=r"stage.dtyp: unknown key; did you mean 'dtype'"):
        Precision.from_dict({"dtyp": "fp16"}, "stage")


def test_target_matching_nothing_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"target pattern 'features\.\*' matches no module"):
        cast_(_net(), Precision(dtype="fp16", targets=("features.*",)))


def test_config_is_frozen() -> None:
    cfg = Precision(dtype="fp16")
    with pytest.raises(Exception, match="frozen"):
        cfg.dtype = "bf16"  # type: ignore[misc]
