"""int8 of a tiny encoder through torchao pt2e + torch.compile (the "inductor" text backend)."""

from __future__ import annotations

import copy

import pytest
import torch
from nlp_helpers import PAIRS, tiny_bert_dir

from dwindle.errors import ConfigError
from dwindle.metrics import artifact_bytes, count_params
from dwindle.nlp import TextInt8, load_encoder, onnx_cosine, quantize_text
from dwindle.nlp.quantize_inductor import InductorTextModule

SENTENCES = [p[0] for p in PAIRS] + [p[1] for p in PAIRS]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_encoder(tiny_bert_dir(tmp_path_factory.mktemp("qi"), layers=2, hidden=64))


def _kernels(model: torch.nn.Module, ids: torch.Tensor) -> set[str]:
    """Ops one call runs (after a first call has compiled the code for this shape)."""
    model(ids)
    with torch.profiler.profile() as prof:
        model(ids)
    return {e.key for e in prof.key_averages()}


def test_dynamic_int8_runs_onednn_integer_kernels_at_any_shape(tiny):
    q = quantize_text(tiny, TextInt8(backend="inductor"))
    assert isinstance(q, InductorTextModule) and "dynamic" in q.scheme
    assert onnx_cosine(q, tiny, SENTENCES) >= 0.99  # padded to the longest sentence
    assert onnx_cosine(q, tiny, SENTENCES[:3], pad_to=40) >= 0.99  # another batch and length
    # Freezing turned every linear into a oneDNN int8 kernel; no float matmul of weights is left.
    ran = _kernels(q, tiny.tokenize(SENTENCES))
    assert "onednn::qlinear_pointwise" in ran
    assert not {"aten::addmm", "aten::mm", "aten::linear"} & ran
    assert count_params(q) == count_params(tiny)
    size, fmt = artifact_bytes(q)
    assert fmt == "torchao-pt2-text" and size == len(q.program)
    with pytest.raises(Exception, match="cannot be trained"):
        q.train()(tiny.tokenize(["a man"]))


def test_static_int8_is_calibrated_and_survives_a_copy(tiny):
    with pytest.raises(ConfigError, match="static int8 needs calibration sentences"):
        quantize_text(tiny, TextInt8(backend="inductor", mode="static"))
    q = quantize_text(tiny, TextInt8(backend="inductor", mode="static"), calibration=SENTENCES)
    assert "static" in q.scheme
    clone = copy.deepcopy(q)  # compiled code is dropped and rebuilt on first use
    assert clone._compiled is None
    assert onnx_cosine(clone.eval(), tiny, SENTENCES) >= 0.95


def test_per_tensor_weights_are_refused(tiny):
    with pytest.raises(ConfigError, match="per channel only"):
        quantize_text(tiny, TextInt8(backend="inductor", per_channel=False))


def test_excluded_linear_keeps_a_float_matmul(tiny):
    ids = tiny.tokenize(SENTENCES)
    q = quantize_text(tiny, TextInt8(backend="inductor", exclude=("*.layer.1.output.dense",)))
    model_int8 = quantize_text(tiny, TextInt8(backend="inductor"))

    def qlinear_calls(model: torch.nn.Module) -> int:
        model(ids)
        with torch.profiler.profile() as prof:
            model(ids)
        return sum(e.count for e in prof.key_averages() if e.key == "onednn::qlinear_pointwise")

    assert qlinear_calls(q) == qlinear_calls(model_int8) - 1
    assert onnx_cosine(q, tiny, SENTENCES) >= 0.99
