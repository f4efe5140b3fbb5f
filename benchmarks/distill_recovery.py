"""Distillation as recovery: a one-shot magnitude-pruned LeNet-5 fine-tuned with labels vs with
the unpruned model as teacher, for the same number of epochs on the same data.

    python benchmarks/distill_recovery.py [--sparsity 0.95] [--epochs 2] [--limit 10000]

The LeNet-5 baseline is benchmarks/artifacts/lenet5.safetensors (baselines.py) when present,
else trained here with baselines.py's lenet5 config.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch
from _common import ARTIFACTS, write_results
from baselines import JOBS

import dwindle as dw
from dwindle.distillation import DistillConfig, recover_with_distillation
from dwindle.export import load_weights
from dwindle.metrics import MeasureConfig, compare
from dwindle.pruning import MaskCallback, Prune, prune_


def baseline(data: Any) -> tuple[torch.nn.Module, str]:
    model = dw.models.create("lenet5", num_classes=10)
    path = ARTIFACTS / "lenet5.safetensors"
    if path.exists():
        load_weights(model, path)
        return model, f"baseline: benchmarks/artifacts/{path.name} (baselines.py)"
    job = next(j for j in JOBS if j.variant == "lenet5")
    torch.manual_seed(0)
    dw.train(model, data, dw.TrainConfig(**dict(job.train, progress=False)))
    return model, "baseline: trained here with baselines.py's lenet5 config"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=10000, help="fine-tuning images")
    args = parser.parse_args()
    torch.set_num_threads(1)
    full = dw.data.load("mnist")
    data = dw.data.load("mnist", limit=args.limit)
    teacher, how = baseline(full)
    teacher.eval()

    pruned = copy.deepcopy(teacher)
    prune_(pruned, Prune(method="magnitude", ratio=args.sparsity, scope="global"))
    ft = dw.TrainConfig(epochs=args.epochs, lr=0.01, momentum=0.9, progress=False)
    seconds: dict[str, float] = {}

    with_labels = copy.deepcopy(pruned)
    tick = time.perf_counter()
    dw.train(with_labels, data, ft, callbacks=[MaskCallback()])
    seconds["pruned_ft_labels"] = time.perf_counter() - tick

    with_kd = copy.deepcopy(pruned)
    tick = time.perf_counter()
    kd = DistillConfig(temperature=4.0, alpha=0.9)
    recover_with_distillation(with_kd, teacher, data, ft, kd, callbacks=[MaskCallback()])
    seconds["pruned_ft_distill"] = time.perf_counter() - tick

    models = {
        "baseline": teacher,
        "pruned_no_ft": pruned,
        "pruned_ft_labels": with_labels,
        "pruned_ft_distill": with_kd,
    }
    report = compare(models, full, baseline="baseline", config=MeasureConfig(energy="off", runs=10))
    rows = []
    for row in report.rows:
        metrics = dict(row["metrics"])
        metrics["n_test"] = full.size("test")
        metrics["test_errors"] = round((1 - metrics["accuracy"]) * metrics["n_test"])
        if row["variant"] in seconds:
            metrics["train_seconds"] = round(seconds[row["variant"]], 1)
        rows.append(
            {
                "variant": row["variant"],
                "model": "lenet5",
                "dataset": "mnist",
                "split": "test",
                "metrics": metrics,
            }
        )
    write_results(
        "distill_recovery",
        rows,
        {},
        columns=[
            ("accuracy", "metrics.accuracy"),
            ("test errors", "metrics.test_errors"),
            ("non-zeros", "metrics.nonzeros"),
            ("train s", "metrics.train_seconds"),
        ],
        notes=[
            how,
            f"one-shot global magnitude pruning to {args.sparsity:.0%} sparsity, then "
            f"{args.epochs} epochs (SGD lr 0.01, momentum 0.9, masks re-applied each step) on "
            f"{data.size('train')} training images: with labels, or with recover_with_"
            "distillation (KD from the unpruned model, T=4, α=0.9).",
        ],
    )


if __name__ == "__main__":
    main()
