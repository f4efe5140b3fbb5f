"""What the int8 backends' wrapper modules share: counts computed once from the artifact."""

from __future__ import annotations

from torch import nn

__all__ = ["CountedModule"]


class CountedModule(nn.Module):
    """An inference-only wrapper whose weight counts were taken from its serialised artifact.

    Subclasses set ``_params``/``_nonzeros`` (weight and bias entries, not scales or zero
    points) and ``flops`` (counted on the float model; integer MACs are as many).
    """

    _params: int = 0
    _nonzeros: int = 0
    flops: int | None = None

    def dwindle_param_count(self) -> int:
        """Weight and bias entries of the quantized artifact (not scales/zero points)."""
        return self._params

    def dwindle_nonzero_count(self) -> int:
        return self._nonzeros

    def dwindle_flops(self) -> int | None:
        """FLOPs of one sample, counted on the float model (integer MACs are as many)."""
        return self.flops
