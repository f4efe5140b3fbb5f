"""A tiny MNIST-layout IDX dataset written on the fly, shared by the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import dwindle.data as dd

N_TRAIN, N_TEST = 60, 20


def make_idx_dir(directory: Path, *, gz: bool = True, dotted: bool = False, seed: int = 0) -> dict:
    """Write a tiny MNIST-layout dataset (28×28 uint8 images, labels 0..9) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": gen.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": gen.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(N_TEST) % 10).astype(np.uint8),
    }
    for name, arr in arrays.items():
        stem = name.replace("-idx", ".idx", 1) if dotted else name
        dd.write_idx(directory / (stem + (".gz" if gz else "")), arr)
    return arrays
