"""Post-training static int8 on MNIST: fp32 vs int8 (onnxruntime, torchao) measured in one run.

    python benchmarks/quant_int8.py                      # LeNet-5 and cnn4bn
    python benchmarks/quant_int8.py --only lenet5 --epochs-scale 0.1

Target int8_static_mnist: bytes >= 3.9x smaller, test error <= +0.1 pt. Weights come from
benchmarks/artifacts/<variant>.safetensors (benchmarks/baselines.py); when absent they are
trained here with baselines.py's config and saved there. Paper: Jacob et al. 2018 (Table 4.1)
report int8 within about 1-2 pt of float on ImageNet models and a 4x smaller model.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import torch
from _common import ARTIFACTS, write_results
from baselines import JOBS

import dwindle as dw
from dwindle import data as dwdata
from dwindle.export import load_weights, save
from dwindle.metrics import MeasureConfig, compare
from dwindle.models import create
from dwindle.quantization import Int8Static, layer_sqnr, output_sqnr, quantize_int8, weight_sqnr

PAPER = {"size_ratio": 4.0, "source": "Jacob et al. 2018, int8 = 1/4 of fp32 weights"}
COLUMNS = [
    ("backend", "metrics.backend"),
    ("test error %", "metrics.error_pct"),
    ("bytes", "metrics.bytes"),
    ("compression", "metrics.compression_rate"),
    ("p50 b1 ms", "metrics.latency_ms.b1.p50"),
    ("p50 b32 ms", "metrics.latency_ms.b32.p50"),
    ("speed-up b32", "metrics.speedup_b32"),
    ("output SQNR dB", "metrics.output_sqnr_db"),
    ("min layer SQNR dB", "metrics.min_layer_sqnr_db"),
]


def baseline(variant: str, seed: int, epochs_scale: float) -> tuple[torch.nn.Module, Any]:
    job = next(j for j in JOBS if j.variant == variant)
    data = dwdata.load(job.dataset, seed=seed)
    torch.manual_seed(seed)
    model = create(job.model, num_classes=data.num_classes, **job.model_args)
    path = ARTIFACTS / f"{variant}.safetensors"
    model.dwindle_epochs = "artifact"
    if path.exists():
        load_weights(model, path)
    else:
        print(f"   {path.name} absent: training as benchmarks/baselines.py does", flush=True)
        cfg = dict(job.train, seed=seed, progress=False)
        cfg["epochs"] = max(1, round(cfg["epochs"] * epochs_scale))
        dw.train(model, data, dw.TrainConfig(**cfg))
        model.dwindle_epochs = cfg["epochs"]
        if epochs_scale == 1.0:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            save(model, path)
    return model.eval(), data


def run(variant: str, seed: int, epochs_scale: float, runs: int) -> list[dict[str, Any]]:
    model, data = baseline(variant, seed, epochs_scale)
    calib = data.calib(256, seed=seed)
    models = {"fp32": model}
    for backend in ("onnxruntime", "torchao"):
        models[f"int8_static_{backend}"] = quantize_int8(
            model, Int8Static(backend=backend, per_channel=True), calibration=calib
        )
    probe = data.example_input(512)
    report = compare(
        models,
        data,
        baseline="fp32",
        config=MeasureConfig(batch_sizes=(1, 32), runs=runs, warmup=10, threads=1, energy="off"),
    )
    per_layer = layer_sqnr(model, calib)
    rows = []
    for name, m in models.items():
        metrics = dict(report.metrics(name))
        metrics["backend"] = getattr(m, "dwindle_backend", "torch eager (fp32)")
        metrics["baseline_epochs"] = model.dwindle_epochs
        if name != "fp32":
            metrics["output_sqnr_db"] = output_sqnr(model, m, probe)
            metrics["layer_sqnr_db"] = per_layer
            metrics["min_layer_sqnr_db"] = min(per_layer.values())
            metrics["weight_sqnr_db"] = weight_sqnr(model)
            metrics["scheme"] = m.scheme
        row = {"variant": f"{variant}_{name}", "model": variant, "dataset": "mnist"}
        row.update(split="test", metrics=metrics)
        if name != "fp32":
            row["paper"] = PAPER
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=["lenet5", "cnn4bn_mnist"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs-scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    rows: list[dict[str, Any]] = []
    targets: dict[str, dict[str, str]] = {}
    for variant in args.only:
        print(f"== {variant}", flush=True)
        rows += run(variant, args.seed, args.epochs_scale, args.runs)
        # The scoreboard knows one id ("LeNet-5 or cnn4bn"): the first variant is the
        # candidate; the other variants' rows are reported beside it, met or not.
        targets.setdefault(
            "int8_static_mnist",
            {"baseline": f"{variant}_fp32", "candidate": f"{variant}_int8_static_onnxruntime"},
        )
    for r in rows:
        m = r["metrics"]
        print(
            f"{r['variant']}: err {m['error_pct']:.2f} % bytes {m['bytes']} "
            f"b32 {m['latency_ms']['b32']['p50']:.3f} ms",
            flush=True,
        )
    notes = [
        "Static int8: per-channel symmetric int8 weights, uint8 activations calibrated on 256 "
        "training images; onnxruntime runs QDQ fused to QLinearConv/QGemm, torchao runs pt2e "
        "(X86InductorQuantizer) lowered to oneDNN qconv/qlinear kernels, eagerly.",
        "Latency: 1 thread for torch and onnxruntime (intra-op), interleaved in one process.",
        "schemes: "
        + "; ".join(
            sorted(
                {
                    f"{r['metrics']['backend']}: {r['metrics']['scheme']}"
                    for r in rows
                    if "scheme" in r["metrics"]
                }
            )
        )
        + ". The 7-bit range (weights on onnxruntime, activations on torchao; 8-bit storage) "
        "is chosen on x86 CPUs without VNNI, where both backends' uint8 x int8 kernels "
        "saturate their int16 pair sums (each backend's own advice).",
        "bytes: the real artifact (fp32 safetensors, int8 .onnx, torchao torch.export .pt2; the "
        "pt2 archive carries a JSON graph, hence its larger size).",
    ]
    write_results(
        "quant_int8",
        rows,
        targets,
        columns=COLUMNS,
        notes=notes,
        extra_packages=("onnxruntime", "torchao", "onnx"),
    )


if __name__ == "__main__":
    main()
