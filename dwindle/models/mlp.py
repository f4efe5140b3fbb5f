"""Multi-layer perceptrons: the generic ``mlp`` and LeCun's ``lenet300`` (784-300-100-10)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import nn

from dwindle.errors import ModelSpecError
from dwindle.models.zoo import check_dropout, check_positive, register_model, resolve_input_shape

__all__ = ["MLP", "lenet300", "mlp"]


class MLP(nn.Sequential):
    """Flatten → (``fcK`` → ReLU [→ dropout]) per hidden width → ``fc{last}`` classifier.

    A plain ``nn.Sequential`` with named layers ``fc1, fc2, ...`` so that pruning targets such
    as ``"fc*"`` read naturally and the model traces and exports without custom code.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        dropout: float = 0.0,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = in_features
        for i, h in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, h)
            layers[f"relu{i}"] = nn.ReLU()
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
            width = h
        layers[f"fc{len(hidden) + 1}"] = nn.Linear(width, num_classes)
        super().__init__(layers)


def _hidden(model: str, hidden: Any) -> tuple[int, ...]:
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = (hidden,)
    try:
        widths = tuple(hidden)
    except TypeError:
        widths = None
    if widths is None or not all(
        isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in widths
    ):
        raise ModelSpecError(
            f"{model}: hidden must be a sequence of positive ints such as (256, 128) "
            f"(got {hidden!r})"
        )
    return widths


@register_model("mlp", "MLP with ReLU; hidden=(256, 128), dropout, any input_shape (flattened)")
def mlp(
    num_classes: int = 10,
    input_shape: Sequence[int] = (1, 28, 28),
    hidden: Sequence[int] = (256, 128),
    dropout: float = 0.0,
) -> MLP:
    """A fully connected classifier over the flattened input."""
    check_positive("mlp", "num_classes", num_classes)
    shape = resolve_input_shape("mlp", input_shape, None, (1, 28, 28))
    return MLP(math.prod(shape), _hidden("mlp", hidden), num_classes, check_dropout("mlp", dropout))


@register_model("lenet300", "LeNet-300-100 MLP (784-300-100-10, ReLU; 266,610 params on MNIST)")
def lenet300(
    num_classes: int = 10,
    input_shape: Sequence[int] = (1, 28, 28),
    dropout: float = 0.0,
) -> MLP:
    """LeCun et al.'s 300-100 MLP, the usual baseline of pruning papers (Han et al. 2015)."""
    check_positive("lenet300", "num_classes", num_classes)
    shape = resolve_input_shape("lenet300", input_shape, None, (1, 28, 28))
    return MLP(math.prod(shape), (300, 100), num_classes, check_dropout("lenet300", dropout))
