"""int8 static PTQ of the published CIFAR-10 ResNet-20/56: fp32 vs int8 measured in one run.

    python benchmarks/cifar_quant.py                       # ResNet-20 and ResNet-56
    python benchmarks/cifar_quant.py --only resnet56 --runs 20

Target cifar_int8_resnet56: bytes >= 3.9x smaller, test error <= +0.2 pt. Per-channel symmetric
int8 weights, uint8 activations calibrated on training images (no fine-tuning, so the CPU and
the GPU budget are the same run), integer kernels (onnxruntime QLinearConv). Each onnxruntime
model is written in both ONNX forms (QDQ and QOperator, ``--onnx-formats``); the last one named
is the target's candidate. Accuracy is on the
10,000 official test images. Paper: Jacob et al. 2018 (Table 4.1) report int8 within about
1-2 pt of float on ImageNet models and weights 4x smaller.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import torch
from _cifar import PUBLISHED_ACC, add_device_args, check_device, load_cifar, published, result_name
from _common import write_results

from dwindle.metrics import MeasureConfig, compare
from dwindle.quantization import Int8Static, output_sqnr, quantize_int8

PAPER = {"size_ratio": 4.0, "source": "Jacob et al. 2018, int8 = 1/4 of fp32 weights"}
COLUMNS = [
    ("backend", "metrics.backend"),
    ("accuracy", "metrics.accuracy"),
    ("test error %", "metrics.error_pct"),
    ("published acc", "metrics.published_accuracy"),
    ("bytes", "metrics.bytes"),
    ("compression", "metrics.compression_rate"),
    ("p50 b1 ms", "metrics.latency_ms.b1.p50"),
    ("p50 b32 ms", "metrics.latency_ms.b32.p50"),
    ("speed-up b1", "metrics.speedup_b1"),
    ("speed-up b32", "metrics.speedup_b32"),
    ("output SQNR dB", "metrics.output_sqnr_db"),
]


def _variant(backend: str, onnx_format: str) -> str:
    """Row name of an int8 model: the QDQ file keeps the plain name."""
    return f"int8_{backend}" + ("" if onnx_format == "qdq" else f"_{onnx_format}")


def run(name: str, data: Any, args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    model = published(name)
    calib = data.calib(args.calibration, seed=args.seed)
    models = {"fp32": model}
    for backend in args.backends:
        formats = args.onnx_formats if backend == "onnxruntime" else ["qdq"]
        for fmt in formats:
            start = time.perf_counter()
            config = Int8Static(
                backend=backend,
                per_channel=True,
                calibration_samples=args.calibration,
                onnx_format=fmt,
            )
            variant = _variant(backend, fmt)
            models[variant] = quantize_int8(model, config, calibration=calib)
            took = time.perf_counter() - start
            print(f"   {name} {variant}: quantized in {took:.0f} s", flush=True)
    cfg = MeasureConfig(
        batch_sizes=(1, 32), runs=args.runs, warmup=5, threads=args.latency_threads, energy="off"
    )
    report = compare(models, data, baseline="fp32", config=cfg)
    probe = data.example_input(256)
    rows = []
    for variant, m in models.items():
        metrics = dict(report.metrics(variant))
        metrics["backend"] = getattr(m, "dwindle_backend", "torch eager (fp32)")
        metrics["published_accuracy"] = PUBLISHED_ACC[name]
        metrics["calibration_samples"] = len(calib)
        row: dict[str, Any] = {"variant": f"{name}_{variant}", "model": name, "dataset": "cifar10"}
        if variant != "fp32":
            metrics["output_sqnr_db"] = output_sqnr(model, m, probe)
            metrics["scheme"] = m.scheme
            row["paper"] = PAPER
        row.update(split="test", metrics=metrics)
        rows.append(row)
        print(
            f"   {row['variant']}: acc {metrics['accuracy']:.4f} bytes {metrics['bytes']} "
            f"b1 {metrics['latency_ms']['b1']['p50']:.2f} ms "
            f"b32 {metrics['latency_ms']['b32']['p50']:.2f} ms",
            flush=True,
        )
    return rows, report.notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=["resnet20", "resnet56"])
    parser.add_argument("--backends", nargs="*", default=["onnxruntime"])
    parser.add_argument(
        "--onnx-formats",
        nargs="*",
        default=["qdq", "qoperator"],
        choices=["qdq", "qoperator"],
        help="onnxruntime file formats to write (the last is the target's candidate)",
    )
    parser.add_argument("--calibration", type=int, default=512, help="training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=30)
    add_device_args(parser)
    args = parser.parse_args()
    check_device(args.device)  # PTQ needs no training: the CPU run is the full version
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    data = load_cifar(args, None)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    start = time.perf_counter()
    for name in args.only:
        print(f"== {name}", flush=True)
        r, n = run(name, data, args)
        rows += r
        notes += n
    targets = {}
    if "resnet56" in args.only:
        last = args.onnx_formats[-1] if args.backends[0] == "onnxruntime" else "qdq"
        targets["cifar_int8_resnet56"] = {
            "baseline": "resnet56_fp32",
            "candidate": f"resnet56_{_variant(args.backends[0], last)}",
        }
    schemes = sorted({r["metrics"]["scheme"] for r in rows if "scheme" in r["metrics"]})
    notes = [
        "Published checkpoints (Idelbayev, ../shared/models/cifar10-resnet/) loaded as they "
        "come; accuracy on the 10,000 official CIFAR-10 test images, no augmentation.",
        f"Static int8, per-channel weights, activations calibrated on {args.calibration} "
        "training images (seeded), no fine-tuning; scheme: " + "; ".join(schemes) + ".",
        f"Ran on: cpu; latency timed with {args.latency_threads} thread(s) for torch and "
        "onnxruntime alike, interleaved in one process. PTQ has no training budget, so "
        "--device cuda changes nothing but is accepted.",
        "bytes: the real artifact (fp32 safetensors vs the int8 .onnx file). *_qoperator: the "
        "same quantization written as onnxruntime's integer ops (QLinearConv, QLinearAdd, "
        "QGemm) instead of Q/DQ pairs around float ops: the graph onnxruntime runs after "
        "fusing a QDQ file, without the per-layer Q/DQ nodes and bias scales, so smaller; "
        "QDQ stays the portable default (Int8Static(onnx_format=...)).",
        *dict.fromkeys(notes),
        f"total wall time {time.perf_counter() - start:.0f} s",
    ]
    out = write_results(
        result_name("cifar_quant", args),
        rows,
        targets,
        columns=COLUMNS,
        notes=notes,
        extra_packages=("onnxruntime", "onnx"),
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
