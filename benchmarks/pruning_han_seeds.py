"""How much of LeNet-300-100's Han pruning gap is seed noise: baseline and pruned, per seed.

    python benchmarks/pruning_han_seeds.py [--seeds 0 1 2 3 4]

pruning_han.py compares one baseline with one pruned model, so a gap of a tenth of a point
(ten test images) could be the training seed's doing. Here every seed trains its own baseline
(baselines.py's LeNet-300 config; seed 0 reuses benchmarks/artifacts/lenet300.safetensors
when it is there, as pruning_han.py does) and prunes it with pruning_han.py's LeNet-300 job
(its validation-picked split, rounds and schedule) under the same seed. Same data split for
every seed. Writes benchmarks/results/pruning_han_seeds.{json,md} (another schedule: a suffix
naming it); no target reads it. Each seed's row is cached in benchmarks/artifacts, so seeds can
run in separate processes (``--seeds 0 1 2 --no-table`` and ``--seeds 3 4 --no-table``) before
one run of all of them collects the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
from typing import Any

import pruning_han as han
import torch
from _common import ARTIFACTS, write_results
from pruning_han import JOBS, Job, baseline_model, error_pct, han_prune, train_baseline

from dwindle import data as dwdata
from dwindle.export import load_weights, save
from dwindle.export.atomic import atomic_write_bytes
from dwindle.metrics import count_nonzeros, count_params
from dwindle.models import create


def seed_baseline(job: Job, data: Any, seed: int) -> tuple[torch.nn.Module, str]:
    """Seed 0: pruning_han.py's baseline; others: trained once, then cached in artifacts.
    A seed-0 baseline trained here is cached where pruning_han.py (and baselines.py) keep it."""
    if seed == 0:
        model, how = baseline_model(job, data, 0)
        path = ARTIFACTS / f"{job.model}.safetensors"
        if not path.exists():
            save(model, path)
        return model, how
    path = ARTIFACTS / f"{job.model}_seed{seed}.safetensors"
    if path.exists():
        model = create(job.model, num_classes=data.num_classes)
        load_weights(model, path)
        return model, f"loaded {path.name}"
    model, how = train_baseline(job, data, seed)
    save(model, path)
    return model, how


def cached_seed_row(job: Job, seed: int, data: Any, kd: bool = False) -> dict[str, Any]:
    """:func:`seed_row`, or the row an earlier run of the same job and seed cached in
    artifacts (so seeds can run in several processes, and an interrupted run resumes)."""
    # unset fields stay out, so keys written before they existed stay valid
    spec = {k: v for k, v in dataclasses.asdict(job).items() if v is not None}
    spec |= {"distill": han.KD} if kd else {}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    path = ARTIFACTS / f"pruning_han_seeds_{key.hexdigest()[:8]}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    row = seed_row(job, seed, data, kd)
    atomic_write_bytes(path, json.dumps(row).encode())
    return row


def seed_row(job: Job, seed: int, data: Any, kd: bool = False) -> dict[str, Any]:
    base, how = seed_baseline(job, data, seed)
    pruned = han_prune(job, base, data, seed, 1.0, kd).model
    m: dict[str, Any] = {
        "baseline_val_error_pct": error_pct(base, data, "val"),
        "baseline_test_error_pct": error_pct(base, data, "test"),
        "pruned_val_error_pct": error_pct(pruned, data, "val"),
        "pruned_test_error_pct": error_pct(pruned, data, "test"),
        "nonzeros_ratio": round(count_params(base) / count_nonzeros(pruned), 2),
        "baseline_source": how,
    }
    m["test_gap_pt"] = round(m["pruned_test_error_pct"] - m["baseline_test_error_pct"], 2)
    m["val_gap_pt"] = round(m["pruned_val_error_pct"] - m["baseline_val_error_pct"], 2)
    return {
        "variant": f"lenet300_seed{seed}",
        "model": "lenet300",
        "dataset": "mnist",
        "split": "val+test",
        "metrics": m,
    }


def spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation of every numeric column over the seeds."""
    keys = [k for k, v in rows[0]["metrics"].items() if isinstance(v, float)]
    out: dict[str, Any] = {}
    for k in keys:
        vals = [r["metrics"][k] for r in rows]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out[k] = f"{statistics.fmean(vals):.2f} ± {sd:.2f}"
    return {
        "variant": f"lenet300_mean_sd_{len(rows)}_seeds",
        "model": "lenet300",
        "dataset": "mnist",
        "split": "val+test",
        "metrics": out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rounds", type=int, help="Han rounds (default: pruning_han.py's)")
    parser.add_argument("--epochs", type=int, help="retraining epochs per round")
    parser.add_argument("--final-epochs", type=int, help="retraining epochs after the last round")
    parser.add_argument(
        "--keep-scale",
        type=float,
        default=1.0,
        help="multiply the job's per-layer calibration fractions (with --distill: its KD "
        "calibration; lower: sparser)",
    )
    parser.add_argument(
        "--distill",
        action="store_true",
        help="retrain with KD from each seed's baseline, as pruning_han.py --distill",
    )
    parser.add_argument(
        "--no-table",
        action="store_true",
        help="only compute (and cache) the seeds' rows; a later run of all seeds writes the table",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = dwdata.load("mnist", seed=0)
    job = JOBS["lenet300"]
    changed = {
        k: v
        for k, v in {
            "rounds": args.rounds,
            "epochs": args.epochs,
            "final_epochs": args.final_epochs,
        }.items()
        if v is not None and v != getattr(job, k)
    }
    if job.calibration(args.distill) != job.keep:  # the KD variant's own calibration
        changed["keep"] = job.calibration(args.distill)
    job = dataclasses.replace(job, kd_keep=None)
    if args.keep_scale != 1.0:
        scaled = changed.get("keep", job.keep)
        changed["keep"] = {k: round(v * args.keep_scale, 4) for k, v in scaled.items()}
    job = dataclasses.replace(job, **changed)
    rows = []
    for seed in args.seeds:
        rows.append(cached_seed_row(job, seed, data, args.distill))
        print(rows[-1]["metrics"], flush=True)
    if args.no_table:
        return
    # another schedule than pruning_han.py's writes its own table
    short = {"rounds": "r", "epochs": "e", "final_epochs": "f"}
    suffix = "".join(f"_{short[k]}{v}" for k, v in changed.items() if k in short)
    suffix += f"_k{args.keep_scale:g}" if args.keep_scale != 1.0 else ""
    suffix += "_kd" if args.distill else ""
    write_results(
        f"pruning_han_seeds{suffix}",
        [*rows, spread(rows)],
        {},
        columns=[
            ("baseline test %", "metrics.baseline_test_error_pct"),
            ("pruned test %", "metrics.pruned_test_error_pct"),
            ("test gap pt", "metrics.test_gap_pt"),
            ("baseline val %", "metrics.baseline_val_error_pct"),
            ("pruned val %", "metrics.pruned_val_error_pct"),
            ("val gap pt", "metrics.val_gap_pt"),
            ("non-zeros ×", "metrics.nonzeros_ratio"),
        ],
        notes=[
            f"each seed trains its baseline (baselines.py's config) and Han-prunes it with "
            f"pruning_han.py's lenet300 job{' changed to ' + str(changed) if changed else ''} "
            f"(calibration {job.keep}, {job.rounds} rounds × "
            f"{job.epochs} epochs, {job.final_epochs} final epochs"
            f"{', KD from the baseline ' + str(han.KD) if args.distill else ''}); "
            "data split fixed (seed 0: 5 000 validation images held out of the training set, "
            "10 000 test images).",
            "the last row is the mean ± sample standard deviation over the seeds; one test image "
            "is 0.01 pt.",
        ],
    )


if __name__ == "__main__":
    main()
