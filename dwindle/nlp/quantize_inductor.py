"""int8 text encoders compiled by inductor: torchao pt2e + X86InductorQuantizer + torch.compile.

The encoder is traced by ``torch.export`` with a dynamic batch and sequence length, annotated
by torchao's X86 Inductor quantizer (int8 per-channel weights; uint8 activations quantized
per batch at run time in "dynamic" mode, or with ranges calibrated on sentences in "static"
mode), converted, and compiled by ``torch.compile`` with inductor's freezing passes. Freezing
is what turns each dequantize → linear → quantize chain into one oneDNN ``qlinear_pointwise``
integer kernel and fuses the float ops between them (LayerNorm, GELU, residual adds) into
generated C++ loops; without it the int8 weights are dequantized and multiplied in float.

Compiling needs a C++ compiler (inductor's CPU backend) and takes seconds per new input shape
on first use. The artifact (format ``"torchao-pt2-text"``) is the ``torch.export`` archive of
the converted int8 program; it is compiled again after loading.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwindle._imports import require
from dwindle.errors import DwindleError
from dwindle.export import register_format
from dwindle.metrics.counts import count_nonzeros, count_params
from dwindle.nlp.encoder import tokenize

__all__ = ["INDUCTOR_FORMAT", "InductorTextModule", "inductor_int8"]

INDUCTOR_FORMAT = "torchao-pt2-text"


def _dims(x: torch.Tensor, max_length: int) -> tuple[dict[int, Any], ...]:
    seq = torch.export.Dim("sequence", min=2, max=max(max_length, x.shape[1]))
    return ({0: torch.export.Dim("batch"), 1: seq},)


class InductorTextModule(nn.Module):
    """An int8 text encoder run by inductor-compiled code: int64 token ids in, float32
    embeddings out (inference only).

    The program is compiled on first use, and again when torch's thread count changes
    (inductor's generated loops fix their thread count when they are compiled).
    """

    dwindle_format = INDUCTOR_FORMAT
    dwindle_backend = "inductor"

    def __init__(self, program: bytes, source: nn.Module, *, scheme: str) -> None:
        super().__init__()
        self.program = bytes(program)
        self.scheme = scheme
        self.tokenizer = source.tokenizer
        self.max_seq_length = int(source.max_seq_length)  # type: ignore[arg-type]
        self.pad_token_id = int(getattr(source, "pad_token_id", 0))
        # Counts of the float model (int8 storage changes bytes, not the number of weights).
        self._counts = (count_params(source), count_nonzeros(source))
        self._compiled: Any = None
        self._threads = 0

    def dwindle_param_count(self) -> int:
        return self._counts[0]

    def dwindle_nonzero_count(self) -> int:
        return self._counts[1]

    def _runner(self) -> Any:
        threads = torch.get_num_threads()
        if self._compiled is None or threads != self._threads:
            graph = torch.export.load(io.BytesIO(self.program)).module()
            # One compilation serves every batch size and sentence length (a batch of 1 gets
            # its own: torch specialises size-1 dimensions).
            compiled = torch.compile(graph, dynamic=True)
            # Not a registered child: exported graphs refuse .train()/.eval().
            object.__setattr__(self, "_compiled", compiled)
            self._threads = threads
        return self._compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise DwindleError(
                "this int8 encoder is compiled for inference: it cannot be trained or "
                "fine-tuned. Put quantize_text last in a recipe and call model.eval()"
            )
        # Freezing must be on whenever a call may compile (any new shape): passed through
        # torch.compile's options it is ignored by the weight-prepacking passes (torch 2.13).
        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            return self._runner()(x.long())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = None  # compiled code does not pickle; rebuilt on first use
        state["_threads"] = 0
        return state

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, bytes={len(self.program)}"


def _save(model: nn.Module, path: Path) -> None:
    if not isinstance(model, InductorTextModule):
        raise DwindleError(
            f"format {INDUCTOR_FORMAT!r} saves InductorTextModule models, "
            f"not {type(model).__name__}"
        )
    Path(path).write_bytes(model.program)


register_format(INDUCTOR_FORMAT, _save)


def inductor_int8(
    model: nn.Module,
    *,
    dynamic: bool,
    calibration: Sequence[str] = (),
    float_modules: Sequence[str] = (),
    batch: int = 32,
) -> InductorTextModule:
    """A new int8 encoder (``model`` untouched): torchao pt2e with the X86 Inductor quantizer.

    ``dynamic``: activation ranges per batch at run time; otherwise static ranges calibrated
    on ``calibration`` sentences (tokenised like the model's inputs). ``float_modules``:
    names of Linear layers left in float.
    """
    require("torchao", "quant", "int8 quantization with torchao")
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config,
    )

    from dwindle.quantization.backends.torchao_backend import pt2e_x86_convert

    max_length = int(model.max_seq_length)  # type: ignore[arg-type]
    texts = list(calibration) or ["a sentence to trace the encoder with", "another one"]
    example = tokenize(model.tokenizer, texts[:2], max_length=max_length)  # type: ignore[arg-type]
    if example.shape[1] < 2:  # export specialises size-1 dimensions
        example = torch.cat([example, example], dim=1)
    dims = _dims(example, max_length)

    def calibrate(prepared: nn.Module) -> None:
        if dynamic:  # ranges come at run time; one call finishes the graph
            prepared(example)
            return
        for i in range(0, len(texts), batch):
            prepared(tokenize(model.tokenizer, texts[i : i + batch], max_length=max_length))  # type: ignore[arg-type]

    converted = pt2e_x86_convert(
        model,
        example,
        dims,
        get_default_x86_inductor_quantization_config(is_dynamic=dynamic),
        calibrate,
        float_modules=float_modules,
        purpose="int8 with inductor",
    )
    with torch.no_grad():
        program = torch.export.export(converted, (example,), dynamic_shapes=dims, strict=False)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    scheme = (
        f"torchao pt2e x86 {'dynamic' if dynamic else 'static'} int8 (per-channel weights), "
        "torch.compile with freezing"
    ) + (f", float: {', '.join(float_modules)}" if float_modules else "")
    return InductorTextModule(buf.getvalue(), model, scheme=scheme)
