"""Truncated SVD of LeNet-300-100's fc1 (784→300) at several ranks: accuracy (before and
after one epoch of fine-tuning) vs parameter ratio vs measured latency, all in one run.

    python benchmarks/factorization_svd.py

Two thin matmuls can be slower than one fat one: the table flags every rank whose measured
latency is above the baseline's despite fewer FLOPs. Writes results/factorization_svd.{json,md}.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from _common import ARTIFACTS, LATENCY_COLUMNS, flag_slower, write_results
from baselines import JOBS

import dwindle as dw
from dwindle import data as dwdata
from dwindle.export import load_weights
from dwindle.factorization import svd_split
from dwindle.metrics import compare, evaluate_accuracy
from dwindle.models import create

RANKS = (8, 16, 32, 64, 128, 200, 300)  # 300 = full rank: more parameters than fc1 itself


def _baseline(data: Any) -> tuple[torch.nn.Module, str]:
    model = create("lenet300", num_classes=10)
    path = ARTIFACTS / "lenet300.safetensors"
    if path.exists():
        load_weights(model, path)
        return model, "benchmarks/artifacts/lenet300.safetensors"
    job = next(j for j in JOBS if j.variant == "lenet300")
    dw.train(model, data, dw.TrainConfig(**dict(job.train, epochs=10, progress=False)))
    return model, "trained here (10 epochs of baselines.py's config)"


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = dwdata.load("mnist")
    baseline, origin = _baseline(data)
    models: dict[str, torch.nn.Module] = {"baseline": baseline}
    before_ft: dict[str, float] = {}
    for rank in RANKS:
        model = copy.deepcopy(baseline)
        model.fc1 = svd_split(baseline.fc1, rank)
        name = f"svd_fc1_r{rank}"
        before_ft[name] = evaluate_accuracy(model, data)["accuracy"]
        if rank < 300:
            dw.train(model, data, dw.TrainConfig(epochs=1, lr=0.005, momentum=0.9, progress=False))
        models[name] = model
    report = compare(
        models,
        data,
        baseline="baseline",
        config={
            "batch_sizes": [1, 32],
            "runs": 40,
            "warmup": 5,
            "energy": "estimate",
            "threads": 1,
        },
    )
    base_params = baseline.fc1.weight.numel()
    rows = []
    for row in report.rows:
        m = row["metrics"]
        name = row["variant"]
        m["error_pct"] = round(100 * (1 - m["accuracy"]), 2)
        if name != "baseline":
            rank = int(name.rsplit("r", 1)[1])
            m["rank"] = rank
            m["fc1_param_ratio"] = round(rank * (784 + 300) / base_params, 4)
            m["accuracy_before_finetune"] = before_ft[name]
        rows.append(
            {
                "variant": name,
                "model": "lenet300",
                "dataset": "mnist",
                "split": "test",
                "metrics": m,
            }
        )
    slow = flag_slower(rows, "baseline")
    notes = [
        f"baseline: {origin}; fine-tuning: 1 epoch SGD lr 0.005 (rank 300 not fine-tuned)",
        "fc1 parameter ratio = r·(784+300) / (784·300); FLOPs ratio is for the whole model",
        slow,
        "no paper row: Denton et al. 2014 / Xue et al. 2013 report other models",
    ]
    columns = [
        ("rank", "metrics.rank"),
        ("fc1 params ratio", "metrics.fc1_param_ratio"),
        ("params", "metrics.params"),
        ("FLOPs ×", "metrics.flops_ratio"),
        ("acc before ft", "metrics.accuracy_before_finetune"),
        ("test error %", "metrics.error_pct"),
        *LATENCY_COLUMNS,
    ]
    write_results("factorization_svd", rows, {}, columns=columns, notes=notes)


if __name__ == "__main__":
    main()
