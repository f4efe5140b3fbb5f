"""Bring your own model: a factory in a plain Python file.

    dwindle measure examples/my_model.py:build --data digits
"""

from torch import nn


def build(num_classes: int = 10, hidden: int = 64) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )
