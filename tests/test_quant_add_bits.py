"""QAT ``add_bits``: which quantisers a residual branch's output gets, in graphs beyond a ResNet."""

import warnings

import pytest
import torch
from torch import Tensor, nn

from dwindle.quantization import QAT, convert_qat
from dwindle.quantization.fake_quant import FakeQuantize
from dwindle.quantization.qat import prepare_qat


class _Residual(nn.Module):
    """``h + between(fc2(relu(fc1(h))))`` into a head; ``mixed`` also multiplies by fc2's output."""

    def __init__(self, between: nn.Module, mixed: bool = False) -> None:
        super().__init__()
        self.fc0, self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.between, self.mixed, self.head = between, mixed, nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc0(x))
        y = self.fc2(torch.relu(self.fc1(h)))
        out = h + self.between(y)
        if self.mixed:
            out = out * y
        return self.head(out)


class _Positional(nn.Module):
    """An addition of a layer's output and a parameter: not a residual addition."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.pos = nn.Linear(6, 8), nn.Parameter(torch.randn(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.emb(x) + self.pos))


def _bits(model: nn.Module) -> dict[str, int]:
    return {n: m.bits for n, m in model.named_modules() if isinstance(m, FakeQuantize)}


@pytest.mark.parametrize("learned", [True, False])
@pytest.mark.parametrize("between", [nn.Identity(), nn.Dropout(0.1)])
def test_branch_output_reaches_the_add_through_grid_ops(between: nn.Module, learned: bool) -> None:
    torch.manual_seed(0)
    cfg = QAT(weight_bits=4, act_bits=4, add_bits=8, learned_ranges=learned)
    q = prepare_qat(_Residual(between), cfg)
    bits = _bits(q)
    assert bits["fc2_aq"] == 8  # the branch output, before the addition
    assert bits["relu_aq"] == bits["relu_1_aq"] == bits["add_aq"] == 4  # ReLU outputs, the sum
    x = torch.randn(32, 6)
    q(x)
    q.eval()
    with torch.no_grad():
        assert torch.allclose(convert_qat(q)(x), q(x), atol=1e-3)


def test_a_layer_output_read_beside_the_add_keeps_act_bits() -> None:
    with pytest.warns(UserWarning, match="changed no quantiser"):
        q = prepare_qat(_Residual(nn.Identity(), mixed=True), QAT(act_bits=4, add_bits=8))
    assert _bits(q)["fc2_aq"] == 4


def test_add_bits_that_moves_nothing_warns() -> None:
    with pytest.warns(UserWarning, match="add_bits=8 changed no quantiser"):
        q = prepare_qat(_Positional(), QAT(act_bits=4, add_bits=8))
    assert set(_bits(q).values()) == {4}  # emb + parameter is no residual addition
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_qat(_Residual(nn.Identity()), QAT(act_bits=4, add_bits=8))
