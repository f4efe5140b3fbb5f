"""Bit-packed weight storage and the layers that run from it.

``pack_bits`` stores unsigned codes of any width 1–8 densely: ``ceil(n · bits / 8)`` bytes, so
two 4-bit codes or eight binary codes share a byte. ``PackedLinear``/``PackedConv`` hold only
those bytes (plus a scale per output channel and the bias) in their state dict, unpack them
bit-exactly on first use, and compute:

* with an input quantiser (``act_scale`` set): the integer path of Jacob et al. 2018 —
  int8 input codes × int8 weight codes accumulated exactly (im2col for convolutions), then
  one float rescale ``s_x · s_w`` and the bias. The integer dot products run through float
  BLAS on whole-number operands, exact because every partial sum stays below 2^24 (float32)
  or, when a layer's bound says it might not, 2^53 (float64): on CPU ``torch._int_mm`` is a
  reference kernel some 50× slower than sgemm. Real int8 CPU kernels are the PTQ backends'
  job (onnxruntime, torchao);
* without: weights dequantised once to float (weight-only compression).

The format ``"dwindle-packed"`` writes them to one safetensors file, so sizes are real bytes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dwindle.export.formats import load_weights, register_format

__all__ = ["PACKED_FORMAT", "PackedConv", "PackedLayer", "PackedLinear", "pack_bits", "unpack_bits"]

PACKED_FORMAT = "dwindle-packed"


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Unsigned ``codes`` (< 2**bits) packed little-endian into a flat uint8 tensor."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8 (got {bits})")
    flat = codes.detach().reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits - 1}] to pack in {bits} bits")
    if bits == 8:
        return flat.to(torch.uint8)
    planes = (flat.numpy()[:, None] >> np.arange(bits)) & 1
    return torch.from_numpy(np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little"))


def unpack_bits(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of :func:`pack_bits`: ``count`` codes as an int16 tensor."""
    if bits == 8:
        return packed[:count].to(torch.int16)
    planes = np.unpackbits(packed.numpy(), count=count * bits, bitorder="little")
    values = (planes.reshape(count, bits).astype(np.int16) << np.arange(bits, dtype=np.int16)).sum(
        1
    )
    return torch.from_numpy(values.astype(np.int16))


class PackedLayer(nn.Module):
    """Shared storage and unpacking of packed weight codes.

    A stored code ``u`` means the integer ``u · step + offset`` (e.g. binary: ``2u - 1``), times
    the channel's ``scale``; with a ``codebook`` it is an index into it instead.
    """

    def __init__(
        self,
        codes: Tensor,
        scale: Tensor,
        bias: Tensor | None,
        bits: int,
        step: int = 1,
        offset: int = 0,
        codebook: Tensor | None = None,
        method: str = "uniform",
    ) -> None:
        super().__init__()
        self.bits, self.step, self.offset, self.method = bits, step, offset, method
        self.weight_shape = tuple(codes.shape)
        unsigned = (codes.to(torch.int64) - offset) // step if codebook is None else codes
        self.register_buffer("packed", pack_bits(unsigned, bits))
        self.register_buffer("scale", scale.detach().float().reshape(-1).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.register_buffer("codebook", None if codebook is None else codebook.float().clone())
        self.register_buffer("act_scale", None)
        self.register_buffer("act_zero_point", None)
        self._codes: Tensor | None = None  # unpacked cache, never saved
        self._weight: Tensor | None = None
        self._codes_t: Tensor | None = None

    def set_input_quant(self, scale: Tensor, zero_point: Tensor, unsigned: bool) -> None:
        """Run the integer path with inputs on this grid (zero point shifted to int8)."""
        self.act_scale = scale.detach().float().reshape(()).clone()  # own storage: safetensors
        shift = 128.0 if unsigned else 0.0
        self.act_zero_point = zero_point.detach().float().reshape(()) - shift

    def codes(self) -> Tensor:
        """Integer weight codes (int16), unpacked bit-exactly from ``packed``."""
        if self._codes is None:
            u = unpack_bits(self.packed, self.bits, math.prod(self.weight_shape))
            values = u if self.codebook is not None else u * self.step + self.offset
            self._codes = values.reshape(self.weight_shape)
        return self._codes

    def weight(self) -> Tensor:
        """The dequantised float weight."""
        if self._weight is None:
            c = self.codes()
            if self.codebook is not None:
                w = self.codebook[c.long()]
            else:
                shape = (-1,) + (1,) * (c.dim() - 1)
                w = c.float() * (
                    self.scale.reshape(shape) if self.scale.numel() > 1 else self.scale
                )
            self._weight = w
        return self._weight

    def dwindle_param_count(self) -> int:
        """The layer's weights and bias: packing changes their bytes, not their number."""
        return math.prod(self.weight_shape) + (0 if self.bias is None else self.bias.numel())

    def dwindle_nonzero_count(self) -> int:
        """Weights whose dequantised value is non-zero, plus non-zero bias entries."""
        nz = int((self.weight() != 0).sum())
        return nz + (0 if self.bias is None else int((self.bias != 0).sum()))

    def _integer_ok(self) -> bool:
        return self.act_scale is not None and self.codebook is None

    def _int_matmul(self, xq: Tensor) -> Tensor:
        """Exact ``xq @ codes.T`` for int8-range ``xq`` (rows) and the weight codes."""
        if self._codes_t is None:
            w = self.codes().reshape(self.weight_shape[0], -1).to(torch.float64)
            bound = 256.0 * float(w.abs().sum(1).max())  # |Σ x w| and |Σ (x - z) w| bound
            dtype = torch.float32 if bound < 2**24 else torch.float64
            self._codes_t = w.t().contiguous().to(dtype)
        acc = xq.to(self._codes_t.dtype) @ self._codes_t
        zp = float(self.act_zero_point)
        if zp:  # Σ (x - z) w = Σ x w - z Σ w
            acc = acc - zp * self._codes_t.sum(0)
        return acc

    def _quantize_input(self, x: Tensor) -> Tensor:
        q = torch.round(x / self.act_scale) + self.act_zero_point
        return q.clamp(-128, 127)

    def _rescale(self, acc: Tensor, channel_dim: int) -> Tensor:
        shape = [1] * acc.dim()
        shape[channel_dim] = -1
        s = self.scale if self.scale.numel() > 1 else self.scale.expand(self.weight_shape[0])
        y = acc.float() * (self.act_scale * s).reshape(shape)
        return y if self.bias is None else y + self.bias.reshape(shape)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._codes = self._weight = self._codes_t = None  # new bytes: unpack again
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        path = "int8 x int8 -> int32" if self._integer_ok() else "weights dequantised"
        return f"{self.method}, bits={self.bits}, shape={self.weight_shape}, {path}"


class PackedLinear(PackedLayer):
    """A ``Linear`` running from packed codes."""

    def forward(self, x: Tensor) -> Tensor:
        if not self._integer_ok():
            return F.linear(x, self.weight(), self.bias)
        lead = x.shape[:-1]
        acc = self._int_matmul(self._quantize_input(x).reshape(-1, x.shape[-1]))
        return self._rescale(acc, 1).reshape(*lead, -1)


class PackedConv(PackedLayer):
    """A ``Conv1d``/``Conv2d`` running from packed codes (integer path for ``groups == 1``)."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kw)
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.is_1d = isinstance(conv, nn.Conv1d)

    def _integer_ok(self) -> bool:
        return super()._integer_ok() and self.groups == 1 and isinstance(self.padding, tuple)

    def forward(self, x: Tensor) -> Tensor:
        if not self._integer_ok():
            op = F.conv1d if self.is_1d else F.conv2d
            return op(
                x, self.weight(), self.bias, self.stride, self.padding, self.dilation, self.groups
            )
        x2 = x.unsqueeze(2) if self.is_1d else x
        pad = (0, *tuple(self.padding)) if self.is_1d else tuple(self.padding)
        stride = (1, *tuple(self.stride)) if self.is_1d else tuple(self.stride)
        dil = (1, *tuple(self.dilation)) if self.is_1d else tuple(self.dilation)
        xq = self._quantize_input(x2)
        # pad with the zero point: real 0.0 is the code z, not 0
        xq = F.pad(xq, (pad[1], pad[1], pad[0], pad[0]), value=float(self.act_zero_point))
        codes = self.codes()
        k = codes.shape[2:] if not self.is_1d else (1, *tuple(codes.shape[2:]))
        cols = F.unfold(xq, k, dilation=dil, stride=stride)  # (N, C·kh·kw, L)
        n, ckk, length = cols.shape
        acc = self._int_matmul(cols.transpose(1, 2).reshape(-1, ckk))
        out = self._rescale(acc, 1).reshape(n, length, -1).transpose(1, 2)
        oh = (x2.shape[2] + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // stride[0] + 1
        out = out.reshape(n, -1, oh, length // oh)
        return out.squeeze(2) if self.is_1d else out


def _packed_summary(model: nn.Module) -> dict[str, str]:
    layers = {
        name: {"method": m.method, "bits": m.bits, "shape": list(m.weight_shape)}
        for name, m in model.named_modules()
        if isinstance(m, PackedLayer)
    }
    return {"dwindle_packed": json.dumps(layers)}


def _save_packed(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=_packed_summary(model))


def _load_packed(model: nn.Module, path: Path) -> None:
    load_weights(model, path)


register_format(PACKED_FORMAT, _save_packed, _load_packed)
