import pytest
import torch
from torch import nn

from dwindle.errors import ConfigError
from dwindle.factorization import Factorize, cp_decompose, cp_split, factorize_
from dwindle.metrics import count_params


def _rank_r_conv(rank: int, n: int = 8, c: int = 6, k: int = 3, **kw: int) -> nn.Conv2d:
    """A conv whose kernel is exactly a sum of ``rank`` rank-one terms."""
    g = torch.Generator().manual_seed(1)
    a, b, y, x = (torch.randn(d, rank, generator=g) for d in (n, c, k, k))
    conv = nn.Conv2d(c, n, k, **kw)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("nr,cr,yr,xr->ncyx", a, b, y, x))
    return conv


def test_als_recovers_an_exact_low_rank_kernel() -> None:
    conv = _rank_r_conv(3)
    factors, error = cp_decompose(conv.weight, 3, iterations=100)
    assert [f.shape for f in factors] == [(8, 3), (6, 3), (3, 3), (3, 3)]
    assert error < 1e-4
    _, too_small = cp_decompose(conv.weight, 1, iterations=50)
    assert too_small > 0.05  # a rank-3 kernel is not rank 1


def test_cp_chain_reproduces_the_conv_and_keeps_geometry() -> None:
    torch.manual_seed(0)
    conv = _rank_r_conv(4, padding=1, stride=2, bias=True)
    x = torch.randn(2, 6, 11, 11)
    chain = cp_split(conv, 4, iterations=100)
    assert [m.kernel_size for m in chain] == [(1, 1), (3, 1), (1, 3), (1, 1)]
    assert chain[1].groups == chain[2].groups == 4
    assert chain(x).shape == conv(x).shape
    assert torch.allclose(chain(x), conv(x), atol=1e-3)
    assert count_params(chain) < count_params(conv)


def test_cp_error_falls_with_rank_on_a_trained_like_kernel() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3)
    errors = [cp_decompose(conv.weight, r, iterations=30)[1] for r in (2, 8, 32)]
    assert errors[0] > errors[1] > errors[2]


def test_cp_stage_by_ratio_and_refuses_energy() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3))
    before = count_params(model[2])
    factorize_(model, Factorize(method="cp", ratio=0.25, targets=("2",)))
    assert isinstance(model[2], nn.Sequential) and len(model[2]) == 4
    assert count_params(model[2]) <= 0.25 * before + 16  # the bias is kept
    assert model(torch.randn(1, 8, 8, 8)).shape == (1, 16, 6, 6)
    assert any("CP rank" in n for n in model.dwindle_factorization_notes)
    with pytest.raises(ConfigError, match=r"rank .* or ratio"):
        factorize_(nn.Sequential(nn.Conv2d(4, 4, 3)), Factorize(method="cp", energy=0.9))
    with pytest.raises(ConfigError, match=r"nn\.Conv2d"):
        factorize_(nn.Sequential(nn.Linear(4, 4)), Factorize(method="cp", rank=2, targets=("0",)))


def test_cp_rank_that_saves_nothing_is_skipped() -> None:
    model = nn.Sequential(nn.Conv2d(2, 2, 3))
    factorize_(model, Factorize(method="cp", rank=50))
    assert isinstance(model[0], nn.Conv2d)
    assert any("would not be smaller" in n for n in model.dwindle_factorization_notes)
