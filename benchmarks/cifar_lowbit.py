"""4-bit (and 2-bit, ternary) QAT of the published CIFAR-10 ResNet-20, from the checkpoint.

    python benchmarks/cifar_lowbit.py                         # w4a4, then w2a2 and ternary
    python benchmarks/cifar_lowbit.py --only w4a4 --epochs 2
    python benchmarks/cifar_lowbit.py --device cuda           # the papers' budget
    python benchmarks/cifar_lowbit.py --only w4a4 --epochs 12 --more-epochs 6 --more-lr 0.002
    python benchmarks/cifar_lowbit.py --only w4a4_full ...  # LSQ's weight grid, codes -8..7
    python benchmarks/cifar_lowbit.py --budget full --compile on --only w4a4 --distill \
        --freeze-bn-epoch 0 --more-epochs 30 --more-lr 0.005 --more-teacher resnet56
    python benchmarks/cifar_lowbit.py --budget full --compile on --only w4a4_pact --distill \
        --freeze-bn-epoch 0                                   # PACT's placement, 60 epochs

Target cifar_w4a4_resnet20: test error <= +0.5 pt vs the fp32 checkpoint. Weights and
activations use learned step sizes (LSQ, Esser et al. 2020; PACT, Choi et al. 2018, learns the
activation clip), weights per output channel with batch norm folded in (Jacob et al. 2018),
residual-add outputs quantized; as in PACT and LSQ the first conv and the classifier stay at
higher precision (here float) and the input image is quantized to 8 bits. Each variant's
fine-tuned weights are cached in benchmarks/artifacts/ and its row written as soon as it is done.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from typing import Any

import torch
from _cifar import (
    PUBLISHED_ACC,
    add_device_args,
    published,
    quiet,
    result_name,
    train_config,
    training_budget,
)
from _cifar_lowbit_rows import NAME, measured_row, write_rows
from _common import ARTIFACTS, result_lock
from safetensors.torch import load_file

from dwindle.distillation import DistillConfig, distill
from dwindle.export import load_weights, save
from dwindle.metrics import artifact_bytes, count_params, evaluate_accuracy
from dwindle.quantization import QAT
from dwindle.quantization.qat import FreezeQuantStats, prepare_qat
from dwindle.training import average_snapshots, train

LSQ4: dict[str, Any] = dict(weight_bits=4, act_bits=4, learned_ranges=True, input_bits=8)
VARIANTS: dict[str, dict[str, Any]] = {
    "w4a4": LSQ4,
    "w4a4_full": {**LSQ4, "weight_range": "full"},  # LSQ's weight grid, codes -8..7
    "w4a4_pact": {**LSQ4, "add_bits": 8},  # PACT's placement: branches enter adds at 8 bits
    "w2a2": dict(weight_bits=2, act_bits=2, learned_ranges=True, input_bits=8),
    # TTQ's setting: ternary weights, full-precision activations
    "ternary": dict(weight_bits=2, weight_method="ternary", act_bits=None),
}
EXCLUDE = ("conv1", "linear")
# Bump when dwindle's QAT graph changes, so cached QAT weights of another graph are not reused
# (2: the classifier's input is quantized at input_bits, not act_bits; 3: add+ReLU quantized
# once, after the ReLU).
QAT_REV = 3


def variant_config(
    variant: str,
    epochs: int,
    lr: float,
    device: str,
    freeze_bn: int | None = None,
    compile_mode: str = "auto",
) -> QAT:
    tcfg = train_config(epochs, lr, device, compile_mode)
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}; choose {', '.join(VARIANTS)}")
    kw = VARIANTS[variant]
    return QAT(**kw, exclude=EXCLUDE, train=tcfg, convert=True, freeze_bn_epoch=freeze_bn)


def config_key(cfg: QAT) -> str:
    """``cfg`` as cached runs' keys hash it: ``weight_range`` and ``add_bits`` joined QAT after
    the first caches were written, so each is left out while it has its default (their keys
    stay valid); the training config counts as :func:`quiet` (printing changes no weights)."""
    cfg = cfg.model_copy(update={"train": quiet(cfg.train)})
    late = {"weight_range"} if cfg.weight_range == "narrow" else set()
    late |= {"add_bits"} if cfg.add_bits is None else set()
    return cfg.model_dump_json(exclude=late or None)


def _fine_tune(
    prepared: torch.nn.Module, teacher: torch.nn.Module, data: Any, cfg: QAT, path: Any, args: Any
) -> None:
    """QAT-train ``prepared`` with ``cfg`` (by KD from ``teacher`` with --distill); cache it."""
    start = time.perf_counter()
    callbacks = [FreezeQuantStats(cfg)]
    if args.distill:  # LSQ §3.6: a full-precision model teaches, T = 1, equal weights
        kd = DistillConfig(temperature=1.0, alpha=0.5, cache_mb=0)
        distill(prepared, teacher.eval(), data, kd, train=cfg.train, callbacks=callbacks)
    else:
        train(prepared, data, cfg.train, callbacks=callbacks)
    prepared.to("cpu")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    save(prepared, path)
    print(f"   QAT in {time.perf_counter() - start:.0f} s -> {path.name}", flush=True)


def _teacher_name(name: str) -> str:
    return "the fp32 model" if name == "resnet20" else f"the published fp32 {name}"


def run_variant(variant: str, base: torch.nn.Module, data: Any, args: Any) -> list[dict[str, Any]]:
    cfg = variant_config(
        variant, args.epochs, args.lr, args.device, args.freeze_bn_epoch, args.compile
    )
    kd = "kd" if args.distill else ""
    key = hashlib.sha256(
        f"{config_key(cfg)}{args.train_limit}{args.smoke}{QAT_REV}{kd}".encode()
    ).hexdigest()[:8]
    prepared = prepare_qat(base, cfg)
    # the first QAT run, then further cosine cycles from the previous one's weights (warm
    # restarts); each is cached under a key chained from the one before
    cycles = [cfg] + [
        variant_config(variant, e, lr, args.device, args.freeze_bn_epoch, args.compile)
        for e, lr in zip(args.more_epochs, args.more_lr, strict=True)
    ]
    teachers = [args.teacher] * len(cycles)
    if args.more_teacher:
        teachers[1:] = args.more_teacher
    paths = []
    for i, cycle in enumerate(cycles):
        # a teacher other than the model itself joins the key (the existing keys stay valid)
        other = teachers[i] if args.distill and teachers[i] != "resnet20" else ""
        if i:
            key = hashlib.sha256(f"{key}{config_key(cycle)}{other}".encode()).hexdigest()[:8]
        elif other:
            key = hashlib.sha256(f"{key}{other}".encode()).hexdigest()[:8]
        path = ARTIFACTS / f"cifar_lowbit_{variant}_{key}.safetensors"
        paths.append(path)
        if path.exists():
            if i == 0:  # materialise lazily initialised ranges, then load
                prepared(data.example_input(2))
            load_weights(prepared, path)
            print(f"   {variant}: QAT weights (cycle {i + 1}) reused from {path.name}", flush=True)
        else:
            teacher = base if teachers[i] == "resnet20" else published(teachers[i])
            _fine_tune(prepared, teacher, data, cycle, path, args)
    n = "all" if args.train_limit is None else args.train_limit
    finetune = (
        f"{args.epochs} epoch(s) on {n} training images, SGD lr {args.lr} cosine"
        + (f" (KD from {_teacher_name(teachers[0])})" if args.distill else "")
        + "".join(
            f", then {e} more at lr {lr} cosine (warm restart"
            + (f", KD from {_teacher_name(t)})" if args.distill else ")")
            for e, lr, t in zip(args.more_epochs, args.more_lr, teachers[1:], strict=True)
        )
        + (", KD at T=1, α=0.5" if args.distill else "")
        + (
            f", BN statistics frozen after epoch {args.freeze_bn_epoch}"
            if args.freeze_bn_epoch is not None
            else ""
        )
    )
    rows = [measured_row(prepared, base, cfg, data, args, variant, finetune, variant)]
    if not args.average_cycles:
        return rows
    # SWA: the mean of the last cycles' end-of-cycle weights, a row beside the last cycle's
    states = [load_file(str(p)) for p in paths[-args.average_cycles :]]
    prepared.load_state_dict(average_snapshots(states))
    finetune += (
        f"; weights: the mean of the last {args.average_cycles} cycles' final weights "
        "(SWA, Izmailov et al. 2018)"
    )
    swa = f"{variant}_swa{args.average_cycles}"
    return [*rows, measured_row(prepared, base, cfg, data, args, variant, finetune, swa)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=["w4a4", "w2a2", "ternary"], choices=VARIANTS)
    parser.add_argument("--epochs", type=int, help="QAT epochs (cpu 2, cuda 60)")
    parser.add_argument("--train-limit", type=int, help="training subset (cpu 20000, cuda all)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument(
        "--freeze-bn-epoch",
        type=int,
        help="from this epoch on BN uses its running statistics (0: from the start)",
    )
    parser.add_argument(
        "--distill",
        action="store_true",
        help="fine-tune with the fp32 checkpoint as teacher (LSQ's KD setting: T=1, α=0.5)",
    )
    parser.add_argument(
        "--teacher",
        default="resnet20",
        choices=sorted(PUBLISHED_ACC),
        help="--distill's teacher: the model itself (LSQ) or a larger published ResNet "
        "(Mishra & Marr 2018, Apprentice: a deeper full-precision teacher)",
    )
    parser.add_argument(
        "--more-teacher",
        nargs="*",
        default=[],
        choices=sorted(PUBLISHED_ACC),
        help="--distill's teacher of each --more-epochs cycle (default: --teacher)",
    )
    parser.add_argument(
        "--more-epochs",
        type=int,
        nargs="*",
        default=[],
        help="continue the (cached) QAT run with further cosine cycles of these many epochs",
    )
    parser.add_argument(
        "--more-lr", type=float, nargs="*", default=[], help="peak lr of each --more-epochs cycle"
    )
    parser.add_argument(
        "--average-cycles",
        type=int,
        default=0,
        help="also evaluate the mean of the last K cycles' final weights (stochastic weight "
        "averaging over the warm restarts), as the row <variant>_swaK",
    )
    parser.add_argument("--agreement", type=int, default=500, help="test images, packed check")
    add_device_args(parser)
    args = parser.parse_args()
    if len(args.more_lr) != len(args.more_epochs):
        parser.error("give one --more-lr per --more-epochs cycle")
    if args.more_teacher and len(args.more_teacher) != len(args.more_epochs):
        parser.error("give one --more-teacher per --more-epochs cycle")
    if not 0 <= args.average_cycles <= 1 + len(args.more_epochs):
        parser.error(f"--average-cycles must be 0..{1 + len(args.more_epochs)} (the cycles run)")
    data = training_budget(args, cpu_epochs=2, gpu_epochs=60)
    base = published("resnet20")
    base_metrics = evaluate_accuracy(base, data, batch_size=500)
    # the val split comes out of CIFAR-10's training images, which the checkpoint was trained on
    base_val = evaluate_accuracy(base, data, split="val", batch_size=500)["accuracy"]
    base_bytes, fmt = artifact_bytes(base)
    base_metrics.update(
        bytes=base_bytes,
        artifact=fmt,
        params=count_params(base),
        scheme="fp32",
        published_accuracy=PUBLISHED_ACC["resnet20"],
        ran_on=args.device,
    )
    rows = [
        {
            "variant": "resnet20_fp32",
            "model": "resnet20",
            "dataset": "cifar10",
            "split": "test",
            "metrics": base_metrics,
        }
    ]
    mine: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for variant in args.only:
        print(f"== {variant}", flush=True)
        for row in run_variant(variant, base, data, args):
            m = row["metrics"]
            m["accuracy_change_pt"] = round(100 * (m["accuracy"] - base_metrics["accuracy"]), 2)
            m["compression_rate"] = round(base_bytes / m["bytes"], 2)
            mine[row["variant"]] = row
            print(
                f"   {row['variant']}: acc {m['accuracy']:.4f} "
                f"({m['accuracy_change_pt']:+.2f} pt) bytes {m['bytes']}",
                flush=True,
            )
        # rows of other variants as the file holds them now (another run may have written it)
        with result_lock(result_name(NAME, args)):
            write_rows(rows, mine, data, args, base_val, start)


if __name__ == "__main__":
    main()
