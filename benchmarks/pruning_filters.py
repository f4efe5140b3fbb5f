"""Filter pruning (Li et al. 2017, L1 norm) on cnn4bn/MNIST and ResNet-20, beside Torch-Pruning.

    python benchmarks/pruning_filters.py                      # both models
    python benchmarks/pruning_filters.py --only resnet        # one

Baseline, dwindle's ``prune_filters_`` and Torch-Pruning's own ``MetaPruner`` (same importance,
same ratio, same layers) are measured in one ``dwindle.metrics.compare`` run per model, so the
latency ratios hold on a noisy machine. Writes benchmarks/results/pruning_filters.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch
from _common import ARTIFACTS, RESULTS, previous_result, torch_pruning_l1, write_results
from baselines import JOBS
from torch import nn

import dwindle as dw
from dwindle import data as dwdata
from dwindle.export import load_weights, save
from dwindle.metrics import MeasureConfig, compare
from dwindle.models import create
from dwindle.pruning import FilterPruning, prune_filters_
from dwindle.quantization.backends import ort_float

RESNET_CKPT = Path("/work/shared/models/cifar10-resnet/resnet20-12fca82f.th")
LI2017 = {
    "flops_reduction_pct": 27.6,
    "error_pct": 6.94,
    "baseline_error_pct": 6.96,
    "source": "Li et al. 2017, Table 1: ResNet-56-pruned-B on CIFAR-10",
}
COLUMNS = [
    ("acc", "metrics.accuracy"),
    ("params", "metrics.params"),
    ("FLOPs", "metrics.flops"),
    ("FLOPs ratio", "metrics.flops_ratio"),
    ("params ratio", "metrics.params_ratio"),
    ("p50 b1 ms", "metrics.latency_ms.b1.p50"),
    ("p50 b32 ms", "metrics.latency_ms.b32.p50"),
    ("speed-up b1", "metrics.speedup_b1"),
    ("speed-up b32", "metrics.speedup_b32"),
    ("acc change pt", "metrics.accuracy_change_pt"),
    ("paper FLOPs -%", "paper.flops_reduction_pct"),
]


def cnn4bn_baseline(data: Any, epochs_scale: float) -> tuple[nn.Module, str]:
    model = create("cnn4bn", num_classes=10)
    path = ARTIFACTS / "cnn4bn_mnist.safetensors"
    if path.exists():  # baselines.py's full-data baseline
        load_weights(model, path)
        return model, f"baseline weights from {path.name} (benchmarks/baselines.py)"
    subset = ARTIFACTS / "cnn4bn_mnist_subset.safetensors"
    if subset.exists():  # this script's own earlier baseline (same seed and config)
        load_weights(model, subset)
        return (
            model,
            f"baseline weights from {subset.name} (trained by this script: "
            "cnn4bn_mnist config, 3 epochs, 12000 images)",
        )
    job = next(j for j in JOBS if j.variant == "cnn4bn_mnist")
    cfg = dict(job.train, seed=0, progress=False)
    cfg["epochs"] = max(1, round(cfg["epochs"] * epochs_scale))
    torch.manual_seed(0)
    dw.train(model, data, dw.TrainConfig(**cfg))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    save(model, subset)  # not baselines.py's full run
    how = f"baseline trained here: baselines.py's cnn4bn_mnist config, {cfg['epochs']} epochs"
    return model, f"{how} on {data.size('train')} training images"


def run_cnn4bn(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    # A seeded training subset keeps the run to minutes on 2 shared cores; test set is whole.
    data = dwdata.load("mnist", seed=0, limit=args.train_limit)
    base, how = cnn4bn_baseline(data, args.baseline_epochs_scale)
    base.eval()
    ex = data.example_input(1)
    tune = dict(epochs=args.finetune_epochs, optimizer="adamw", lr=1e-3, progress=False)
    ours = prune_filters_(copy.deepcopy(base), FilterPruning(ratio=args.cnn_ratio), data=data)
    peer = torch_pruning_l1(base, ex, args.cnn_ratio, [base.classifier])
    for m in (ours, peer):
        dw.finetune(m, data, **tune)
        m.eval()
    cfg = MeasureConfig(batch_sizes=(1, 32), runs=args.runs, threads=1, energy="estimate")
    # The same two models exported to ONNX and served by onnxruntime (conv+BN+ReLU fused):
    # the deployment runtime, timed in the same interleaved run as eager torch.
    served = {
        f"{k}_ort": ort_float(m, data.example_input(32))
        for k, m in (("cnn4bn_baseline", base), ("cnn4bn_filter_l1", ours))
    }
    report = compare(
        {
            "cnn4bn_baseline": base,
            "cnn4bn_filter_l1": ours,
            "cnn4bn_torch_pruning": peer,
            **served,
        },
        data,
        baseline="cnn4bn_baseline",
        config=cfg,
    )
    rows = []
    base_acc = report.metrics("cnn4bn_baseline")["accuracy"]
    ort_base = report.metrics("cnn4bn_baseline_ort")
    for r in report.rows:
        m = r["metrics"]
        m["accuracy_change_pt"] = round(100 * (m["accuracy"] - base_acc), 2)
        m["ratio"] = 0.0 if r["variant"].startswith("cnn4bn_baseline") else args.cnn_ratio
        m["runtime"] = "onnxruntime" if r["variant"].endswith("_ort") else "torch eager"
        if r["variant"] == "cnn4bn_filter_l1_ort":  # ratios against the ORT baseline
            for b in ("b1", "b32"):
                m[f"speedup_{b}"] = round(
                    ort_base["latency_ms"][b]["p50"] / m["latency_ms"][b]["p50"], 3
                )
        rows.append({"model": "cnn4bn", "dataset": "mnist", "split": "test", **r})
    notes = [
        f"cnn4bn: {how}; pruned models (ours and Torch-Pruning's MetaPruner, L1, ratio "
        f"{args.cnn_ratio} of every conv's channels, classifier kept) fine-tuned "
        f"{args.finetune_epochs} epoch(s) with AdamW lr 1e-3 on {args.train_limit} training "
        "images.",
        "cnn4bn *_ort rows: the same baseline and pruned model exported to ONNX and run by "
        "onnxruntime 1 thread (graph optimisations on); their speed-ups are against the ORT "
        "baseline. The filter_cnn4bn target compares these deployment-runtime rows; the eager "
        "rows beside them show the eager ratio (16-channel convs run below oneDNN's efficient "
        "width, so eager torch gains less than the FLOPs ratio).",
        *report.notes,
    ]
    return rows, notes


def run_resnet(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    base = create("resnet20", num_classes=10)
    state = torch.load(RESNET_CKPT, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.get("state_dict", state).items()}
    missing, unexpected = base.load_state_dict(state, strict=False)
    # The 2018 checkpoint predates BatchNorm's num_batches_tracked counter; nothing else may lack.
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise RuntimeError(f"{RESNET_CKPT} does not fit: {missing=} {unexpected=}")
    base.eval()
    ex = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    models: dict[str, nn.Module] = {"resnet20_baseline": base}
    prune_notes: list[str] = []
    for ratio in args.resnet_ratios:
        name = f"resnet20_filter_l1_r{round(100 * ratio)}"
        pruned = copy.deepcopy(base)
        prune_filters_(pruned, FilterPruning(ratio=ratio), example_input=ex, notes=prune_notes)
        models[name] = pruned.eval()
    # Same layers as ours: the blocks' first convs (residual path and classifier kept).
    kept = [base.conv1, base.linear] + [
        b.conv2 for s in (1, 2, 3) for b in getattr(base, f"layer{s}")
    ]
    peer_ratio = args.resnet_ratios[0]
    models[f"resnet20_torch_pruning_r{round(100 * peer_ratio)}"] = torch_pruning_l1(
        base, ex, peer_ratio, kept
    )
    cifar = dwdata.load("cifar10", seed=0, limit=args.resnet_train_limit)
    tune = dw.TrainConfig(
        epochs=args.resnet_finetune_epochs,
        batch_size=128,
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="cosine",
        augment=True,
        progress=False,
    )
    for name, model in models.items():
        if name != "resnet20_baseline" and tune.epochs:
            dw.train(model, cifar, tune)
            model.eval()
    cfg = MeasureConfig(batch_sizes=(1, 32), runs=args.runs, threads=1, energy="estimate")
    report = compare(models, cifar, baseline="resnet20_baseline", config=cfg, example_input=ex)
    rows = []
    for r in report.rows:
        row = {"model": "resnet20", "dataset": "cifar10", "split": "test", **r}
        if "filter_l1" in r["variant"]:
            row["paper"] = LI2017
        rows.append(row)
    notes = [
        "resnet20: published checkpoint resnet20-12fca82f.th (Idelbayev), accuracy on the 10,000 "
        f"CIFAR-10 test images; pruned models fine-tuned {args.resnet_finetune_epochs} epoch(s) "
        f"(SGD lr 0.01 cosine, crop+flip) on {args.resnet_train_limit} training images.",
        "resnet20: as in Li et al. 2017 for ResNets, only the first conv of each residual block "
        "is pruned; the residual path is coupled through option-A shortcuts (a channel pad) "
        "that Torch-Pruning cannot index, so dwindle leaves it whole (notes below) and the "
        "MetaPruner peer is given the same layers.",
        *sorted(set(prune_notes)),
        *report.notes,
    ]
    return rows, notes


def _keep_other_model(
    only: str, rows: list[dict[str, Any]], targets: dict[str, Any], notes: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """With --only, carry the other model's rows, target and notes over from the last results."""
    old = previous_result("pruning_filters")
    other = "resnet20" if only == "cnn4bn" else "cnn4bn"
    kept = [r for r in old["rows"] if r["model"] == other]
    if not kept:
        return rows, targets, notes
    key = "filter_resnet" if other == "resnet20" else "filter_cnn4bn"
    old_md = (RESULTS / "pruning_filters.md").read_text().splitlines()
    carried = [n[2:] for n in old_md if n.startswith("- ") and n[2:].lower().startswith(other[:6])]
    return (
        rows + kept,
        {**targets, **({key: old["targets"][key]} if key in old["targets"] else {})},
        notes
        + carried
        + [f"{other} rows carried over from `{old['command']}` at commit {old['commit'][:12]}"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["cnn4bn", "resnet"])
    parser.add_argument("--cnn-ratio", type=float, default=0.5)
    parser.add_argument("--resnet-ratios", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--baseline-epochs-scale", type=float, default=0.375)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--train-limit", type=int, default=12000, help="MNIST training subset")
    parser.add_argument("--resnet-finetune-epochs", type=int, default=1)
    parser.add_argument("--resnet-train-limit", type=int, default=20000, help="CIFAR subset")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    targets: dict[str, dict[str, str]] = {}
    start = time.perf_counter()
    if args.only in (None, "cnn4bn"):
        r, n = run_cnn4bn(args)
        rows += r
        notes += n
        targets["filter_cnn4bn"] = {
            "baseline": "cnn4bn_baseline_ort",
            "candidate": "cnn4bn_filter_l1_ort",
            "peer": "cnn4bn_torch_pruning",
        }
    if args.only in (None, "resnet"):
        r, n = run_resnet(args)
        rows += r
        notes += n
        pct = round(100 * args.resnet_ratios[0])
        targets["filter_resnet"] = {
            "baseline": "resnet20_baseline",
            "candidate": f"resnet20_filter_l1_r{pct}",
            "peer": f"resnet20_torch_pruning_r{pct}",
        }
    notes.append(f"total wall time {time.perf_counter() - start:.0f} s")
    if args.only is not None:
        rows, targets, notes = _keep_other_model(args.only, rows, targets, notes)
    out = write_results(
        "pruning_filters",
        rows,
        targets,
        columns=COLUMNS,
        notes=notes,
        extra_packages=("torch-pruning",),
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
