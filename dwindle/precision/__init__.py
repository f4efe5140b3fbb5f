"""Precision casting: fp64 → fp32 → fp16 / bf16, the first and simplest compression.

>>> import torch, dwindle as dw
>>> model = torch.nn.Linear(4, 2).double()
>>> model = dw.cast_(model, dw.Precision(dtype="fp16"))
>>> model(torch.randn(3, 4)).dtype      # float32 in, float32 out; fp16 inside
torch.float32
"""

from dwindle.precision.casting import DTYPES, Precision, cast_, cast_module

__all__ = ["DTYPES", "Precision", "cast_", "cast_module"]
