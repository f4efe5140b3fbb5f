"""Low-rank factorization: truncated SVD of linear layers, spatial SVD, Tucker-2 and CP of convs,
low rank + sparse (W ≈ L + S). The stage is ``factorize``; the primitives are public.

>>> import torch, dwindle as dw
>>> from dwindle.factorization import Factorize, factorize_
>>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
>>> _ = factorize_(model, Factorize(rank=8, targets=("0",)))
>>> type(model[0]).__name__
'Sequential'
"""

from dwindle.factorization.conv import (
    conv_lowrank_sparse_split,
    spatial_svd_split,
    tucker2_ranks,
    tucker2_split,
)
from dwindle.factorization.cp import cp_decompose, cp_split
from dwindle.factorization.stage import Factorize, factorize_
from dwindle.factorization.svd import (
    LowRankPlusSparse,
    SparseResidual,
    choose_rank,
    energy_rank,
    lowrank_sparse_decompose,
    lowrank_sparse_split,
    svd_split,
)

__all__ = [
    "Factorize",
    "LowRankPlusSparse",
    "SparseResidual",
    "choose_rank",
    "conv_lowrank_sparse_split",
    "cp_decompose",
    "cp_split",
    "energy_rank",
    "factorize_",
    "lowrank_sparse_decompose",
    "lowrank_sparse_split",
    "spatial_svd_split",
    "svd_split",
    "tucker2_ranks",
    "tucker2_split",
]
