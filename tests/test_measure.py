"""dwindle.metrics: counts, FLOPs, size, latency, memory, energy, accuracy, measure/compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from dwindle.data.bundle import DataBundle
from dwindle.errors import ConfigError
from dwindle.metrics import (
    MeasureConfig,
    artifact_bytes,
    compare,
    count_flops,
    count_flops_by_module,
    count_nonzeros,
    count_params,
    effective_flops,
    evaluate_accuracy,
    mcnemar,
    measure,
    model_input_dtype,
    sparsity,
    wilson_interval,
)

FAST = {"runs": 3, "warmup": 1, "energy": "estimate", "batch_sizes": (1, 4)}


def lenet300(hidden: tuple[int, int] = (300, 100)) -> nn.Module:
    a, b = hidden
    return nn.Sequential(nn.Linear(784, a), nn.ReLU(), nn.Linear(a, b), nn.ReLU(), nn.Linear(b, 10))


def argmax_bundle(n: int = 40, flip: int = 0) -> DataBundle:
    """Labels are argmax(x) over 3 features, the first ``flip`` test labels shifted by one."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    y = x.argmax(1)
    y_test = y.clone()
    y_test[:flip] = (y_test[:flip] + 1) % 3
    return DataBundle("argmax", x, y, x, y, x, y_test, num_classes=3)


def identity3() -> nn.Linear:
    m = nn.Linear(3, 3)
    with torch.no_grad():
        m.weight.copy_(torch.eye(3))
        m.bias.zero_()
    return m


# --- counts ----------------------------------------------------------------------------------


def test_counts_of_a_linear_layer() -> None:
    m = nn.Linear(784, 300)
    assert count_params(m) == 784 * 300 + 300 == 235_500
    assert count_nonzeros(m) == 235_500
    assert sparsity(m) == 0.0
    with torch.no_grad():
        m.bias.zero_()
    assert count_nonzeros(m) == 235_200


def test_shared_weights_are_counted_once() -> None:
    enc, dec = nn.Linear(10, 10, bias=False), nn.Linear(10, 10, bias=False)
    dec.weight = enc.weight
    assert count_params(nn.Sequential(enc, dec)) == 100
    assert count_nonzeros(nn.Sequential(enc, dec)) == 100


def test_mask_buffers_are_respected_in_both_conventions() -> None:
    ours = nn.Linear(10, 10, bias=False)
    mask = torch.zeros(10, 10)
    mask[:3] = 1
    ours.register_buffer("weight_mask", mask)  # dwindle's convention: weight stays dense
    assert count_params(ours) == 100
    assert count_nonzeros(ours) == 30
    assert sparsity(ours) == pytest.approx(0.7)

    theirs = nn.Linear(10, 10, bias=False)
    prune.l1_unstructured(theirs, "weight", amount=0.4)  # torch: weight_orig + weight_mask
    assert count_nonzeros(theirs) == 60


def test_input_dtype_follows_model_unless_it_accepts_float32() -> None:
    m = nn.Linear(2, 2).half()
    assert model_input_dtype(m) == torch.float16
    m.dwindle_accepts_float32 = True
    assert model_input_dtype(m) is None
    assert model_input_dtype(nn.ReLU()) is None


# --- FLOPs -----------------------------------------------------------------------------------


def test_flops_match_hand_computation_for_one_sample() -> None:
    assert count_flops(nn.Linear(784, 300), torch.randn(8, 784)) == 2 * 784 * 300
    conv = nn.Conv2d(3, 8, 3)
    assert count_flops(conv, torch.randn(4, 3, 10, 10)) == 2 * (8 * 8 * 8) * (3 * 3 * 3)
    model = lenet300()
    by_module = count_flops_by_module(model, torch.randn(1, 784))
    assert by_module[""] == 2 * (784 * 300 + 300 * 100 + 100 * 10)
    assert by_module["0"] == 2 * 784 * 300 and by_module["4"] == 2 * 100 * 10
    assert "1" not in by_module  # ReLU does no counted FLOPs


def test_flops_do_not_mutate_model_or_bn_stats() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_flops(model, torch.randn(2, 1, 8, 8))
    effective_flops(model, torch.randn(2, 1, 8, 8))
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert int(model[1].num_batches_tracked) == 0


