"""cnn4bn teacher → a cnn4bn student with ¼ of its parameters, on MNIST.

Student alone vs KD (Hinton et al. 2015) vs KD + FitNets hints vs a teacher-assistant chain
(Mirzadeh et al. 2020; the assistant has half the teacher's parameters), all from the same
student initialisation and with the same schedule, in one table.

    python benchmarks/distill_cnn.py [--epochs 3] [--limit 20000]

The teacher is benchmarks/artifacts/cnn4bn_mnist.safetensors (baselines.py) or
cnn4bn_mnist_subset.safetensors (pruning_filters.py) when present;
otherwise it is trained here with baselines.py's cnn4bn_mnist config (epochs scaled).
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch
from _common import ARTIFACTS, write_results
from torch import nn

import dwindle as dw
from dwindle.distillation import DistillConfig, distill, distill_chain
from dwindle.export import load_weights
from dwindle.metrics import MeasureConfig, compare

TEACHER_WIDTHS = (32, 32, 64, 64)
ASSISTANT_WIDTHS = (22, 22, 45, 45)  # ~½ the teacher's parameters
STUDENT_WIDTHS = (16, 16, 32, 32)  # ~¼


def cnn(data: Any, widths: tuple[int, ...], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return dw.models.create("cnn4bn", num_classes=10, input_shape=data.input_shape, widths=widths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=20000, help="training images used")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = dw.data.load("mnist", limit=args.limit)
    seconds: dict[str, float] = {}

    teacher = cnn(data, TEACHER_WIDTHS, 0)
    # baselines.py's full-data teacher, else pruning_filters.py's subset-trained one
    found = [ARTIFACTS / f"{n}.safetensors" for n in ("cnn4bn_mnist", "cnn4bn_mnist_subset")]
    artifact = next((p for p in found if p.exists()), None)
    if artifact is not None:
        load_weights(teacher, artifact)
        teacher_note = f"teacher: benchmarks/artifacts/{artifact.name}"
    else:
        cfg = dw.TrainConfig(
            epochs=max(2, args.epochs),
            optimizer="adamw",
            lr=2e-3,
            weight_decay=1e-4,
            schedule="cosine",
            progress=False,
        )
        tick = time.perf_counter()
        dw.train(teacher, data, cfg)
        seconds["teacher"] = time.perf_counter() - tick
        teacher_note = f"teacher: trained here ({cfg.epochs} epochs, baselines.py's config)"
    teacher.eval()

    train_cfg = dw.TrainConfig(
        epochs=args.epochs,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=1e-4,
        schedule="cosine",
        progress=False,
    )
    kd = DistillConfig(temperature=4.0, alpha=0.9)
    hints = DistillConfig(
        temperature=4.0,
        alpha=0.9,
        hints=[{"student": "features.relu4", "teacher": "features.relu4", "weight": 1.0}],
    )
    init = cnn(data, STUDENT_WIDTHS, 1)
    students: dict[str, nn.Module] = {}

    def timed(name: str, fn: Any) -> None:
        students[name] = copy.deepcopy(init)
        tick = time.perf_counter()
        fn(students[name])
        seconds[name] = time.perf_counter() - tick

    timed("student_alone", lambda m: dw.train(m, data, train_cfg))
    timed("student_kd", lambda m: distill(m, teacher, data, kd, train=train_cfg))
    timed("student_kd_hints", lambda m: distill(m, teacher, data, hints, train=train_cfg))
    assistant = cnn(data, ASSISTANT_WIDTHS, 2)
    timed("student_ta", lambda m: distill_chain([teacher, assistant, m], data, kd, train=train_cfg))

    models = {"teacher": teacher, **students}
    report = compare(models, data, baseline="teacher", config=MeasureConfig(energy="off", runs=20))
    rows = []
    for row in report.rows:
        metrics = dict(row["metrics"])
        metrics["n_test"] = data.size("test")
        metrics["test_errors"] = round((1 - metrics["accuracy"]) * metrics["n_test"])
        metrics["train_seconds"] = (
            round(seconds[row["variant"]], 1) if row["variant"] in seconds else None
        )
        rows.append(
            {
                "variant": row["variant"],
                "model": "cnn4bn"
                + str(TEACHER_WIDTHS if row["variant"] == "teacher" else STUDENT_WIDTHS),
                "dataset": "mnist",
                "split": "test",
                "metrics": metrics,
            }
        )
    write_results(
        "distill_cnn",
        rows,
        {},
        columns=[
            ("accuracy", "metrics.accuracy"),
            ("test errors", "metrics.test_errors"),
            ("params", "metrics.params"),
            ("FLOPs", "metrics.flops"),
            ("p50 b32 ms", "metrics.latency_ms.b32.p50"),
            ("train s", "metrics.train_seconds"),
        ],
        notes=[
            teacher_note,
            f"students: {args.epochs} epochs on {data.size('train')} training images, AdamW "
            "2e-3 cosine, same initialisation; KD T=4, α=0.9; hints: features.relu4 → "
            "features.relu4 through a learned 1×1 conv; TA: assistant widths "
            f"{ASSISTANT_WIDTHS} distilled first, then the student from it.",
            "Fashion-MNIST-format data is not on this machine; MNIST only.",
        ],
    )


if __name__ == "__main__":
    main()
