"""Pieces of the ResNet-56 filter-pruning benchmark (benchmarks/cifar_prune.py): Li et al. 2017
pruned-B, the Torch-Pruning peer, fine-tuning with labels or KD (cached), and result rows."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from _cifar import cached_train, train_config
from _common import ARTIFACTS, torch_pruning_l1
from torch import nn

from dwindle.distillation import DistillConfig, recover_with_distillation
from dwindle.export import load_weights, save
from dwindle.metrics import MeasureConfig, compare
from dwindle.pruning import FilterPruning, prune_filters_

# Li et al. 2017, §4.2: "ResNet-56-pruned-B skips more layers (16, 18, 20, 34, 38, 54) and
# prunes layers with p = 60 %, 30 % and 10 % for the first, second and third stage". Layer i
# counts the convs from the stem (1); block k's first conv is layer 2k + 2, so the skipped
# layers are these blocks' first convs (indexing as in Liu et al. 2019's l1-norm-pruning code).
LI2017_SKIP = (
    "layer1.7.conv1",
    "layer1.8.conv1",
    "layer2.0.conv1",
    "layer2.7.conv1",
    "layer3.0.conv1",
    "layer3.8.conv1",
)
LI2017_RATIOS = {1: 0.6, 2: 0.3, 3: 0.1}
EXAMPLE = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def li2017_pruned_b(base: nn.Module, notes: list[str]) -> nn.Module:
    """ResNet-56-pruned-B: each block's first conv, L1 filter norm, per-stage ratio, skips."""
    model = copy.deepcopy(base)
    for stage, ratio in LI2017_RATIOS.items():
        cfg = FilterPruning(
            ratio=ratio,
            kept="down",  # keep int((1 - p) n) filters, as the reference code does
            criterion="l1",
            targets=(f"layer{stage}.*.conv1",),
            exclude=LI2017_SKIP,
        )
        prune_filters_(model, cfg, example_input=EXAMPLE, notes=notes)
    return model.eval()


def torch_pruning_peer(base: nn.Module, ratio: float, restricted: bool) -> nn.Module:
    """Torch-Pruning's own MagnitudePruner (L1), one shot; ``restricted``: block conv1s only."""
    ignored: list[nn.Module] = [base.linear]
    if restricted:
        convs = [m for m in base.modules() if isinstance(m, nn.Conv2d)]
        ignored += [m for m in convs if not _is_block_conv1(base, m)]
    return torch_pruning_l1(base, EXAMPLE, ratio, ignored)


def _is_block_conv1(model: nn.Module, module: nn.Module) -> bool:
    names = {m: n for n, m in model.named_modules()}
    name = names[module]
    return name.startswith("layer") and name.endswith(".conv1")


def finetune(
    name: str, model: nn.Module, teacher: nn.Module | None, data: Any, args: Any, log: list[str]
) -> nn.Module:
    """Fine-tune ``model`` with labels, or with KD from ``teacher``; weights cached by budget."""
    cfg = train_config(args.epochs, args.lr, args.device, args.compile)
    name = f"{name}_n{args.smoke or args.train_limit or 'all'}"
    if teacher is None:
        return cached_train(name, model, data, cfg, log)

    path = ARTIFACTS / f"cifar_{name}_kd_{args.epochs}e_{args.lr}_{args.device}.safetensors"
    if path.exists():
        load_weights(model, path)
        log.append(f"{name}: fine-tuned weights reused from {path.name}")
        return model.eval()
    start = time.perf_counter()
    recover_with_distillation(
        model, teacher, data, cfg, DistillConfig(loss="kd", temperature=4.0, alpha=0.9)
    )
    model.to("cpu").eval()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    save(model, path)
    print(f"   {name}: distilled in {time.perf_counter() - start:.0f} s", flush=True)
    return model


def result_rows(report: Any, how: dict[str, str], device: str) -> list[dict[str, Any]]:
    """The report's rows with the change against the first (baseline) row and how each was tuned."""
    rows = []
    base_acc = report.rows[0]["metrics"]["accuracy"]
    for r in report.rows:
        m = r["metrics"]
        m["accuracy_change_pt"] = round(100 * (m["accuracy"] - base_acc), 2)
        m["finetune"] = how.get(r["variant"], "none")
        m["ran_on"] = device
        rows.append({"model": "resnet56", "dataset": "cifar10", "split": "test", **r})
    return rows


def measure(models: dict[str, nn.Module], data: Any, args: Any) -> Any:
    cfg = MeasureConfig(
        batch_sizes=(1, 32), runs=args.runs, warmup=5, threads=args.latency_threads, energy="off"
    )
    return compare(models, data, baseline="resnet56_baseline", config=cfg, example_input=EXAMPLE)


def budget(args: Any) -> str:
    n = "all" if args.train_limit is None else str(args.train_limit)
    return f"{args.epochs} epoch(s) on {n} training images, SGD lr {args.lr} cosine, crop+flip"
