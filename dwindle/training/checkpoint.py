"""Weight snapshots and atomic safetensors checkpoints written by the trainer."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from dwindle.errors import OutputDirError

__all__ = ["StateDict", "average_snapshots", "save_checkpoint", "snapshot"]

StateDict = dict[str, Tensor]


def snapshot(model: nn.Module) -> StateDict:
    """A detached copy of the model's tensors, to restore later with ``load_state_dict``."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, Tensor)}


def average_snapshots(states: Sequence[StateDict]) -> StateDict:
    """The element-wise mean of several snapshots of one model (stochastic weight averaging,
    Izmailov et al. 2018: average the weights at the ends of cyclic-lr cycles).

    Floating-point tensors are averaged in float64 and cast back to their dtype; integer
    tensors (step counters, codes) are taken from the last snapshot. Batch-norm running
    statistics are averaged like any float tensor: recompute them on training data afterwards
    when the model's BN layers were updating during the cycles."""
    if not states:
        raise ValueError("average_snapshots needs at least one snapshot; got none")
    last = states[-1]
    for i, state in enumerate(states[:-1]):
        if state.keys() != last.keys():
            diff = sorted(set(state) ^ set(last))
            raise ValueError(
                f"snapshot {i} and the last snapshot hold different tensors ({diff[:5]}): "
                "average snapshots of one model only"
            )
        for k, v in state.items():
            if v.shape != last[k].shape:
                raise ValueError(
                    f"{k!r} has shape {tuple(v.shape)} in snapshot {i} but "
                    f"{tuple(last[k].shape)} in the last: average snapshots of one model only"
                )
    return {
        k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype)
        if v.is_floating_point()
        else v.clone()
        for k, v in last.items()
    }


def save_checkpoint(
    state: StateDict, path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``state`` as safetensors atomically (temp file, then ``os.replace``)."""
    from safetensors.torch import save_file

    path = Path(path)
    # Clones break storage sharing (tied weights), which safetensors refuses to write.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputDirError(
            f"cannot write checkpoint {path}: {exc}; choose a writable checkpoint_path"
        ) from exc
    return path
