"""Model zoo (``create("lenet300")``) and user model specs (``"my_model.py:build"``)."""

from dwindle.models.cnn import CNN1D, CNN4BN, cnn1d, cnn4bn
from dwindle.models.lenet import LeNet5, lenet5
from dwindle.models.mlp import MLP, lenet300, mlp
from dwindle.models.resnet import BasicBlock, DownsampleA, ResNetCifar, resnet, resnet20, resnet56
from dwindle.models.user import build_model, load_model_spec
from dwindle.models.zoo import ModelEntry, available_models, create, get_model, register_model

__all__ = [
    "CNN1D",
    "CNN4BN",
    "MLP",
    "BasicBlock",
    "DownsampleA",
    "LeNet5",
    "ModelEntry",
    "ResNetCifar",
    "available_models",
    "build_model",
    "cnn1d",
    "cnn4bn",
    "create",
    "get_model",
    "lenet5",
    "lenet300",
    "load_model_spec",
    "mlp",
    "register_model",
    "resnet",
    "resnet20",
    "resnet56",
]
