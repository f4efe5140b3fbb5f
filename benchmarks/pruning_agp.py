"""AGP gradual pruning (Zhu & Gupta 2017) of LeNet-300-100 on MNIST.

    python benchmarks/pruning_agp.py

Paper: Zhu & Gupta 2017, "To prune, or not to prune", eq. (1): sparsity follows
s_t = s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³, masks recomputed every Δt steps while training;
they report large sparse models beating small dense ones at 90 % sparsity and above. Target
here: ≥ 10× fewer non-zeros at ≤ +0.2 pt test error. Starts from the trained baseline
(benchmarks/artifacts/lenet300.safetensors when present), global magnitude ranking.
Writes benchmarks/results/pruning_agp.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from _common import write_results
from pruning_han import JOBS as HAN_JOBS
from pruning_han import baseline_model, summary

from dwindle import data as dwdata
from dwindle.metrics import MeasureConfig, compare
from dwindle.models import create
from dwindle.pruning import Prune, get_mask, prune_
from dwindle.training import TrainConfig

COLUMNS = [
    ("test error %", "metrics.error_pct"),
    ("non-zeros", "metrics.nonzeros"),
    ("non-zeros ×", "metrics.nonzeros_ratio"),
    ("kept per layer", "metrics.kept_summary"),
    ("bytes (artifact)", "metrics.bytes"),
    ("artifact", "metrics.artifact"),
    ("p50 b1 ms", "metrics.latency_ms.b1.p50"),
    ("p50 b32 ms", "metrics.latency_ms.b32.p50"),
    ("paper", "paper.claim"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--final-sparsity", type=float, default=0.91)
    parser.add_argument("--end-fraction", type=float, default=0.5, help="of the epochs")
    parser.add_argument("--lr", type=float, default=0.02)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = dwdata.load("mnist", seed=args.seed)
    base, how = baseline_model(HAN_JOBS["lenet300"], data, args.seed)
    model = create("lenet300", num_classes=data.num_classes)
    model.load_state_dict(base.state_dict())
    finetune = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        momentum=0.9,
        schedule="cosine",
        weight_decay=1e-4,
        progress=False,
        seed=args.seed,
    )
    config = Prune(
        method="magnitude",
        scope="global",
        schedule="agp",
        initial_sparsity=0.0,
        final_sparsity=args.final_sparsity,
        start_epoch=0,
        end_epoch=args.epochs * args.end_fraction,
        frequency=100,
        finetune=finetune,
    )
    start = time.perf_counter()
    prune_(model, config, data=data)
    seconds = time.perf_counter() - start
    report = compare(
        {"baseline": base, "agp": model},
        data,
        baseline="baseline",
        config=MeasureConfig(energy="off", runs=30, threads=1),
    )
    rows: list[dict[str, Any]] = []
    for row in report.rows:
        m = dict(row["metrics"])
        m["error_pct"] = round(100 * (1 - m["accuracy"]), 4)
        out: dict[str, Any] = {
            "variant": f"lenet300_{row['variant']}",
            "model": "lenet300",
            "dataset": "mnist",
            "split": "test",
            "metrics": m,
        }
        if row["variant"] == "agp":
            mods = dict(model.named_modules())
            fracs = {
                n: round(float(get_mask(mods[n]).float().mean()), 4) for n in ("fc1", "fc2", "fc3")
            }
            m.update(
                kept_fraction=fracs,
                kept_summary=summary(fracs),
                train_seconds=round(seconds, 1),
                agp=config.to_dict(),
            )
            out["paper"] = {
                "claim": "gradual pruning to ≥ 90 % sparsity with little loss",
                "source": "Zhu & Gupta 2017, eq. (1), Table 1",
            }
        else:
            m["baseline_source"] = how
        rows.append(out)
        print(f"   {out['variant']}: error {m['error_pct']:.2f} %, nz {m['nonzeros']}", flush=True)
    notes = [
        f"AGP: global magnitude, s_i 0 → s_f {args.final_sparsity} over the first "
        f"{args.end_fraction:.0%} of {args.epochs} fine-tuning epochs, masks updated every 100 "
        f"steps (cosine lr from {args.lr}, L2 1e-4), then training on with masks fixed.",
        "non-zeros count weights and biases; bytes is the real 'sparse'-format file; masks give "
        "no dense speed-up.",
    ]
    targets = {"agp_mlp_mnist": {"baseline": "lenet300_baseline", "candidate": "lenet300_agp"}}
    out = write_results("pruning_agp", rows, targets, columns=COLUMNS, notes=notes)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
