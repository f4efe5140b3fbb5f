"""Half precision: the published CIFAR-10 ResNets in fp32, fp16 and bf16, measured in one run.

    python benchmarks/cifar_precision.py --device cuda   # writes cifar_precision_cuda.{json,md}
    python benchmarks/cifar_precision.py                 # CPU: bf16 and autocast (no fp16)
    python benchmarks/cifar_precision.py --smoke 200     # a quick check anywhere

Needs only the CIFAR-10 test batch and the two checkpoints (no training). Rows per model: fp32;
dwindle's ``Precision`` cast of the whole model to fp16 and to bf16 (outputs returned in fp32);
and the peer, PyTorch's own automatic mixed precision (``torch.autocast`` around the fp32
model, fp16 on CUDA, bf16 on CPU), which keeps fp32 weights. Each row: accuracy on the 10 000
test images, bytes on disk, latency p50 at batch 1/32 (and 256 on a GPU; interleaved) with
speed-ups vs fp32, energy per image (NVML's board counter on a GPU; labelled), peak memory.
On a CPU fp16 is left out by default: without fp16 kernels it runs many times slower than fp32
(``--smoke 200 --precisions fp16`` shows it), so its accuracy pass alone would take most of the
run; ``--precisions fp16 bf16 autocast`` asks for it anyway. No target reads it. Paper:
Micikevicius et al. 2018 (Mixed Precision Training) report fp16 networks matching fp32 accuracy
with half the bytes per weight.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from typing import Any

import torch
from _cifar import (
    PUBLISHED_ACC,
    add_device_args,
    check_device,
    load_cifar_test,
    published,
    result_name,
)
from _common import write_results
from torch import nn

from dwindle.metrics import MeasureConfig, compare
from dwindle.precision import Precision, cast_

PAPER = {
    "size_ratio": 2.0,
    "source": "Micikevicius et al. 2018 (Mixed Precision Training): fp16 matches fp32 accuracy, "
    "half the bytes per weight",
}
COLUMNS = [
    ("precision", "metrics.precision"),
    ("accuracy", "metrics.accuracy"),
    ("acc change pt", "metrics.accuracy_change_pt"),
    ("bytes", "metrics.bytes"),
    ("compression", "metrics.compression_rate"),
    ("p50 b1 ms", "metrics.latency_ms.b1.p50"),
    ("p50 b32 ms", "metrics.latency_ms.b32.p50"),
    ("p50 b256 ms", "metrics.latency_ms.b256.p50"),
    ("speed-up b32", "metrics.speedup_b32"),
    ("speed-up b256", "metrics.speedup_b256"),
    ("energy J/img", "metrics.energy_j"),
    ("peak mem bytes", "metrics.peak_mem_bytes"),
]


class Autocast(nn.Module):
    """The peer: ``model`` run under ``torch.autocast`` (fp32 weights, low-precision math)."""

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x).float()


def variants(name: str, device: torch.device, precisions: list[str]) -> dict[str, nn.Module]:
    base = published(name).to(device)
    models: dict[str, nn.Module] = {"fp32": base}
    for p in ("fp16", "bf16"):
        if p in precisions:
            models[p] = cast_(copy.deepcopy(base), Precision(dtype=p))  # type: ignore[arg-type]
    if "autocast" in precisions:
        peer = torch.float16 if device.type == "cuda" else torch.bfloat16
        name = f"autocast_{str(peer).removeprefix('torch.')}"
        models[name] = Autocast(base, device.type, peer)
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=["resnet20", "resnet56"])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument(
        "--precisions",
        nargs="*",
        choices=["fp16", "bf16", "autocast"],
        help="rows beside fp32 (cuda: all three; cpu: bf16 and autocast)",
    )
    add_device_args(parser)
    args = parser.parse_args()
    device = check_device(args.device)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    data = load_cifar_test(args.smoke)
    gpu = device.type == "cuda"
    if args.precisions is None:
        args.precisions = ["fp16", "bf16", "autocast"] if gpu else ["bf16", "autocast"]
    cfg = MeasureConfig(
        batch_sizes=(1, 32, 256) if gpu else (1, 32),
        runs=args.runs,
        warmup=10,
        threads=args.latency_threads,
        energy="auto",
        energy_seconds=2.0,
    )
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    start = time.perf_counter()
    for name in args.only:
        print(f"== {name}", flush=True)
        models = variants(name, device, args.precisions)
        report = compare(models, data, baseline="fp32", config=cfg)
        notes += report.notes
        base_acc = report.metrics("fp32")["accuracy"]
        for variant in models:
            m = dict(report.metrics(variant))
            m["precision"] = variant
            m["published_accuracy"] = PUBLISHED_ACC[name]
            m["accuracy_change_pt"] = round(100 * (m["accuracy"] - base_acc), 2)
            m["ran_on"] = str(device)
            row: dict[str, Any] = {"variant": f"{name}_{variant}", "model": name}
            row.update(dataset="cifar10", split="test", metrics=m)
            if variant in ("fp16", "bf16"):
                row["paper"] = PAPER
            rows.append(row)
            lat = m["latency_ms"]
            print(
                f"   {row['variant']}: acc {m['accuracy']:.4f} bytes {m['bytes']} "
                + " ".join(f"{b} {v['p50']:.3f} ms" for b, v in lat.items())
                + f" energy {m['energy_j']}",
                flush=True,
            )
    write_results(
        result_name("cifar_precision", args),
        rows,
        {},
        columns=COLUMNS,
        notes=[
            "Published checkpoints (Idelbayev), accuracy on the CIFAR-10 test images"
            + (f" (smoke: the first {args.smoke})" if args.smoke else "")
            + "; no training, so a run on any device is the whole benchmark.",
            "fp16/bf16: dwindle's Precision cast of every layer (batch norm included), inputs cast "
            "in and logits back to fp32 by the model's hooks; autocast_*: torch.autocast around "
            "the unchanged fp32 model (its bytes are the fp32 file's).",
            f"Ran on {device}"
            + (f" ({torch.cuda.get_device_name(device)})" if gpu else "")
            + f"; wall time {time.perf_counter() - start:.0f} s.",
            *dict.fromkeys(notes),
        ],
    )


if __name__ == "__main__":
    main()
