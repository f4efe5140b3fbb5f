"""Conv factorization of the published CIFAR-10 ResNet-20: spatial SVD, Tucker-2 and CP at two
parameter budgets, accuracy before and after a short fine-tune, parameters, FLOPs and measured
latency, all in one run.

    python benchmarks/factorization_conv.py [--ratios 0.5 0.25] [--train-limit 10000]

Every 3×3 conv inside the residual blocks is factorized (the 3-channel stem is left alone);
the table flags variants slower than the baseline despite fewer FLOPs — depthwise and thin
convs often are on CPU. Methods: Jaderberg et al. 2014 (spatial SVD), Kim et al. 2016
(Tucker-2), Lebedev et al. 2015 (CP). Writes results/factorization_conv.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch
from _common import LATENCY_COLUMNS, flag_slower, write_results

import dwindle as dw
from dwindle import data as dwdata
from dwindle.export import load_weights
from dwindle.factorization import Factorize, factorize_
from dwindle.metrics import MeasureConfig, compare, evaluate_accuracy
from dwindle.models import create

CHECKPOINT = (
    Path(__file__).resolve().parents[2] / "shared/models/cifar10-resnet/resnet20-12fca82f.th"
)
METHODS = ("spatial", "tucker", "cp")
PAPERS = {
    "spatial": "Jaderberg et al. 2014 (scheme 2)",
    "tucker": "Kim et al. 2016 (Tucker-2; ranks from the budget, not VBMF)",
    "cp": "Lebedev et al. 2015 (CP by ALS)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--train-limit", type=int, default=10000, help="fine-tuning subset")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    base = create("resnet20", num_classes=10)
    load_weights(base, CHECKPOINT)
    base.eval()
    test = dwdata.load("cifar10", seed=0)
    tune_data = dwdata.load("cifar10", seed=0, limit=args.train_limit)
    tune = dw.TrainConfig(
        epochs=args.finetune_epochs,
        lr=0.01,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="cosine",
        augment=True,
        progress=False,
    )
    models: dict[str, torch.nn.Module] = {"resnet20_baseline": base}
    before: dict[str, float] = {}
    described: dict[str, list[str]] = {}
    for method in METHODS:
        for ratio in args.ratios:
            name = f"resnet20_{method}_r{round(100 * ratio)}"
            model = copy.deepcopy(base)
            factorize_(model, Factorize(method=method, ratio=ratio, targets=("layer*.conv*",)))
            described[name] = list(model.dwindle_factorization_notes)
            before[name] = evaluate_accuracy(model, test)["accuracy"]
            if args.finetune_epochs:
                dw.train(model, tune_data, tune)
            models[name] = model.eval()
            print(f"{name}: {before[name]:.4f} before fine-tuning", flush=True)
    report = compare(
        models,
        test,
        baseline="resnet20_baseline",
        config=MeasureConfig(batch_sizes=(1, 32), runs=args.runs, threads=args.threads),
    )
    base_acc = report.metrics("resnet20_baseline")["accuracy"]
    rows: list[dict[str, Any]] = []
    for row in report.rows:
        m = dict(row["metrics"])
        name = row["variant"]
        m["error_pct"] = round(100 * (1 - m["accuracy"]), 2)
        m["accuracy_change_pt"] = round(100 * (m["accuracy"] - base_acc), 2)
        out: dict[str, Any] = {
            "variant": name,
            "model": "resnet20",
            "dataset": "cifar10",
            "split": "test",
            "metrics": m,
        }
        if name != "resnet20_baseline":
            method = name.split("_")[1]
            m["method"] = method
            m["accuracy_before_finetune"] = before[name]
            out["paper"] = {"source": PAPERS[method]}
        rows.append(out)
    slow = flag_slower(rows, "resnet20_baseline")
    notes = [
        f"baseline: the published checkpoint {CHECKPOINT.name} (Idelbayev); accuracy on the "
        "10 000 CIFAR-10 test images",
        "factorized: every 3×3 conv of the residual blocks (layer*.conv*) to the ratio of its "
        "parameters; fine-tuning: "
        f"{args.finetune_epochs} epoch(s) SGD lr 0.01 cosine, crop+flip, on {args.train_limit} "
        "training images",
        slow,
        f"{args.threads} thread(s); total wall time {time.perf_counter() - start:.0f} s",
        *report.notes,
    ]
    columns = [
        ("method", "metrics.method"),
        ("params", "metrics.params"),
        ("params ×", "metrics.params_ratio"),
        ("FLOPs ×", "metrics.flops_ratio"),
        ("acc before ft", "metrics.accuracy_before_finetune"),
        ("acc", "metrics.accuracy"),
        ("acc change pt", "metrics.accuracy_change_pt"),
        *LATENCY_COLUMNS,
        ("paper", "paper.source"),
    ]
    write_results("factorization_conv", rows, {}, columns=columns, notes=notes)


if __name__ == "__main__":
    main()
