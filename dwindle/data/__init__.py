"""Datasets as in-memory :class:`DataBundle` splits: ``dwindle.data.load("mnist")``.

Built in: ``mnist``, ``fashion-mnist``, ``kmnist`` and ``idx`` (IDX files), ``digits``
(scikit-learn, offline), ``mnist1d`` (generated, cached), ``synthetic`` (Gaussian blobs) and
``npz`` (your own arrays). Add one with :func:`register_dataset`.
"""

from dwindle.data.bundle import SPLITS, DataBundle
from dwindle.data.idx import read_idx, write_idx
from dwindle.data.paths import cache_dir, default_roots
from dwindle.data.registry import (
    DatasetSpec,
    available_datasets,
    dataset_spec,
    load,
    register_dataset,
)

__all__ = [
    "SPLITS",
    "DataBundle",
    "DatasetSpec",
    "available_datasets",
    "cache_dir",
    "dataset_spec",
    "default_roots",
    "load",
    "read_idx",
    "register_dataset",
    "write_idx",
]
