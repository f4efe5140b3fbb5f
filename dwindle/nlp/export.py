"""Export a text encoder: ONNX with dynamic batch and sequence length, checked in onnxruntime.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) traces the encoder on token ids;
both the batch and the sequence dimension stay dynamic, so one graph serves any padding.
``check_text_onnx`` runs the file in onnxruntime on real sentences and returns the lowest
cosine similarity between its embeddings and torch's (≥ 0.9999 expected for fp32).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dwindle._imports import require
from dwindle.errors import DwindleError
from dwindle.export.atomic import atomic_write
from dwindle.export.onnx_io import _quiet, _summary
from dwindle.metrics._model import eval_mode
from dwindle.nlp.encoder import tokenize

__all__ = ["check_text_onnx", "export_text_onnx", "onnx_cosine"]

INPUT = "input_ids"
OUTPUT = "sentence_embedding"


def export_text_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    example: torch.Tensor | None = None,
    opset: int | None = 18,
) -> Path:
    """Export ``model`` (token ids → embeddings) with dynamic batch and sequence; atomically."""
    require("onnx", "onnx", "ONNX export")
    require("onnxscript", "onnx", "ONNX export with the dynamo exporter")
    if example is None:
        example = torch.full((2, 16), 5, dtype=torch.long)
        example[1, 10:] = int(getattr(model, "pad_token_id", 0))
    if example.shape[0] < 2 or example.shape[1] < 2:
        raise DwindleError("trace the export with at least 2 sequences of >= 2 tokens")
    with torch.no_grad():
        clone = copy.deepcopy(model).eval()
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}

    def write(tmp: Path) -> None:
        with _quiet():
            torch.onnx.export(
                clone,
                (example,),
                str(tmp),
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes=(dims,),
            )

    try:
        return atomic_write(Path(path), write)
    except Exception as exc:  # the exporter raises many unrelated types
        raise DwindleError(
            f"ONNX export of {type(model).__name__} failed: {_summary(exc)}"
        ) from None


def onnx_cosine(
    onnx_model: nn.Module | str | os.PathLike[str],
    reference: nn.Module,
    sentences: Sequence[str],
    *,
    pad_to: int | None = None,
    reduce: Literal["min", "mean"] = "min",
) -> float:
    """Lowest (or mean) cosine similarity between the embeddings of ``onnx_model`` (a file,
    or any module such as an int8 one) and ``reference`` over ``sentences``."""
    ids = tokenize(
        reference.tokenizer,
        list(sentences),
        max_length=int(reference.max_seq_length),
        pad_to=pad_to,
    )
    with eval_mode(reference), torch.inference_mode():
        want = reference(ids).float()
    if isinstance(onnx_model, nn.Module):
        with eval_mode(onnx_model), torch.inference_mode():
            got = onnx_model(ids).float()
    else:
        ort = require("onnxruntime", "onnx", "ONNX checking")
        session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        got = torch.from_numpy(session.run(None, {name: ids.numpy()})[0]).float()
    if got.shape != want.shape:
        raise DwindleError(
            f"ONNX output shape {tuple(got.shape)} differs from torch's {tuple(want.shape)}"
        )
    cos = F.cosine_similarity(got, want, dim=-1)
    return float(cos.min() if reduce == "min" else cos.mean())


def check_text_onnx(
    onnx_model: nn.Module | str | os.PathLike[str],
    reference: nn.Module,
    sentences: Sequence[str],
    *,
    min_cosine: float = 0.9999,
    pad_to: int | None = None,
) -> float:
    """:func:`onnx_cosine`, raising :class:`DwindleError` when it is below ``min_cosine``."""
    cos = onnx_cosine(onnx_model, reference, sentences, pad_to=pad_to)
    if not cos >= min_cosine:
        raise DwindleError(
            f"ONNX embeddings disagree with torch: lowest cosine {cos:.6f} < {min_cosine} "
            "(expected >= 0.9999 for fp32 and >= 0.99 for int8)"
        )
    return cos
