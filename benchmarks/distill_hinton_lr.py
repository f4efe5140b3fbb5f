"""The learning-rate sweep behind distill_hinton.py's students: validation and test errors.

    python benchmarks/distill_hinton_lr.py [--kd-lrs 0.005 0.01 0.02 0.05]
        [--alone-lrs 0.02 0.05] [--epochs 30] [--threads 1] [--alpha 0.9] [--tag _low]

Hinton et al. 2015 §3's 2×800 student, trained alone on labels and distilled at T = 20,
α = 0.9 from the saved 2×1200 teacher (run distill_hinton.py first), on the plain training
split, for each peak lr (SGD momentum 0.9, cosine, same initial weights). distill_hinton.py's
schedules are those with the fewest *validation* errors in these tables, a tie keeping the one
already in use; test errors are shown beside them but were not used to choose.
Writes benchmarks/results/distill_hinton_lr.{json,md}
(``_e{epochs}`` added to the name for --epochs other than 30, ``_a{alpha}`` for an --alpha
(the soft-target weight) other than Hinton's 0.9, then --tag, so a further sweep gets a table of
its own).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from _common import write_results
from distill_hinton import KD, TEACHER_FILE, errors, student_config, student_model, teacher_model

import dwindle as dw
from dwindle.distillation import distill
from dwindle.errors import TrainingDivergedError
from dwindle.export import load_weights


def fewest(vals: dict[str, dict[float, int]]) -> str:
    """Each kind's lrs with the fewest validation errors, all of them when several tie."""
    parts = []
    for kind, by_lr in vals.items():
        low = min(by_lr.values())
        lrs = " and ".join(f"{lr:g}" for lr, v in by_lr.items() if v == low)
        parts.append(f"{kind} at lr {lrs} ({low})")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kd-lrs", type=float, nargs="*", default=[0.005, 0.01, 0.02, 0.05])
    parser.add_argument("--alone-lrs", type=float, nargs="*", default=[0.02, 0.05])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--alpha", type=float, default=KD.alpha, help="soft-target weight")
    parser.add_argument("--tag", default="", help="appended to the result file's name")
    parser.add_argument(
        "--threads", type=int, default=1, help="1 reproduces distill_hinton.py exactly"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kd = type(KD)(**{**KD.model_dump(), "alpha": args.alpha})  # validated: 0 <= alpha <= 1
    if not TEACHER_FILE.exists():
        raise SystemExit(f"{TEACHER_FILE} is missing: run benchmarks/distill_hinton.py first")
    data = dw.data.load("mnist")
    teacher = teacher_model()
    load_weights(teacher, TEACHER_FILE)
    teacher.eval()
    rows: list[dict[str, Any]] = []
    vals: dict[str, dict[float, int]] = {}  # kind -> lr -> validation errors
    runs = [("alone", lr) for lr in args.alone_lrs] + [("kd_t20", lr) for lr in args.kd_lrs]
    for kind, lr in runs:
        cfg = student_config(args.epochs, lr)
        student = student_model()
        tick = time.perf_counter()
        try:
            if kind == "alone":
                dw.train(student, data, cfg)
            else:
                distill(student, teacher, data, kd, train=cfg)
        except TrainingDivergedError as exc:  # a row saying so, and the sweep goes on
            metrics = {"peak_lr": lr, "diverged": str(exc).split(";")[0]}
        else:
            metrics = {
                "peak_lr": lr,
                "val_errors": errors(student, data, "val"),
                "test_errors": errors(student, data, "test"),
                "train_seconds": round(time.perf_counter() - tick, 1),
            }
            vals.setdefault(kind, {})[lr] = metrics["val_errors"]
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
    write_results(
        "distill_hinton_lr"
        + (f"_e{args.epochs}" if args.epochs != 30 else "")
        + (f"_a{args.alpha:g}" if args.alpha != KD.alpha else "")
        + args.tag,
        rows,
        {},
        columns=[
            ("peak lr", "metrics.peak_lr"),
            ("val errors (of 5 000)", "metrics.val_errors"),
            ("test errors (of 10 000)", "metrics.test_errors"),
            ("train s", "metrics.train_seconds"),
            ("diverged", "metrics.diverged"),
        ],
        notes=[
            f"{args.epochs} epochs, SGD momentum 0.9, cosine, same initial weights, plain "
            f"55 000-image training split; KD at T=20, α={args.alpha:g} (soft-target weight) "
            "from the 2×1200 teacher.",
            "fewest validation errors: " + fewest(vals) + " (a tie lists every lr in it).",
        ],
    )


if __name__ == "__main__":
    main()