def test_effective_flops_scale_with_weight_density() -> None:
    model = nn.Sequential(nn.Linear(100, 100, bias=False), nn.Linear(100, 10, bias=False))
    mask = torch.zeros(100, 100)
    mask[:25] = 1
    model[0].register_buffer("weight_mask", mask)
    x = torch.randn(1, 100)
    assert count_flops(model, x) == 2 * 100 * 100 + 2 * 100 * 10
    assert effective_flops(model, x) == 2 * 100 * 100 // 4 + 2 * 100 * 10


def test_flops_reject_unbatched_input() -> None:
    with pytest.raises(ConfigError, match="batched tensor"):
        count_flops(nn.Linear(2, 2), torch.tensor(1.0))


# --- size ------------------------------------------------------------------------------------


def test_artifact_bytes_are_real_file_sizes() -> None:
    model = lenet300()
    n = count_params(model)
    size, fmt = artifact_bytes(model)
    assert fmt == "safetensors"
    assert 4 * n < size < 4 * n + 2048  # data plus a small JSON header
    half, _ = artifact_bytes(lenet300().half())
    assert 2 * n < half < 2 * n + 2048


# --- latency ---------------------------------------------------------------------------------


def test_accuracy_counts_errors_and_restores_mode() -> None:
    model = identity3().train()
    res = evaluate_accuracy(model, argmax_bundle(flip=4), batch_size=7)
    assert res["n_test"] == 40 and res["test_errors"] == 4
    assert res["accuracy"] == pytest.approx(0.9) and res["error_pct"] == pytest.approx(10.0)
    x, y = argmax_bundle(flip=4).split("test")
    assert res["loss"] == pytest.approx(nn.functional.cross_entropy(model(x), y).item(), rel=1e-5)
    assert model.training


def test_accuracy_rejects_mismatched_output() -> None:
    with pytest.raises(ConfigError, match=r"needs \(batch, 3\) class logits"):
        evaluate_accuracy(nn.Linear(3, 5), argmax_bundle())
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        evaluate_accuracy(identity3(), argmax_bundle(), split="dev")


# --- measure / compare -----------------------------------------------------------------------


def test_compare_adds_ratios_against_baseline(tmp_path: Path) -> None:
    torch.manual_seed(0)
    models = {"base": lenet300(), "half": lenet300((150, 50))}
    report = compare(models, baseline="base", config=FAST, example_input=torch.randn(1, 784))
    base, half = report.metrics("base"), report.metrics("half")
    assert not any(k.endswith("_ratio") or k.startswith("speedup") for k in base)
    assert half["compression_rate"] == pytest.approx(base["bytes"] / half["bytes"])
    assert half["compression_rate"] == pytest.approx(half["params_ratio"], rel=0.01)
    assert half["flops_ratio"] == pytest.approx(base["flops"] / half["flops"])
    assert half["params_ratio"] == pytest.approx(base["params"] / half["params"])
    assert {"speedup_b1", "speedup_b4"} <= set(half)
    assert set(base["latency_ms"]) == {"b1", "b4"}
    assert base["energy_source"].startswith("estimate") and base["energy_j"] > 0
    assert base["peak_mem_bytes"] >= 4 * base["params"]
    assert report.machine["cpu"] and report.machine["torch"] == torch.__version__
    saved = json.loads(report.save_json(tmp_path / "metrics.json").read_text())
    assert saved["rows"][1]["variant"] == "half" and saved["baseline"] == "base"
    missing = "no variant 'quarter' in this report; variants: base, half"
    with pytest.raises(ConfigError, match=missing):
        report.row("quarter")


def test_measure_with_data_reports_accuracy_and_handles_fp64() -> None:
    model = identity3().double()
    report = measure(model, argmax_bundle(flip=2), config=FAST, name="fp64")
    row = report.row("fp64")
    assert row["dataset"] == "argmax" and row["split"] == "test"
    m = row["metrics"]
    assert m["test_errors"] == 2 and m["n_test"] == 40
    assert m["flops"] == 2 * 3 * 3
    assert 8 * 12 <= m["bytes"] < 8 * 12 + 1024  # fp64 weights on disk
    assert m["latency_ms"]["b4"]["p50"] > 0


