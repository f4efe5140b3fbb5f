"""Joint multi-objective compression search vs a hand-written recipe, LeNet-300-100 on MNIST.

    python benchmarks/search_joint.py [--trials 16] [--resume]

Hand recipe: examples/deep_compression.yaml (prune 92 % magnitude → k-means 6 bits → Huffman)
with the fine-tuning budget every search trial gets too: 1 epoch after pruning, 1 epoch of
centroid fine-tuning. The search (multi-objective TPE on accuracy and bytes, validation split)
chooses per-layer pruning ratios, per-layer cluster bits, the Huffman index bits and
distillation on/off; the hand recipe's own configuration is not enqueued (its uniform 92 %
ratio is not even a point of the per-layer space). The front member reported is chosen on the
validation split: the smallest file whose validation accuracy is at least the hand recipe's.
Baseline, hand recipe and front members are then measured together on the test split.
Writes results/search_joint.{json,md} and results/search_joint_pareto.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from typing import Any

import torch
from _common import ARTIFACTS, RESULTS, write_results

from dwindle.metrics import compare
from dwindle.search import Evaluator, SearchSpec, plot_pareto, search
from dwindle.search.trials import measure_objectives

WEIGHTS = ARTIFACTS / "lenet300.safetensors"
FT_PRUNE = {"epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 128}
FT_SHARE = {"epochs": 1, "lr": 0.001, "momentum": 0.9, "batch_size": 128}
BASE: dict[str, Any] = {
    "seed": 0,
    "model": {"zoo": "lenet300", "weights": str(WEIGHTS)},
    "data": {"name": "mnist"},
    "measure": {"batch_sizes": [1, 32]},
}
HAND: dict[str, Any] = {
    **BASE,
    "name": "hand-deep-compression",
    "stages": [
        {"prune": {"method": "magnitude", "ratio": 0.92}, "finetune": FT_PRUNE, "name": "pruned"},
        {
            "share": {"method": "kmeans", "bits": {"linear": 6}, "init": "linear"},
            "finetune": FT_SHARE,
            "name": "clustered",
        },
        {"encode": {"method": "huffman", "index_bits": {"linear": 5}}, "name": "encoded"},
    ],
}
SEARCHED: dict[str, Any] = {
    **BASE,
    "name": "joint-lenet300",
    "stages": [
        {"prune": {"method": "magnitude", "ratio": 0.9, "targets": ["fc1"]}, "name": "p1"},
        {"prune": {"method": "magnitude", "ratio": 0.9, "targets": ["fc2"]}, "name": "p2"},
        {
            "prune": {"method": "magnitude", "ratio": 0.5, "targets": ["fc3"]},
            "name": "p3",
            "finetune": FT_PRUNE,
        },
        {
            "share": {"method": "kmeans", "bits": {"fc1": 5, "fc2": 5, "fc3": 5}, "init": "linear"},
            "finetune": FT_SHARE,
            "name": "clustered",
        },
        {"encode": {"method": "huffman", "index_bits": {"linear": 5}}, "name": "encoded"},
    ],
}
SPACE: dict[str, Any] = {
    "stages.0.prune.ratio": {"low": 0.85, "high": 0.98},
    "stages.1.prune.ratio": {"low": 0.7, "high": 0.97},
    "stages.2.prune.ratio": {"low": 0.2, "high": 0.9},
    "stages.3.share.bits.fc1": {"choices": [3, 4, 5, 6]},
    "stages.3.share.bits.fc2": {"choices": [3, 4, 5, 6]},
    "stages.3.share.bits.fc3": {"choices": [4, 5, 6, 8]},
    "stages.4.encode.index_bits.linear": {"choices": [4, 5, 6]},
    "distill": {"choices": [True, False]},
}
RUN_DIR = ARTIFACTS / "search_joint"


def _search(trials: int, resume: bool) -> Any:
    doc = copy.deepcopy(SEARCHED)
    doc["search"] = {
        "kind": "joint",
        "n_trials": trials,
        "objectives": ["accuracy", "bytes"],
        "sampler": "motpe",
        "retrain": False,
        "seed": 0,
        "space": SPACE,
    }
    if not resume and RUN_DIR.exists():
        shutil.rmtree(RUN_DIR)
    return search(doc, RUN_DIR, resume=resume and (RUN_DIR / "study.db").exists())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = _search(args.trials, args.resume)
    spec = SearchSpec(kind="joint", space=SPACE, objectives=["accuracy", "bytes"])
    hand_ev = Evaluator(HAND, None, spec, ARTIFACTS / "search_joint_hand")
    hand_ev.run_dir.mkdir(parents=True, exist_ok=True)
    hand, data = hand_ev.compress(hand_ev.recipe({}))
    hand_val = measure_objectives(hand, data, spec)
    front = result.summary.get("front", [])
    ok = [r for r in front if r["accuracy"] >= hand_val["accuracy"]]
    pick = min(ok, key=lambda r: r["bytes"]) if ok else max(front, key=lambda r: r["accuracy"])
    chosen, _ = result.evaluator.compress(result.evaluator.recipe(pick["params_"]))
    baseline = result.evaluator.baseline()[0]
    report = compare(
        {"baseline": baseline, "hand_recipe": hand, "search_front": chosen},
        data,
        baseline="baseline",
        config={"batch_sizes": [1, 32], "runs": 20, "warmup": 3, "energy": "estimate"},
    )
    rows = []
    for row in report.rows:
        m = row["metrics"]
        m["error_pct"] = round(100 * (1 - m["accuracy"]), 2)
        out = {
            "variant": row["variant"],
            "model": "lenet300",
            "dataset": "mnist",
            "split": "test",
            "metrics": m,
        }
        if row["variant"] == "hand_recipe":
            out["val"] = hand_val
            out["recipe"] = HAND["stages"]
        if row["variant"] == "search_front":
            out["trial"] = pick["number"]
            out["params"] = pick["params_"]
            out["val"] = {k: pick[k] for k in ("accuracy", "bytes")}
        rows.append(out)
    rows.append(
        {
            "variant": "front",
            "model": "lenet300",
            "dataset": "mnist",
            "split": "val",
            "metrics": {
                "members": [
                    {"trial": r["number"], "accuracy": r["accuracy"], "bytes": r["bytes"]}
                    for r in front
                ],
                "trials": result.summary["states"],
            },
        }
    )
    pts = [r for r in json.loads((RUN_DIR / "trials.json").read_text()) if r["state"] == "complete"]
    plot_pareto(
        pts,
        [r["number"] for r in front],
        "bytes",
        "accuracy",
        RESULTS / "search_joint_pareto.png",
        marks={"hand recipe (val)": (hand_val["bytes"], hand_val["accuracy"])},
    )
    shutil.copy(
        RUN_DIR / "front" / f"trial-{pick['number']}.yaml",
        RESULTS / "search_joint_front_member.yaml",
    )
    notes = [
        f"search: {args.trials} trials, multi-objective TPE (seed 0) on validation accuracy and "
        "bytes of the final deepc file; space: per-layer magnitude pruning ratios (fc1 "
        "0.85-0.98, fc2 0.70-0.97, fc3 0.20-0.90), per-layer k-means bits (fc1/fc2 3-6, fc3 "
        "4-8), Huffman index bits 4-6, distillation on/off; the hand configuration was not "
        "enqueued",
        "budget: every trial and the hand recipe fine-tune 1 epoch after pruning and 1 epoch "
        "of centroid fine-tuning (SGD momentum 0.9; lr 0.01 / 0.001), from "
        "benchmarks/artifacts/lenet300.safetensors",
        "hand recipe: examples/deep_compression.yaml's stages (92 % magnitude pruning, 6-bit "
        "k-means, 5-bit Huffman indices) with that same fine-tuning budget",
        f"front member: trial {pick['number']}, the smallest front file whose validation "
        "accuracy >= the hand recipe's (chosen on val, measured on test here); its recipe is "
        "results/search_joint_front_member.yaml; plot: results/search_joint_pareto.png",
    ]
    cols = [
        ("test error %", "metrics.error_pct"),
        ("bytes", "metrics.bytes"),
        ("format", "metrics.artifact"),
        ("compression ×", "metrics.compression_rate"),
        ("val accuracy", "val.accuracy"),
        ("val bytes", "val.bytes"),
        ("p50 b32 ms", "metrics.latency_ms.b32.p50"),
    ]
    write_results(
        "search_joint",
        rows,
        {"search_front_vs_recipe": {"baseline": "hand_recipe", "candidate": "search_front"}},
        columns=cols,
        notes=notes,
        extra_packages=("optuna",),
    )


if __name__ == "__main__":
    main()
