"""Low-bit weights on LeNet-300-100 / MNIST: 4-, 2-bit (PTQ and QAT), ternary, binary, k-means,
and stochastic vs nearest rounding, every model stored bit-packed (bytes are the real file).

    python benchmarks/quant_lowbit.py [--qat-epochs 2]

Paper figures beside ours: Li & Liu 2016 (TWN, Table 2) 0.35 % error for a ternary LeNet-5
(ours is the smaller LeNet-300-100 MLP, so not like for like); Courbariaux et al. 2015
(BinaryConnect, Table 2) 1.29 % for a binary-weight 3×1024 MLP; Gupta et al. 2015 show
stochastic rounding matters when training at low precision. The BNN row (binary weights and
activations) is in quant_qat.py.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch
from _common import ARTIFACTS, write_results

import dwindle as dw
from dwindle import data as dwdata
from dwindle.export import load_weights
from dwindle.metrics import MeasureConfig, compare
from dwindle.models import create
from dwindle.quantization import QAT, LowBit, qat, quantize_weights_

NAME = "quant_lowbit"
COLUMNS = [
    ("method", "method"),
    ("bits", "bits"),
    ("rounding", "rounding"),
    ("test error %", "metrics.error_pct"),
    ("bytes", "metrics.bytes"),
    ("compression", "metrics.compression_rate"),
    ("paper error %", "paper.error_pct"),
    ("p50 b32 ms", "metrics.latency_ms.b32.p50"),
    ("train s", "train_seconds"),
]
MEASURE = MeasureConfig(batch_sizes=(1, 32), runs=10, warmup=2, energy="estimate", memory=False)
PAPER = {
    "ternary": {"error_pct": 0.35, "source": "Li & Liu 2016 (TWN) Table 2, LeNet-5 (not MLP)"},
    "binary": {"error_pct": 1.29, "source": "Courbariaux et al. 2015 Table 2, 3x1024 MLP"},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--qat-epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = dwdata.load("mnist", seed=0)
    fp32 = create("lenet300")
    load_weights(fp32, ARTIFACTS / "lenet300.safetensors")
    train_cfg = dw.TrainConfig(
        epochs=args.qat_epochs, optimizer="adam", lr=1e-4, schedule="cosine", progress=False
    )
    models: dict[str, torch.nn.Module] = {"fp32": fp32}
    info: dict[str, dict[str, Any]] = {"fp32": {"method": "float", "bits": 32}}
    for bits in (4, 2):
        for rounding in ("nearest", "stochastic"):
            torch.manual_seed(0)
            name = f"ptq_w{bits}_{rounding}"
            models[name] = quantize_weights_(
                copy.deepcopy(fp32), LowBit(bits=bits, rounding=rounding)
            )
            info[name] = {"method": "uniform PTQ", "bits": bits, "rounding": rounding}
            torch.manual_seed(0)
            name = f"qat_w{bits}_{rounding}"
            start = time.perf_counter()
            models[name] = qat(
                fp32, QAT(weight_bits=bits, act_bits=None, rounding=rounding, train=train_cfg), data
            )
            info[name] = {
                "method": "uniform QAT",
                "bits": bits,
                "rounding": rounding,
                "train_seconds": round(time.perf_counter() - start, 1),
            }
    models["ptq_kmeans4"] = quantize_weights_(copy.deepcopy(fp32), LowBit(bits=4, method="kmeans"))
    info["ptq_kmeans4"] = {"method": "k-means codebook PTQ", "bits": 4, "rounding": "nearest"}
    for method, bits in (("ternary", 2), ("binary", 1)):
        start = time.perf_counter()
        models[f"qat_{method}"] = qat(
            fp32, QAT(weight_bits=bits, weight_method=method, act_bits=None, train=train_cfg), data
        )
        info[f"qat_{method}"] = {
            "method": f"{method} QAT",
            "bits": bits,
            "rounding": "—",
            "train_seconds": round(time.perf_counter() - start, 1),
        }
        if method in PAPER:
            info[f"qat_{method}"]["paper"] = PAPER[method]
    report = compare(models, data, baseline="fp32", config=MEASURE)
    rows = []
    for r in report.rows:
        row = {
            "variant": r["variant"],
            "model": "lenet300",
            "dataset": "mnist",
            "split": "test",
            "metrics": r["metrics"],
        }
        row.update(info[r["variant"]])
        rows.append(row)
    write_results(
        NAME,
        rows,
        {},
        columns=COLUMNS,
        notes=[
            "Weights only (activations float); per-channel symmetric grids; 2-bit uniform uses "
            "the narrow range {-1, 0, 1}·s. QAT: fine-tuned from the fp32 artifact with Adam 1e-4.",
            "Stochastic rounding: each weight rounds up with probability equal to its fraction; "
            "in QAT it is redrawn every step, the stored model is one draw.",
        ],
    )
    print((ARTIFACTS.parent / "results" / f"{NAME}.md").read_text())


if __name__ == "__main__":
    main()
