"""ONNX export (dynamic batch and sequence) and int8 (onnxruntime, torchao) of a tiny encoder."""

from __future__ import annotations

import pytest
import torch
from nlp_helpers import PAIRS, tiny_bert_dir

from dwindle.errors import ConfigError
from dwindle.export import save
from dwindle.metrics import artifact_bytes, count_params
from dwindle.nlp import (
    OrtTextModule,
    TextInt8,
    check_text_onnx,
    export_text_onnx,
    load_encoder,
    onnx_cosine,
    quantize_text,
    stsb_spearman,
)
from dwindle.nlp.text_data import StsPair

SENTENCES = [p[0] for p in PAIRS] + [p[1] for p in PAIRS]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_encoder(tiny_bert_dir(tmp_path_factory.mktemp("q"), layers=2, hidden=64))


def test_onnx_export_runs_any_batch_and_length_in_onnxruntime(tiny, tmp_path):
    path = export_text_onnx(tiny, tmp_path / "enc.onnx")
    assert check_text_onnx(path, tiny, SENTENCES) >= 0.9999  # padded to the longest
    assert check_text_onnx(path, tiny, SENTENCES[:3], pad_to=40) >= 0.9999
    assert onnx_cosine(path, tiny, SENTENCES[:1]) >= 0.9999  # batch 1


def test_safetensors_round_trip_keeps_the_embeddings(tiny, tmp_path):
    from dwindle.export import load_weights

    path = save(tiny, tmp_path / "enc.safetensors", "safetensors")
    other = load_encoder(tiny.dwindle_source)
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    load_weights(other, path)
    ids = tiny.tokenize(SENTENCES)
    with torch.no_grad():
        assert torch.allclose(other(ids), tiny(ids))


def test_onnxruntime_dynamic_int8_is_close_and_four_times_smaller(tiny):
    q = quantize_text(tiny, TextInt8())
    assert isinstance(q, OrtTextModule) and "MatMulInteger" in q.op_types
    assert onnx_cosine(q, tiny, SENTENCES) >= 0.99
    mean = onnx_cosine(q, tiny, SENTENCES, reduce="mean")
    assert onnx_cosine(q, tiny, SENTENCES) <= mean <= 1.0 + 1e-6
    assert count_params(q) == count_params(tiny)
    fp32_bytes, int8_bytes = artifact_bytes(tiny)[0], artifact_bytes(q)[0]
    assert int8_bytes < 0.5 * fp32_bytes  # embeddings stay float; the MatMul weights are int8
    pairs = [StsPair(*p) for p in PAIRS]
    assert abs(stsb_spearman(q, pairs)["spearman"] - stsb_spearman(tiny, pairs)["spearman"]) < 30
    with pytest.raises(Exception, match="inference only"):
        q.train()(tiny.tokenize(["a man"]))


def test_static_int8_needs_calibration_and_runs_with_it(tiny):
    with pytest.raises(ConfigError, match="static int8 needs calibration sentences"):
        quantize_text(tiny, TextInt8(mode="static"))
    q = quantize_text(tiny, TextInt8(mode="static", fuse=False), calibration=SENTENCES)
    assert "QuantizeLinear" in q.op_types or "QLinearMatMul" in q.op_types
    assert onnx_cosine(q, tiny, SENTENCES) >= 0.95


def test_torchao_int8_and_bad_inputs(tiny):
    q = quantize_text(tiny, TextInt8(backend="torchao"))
    assert onnx_cosine(q, tiny, SENTENCES) >= 0.99
    assert artifact_bytes(q)[1] == "torchao-state-dict"
    with pytest.raises(ConfigError, match="dynamic only"):
        quantize_text(tiny, TextInt8(backend="torchao", mode="static"), calibration=SENTENCES)
    with pytest.raises(ConfigError, match="carries no tokenizer"):
        quantize_text(torch.nn.Linear(2, 2))


def test_torchscript_export_lets_onnxruntime_fuse_attention(tiny):
    q = quantize_text(tiny, TextInt8(exporter="torchscript"))
    assert "QAttention" in q.op_types or "Attention" in q.op_types
    assert "TorchScript" in q.scheme
    assert onnx_cosine(q, tiny, SENTENCES) >= 0.99  # padded to the longest sentence
    assert onnx_cosine(q, tiny, SENTENCES[:2], pad_to=40) >= 0.99


def _float_weight_matmuls(q: OrtTextModule) -> int:
    import onnx

    proto = onnx.load_from_string(q.onnx_bytes)
    inits = {i.name for i in proto.graph.initializer}
    return sum(n.op_type == "MatMul" and n.input[1] in inits for n in proto.graph.node)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_excluded_linears_stay_float_in_onnxruntime_int8(tiny, exporter):
    ffn_out = "*.layer.0.output.dense"
    base = quantize_text(tiny, TextInt8(exporter=exporter))
    q = quantize_text(tiny, TextInt8(exporter=exporter, exclude=(ffn_out,)))
    assert _float_weight_matmuls(base) == 0
    assert _float_weight_matmuls(q) == 1
    assert q.scheme.endswith("float: backbone.encoder.layer.0.output.dense")
    assert onnx_cosine(q, tiny, SENTENCES) >= 0.99


def test_exclude_errors_name_the_problem(tiny, monkeypatch):
    def no_export(*args, **kwargs):
        raise AssertionError("a pattern matching nothing must fail before the ONNX export")

    with monkeypatch.context() as m:
        m.setattr("dwindle.nlp.quantize.export_text_onnx", no_export)
        with pytest.raises(ConfigError, match="matches no module"):
            quantize_text(tiny, TextInt8(exclude=("*.no_such_layer",)))
    with pytest.raises(ConfigError, match="one Attention op"):
        quantize_text(tiny, TextInt8(exporter="torchscript", exclude=("*.layer.0.*.query",)))


def test_torchao_backend_keeps_excluded_linears_float(tiny):
    q = quantize_text(tiny, TextInt8(backend="torchao", exclude=("*.layer.0.output.dense",)))
    assert q.scheme.endswith("float: backbone.encoder.layer.0.output.dense")
    kept = q.inner.get_submodule("backbone.encoder.layer.0.output.dense").weight
    assert type(kept) is torch.nn.Parameter  # float; the others hold torchao int8 tensors
    other = q.inner.get_submodule("backbone.encoder.layer.1.output.dense").weight
    assert type(other) is not torch.nn.Parameter or type(other.data) is not torch.Tensor
