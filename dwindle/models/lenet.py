"""LeNet-5, Caffe variant (20-50-500): the conv baseline of the deep-compression papers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from dwindle.errors import ModelSpecError
from dwindle.models.zoo import check_positive, register_model, resolve_input_shape

__all__ = ["LeNet5", "lenet5"]


class LeNet5(nn.Sequential):
    """conv5×5×20 → maxpool2 → conv5×5×50 → maxpool2 → fc500 → ReLU → fc.

    Like Caffe's ``lenet_train_test.prototxt`` there is no non-linearity after the convolutions;
    431,080 parameters for 1×28×28 inputs and 10 classes.
    """

    def __init__(
        self, in_channels: int, flat_features: int, num_classes: int, padding: int = 0
    ) -> None:
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 20, 5, padding=padding),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(20, 50, 5, padding=padding),
                pool2=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
                fc1=nn.Linear(flat_features, 500),
                relu=nn.ReLU(),
                fc2=nn.Linear(500, num_classes),
            )
        )


def _after_stage(size: int, padding: int) -> int:
    """Spatial size after a 5×5 conv (stride 1) and a 2×2 max-pool."""
    return (size + 2 * padding - 4) // 2


@register_model("lenet5", "LeNet-5 Caffe variant (conv20-conv50-fc500; 431,080 params on MNIST)")
def lenet5(
    num_classes: int = 10,
    input_shape: Sequence[int] = (1, 28, 28),
    padding: int = 0,
) -> LeNet5:
    """LeNet-5 for ``(C, H, W)`` inputs; use ``padding=2`` for inputs smaller than 16×16."""
    check_positive("lenet5", "num_classes", num_classes)
    check_positive("lenet5", "padding", padding, allow_zero=True)
    c, h, w = resolve_input_shape("lenet5", input_shape, None, (1, 28, 28), ndim=3)
    oh, ow = (
        _after_stage(_after_stage(h, padding), padding),
        _after_stage(_after_stage(w, padding), padding),
    )
    if oh < 1 or ow < 1:
        raise ModelSpecError(
            f"lenet5: input {h}×{w} is too small for two 5×5 conv + 2×2 pool stages; "
            "pass padding=2 (works down to 8×8) or use 'cnn4bn'"
        )
    return LeNet5(c, 50 * oh * ow, num_classes, padding)
