"""The CUDA paths, run where a GPU is present (CI has none and skips them all): training with
and without torch.compile, LSQ QAT, and the measurements (latency sync, NVML energy, CUDA peak
memory). Run on a GPU machine with ``pytest tests/test_cuda.py``."""

from __future__ import annotations

import copy

import pytest
import torch
from model_helpers import tiny_resnet
from torch import nn
from train_helpers import FAST, make_bundle, make_model

from dwindle._imports import available
from dwindle.data.bundle import DataBundle
from dwindle.metrics import compare, measure_energy
from dwindle.metrics.memory import CUDA_SOURCE
from dwindle.precision import Precision, cast_
from dwindle.pruning import nm_mask, to_semi_structured_
from dwindle.quantization import QAT, convert_qat
from dwindle.quantization.qat import prepare_qat
from dwindle.training import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cifar_like(n: int = 256, seed: int = 0) -> DataBundle:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return DataBundle("random", x, y, x[:64], y[:64], x[:64], y[:64], num_classes=10)


def test_training_on_cuda_compiled_matches_eager() -> None:
    data = make_bundle()
    eager, compiled = make_model(), make_model()
    cfg = TrainConfig(epochs=2, device="cuda", **FAST)
    train(eager, data, cfg)
    train(compiled, data, cfg.model_copy(update={"compile": True}))
    got = compiled.state_dict()
    for name, a in eager.state_dict().items():
        assert a.device.type == "cuda", name
        torch.testing.assert_close(got[name], a, rtol=1e-3, atol=1e-4)


def test_lsq_qat_trains_on_cuda_and_converts() -> None:
    cfg = QAT(
        weight_bits=4,
        act_bits=4,
        learned_ranges=True,
        input_bits=8,
        exclude=("conv1", "linear"),
        train=TrainConfig(epochs=1, batch_size=64, lr=0.01, device="cuda", progress=False),
        convert=False,
    )
    data = cifar_like()
    q = prepare_qat(tiny_resnet(), cfg)
    q(data.example_input(2))
    train(q, data, cfg.train.model_copy(update={"compile": True}))
    q.to("cpu").eval()
    x = data.example_input(16)
    with torch.no_grad():
        torch.testing.assert_close(convert_qat(q)(x), q(x), atol=1e-4, rtol=1e-4)


def test_compare_on_cuda_measures_with_gpu_sources() -> None:
    model = tiny_resnet().cuda()
    half = cast_(copy.deepcopy(model), Precision(dtype="fp16"))
    energy = "nvml" if available("pynvml") else "estimate"
    report = compare(
        {"fp32": model, "fp16": half},
        example_input=torch.randn(1, 3, 32, 32),
        baseline="fp32",
        config={"runs": 5, "warmup": 2, "energy": energy, "energy_seconds": 0.5},
    )
    for name in ("fp32", "fp16"):
        m = report.metrics(name)
        assert m["latency_ms"]["b32"]["p50"] > 0
        assert m["peak_mem_source"] == CUDA_SOURCE and m["peak_mem_bytes"] > 0
        if energy == "nvml":
            assert m["energy_source"].startswith("NVML") and m["energy_j"] > 0
    assert report.metrics("fp16")["bytes"] < report.metrics("fp32")["bytes"]


@pytest.mark.skipif(not available("pynvml"), reason="needs nvidia-ml-py (extra 'gpu')")
def test_nvml_energy_is_a_positive_reading() -> None:
    joules, source = measure_energy(
        tiny_resnet().cuda(), lambda n: torch.randn(n, 3, 32, 32), source="nvml", seconds=1.0
    )
    assert joules is not None and joules > 0 and source.startswith("NVML")


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0),
    reason="semi-structured sparse kernels need an Ampere or newer GPU",
)
def test_two_four_linear_becomes_semi_structured_with_the_same_outputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 64))
    with torch.no_grad():
        for i in (0, 2):
            model[i].weight.mul_(nm_mask(model[i].weight, 2, 4))
    model = model.half().cuda().eval()
    x = torch.randn(128, 512, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        dense = model(x)
        assert to_semi_structured_(model) == ["0", "2"]
        w, kind = model[0].weight, torch.sparse.SparseSemiStructuredTensor
        assert isinstance(w, kind) or isinstance(w.data, kind)
        torch.testing.assert_close(model(x), dense, atol=2e-2, rtol=2e-2)
