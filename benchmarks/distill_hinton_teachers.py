"""The Hinton 2×1200 teacher candidates trained so far, side by side: validation and test errors.

    python benchmarks/distill_hinton_teachers.py

distill_hinton.py's teacher is the candidate with the fewest *validation* errors (5 000 images
held out of MNIST's training set); this table shows every candidate saved in
benchmarks/artifacts/ (``hinton_teacher*.safetensors`` with the ``.json`` history written beside
it) with both counts, so the choice can be checked. Writes
benchmarks/results/distill_hinton_teachers.{json,md}; no target reads it.
"""

from __future__ import annotations

from typing import Any

import torch
from _common import ARTIFACTS, write_results
from distill_hinton import TEACHER_FILE, errors, teacher_history, teacher_model

import dwindle as dw
from dwindle.export import load_weights


def main() -> None:
    torch.set_num_threads(1)
    data = dw.data.load("mnist")
    rows: list[dict[str, Any]] = []
    for path in sorted(ARTIFACTS.glob("hinton_teacher*.safetensors")):
        history = teacher_history(path)
        if not history:
            continue  # no record of how it was trained: not a candidate
        teacher = teacher_model()
        load_weights(teacher, path)
        teacher.eval()
        rows.append(
            {
                "variant": path.stem,
                "model": "mlp 2x1200",
                "dataset": "mnist",
                "split": "val+test",
                "metrics": {
                    "val_errors": errors(teacher, data, "val"),
                    "test_errors": errors(teacher, data, "test"),
                    "trained": "; then ".join(history),
                    "in_use": path.name == TEACHER_FILE.name,
                },
                "paper": {"test_errors": 67, "source": "Hinton et al. 2015, §3"},
            }
        )
        print(rows[-1]["variant"], rows[-1]["metrics"], flush=True)
    if not rows:
        raise SystemExit(f"no teacher with a training history in {ARTIFACTS}")
    picked = min(rows, key=lambda r: r["metrics"]["val_errors"])["variant"]
    write_results(
        "distill_hinton_teachers",
        rows,
        {},
        columns=[
            ("val errors (of 5 000)", "metrics.val_errors"),
            ("test errors (of 10 000)", "metrics.test_errors"),
            ("paper test errors", "paper.test_errors"),
            ("trained", "metrics.trained"),
            ("distill_hinton.py's teacher", "metrics.in_use"),
        ],
        notes=[
            "every candidate: 2×1200 ReLU MLP, ±2 px jittered inputs, SGD momentum 0.9, cosine "
            "schedule, trained on the 55 000-image training split (5 000 held out for validation).",
            f"fewest validation errors: {picked}.",
        ],
    )


if __name__ == "__main__":
    main()
