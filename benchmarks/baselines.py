"""Train the zoo baselines that later benchmarks compress, and commit their figures.

    python benchmarks/baselines.py                  # all
    python benchmarks/baselines.py --only lenet300  # one

Writes benchmarks/results/baselines.{json,md} and the trained weights to
benchmarks/artifacts/<variant>.safetensors (regenerated here, not committed).
Paper figures: Han et al. 2015 ("Learning both Weights and Connections", Table 1) report
1.64 % (LeNet-300-100) and 0.80 % (LeNet-5) test error; Greydanus 2020 (MNIST-1D) reports
94 % for its CNN.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import ARTIFACTS, previous_rows, write_results

import dwindle as dw
from dwindle import data as dwdata
from dwindle.export import load_weights, save
from dwindle.metrics import MeasureConfig, measure
from dwindle.models import create


@dataclass(frozen=True)
class Job:
    variant: str
    model: str
    dataset: str
    train: dict[str, Any]
    model_args: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    paper: dict[str, Any] | None = None


JOBS = [
    Job(
        "lenet300",
        "lenet300",
        "mnist",
        {
            "epochs": 30,
            "batch_size": 128,
            "optimizer": "sgd",
            "lr": 0.05,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 1e-4,
            "schedule": "cosine",
        },
        target="baseline_lenet300_mnist",
        paper={"error_pct": 1.64, "source": "Han et al. 2015, Table 1 (reference model)"},
    ),
    Job(
        "lenet5",
        "lenet5",
        "mnist",
        {
            "epochs": 20,
            "batch_size": 128,
            "optimizer": "sgd",
            "lr": 0.05,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 5e-4,
            "schedule": "cosine",
        },
        target="baseline_lenet5_mnist",
        paper={"error_pct": 0.80, "source": "Han et al. 2015, Table 1 (reference model)"},
    ),
    Job(
        "cnn4bn_mnist",
        "cnn4bn",
        "mnist",
        {
            "epochs": 4,
            "batch_size": 128,
            "optimizer": "adamw",
            "lr": 2e-3,
            "weight_decay": 1e-4,
            "schedule": "cosine",
        },
    ),
    Job(
        "cnn1d_mnist1d",
        "cnn1d",
        "mnist1d",
        {
            "epochs": 60,
            "batch_size": 100,
            "optimizer": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cosine",
        },
        target="baseline_cnn1d_mnist1d",
        paper={"accuracy": 0.94, "source": "Greydanus 2020, MNIST-1D, CNN"},
    ),
]

COLUMNS = [
    ("test error %", "metrics.error_pct"),
    ("paper error %", "paper.error_pct"),
    ("paper acc", "paper.accuracy"),
    ("params", "metrics.params"),
    ("FLOPs", "metrics.flops"),
    ("bytes", "metrics.bytes"),
    ("p50 b1 ms", "metrics.latency_ms.b1.p50"),
    ("p50 b32 ms", "metrics.latency_ms.b32.p50"),
    ("train s", "metrics.train_seconds"),
]


def run_job(job: Job, seed: int, epochs_scale: float, reuse: bool) -> dict[str, Any]:
    data = dwdata.load(job.dataset, seed=seed)
    torch.manual_seed(seed)
    model = create(job.model, num_classes=data.num_classes, **job.model_args)
    train_cfg = dict(job.train, seed=seed)
    train_cfg["epochs"] = max(1, round(train_cfg["epochs"] * epochs_scale))
    artifact = ARTIFACTS / f"{job.variant}.safetensors"
    metrics: dict[str, Any] = {}
    if reuse and artifact.exists():
        # Weights this script trained earlier with the same config; measured again here.
        load_weights(model, artifact)
        metrics["weights"] = "reused artifact trained earlier by this script"
    else:
        start = time.perf_counter()
        result = dw.train(model, data, dw.TrainConfig(**train_cfg))
        metrics["train_seconds"] = round(time.perf_counter() - start, 1)
        metrics["best_val_accuracy"] = max(h["val_accuracy"] for h in result.history)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        save(model, artifact)
    report = measure(model, data, config=MeasureConfig(energy="off", runs=30), name=job.variant)
    metrics = {**report.rows[0]["metrics"], **metrics}
    metrics["epochs"] = train_cfg["epochs"]
    row: dict[str, Any] = {
        "variant": job.variant,
        "model": job.model,
        "dataset": job.dataset,
        "split": "test",
        "metrics": metrics,
        "train": train_cfg,
    }
    if job.paper:
        row["paper"] = job.paper
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="variants to run (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="for quick checks")
    parser.add_argument(
        "--reuse", action="store_true", help="measure existing artifacts instead of retraining"
    )
    args = parser.parse_args()
    rows: dict[str, dict[str, Any]] = {}
    if args.only:  # keep the other variants' rows from the last full run
        rows = {r["variant"]: r for r in previous_rows("baselines")}
    for job in JOBS:
        if args.only and job.variant not in args.only:
            continue
        print(f"== {job.variant}: {job.model} on {job.dataset}", flush=True)
        rows[job.variant] = run_job(job, args.seed, args.epochs_scale, args.reuse)
        m = rows[job.variant]["metrics"]
        print(f"   test error {m['error_pct']:.2f} %", flush=True)
        write(rows)  # after every job, so an interrupted run keeps what it finished


def write(rows: dict[str, dict[str, Any]]) -> None:
    targets = {j.target: {"candidate": j.variant} for j in JOBS if j.target and j.variant in rows}
    notes = [
        "Fashion-MNIST / KMNIST are not on this machine (no network); the IDX loader reads them "
        "from a directory (tests use IDX fixtures).",
        "Latency: fp32 eager PyTorch, median of 30 runs after warm-up, threads as listed.",
    ]
    out = write_results(
        "baselines",
        [rows[j.variant] for j in JOBS if j.variant in rows],
        targets,
        columns=COLUMNS,
        notes=notes,
    )
    print(f"wrote {out} and {Path(out).with_suffix('.md')}")


if __name__ == "__main__":
    main()
