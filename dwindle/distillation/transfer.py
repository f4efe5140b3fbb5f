"""Transfer sets: the inputs on which the student learns to imitate the teacher.

Which data to distil on is a real choice (Hinton et al. 2015 §3 distil on the training set,
Ba & Caruana 2014 on unlabelled data, Buciluǎ et al. 2006 on synthetic samples), so it is a
config value: ``train``, ``heldout`` (three quarters of the validation split, unseen by the
teacher; the last quarter, chosen by ``seed``, stays the student's validation data),
``unlabelled`` (given inputs, or the training inputs with their labels dropped), ``noise``
(Gaussian inputs with the training data's per-feature mean and std) or ``mixup`` (convex
mixes of two training inputs). Synthetic and unlabelled samples carry the label
``IGNORE_LABEL``: only the teacher's soft targets teach them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from dwindle.config import Config
from dwindle.data.bundle import DataBundle
from dwindle.distillation.losses import IGNORE_LABEL
from dwindle.errors import ConfigError

__all__ = ["TransferConfig", "TransferSet", "build_transfer_set", "load_inputs"]

Source = Literal["train", "heldout", "unlabelled", "noise", "mixup"]


class TransferConfig(Config):
    """Which inputs to distil on.

    ``fraction`` keeps a seeded random share of the source's samples; ``size`` is the number of
    synthetic samples (``noise``/``mixup``; default: as many as the training split);
    ``mixup_alpha`` the Beta(a, a) parameter of the mixing weight; ``path`` an ``.npz`` (array
    ``x``) or ``.pt`` tensor file of inputs for ``unlabelled``.
    """

    source: Source = "train"
    fraction: float = Field(1.0, gt=0, le=1)
    size: int | None = Field(None, ge=1)
    mixup_alpha: float = Field(1.0, gt=0)
    path: str | None = None
    seed: int = Field(0, ge=0)


@dataclass
class TransferSet(DataBundle):
    """A DataBundle that records which samples each training batch holds.

    The distillation loss reads ``last_indices`` to look the teacher's outputs up in the
    cache; ``last_augmented`` says the batch was augmented (then the cache is bypassed).
    """

    source: str = "train"
    last_indices: Tensor | None = None
    last_augmented: bool = False

    def _on_batch(self, split: str, indices: Tensor, augmented: bool) -> None:
        if split == "train":
            self.last_indices, self.last_augmented = indices, augmented


def load_inputs(path: str) -> Tensor:
    """Inputs stored as ``.npz`` (array ``x``, else the first array) or a ``.pt`` tensor."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"transfer.path {path!r} is not a file")
    if file.suffix == ".npz":
        with np.load(file) as arrays:
            key = "x" if "x" in arrays.files else arrays.files[0]
            return torch.from_numpy(np.asarray(arrays[key], dtype=np.float32))
    if file.suffix == ".pt":
        value = torch.load(file, map_location="cpu", weights_only=True)
        if not isinstance(value, Tensor):
            raise ConfigError(f"transfer.path {path!r} must hold one tensor of inputs")
        return value.float()
    raise ConfigError(f"transfer.path {path!r}: use an .npz (array 'x') or a .pt tensor file")


def _subsample(x: Tensor, y: Tensor, fraction: float, gen: torch.Generator) -> tuple[Tensor, ...]:
    if fraction >= 1:
        return x, y
    keep = max(1, round(len(y) * fraction))
    idx = torch.randperm(len(y), generator=gen)[:keep].sort().values
    return x[idx], y[idx]


def _synthetic(data: DataBundle, cfg: TransferConfig, gen: torch.Generator) -> Tensor:
    x = data.x_train.float()
    n = cfg.size or len(x)
    if cfg.source == "noise":
        mean, std = x.mean(0), x.std(0)
        return mean + std * torch.randn((n, *x.shape[1:]), generator=gen)
    i = torch.randint(len(x), (n,), generator=gen)
    j = torch.randint(len(x), (n,), generator=gen)
    rng = np.random.default_rng(cfg.seed)  # torch's Beta sampler takes no generator
    lam = torch.from_numpy(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha, n).astype(np.float32))
    lam = lam.view(n, *([1] * (x.dim() - 1)))
    return lam * x[i] + (1 - lam) * x[j]


def build_transfer_set(
    data: DataBundle, config: TransferConfig | None = None, inputs: Tensor | None = None
) -> TransferSet:
    """The transfer set ``config`` describes, as a :class:`TransferSet` keeping ``data``'s
    validation and test splits; ``inputs`` are the unlabelled inputs (overrides ``path``).
    """
    cfg = config or TransferConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    x_val, y_val = data.x_val, data.y_val
    if cfg.source == "train":
        x, y = data.split("train")
    elif cfg.source == "heldout":  # validation must not be the inputs the student learns on
        x, y = data.split("val")
        order = torch.randperm(len(y), generator=gen)
        n_val = len(y) // 4
        val, kept = order[:n_val].sort().values, order[n_val:].sort().values
        x_val, y_val, x, y = x[val], y[val], x[kept], y[kept]
    elif cfg.source == "unlabelled":
        if inputs is None and cfg.path is not None:
            inputs = load_inputs(cfg.path)
        x = inputs if inputs is not None else data.x_train
        y = torch.full((len(x),), IGNORE_LABEL, dtype=torch.long)
    else:
        x = _synthetic(data, cfg, gen)
        y = torch.full((len(x),), IGNORE_LABEL, dtype=torch.long)
    x, y = _subsample(x, y, cfg.fraction, gen)
    if not isinstance(x, Tensor) or x.dim() < 1 or len(x) == 0:
        raise ConfigError(
            f"transfer set {cfg.source!r} of dataset {data.name!r} holds no inputs; "
            "give it samples (e.g. a non-empty validation split for 'heldout')"
        )
    if tuple(x.shape[1:]) != tuple(data.input_shape):
        raise ConfigError(
            f"transfer set {cfg.source!r} has inputs shaped {tuple(x.shape[1:])} per sample, "
            f"but the models take {tuple(data.input_shape)} (dataset {data.name!r}); "
            "reshape the inputs to the models' input shape"
        )
    return TransferSet(
        name=f"{data.name}:{cfg.source}",
        x_train=x.float(),
        y_train=y.long(),
        x_val=x_val,
        y_val=y_val,
        x_test=data.x_test,
        y_test=data.y_test,
        num_classes=data.num_classes,
        augment=data.augment if cfg.source in ("train", "heldout") else None,
        source=cfg.source,
    )
