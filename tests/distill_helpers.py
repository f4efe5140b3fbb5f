"""Fixtures and helpers shared by the distillation tests (digits data, trained teachers)."""

from typing import Any

import pytest
import torch
from torch import nn

import dwindle as dw
from dwindle.distillation import (
    student_from_zoo,
)

FAST_MEASURE = {"batch_sizes": [1, 4], "runs": 3, "warmup": 1, "energy": "estimate"}
FAST = {"epochs": 2, "lr": 0.05, "batch_size": 64, "progress": False}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    # Tiny models on a shared CPU: more threads only add contention.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> Any:
    return dw.data.load("digits")


@pytest.fixture(scope="module")
def teacher(digits: Any) -> nn.Module:
    torch.manual_seed(0)
    model = student_from_zoo("mlp", digits, hidden=(64,))
    dw.train(model, digits, dw.TrainConfig(epochs=4, lr=0.05, progress=False))
    return model.eval()


@pytest.fixture(scope="module")
def small_digits() -> Any:
    return dw.data.load("digits", limit=300)


@pytest.fixture(scope="module")
def cnn_teacher(small_digits: Any) -> nn.Module:
    torch.manual_seed(0)
    model = student_from_zoo("cnn4bn", small_digits, widths=(8, 8, 16, 16))
    dw.train(model, small_digits, dw.TrainConfig(epochs=2, lr=0.05, progress=False))
    return model.eval()


def _small_cnn(data: Any) -> nn.Module:
    torch.manual_seed(1)
    return student_from_zoo("cnn4bn", data, widths=(4, 4, 8, 8))


def _mlp(data: Any, hidden: tuple[int, ...] = (16,), seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return student_from_zoo("mlp", data, hidden=hidden)


class _CountCalls:
    def __init__(self, model: nn.Module) -> None:
        self.n = 0
        model.register_forward_hook(self)

    def __call__(self, *_: Any) -> None:
        self.n += 1
