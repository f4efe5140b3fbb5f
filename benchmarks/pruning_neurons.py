"""Data-free neuron pruning (Srinivas & Babu 2015) of LeNet-300-100 on MNIST, no retraining.

    python benchmarks/pruning_neurons.py
    python benchmarks/pruning_neurons.py --ratios 0.5 0.8 --finetune-epochs 1

For each ratio the hidden neurons of fc1 and fc2 are removed with the data-free merge
(no data seen), the accuracy measured as is, then again after a short fine-tune; a plain
"drop without merging" (lowest-L1 neurons removed, outgoing weights discarded) row per ratio
shows what the merge buys. Writes benchmarks/results/pruning_neurons.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch
from _common import ARTIFACTS, write_results
from baselines import JOBS
from torch import nn

import dwindle as dw
from dwindle import data as dwdata
from dwindle.export import load_weights, save
from dwindle.metrics import MeasureConfig, compare
from dwindle.models import create
from dwindle.pruning import NeuronPruning, prune_neurons_, remove_channels, trace_channels

PAPER = {
    "params_removed_pct": 85.0,
    "source": "Srinivas & Babu 2015 (BMVC), as quoted in issue #4: 85 % of the parameters "
    "removed on MNIST, with fine-tuning",
}
COLUMNS = [
    ("ratio", "metrics.neuron_ratio"),
    ("fine-tune ep", "metrics.finetune_epochs"),
    ("acc", "metrics.accuracy"),
    ("test errors", "metrics.test_errors"),
    ("params", "metrics.params"),
    ("params removed %", "metrics.params_removed_pct"),
    ("acc change pt", "metrics.accuracy_change_pt"),
    ("paper removed %", "paper.params_removed_pct"),
]


def baseline(data: Any, epochs_scale: float) -> tuple[nn.Module, str]:
    model = create("lenet300", num_classes=10)
    path = ARTIFACTS / "lenet300.safetensors"
    if path.exists():
        load_weights(model, path)
        return model, f"baseline weights from {path.name} (benchmarks/baselines.py)"
    job = next(j for j in JOBS if j.variant == "lenet300")
    cfg = dict(job.train, seed=0, progress=False)
    cfg["epochs"] = max(1, round(cfg["epochs"] * epochs_scale))
    torch.manual_seed(0)
    dw.train(model, data, dw.TrainConfig(**cfg))
    save(model, path)
    return model, f"baseline trained here ({cfg['epochs']} epochs of baselines.py's config)"


def drop_by_norm(model: nn.Module, ratio: float, example: torch.Tensor) -> nn.Module:
    """Reference without the merge: remove the lowest-L1 neurons, discard their outgoing weights."""
    out = copy.deepcopy(model)
    graph = trace_channels(out, example, ["fc1", "fc2"])
    for name in ("fc1", "fc2"):
        layer = out.get_submodule(name)
        k = int(ratio * layer.out_features)
        if k:
            idxs = torch.argsort(layer.weight.detach().abs().sum(1))[:k].tolist()
            remove_channels(out, name, idxs, graph=graph)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.7, 0.8, 0.9])
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--baseline-epochs-scale", type=float, default=0.3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = dwdata.load("mnist", seed=0)
    base, how = baseline(data, args.baseline_epochs_scale)
    base.eval()
    ex = data.example_input(1)
    models: dict[str, nn.Module] = {"lenet300_baseline": base}
    meta: dict[str, dict[str, Any]] = {"lenet300_baseline": {"neuron_ratio": 0.0}}
    tune = dict(epochs=args.finetune_epochs, optimizer="sgd", lr=0.01, momentum=0.9, progress=False)
    for ratio in args.ratios:
        pct = round(100 * ratio)
        merged = prune_neurons_(copy.deepcopy(base), NeuronPruning(ratio=ratio), example_input=ex)
        models[f"datafree_r{pct}"] = merged.eval()
        meta[f"datafree_r{pct}"] = {"neuron_ratio": ratio, "finetune_epochs": 0}
        models[f"drop_l1_r{pct}"] = drop_by_norm(base, ratio, ex).eval()
        meta[f"drop_l1_r{pct}"] = {"neuron_ratio": ratio, "finetune_epochs": 0}
        tuned = copy.deepcopy(merged)
        dw.finetune(tuned, data, **tune)
        models[f"datafree_r{pct}_ft"] = tuned.eval()
        meta[f"datafree_r{pct}_ft"] = {
            "neuron_ratio": ratio,
            "finetune_epochs": args.finetune_epochs,
        }
    cfg = MeasureConfig(batch_sizes=(1, 32), runs=10, threads=1, energy="off", memory=False)
    report = compare(models, data, baseline="lenet300_baseline", config=cfg)
    base_m = report.metrics("lenet300_baseline")
    rows = []
    for r in report.rows:
        m = r["metrics"]
        m.update(meta[r["variant"]])
        m["error_pct"] = round(100 * (1 - m["accuracy"]), 2)
        m["params_removed_pct"] = round(100 * (1 - m["params"] / base_m["params"]), 1)
        m["accuracy_change_pt"] = round(100 * (m["accuracy"] - base_m["accuracy"]), 2)
        row = {"model": "lenet300", "dataset": "mnist", "split": "test", **r}
        if r["variant"].startswith("datafree") and r["variant"].endswith("_ft"):
            row["paper"] = PAPER
        rows.append(row)
    notes = [
        how,
        "datafree_*: Srinivas & Babu 2015 merge on fc1 and fc2 (ratio of each layer's neurons), "
        "no data seen; *_ft: then fine-tuned "
        f"{args.finetune_epochs} epoch(s), SGD lr 0.01 momentum 0.9.",
        "drop_l1_*: same neurons count removed by incoming L1 norm without folding the outgoing "
        "weights: the reference the merge improves on.",
        f"total wall time {time.perf_counter() - start:.0f} s",
        *report.notes,
    ]
    out = write_results("pruning_neurons", rows, {}, columns=COLUMNS, notes=notes)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
