"""2:4 masks to semi-structured sparse tensors: the checks that run anywhere (the conversion
itself needs an NVIDIA GPU and is in test_cuda.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dwindle.errors import ConfigError
from dwindle.pruning import is_two_four, nm_mask, to_semi_structured_


def two_four_mlp(dtype: torch.dtype = torch.float16) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        fc = model[0]
        fc.weight.mul_(nm_mask(fc.weight, 2, 4))
    return model.to(dtype)


def test_is_two_four_reads_the_pattern() -> None:
    model = two_four_mlp()
    assert is_two_four(model[0].weight)
    assert not is_two_four(model[2].weight)  # dense
    assert not is_two_four(torch.zeros(4, 6))  # 6 inputs: not groups of 4


def test_conversion_refuses_a_cpu_model_and_changes_nothing() -> None:
    model = two_four_mlp()
    before = model[0].weight
    with pytest.raises(ConfigError, match=r"^0: .*NVIDIA GPUs only.*model.to\('cuda'\)"):
        to_semi_structured_(model)
    assert model[0].weight is before


def test_conversion_needs_half_precision_and_a_two_four_layer() -> None:
    with pytest.raises(ConfigError, match=r"^0: .*fp16 or bf16 weights, got torch.float32"):
        to_semi_structured_(two_four_mlp(torch.float32))
    with pytest.raises(ConfigError, match=r"no 2:4-sparse nn\.Linear"):
        to_semi_structured_(nn.Sequential(nn.Linear(8, 4)).half())
    with pytest.raises(ConfigError, match=r"^2: .*not 2:4 sparse"):
        to_semi_structured_(two_four_mlp(), targets=["2"])
