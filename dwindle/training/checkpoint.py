"""Weight snapshots and atomic safetensors checkpoints written by the trainer."""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor, nn

from dwindle.errors import OutputDirError

__all__ = ["StateDict", "save_checkpoint", "snapshot"]

StateDict = dict[str, Tensor]


def snapshot(model: nn.Module) -> StateDict:
    """A detached copy of the model's tensors, to restore later with ``load_state_dict``."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, Tensor)}


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
