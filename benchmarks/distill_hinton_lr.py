"""The learning-rate sweep behind distill_hinton.py's students: validation and test errors.

    python benchmarks/distill_hinton_lr.py [--kd-lrs 0.005 0.01 0.02 0.05]
        [--alone-lrs 0.02 0.05] [--epochs 30] [--threads 2]

Hinton et al. 2015 §3's 2×800 student, trained alone on labels and distilled at T = 20,
α = 0.9 from the saved 2×1200 teacher (run distill_hinton.py first), on the plain training
split, for each peak lr (SGD momentum 0.9, cosine, same initial weights). distill_hinton.py's
ALONE_LR / KD_LR are the lrs with the fewest *validation* errors here; test errors are shown
beside them but were not used to choose. Writes benchmarks/results/distill_hinton_lr.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from _common import write_results
from distill_hinton import TEACHER_FILE, jitter, student_model, teacher_model

import dwindle as dw
from dwindle.distillation import DistillConfig, distill
from dwindle.export import load_weights


def errors(model: torch.nn.Module, data: Any, split: str) -> int:
    acc = dw.evaluate(model.eval(), data, split)["accuracy"]
    return round((1 - acc) * data.size(split))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kd-lrs", type=float, nargs="*", default=[0.005, 0.01, 0.02, 0.05])
    parser.add_argument("--alone-lrs", type=float, nargs="*", default=[0.02, 0.05])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not TEACHER_FILE.exists():
        raise SystemExit(f"{TEACHER_FILE} is missing: run benchmarks/distill_hinton.py first")
    data = dw.data.load("mnist")
    data.augment = jitter  # unused: the students train with augment=False
    teacher = teacher_model()
    load_weights(teacher, TEACHER_FILE)
    teacher.eval()
    rows: list[dict[str, Any]] = []
    runs = [("alone", lr) for lr in args.alone_lrs] + [("kd_t20", lr) for lr in args.kd_lrs]
    for kind, lr in runs:
        cfg = dw.TrainConfig(
            epochs=args.epochs, lr=lr, momentum=0.9, schedule="cosine", progress=False
        )
        student = student_model()
        tick = time.perf_counter()
        if kind == "alone":
            dw.train(student, data, cfg)
        else:
            distill(student, teacher, data, DistillConfig(temperature=20.0, alpha=0.9), train=cfg)
        metrics = {
            "peak_lr": lr,
            "val_errors": errors(student, data, "val"),
            "test_errors": errors(student, data, "test"),
            "train_seconds": round(time.perf_counter() - tick, 1),
        }
        print(f"   {kind} lr {lr}: {metrics}", flush=True)
        rows.append(
            {
                "variant": f"student_{kind}_lr{lr:g}",
                "model": "mlp 2x800",
                "dataset": "mnist",
                "split": "val+test",
                "metrics": metrics,
            }
        )
    best = {
        kind: min(
            (r for r in rows if r["variant"].startswith(f"student_{kind}_")),
            key=lambda r: r["metrics"]["val_errors"],
        )["metrics"]["peak_lr"]
        for kind in ("alone", "kd_t20")
        if any(r["variant"].startswith(f"student_{kind}_") for r in rows)
    }
    write_results(
        "distill_hinton_lr",
        rows,
        {},
        columns=[
            ("peak lr", "metrics.peak_lr"),
            ("val errors (of 5 000)", "metrics.val_errors"),
            ("test errors (of 10 000)", "metrics.test_errors"),
            ("train s", "metrics.train_seconds"),
        ],
        notes=[
            f"{args.epochs} epochs, SGD momentum 0.9, cosine, same initial weights, plain "
            "55 000-image training split; KD at T=20, α=0.9 from the 2×1200 teacher.",
            "fewest validation errors: "
            + ", ".join(f"{k} at lr {v:g}" for k, v in best.items())
            + " (the lrs distill_hinton.py uses).",
        ],
    )


if __name__ == "__main__":
    main()
