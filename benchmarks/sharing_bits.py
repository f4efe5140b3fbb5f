"""Weight sharing on MNIST: k-means clustering at 2–8 bits per layer on cnn4bn (accuracy
before and after centroid fine-tuning), and HashedNets vs a plain network of the same size.

    python benchmarks/sharing_bits.py

HashedNets (Chen et al. 2015, Table 1/2): a 784-1000-10 network whose two layers are hashed
to 1/16 of their virtual weights, against a plain 784-h-10 network with the same number of
real parameters, both trained the same way; the paper finds the hashed network better.
Writes results/sharing_bits.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch
from _common import ARTIFACTS, write_results
from baselines import JOBS
from torch import nn

import dwindle as dw
from dwindle import data as dwdata
from dwindle.export import load_weights
from dwindle.metrics import count_params, evaluate_accuracy
from dwindle.models import create
from dwindle.sharing import HashedLinear, Share, share_

BITS = (2, 3, 4, 5, 6, 8)
HASH_RATIO = 1 / 16
HIDDEN = 1000


def _cnn4bn(data: Any) -> tuple[nn.Module, str]:
    model = create("cnn4bn", num_classes=10)
    path = ARTIFACTS / "cnn4bn_mnist.safetensors"
    if path.exists():
        load_weights(model, path)
        return model, "benchmarks/artifacts/cnn4bn_mnist.safetensors"
    job = next(j for j in JOBS if j.variant == "cnn4bn_mnist")
    torch.manual_seed(0)
    dw.train(model, data, dw.TrainConfig(**dict(job.train, epochs=2, progress=False)))
    return model, "trained here (2 epochs of baselines.py's cnn4bn_mnist config)"


def _row(variant: str, model: str, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    metrics["error_pct"] = round(100 * (1 - metrics["accuracy"]), 2)
    return {
        "variant": variant,
        "model": model,
        "dataset": "mnist",
        "split": "test",
        "metrics": metrics,
        **extra,
    }


def clustering_rows(data: Any, tune: Any) -> tuple[list[dict[str, Any]], str]:
    """Cluster at each bit width; fine-tune the centroids on ``tune`` (a training subset)."""
    baseline, origin = _cnn4bn(data)
    rows = [
        _row(
            "cnn4bn_fp32",
            "cnn4bn",
            {"accuracy": evaluate_accuracy(baseline, data)["accuracy"], "bits": 32},
        )
    ]
    for bits in BITS:
        model = share_(copy.deepcopy(baseline), Share(bits=bits))
        before = evaluate_accuracy(model, data)["accuracy"]
        dw.train(model, tune, dw.TrainConfig(epochs=1, lr=1e-4, optimizer="adam", progress=False))
        after = evaluate_accuracy(model, data)["accuracy"]
        rows.append(
            _row(
                f"cnn4bn_kmeans_{bits}bit",
                "cnn4bn",
                {"accuracy": after, "accuracy_before_finetune": before, "bits": bits},
                paper={
                    "note": "bits vs accuracy on AlexNet (another model)",
                    "source": "Han et al. 2016 (Deep Compression), Figure 8",
                },
            )
        )
    return rows, origin


def _hashed_net(seed: int) -> nn.Module:
    first = round(HASH_RATIO * 784 * HIDDEN)
    second = round(HASH_RATIO * HIDDEN * 10)
    return nn.Sequential(
        nn.Flatten(),
        HashedLinear(784, HIDDEN, first, seed=seed),
        nn.ReLU(),
        HashedLinear(HIDDEN, 10, second, seed=seed + 1),
    )


def hashing_rows(data: Any, epochs: int) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    hashed = _hashed_net(0)
    real = count_params(hashed)
    hidden = max(1, round((real - 10) / (784 + 1 + 10)))  # 784h + h + 10h + 10 params
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    cfg = dw.TrainConfig(
        epochs=epochs, optimizer="adam", lr=1e-3, schedule="cosine", progress=False
    )
    rows = []
    paper = {
        "claim": "HashNet has lower error than the equivalent-size network",
        "source": "Chen et al. 2015 (HashedNets), MNIST results, Tables 1-2",
    }
    for name, model in (("hashednet_1_16", hashed), ("plain_same_size", plain)):
        dw.train(model, data, cfg)
        rows.append(
            _row(
                name,
                f"mlp784-{HIDDEN if name.startswith('hash') else hidden}-10",
                {
                    "accuracy": evaluate_accuracy(model, data)["accuracy"],
                    "params": count_params(model),
                    "epochs": epochs,
                },
                paper=paper,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--train-limit", type=int, default=12000, help="training images for centroid fine-tuning"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = dwdata.load("mnist")
    tune = dwdata.load("mnist", limit=args.train_limit)
    rows, origin = clustering_rows(data, tune)
    rows += hashing_rows(data, epochs=3)
    notes = [
        f"cnn4bn baseline: {origin}; clustering: every conv and linear layer at the same bits, "
        f"linear init; fine-tuning: 1 epoch Adam lr 1e-4 on the centroids over {args.train_limit} "
        "training images; accuracy on the full 10 000-image test set",
        "HashedNets vs plain: same real parameter count, same training (3 epochs Adam, cosine)",
    ]
    columns = [
        ("bits", "metrics.bits"),
        ("acc before ft", "metrics.accuracy_before_finetune"),
        ("test error %", "metrics.error_pct"),
        ("params", "metrics.params"),
        ("paper", "paper.source"),
    ]
    write_results("sharing_bits", rows, {}, columns=columns, notes=notes)


if __name__ == "__main__":
    main()
