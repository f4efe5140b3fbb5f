"""Which per-layer split of LeNet-300-100's weights Han pruning should keep: validation decides.

    python benchmarks/pruning_han_split.py [--seed 0]

Han et al. 2015 keep fc1 8 % / fc2 9 % / fc3 26 % of LeNet-300-100 (12×). Each candidate
split below calibrates the Han thresholds of pruning_han.py's LeNet-300 job (same rounds,
schedule and baseline); the split with the fewest *validation* errors among those at ≥ 12×
fewer non-zeros is the one pruning_han.py uses. Test errors are shown beside, not used to
choose. Writes benchmarks/results/pruning_han_split.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch
from _common import write_results
from pruning_han import JOBS, baseline_model, error_pct, han_prune, kept, summary

from dwindle import data as dwdata
from dwindle.metrics import count_nonzeros, count_params

# Calibration targets (fractions of each layer's baseline weights); the first is the paper's
# proportions as pruning_han.py first used them, the others move weights from fc1 to fc2/fc3.
SPLITS: list[dict[str, float]] = [
    {"fc1": 0.075, "fc2": 0.09, "fc3": 0.26},
    {"fc1": 0.06, "fc2": 0.15, "fc3": 0.5},
    {"fc1": 0.065, "fc2": 0.12, "fc3": 0.4},
    {"fc1": 0.07, "fc2": 0.12, "fc3": 0.4},
    {"fc1": 0.065, "fc2": 0.10, "fc3": 0.4},
    {"fc1": 0.065, "fc2": 0.12, "fc3": 0.3},
    {"fc1": 0.065, "fc2": 0.14, "fc3": 0.45},
]
MIN_RATIO = 12.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="for quick checks")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = dwdata.load("mnist", seed=args.seed)
    job = JOBS["lenet300"]
    base, how = baseline_model(job, data, args.seed)
    total = count_params(base)
    rows: list[dict[str, Any]] = [
        {
            "variant": "lenet300_baseline",
            "model": "lenet300",
            "dataset": "mnist",
            "split": "val+test",
            "metrics": {
                "val_error_pct": error_pct(base, data, "val"),
                "test_error_pct": error_pct(base, data, "test"),
                "nonzeros": total,
                "source": how,
            },
        }
    ]
    for keep in SPLITS:
        candidate = dataclasses.replace(job, keep=keep)
        pruned = han_prune(candidate, base, data, args.seed, args.epochs_scale)
        nonzeros = count_nonzeros(pruned.model)
        fracs = kept(pruned.model, list(keep))
        metrics = {
            "calibration": summary(keep),
            "kept_summary": summary(fracs),
            "kept_fraction": fracs,
            "nonzeros": nonzeros,
            "nonzeros_ratio": round(total / nonzeros, 2),
            "val_error_pct": error_pct(pruned.model, data, "val"),
            "test_error_pct": error_pct(pruned.model, data, "test"),
            "train_seconds": round(pruned.seconds, 1),
        }
        print(metrics, flush=True)
        name = "_".join(f"{n}{round(1000 * f)}" for n, f in keep.items())
        rows.append(
            {
                "variant": f"lenet300_han_{name}",
                "model": "lenet300",
                "dataset": "mnist",
                "split": "val+test",
                "metrics": metrics,
            }
        )
    eligible = [r for r in rows[1:] if r["metrics"]["nonzeros_ratio"] >= MIN_RATIO]
    if eligible:
        pick = min(
            eligible, key=lambda r: (r["metrics"]["val_error_pct"], -r["metrics"]["nonzeros_ratio"])
        )
        pick["metrics"]["picked"] = "yes"
    write_results(
        "pruning_han_split",
        rows,
        {},
        columns=[
            ("calibration", "metrics.calibration"),
            ("kept per layer", "metrics.kept_summary"),
            ("non-zeros ×", "metrics.nonzeros_ratio"),
            ("val error %", "metrics.val_error_pct"),
            ("test error %", "metrics.test_error_pct"),
            ("picked", "metrics.picked"),
            ("train s", "metrics.train_seconds"),
        ],
        notes=[
            f"Han iterative pruning as pruning_han.py's lenet300 job ({job.rounds} rounds × "
            f"{job.epochs} epochs, lr {job.lr} × {job.lr_factor} per round, L2 {job.l2}, "
            f"{job.final_epochs} final epochs); 'calibration' is the fraction of each layer's "
            "baseline weights that its Han threshold would keep (surviving weights grow while "
            "retraining, so the kept fractions end above it).",
            f"picked: fewest validation errors (5 000 images held out of the training set) among "
            f"splits at ≥ {MIN_RATIO:g}× fewer non-zeros; test errors were not used to choose. "
            "MNIST's validation images come from the training set's writers and its test images "
            "from other writers, so the two can disagree.",
            "paper: Han et al. 2015 keep fc1 8 % / fc2 9 % / fc3 26 %.",
        ],
    )


if __name__ == "__main__":
    main()
