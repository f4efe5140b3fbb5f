"""Stage-width pruning: bad configs, unsupported structures and bad plans are explained."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import RGB, STAGES, X, stream_width, tiny_resnet
from torch import nn

from dwindle.errors import ConfigError
from dwindle.models import create
from dwindle.models.resnet import DownsampleA, ResNetCifar
from dwindle.pruning import (
    StageWidthPruning,
    TracingError,
    keep_stage_channels_,
    prune_stage_widths_,
)


def _prune(cfg: StageWidthPruning) -> None:
    prune_stage_widths_(tiny_resnet(), cfg, example_input=RGB)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 0.0}, r"ratio: Input should be greater than 0"),
        ({"ratio": 1.0}, r"ratio: Input should be less than 1"),
        ({"ratios": {"layer1": 1.0}}, r"ratios\.layer1: Input should be less than 1"),
        ({"round_to": 0}, r"round_to: Input should be greater than or equal to 1"),
        ({"criterion": "taylor"}, r"criterion: Input should be 'l1' or 'l2'"),
    ],
)
def test_bad_config_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StageWidthPruning(**kwargs)


class _OptionB(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class _FixedWidthHead(ResNetCifar):
    """Also multiplies the pooled features by a fixed 32-row matrix that pruning cannot see."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        feat = F.adaptive_avg_pool2d(self.layer3(self.layer2(self.layer1(out))), 1).flatten(1)
        return self.linear(feat) + 0 * (feat @ torch.ones(32, 10))


def test_unsupported_structures_name_what_is_missing() -> None:
    cfg = StageWidthPruning()
    with pytest.raises(ConfigError, match=r"has no Conv2d 'conv1'; use FilterPruning instead"):
        prune_stage_widths_(create("cnn4bn"), cfg, example_input=torch.randn(1, 1, 28, 28))
    model = tiny_resnet()
    model.layer2[0].shortcut = _OptionB(8, 16)
    with pytest.raises(ConfigError, match=r"option-A shortcut in 'layer2\.0', found _OptionB"):
        prune_stage_widths_(model, cfg, example_input=RGB)
    model = tiny_resnet()
    model.layer1[1] = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))
    with pytest.raises(
        ConfigError, match=r"no conv1, bn1, conv2, bn2, shortcut in block 'layer1\.1'"
    ):
        prune_stage_widths_(model, cfg, example_input=RGB)
    model = tiny_resnet()
    model.extra = nn.Linear(10, 10)
    with pytest.raises(ConfigError, match=r"does not know how ResNetCifar\.extra \(Linear\)"):
        prune_stage_widths_(model, cfg, example_input=RGB)


def test_bad_plans_are_explained_and_leave_the_model_whole() -> None:
    with pytest.raises(ConfigError, match=r"ratio 0\.9 of stage 'layer1' \(8 channels\) with "
                       r"round_to=8 would keep 0 channels"):  # fmt: skip
        _prune(StageWidthPruning(ratio=0.9, round_to=8))
    with pytest.raises(ConfigError, match=r"'layer3\.\*' matches no stage; stages are: layer1, "):
        _prune(StageWidthPruning(targets=("layer3.*",)))
    with pytest.raises(ConfigError, match=r"ratios names 'layer4', which is not a stage"):
        _prune(StageWidthPruning(ratios={"layer4": 0.5}))
    cfg = StageWidthPruning(exclude=("layer1",), ratios={"layer1": 0.5})
    with pytest.raises(ConfigError, match=r"'layer1', which is left out by targets/exclude"):
        _prune(cfg)
    with pytest.raises(ConfigError, match=r"no stage 'layer9' in the model; stages: layer1, "):
        keep_stage_channels_(tiny_resnet(), {"layer9": [0]}, example_input=RGB)
    with pytest.raises(
        ConfigError, match=r"keep\['layer2'\] must hold channel indices in \[0, 16\)"
    ):
        keep_stage_channels_(tiny_resnet(), {"layer2": [3, 16]}, example_input=RGB)
    with pytest.raises(ConfigError, match=r"keep\['layer1'\].*at least one \(got 0 indices"):
        keep_stage_channels_(tiny_resnet(), {"layer1": []}, example_input=RGB)
    with pytest.raises(ConfigError, match="stage-width pruning needs an input"):
        prune_stage_widths_(tiny_resnet(), StageWidthPruning())
    # a forward that breaks after the change is caught, and the model is restored
    model = _FixedWidthHead(2, width=8).eval()
    before = model(X)
    with pytest.raises(TracingError, match=r"no longer runs"):
        prune_stage_widths_(model, StageWidthPruning(ratio=0.5), example_input=RGB)
    assert [stream_width(model, s) for s in STAGES] == [8, 16, 32]
    assert isinstance(model.layer2[0].shortcut, DownsampleA) and torch.equal(model(X), before)
