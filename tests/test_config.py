from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from dwindle.config import Config, StageContext, apply, get_technique, register_technique
from dwindle.errors import ConfigError
from dwindle.targets import matches, select_modules


class _Scale(Config):
    factor: float = 2.0


class _Unregistered(Config):
    x: int = 1


@register_technique("test-scale", _Scale, "multiply weights (test only)")
def _scale(model: nn.Module, config: _Scale, ctx: StageContext) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(config.factor)
    ctx.note("scaled")
    return model


def test_registry_dispatches_by_config_type_and_name() -> None:
    model = nn.Linear(2, 2, bias=False)
    w = model.weight.detach().clone()
    ctx = StageContext()
    apply(model, _Scale(factor=3.0), ctx)
    assert torch.equal(model.weight, w * 3)
    assert ctx.notes == ["scaled"]
    assert get_technique("test-scale").config is _Scale


def test_unknown_stage_name_suggests_nearest() -> None:
    with pytest.raises(ConfigError, match=r"unknown stage 'precison'; did you mean 'precision'"):
        get_technique("precison")


def test_unregistered_config_type_is_an_error() -> None:
    with pytest.raises(
        ConfigError, match="no technique is registered for config type _Unregistered"
    ):
        apply(nn.Linear(1, 1), _Unregistered())


def test_validation_wrong_type_names_path_and_value() -> None:
    with pytest.raises(ConfigError, match=r"s\.factor: Input should be a valid number.*'abc'"):
        _Scale.from_dict({"factor": "abc"}, "s")


def test_pattern_matching_glob_and_regex() -> None:
    assert matches("features.0", ["features.*"])
    assert not matches("classifier.0", ["features.*"])
    assert matches("layer1.0.conv2", [r"re:layer\d\.\d\.conv\d"])


def test_select_modules_types_and_exclude() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.Linear(2, 2))
    names = [n for n, _ in select_modules(model, ["*"], ["2"], (nn.Conv2d,))]
    assert names == ["0"]
    with pytest.raises(ConfigError, match=r"'9' matches no module of type Conv2d"):
        select_modules(model, ["9"], types=(nn.Conv2d,))


class _Mixed(Config):
    count: int = 1
    rate: float = 0.5
    limit: int | None = None
    flag: bool = False
    either: bool | int = 0
    sizes: tuple[int, ...] = (1,)
    per_layer: dict[str, int] | int = 8
    flags: tuple[bool, ...] = ()


@pytest.mark.parametrize("field", ["count", "rate", "limit"])
def test_a_bool_is_not_read_as_a_number(field: str) -> None:
    # YAML's `epochs: true` or `lr: yes` is a mistake; pydantic's lax mode would read it as 1
    with pytest.raises(ConfigError, match=rf"_Mixed\.{field}.*True is a yes/no value"):
        _Mixed.from_dict({field: True})


def test_fields_that_admit_a_bool_still_take_one() -> None:
    cfg = _Mixed(flag=True, either=True, count=3, rate=1)
    assert cfg.flag is True and cfg.either is True and (cfg.count, cfg.rate) == (3, 1.0)


def test_train_config_epochs_true_is_refused() -> None:
    from dwindle.training import TrainConfig

    with pytest.raises(ConfigError, match=r"epochs.*yes/no value where int is expected"):
        TrainConfig.from_dict({"epochs": True})
    assert TrainConfig.from_dict({"epochs": 2, "progress": False}).progress is False


@pytest.mark.parametrize(
    ("field", "value"),
    [("sizes", [True, 32]), ("per_layer", {"fc1": 4, "fc2": False}), ("count", np.True_)],
)
def test_a_bool_inside_a_list_or_mapping_of_numbers_is_refused(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"_Mixed\.{field}.*yes/no value where int is expected"):
        _Mixed.from_dict({field: value})


def test_lists_of_bools_and_numbers_where_they_belong_are_kept() -> None:
    cfg = _Mixed.from_dict({"sizes": [1, 32], "per_layer": {"fc1": 4}, "flags": [True, False]})
    assert (cfg.sizes, cfg.per_layer, cfg.flags) == ((1, 32), {"fc1": 4}, (True, False))


def test_the_message_names_the_allowed_values() -> None:
    from dwindle.search import SearchSpec

    with pytest.raises(ConfigError, match=r"where Literal\['random', 'tpe'.*\] \| None is"):
        SearchSpec.from_dict({"kind": "hpo", "sampler": True})