def test_wilson_interval_matches_the_closed_form() -> None:
    lo, hi = wilson_interval(9849, 10000)  # 1.51 % test error on MNIST's 10,000 images
    # Wilson's bounds are the p0 at which the score statistic equals z: (p - p0)² = z² p0 q0 / n
    for p0 in (lo, hi):
        assert (0.9849 - p0) ** 2 == pytest.approx(1.959964**2 * p0 * (1 - p0) / 10000)
    assert lo < 0.9849 < hi and 0.0023 < (hi - lo) / 2 < 0.0025  # ± 0.24 pt
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="correct <= n"):
        wilson_interval(11, 10)


def test_mcnemar_exact_p_values() -> None:
    base = torch.tensor([True] * 10)
    assert mcnemar(base, base)["p_value"] == 1.0
    other = base.clone()
    other[:5] = False  # 5 discordant, all against the other model: p = 2 / 2**5
    test = mcnemar(base, other)
    assert test["p_value"] == pytest.approx(2 / 32)
    assert (test["only_base_right"], test["only_other_right"]) == (5, 0)
    a = torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool)
    b = torch.tensor([0, 1, 0, 1, 0, 1], dtype=torch.bool)  # 2 vs 1 discordant: p = 1
    assert mcnemar(a, b)["p_value"] == pytest.approx(1.0)
    big = mcnemar(torch.ones(2000, dtype=torch.bool), torch.arange(2000) % 2 == 0)
    assert 0 < big["p_value"] < 1e-200  # 1000 discordant pairs, all one way, no underflow to 0
    with pytest.raises(ConfigError, match="same images"):
        mcnemar(base, torch.ones(3, dtype=torch.bool))


def test_compare_says_whether_an_accuracy_change_is_noise() -> None:
    data = argmax_bundle(n=40, flip=0)
    worse = identity3()
    with torch.no_grad():
        worse.weight[0, 0] = -1.0  # class 0 never wins any more: the change is real
    report = compare({"base": identity3(), "worse": worse}, data, baseline="base", config=FAST)
    base, m = report.metrics("base"), report.metrics("worse")
    assert "correct" not in m and "accuracy_change_p" not in base
    lo, hi = base["accuracy_ci95"]
    assert lo <= base["accuracy"] <= hi
    right, wrong = m["accuracy_change_discordant"]
    assert wrong == 0 and right == round(40 * (base["accuracy"] - m["accuracy"]))
    assert m["accuracy_change_p"] < 0.05
    assert any("McNemar" in n for n in report.notes)


def test_measure_config_validation_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"MeasureConfig\.runs: .*greater than or equal to 1"):
        MeasureConfig.from_dict({"runs": 0})
    with pytest.raises(ConfigError, match=r"MeasureConfig\.warmup: .*greater than or equal to 0"):
        MeasureConfig.from_dict({"warmup": -1})
    with pytest.raises(ConfigError, match=r"MeasureConfig\.batch_sizes: .*at least 1 item"):
        MeasureConfig.from_dict({"batch_sizes": []})
    with pytest.raises(ConfigError, match=r"batch_sizes\[0\]: .*greater than or equal to 1"):
        MeasureConfig.from_dict({"batch_sizes": [0]})
    with pytest.raises(ConfigError, match="unknown key; did you mean 'runs'"):
        MeasureConfig.from_dict({"rusn": 3})
    with pytest.raises(ConfigError, match=r"MeasureConfig\.energy: .*'auto'"):
        compare({"a": nn.Linear(2, 2)}, config={"energy": "meter"}, example_input=torch.ones(1, 2))


def test_compare_input_and_baseline_errors() -> None:
    with pytest.raises(ConfigError, match=r"pass data=<DataBundle>.*or example_input="):
        measure(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="baseline 'b' is not one of the models: a"):
        compare({"a": nn.Linear(2, 2)}, baseline="b", example_input=torch.randn(1, 2))
    with pytest.raises(ConfigError, match="at least one model"):
        compare({}, example_input=torch.randn(1, 2))
