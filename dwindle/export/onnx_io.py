"""ONNX export (dynamic batch) and an onnxruntime check that the graph agrees with torch."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwindle._imports import require
from dwindle.errors import DwindleError
from dwindle.export.atomic import atomic_write, atomic_write_bytes

__all__ = ["check_onnx", "export_onnx"]

Inputs = torch.Tensor | tuple[torch.Tensor, ...]

_BATCH = "batch"
_QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript")


def _as_tuple(model: nn.Module, example_input: Inputs) -> tuple[torch.Tensor, ...]:
    # Imported here: dwindle.metrics imports dwindle.export at module level.
    from dwindle.metrics._model import prepare_input

    args = example_input if isinstance(example_input, tuple) else (example_input,)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise DwindleError(
            "example_input must be a tensor (or a tuple of tensors) shaped like a model input "
            f"batch, e.g. data.example_input(1); got {type(example_input).__name__}"
        )
    return tuple(prepare_input(model, a.detach()) for a in args)


def _names(n: int, stem: str) -> list[str]:
    return [stem if i == 0 else f"{stem}_{i}" for i in range(n)]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints, warnings and log lines; they are not for users."""
    saved = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    sink = io.StringIO()
    try:
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _summary(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    ops = sorted(set(re.findall(r"aten[.:]{1,2}\w+(?:\.\w+)?", text)))
    head = text.splitlines()[0][:300] if text else type(exc).__name__
    return head + (f" (ops involved: {', '.join(ops[:5])})" if ops else "")


def _export_dynamo(
    model: nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int | None
) -> None:
    # torch.export specialises a size-1 dimension to a constant, so trace with batch >= 2.
    traced = tuple(a.repeat(2, *([1] * (a.dim() - 1))) if a.shape[0] == 1 else a for a in args)
    dim = torch.export.Dim(_BATCH)
    torch.onnx.export(
        model,
        traced,
        str(path),
        dynamo=True,
        external_data=False,
        verbose=False,
        opset_version=opset,
        input_names=_names(len(args), "input"),
        output_names=["output"],
        dynamic_shapes=tuple({0: dim} for _ in traced),
    )


def _export_torchscript(
    model: nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int | None
) -> None:
    names = _names(len(args), "input")
    axes = {n: {0: _BATCH} for n in [*names, "output"]}
    torch.onnx.export(
        model,
        args,
        str(path),
        dynamo=False,
        verbose=False,
        opset_version=opset,
        input_names=names,
        output_names=["output"],
        dynamic_axes=axes,
    )


def export_onnx(
    model: nn.Module,
    example_input: Inputs,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
) -> Path:
    """Export ``model`` to ONNX at ``path`` with a dynamic batch dimension, atomically.

    Tries the ``torch.export``-based exporter first and falls back to the TorchScript one.
    The caller's model is untouched: an eval-mode deep copy is exported.
    """
    onnx = require("onnx", "onnx", "ONNX export")
    own = getattr(model, "onnx_bytes", None)
    if isinstance(own, bytes):  # already an ONNX graph (onnxruntime int8): write it as it is
        return atomic_write_bytes(path, own)
    args = _as_tuple(model, example_input)
    target = Path(path)
    with torch.no_grad():
        clone = copy.deepcopy(model).eval()
    errors: list[str] = []
    for label, exporter in (("dynamo", _export_dynamo), ("torchscript", _export_torchscript)):

        def write(tmp: Path, exporter=exporter) -> None:
            with _quiet():
                exporter(clone, args, tmp, opset)
            inputs = _graph_inputs(onnx, tmp)
            if inputs != len(args):  # e.g. a traced wrapper whose runtime torch cannot see
                raise ValueError(
                    f"the exported graph takes {inputs} input(s) but the model was called "
                    f"with {len(args)}: its computation is not visible to the exporter"
                )

        try:
            return atomic_write(target, write)
        except DwindleError:
            raise
        except Exception as exc:  # exporters raise many unrelated types
            errors.append(f"{label} exporter: {_summary(exc)}")
    raise DwindleError(
        f"ONNX export of {type(model).__name__} failed with both exporters:\n  "
        + "\n  ".join(errors)
        + "\nhint: replace or register the unsupported operator, or export the model before "
        "a technique that adds custom ops"
    )


def _graph_inputs(onnx: Any, path: Path) -> int:
    """Inputs of the graph at ``path`` that are fed at run time (initializers excluded)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    fixed = {t.name for t in graph.initializer}
    return sum(1 for i in graph.input if i.name not in fixed)


def check_onnx(
    path: str | os.PathLike[str],
    model: nn.Module,
    example_input: Inputs,
    atol: float = 1e-4,
) -> float:
    """Run ``path`` in onnxruntime (CPU) and return the max abs difference to ``model``'s output.

    Raises :class:`DwindleError` when the difference exceeds ``atol``.
    """
    ort = require("onnxruntime", "onnx", "ONNX checking")
    args = _as_tuple(model, example_input)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise DwindleError(f"onnxruntime cannot load {str(path)!r}: {exc}") from exc
    inputs = session.get_inputs()
    if len(inputs) != len(args):
        raise DwindleError(
            f"ONNX model {str(path)!r} takes {len(inputs)} input(s) but example_input gives "
            f"{len(args)}; pass the same example input used for export_onnx"
        )
    feeds = {i.name: a.cpu().numpy() for i, a in zip(inputs, args, strict=True)}
    got = torch.from_numpy(session.run(None, feeds)[0])
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            want = model(*args)
    finally:
        model.train(was_training)
    if isinstance(want, (tuple, list)):
        want = want[0]
    if got.shape != want.shape:
        raise DwindleError(
            f"ONNX output shape {tuple(got.shape)} differs from torch output shape "
            f"{tuple(want.shape)} for {str(path)!r}; re-export with the same example input"
        )
    diff = (got.double() - want.detach().double().cpu()).abs().max().item()
    if not diff <= atol:
        raise DwindleError(
            f"ONNX model {str(path)!r} disagrees with torch: max abs difference {diff:.3g} > "
            f"atol {atol:g}; an operator is exported differently (raise atol for low-precision "
            "models, or re-export with the other exporter)"
        )
    return float(diff)
