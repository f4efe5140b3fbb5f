"""Filter pruning of the published CIFAR-10 ResNet-56: Li et al. 2017 pruned-B, and dwindle vs
Torch-Pruning at >= 2x fewer MACs, each measured in one run beside its baseline.

    python benchmarks/cifar_prune.py --only li2017           # target cifar_li2017_resnet56
    python benchmarks/cifar_prune.py --only vs_tp            # cifar_vs_torch_pruning_resnet56
    python benchmarks/cifar_prune.py --only distill chain    # KD vs labels; prune->int8->ONNX
    python benchmarks/cifar_prune.py --only stage            # stage widths (option-A streams)
    python benchmarks/cifar_prune.py --device cuda           # the papers' fine-tuning budget

Each part writes its own result file (benchmarks/results/cifar_li2017.json,
cifar_vs_torch_pruning.json, cifar_distill.json, cifar_chain.json, cifar_stage_width.json).
Fine-tuned weights are cached in benchmarks/artifacts/ so an interrupted run resumes. CPU
budget: a seeded training subset and one epoch (flags below); ``--device cuda`` defaults to the
papers' budgets (Li et al. 2017: 40 retraining epochs; Torch-Pruning's benchmark: 100 epochs) on
the whole training split.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

from _cifar import add_device_args, published, result_name, training_budget
from _cifar_prune import (
    EXAMPLE,
    budget,
    finetune,
    li2017_pruned_b,
    measure,
    result_rows,
    torch_pruning_peer,
)
from _common import ARTIFACTS, write_results

from dwindle.metrics import count_flops
from dwindle.pruning import FilterPruning, prune_filters_

LI2017_PAPER = {
    "flops_reduction_pct": 27.6,
    "error_pct": 6.94,
    "baseline_error_pct": 6.96,
    "retrain_epochs": 40,
    "source": "Li et al. 2017, Table 1: ResNet-56-pruned-B on CIFAR-10 (FLOPs 9.09e7, -27.6 %)",
}
TP_PAPER = {
    "macs_ratio": 2.12,
    "accuracy_change_pt": -0.60,
    "group_accuracy_change_pt": 0.38,
    "finetune_epochs": 100,
    "source": "Torch-Pruning benchmarks/readme.md, ResNet-56/CIFAR-10/2.00x: Ours-L1 "
    "93.53 -> 92.93 % (2.12x); Ours-Group +0.38 pt (2.13x) (Fang et al. 2023, DepGraph)",
}
COLUMNS = [
    ("accuracy", "metrics.accuracy"),
    ("acc change pt", "metrics.accuracy_change_pt"),
    ("params", "metrics.params"),
    ("FLOPs", "metrics.flops"),
    ("FLOPs ratio", "metrics.flops_ratio"),
    ("p50 b1 ms", "metrics.latency_ms.b1.p50"),
    ("p50 b32 ms", "metrics.latency_ms.b32.p50"),
    ("speed-up b1", "metrics.speedup_b1"),
    ("speed-up b32", "metrics.speedup_b32"),
    ("fine-tune", "metrics.finetune"),
    ("ran on", "metrics.ran_on"),
]


def run_li2017(args: Any, data: Any) -> None:
    base = published("resnet56")
    notes: list[str] = []
    pruned = li2017_pruned_b(base, notes)
    oneshot = copy.deepcopy(pruned)
    log: list[str] = []
    how = "KD from the unpruned checkpoint (T 4, alpha 0.9)" if args.kd else "labels"
    tuned = finetune("li2017_b", pruned, base if args.kd else None, data, args, log)
    models = {
        "resnet56_baseline": base,
        "resnet56_li2017_b_oneshot": oneshot,
        "resnet56_li2017_b": tuned,
    }
    report = measure(models, data, args)
    rows = result_rows(report, {"resnet56_li2017_b": f"{budget(args)}; {how}"}, args.device)
    for r in rows:
        if "li2017" in r["variant"]:
            r["paper"] = LI2017_PAPER
    widths = [
        tuned.get_submodule(f"layer{s}.{b}.conv1").out_channels for s in (1, 2, 3) for b in range(9)
    ]
    out = write_results(
        result_name("cifar_li2017", args),
        rows,
        {
            "cifar_li2017_resnet56": {
                "baseline": "resnet56_baseline",
                "candidate": "resnet56_li2017_b",
            }
        },
        columns=COLUMNS,
        notes=[
            "Published ResNet-56 (Idelbayev), accuracy on the 10,000 CIFAR-10 test images.",
            "ResNet-56-pruned-B (Li et al. 2017, §4.2): first conv of each block pruned by L1 "
            "filter norm, 60/30/10 % per stage keeping int((1-p)n) filters, layers 16, 18, 20, "
            f"34, 38, 54 skipped; resulting block widths: {widths}.",
            f"Fine-tuning ({args.device}): {budget(args)}; {how}. Paper: 40 epochs.",
            *log,
            *sorted(set(notes)),
            *report.notes,
        ],
        extra_packages=("torch-pruning",),
    )
    print(f"wrote {out}")


def run_vs_tp(args: Any, data: Any) -> None:
    base = published("resnet56")
    notes: list[str] = []
    # Torch-Pruning unrestricted: step() returns, the forward then fails (option-A pad).
    broken = torch_pruning_peer(base, 0.5, restricted=False)
    try:
        broken(EXAMPLE)
        notes.append("Torch-Pruning MagnitudePruner unrestricted at 0.5: forward ran")
    except RuntimeError as exc:
        notes.append(
            "Torch-Pruning MagnitudePruner at ratio 0.5 on every conv: step() returns, then the "
            f"forward fails ({exc}); the peer below is restricted to each block's first conv."
        )
    arms = {}
    for scope in ("filter", "group"):
        cfg = FilterPruning(
            ratio=args.ratio, kept="down", criterion="l1", scope=scope, targets=("layer*.*.conv1",)
        )
        arms[scope] = prune_filters_(
            copy.deepcopy(base), cfg, example_input=EXAMPLE, notes=notes
        ).eval()
    peer = torch_pruning_peer(base, args.ratio, restricted=True)
    ours_sd, peer_sd = arms["group"].state_dict(), peer.state_dict()
    same = ours_sd.keys() == peer_sd.keys() and all(
        ours_sd[k].shape == peer_sd[k].shape and bool((ours_sd[k] == peer_sd[k]).all())
        for k in ours_sd
    )
    notes.append(
        "Before fine-tuning, dwindle_group_l1 and Torch-Pruning's pruned models are "
        + (
            "identical (same channels removed), so they only differ by fine-tuning nondeterminism."
            if same
            else "different (they removed different channels)."
        )
    )
    f0 = count_flops(base, EXAMPLE)
    print(
        f"   FLOPs ratio ours {f0 / count_flops(arms['group'], EXAMPLE):.3f} "
        f"peer {f0 / count_flops(peer, EXAMPLE):.3f}",
        flush=True,
    )
    log: list[str] = []
    ours = finetune(f"vs_tp_ours_r{args.ratio}", arms["filter"], None, data, args, log)
    group = finetune(f"vs_tp_group_r{args.ratio}", arms["group"], None, data, args, log)
    peer = finetune(f"vs_tp_peer_r{args.ratio}", peer, None, data, args, log)
    models = {
        "resnet56_baseline": base,
        "resnet56_dwindle_l1": ours,
        "resnet56_dwindle_group_l1": group,
        "resnet56_torch_pruning_l1": peer,
    }
    report = measure(models, data, args)
    tuned = f"{budget(args)}; labels"
    rows = result_rows(report, {v: tuned for v in models if v != "resnet56_baseline"}, args.device)
    for r in rows:
        if r["variant"] != "resnet56_baseline":
            r["paper"] = TP_PAPER
    out = write_results(
        result_name("cifar_vs_torch_pruning", args),
        rows,
        {
            "cifar_vs_torch_pruning_resnet56": {
                "baseline": "resnet56_baseline",
                "candidate": "resnet56_dwindle_group_l1",
                "peer": "resnet56_torch_pruning_l1",
            }
        },
        columns=COLUMNS,
        notes=[
            "Published ResNet-56 (Idelbayev), accuracy on the 10,000 CIFAR-10 test images.",
            f"All prune {args.ratio:.0%} of the output channels of every residual block's first "
            "conv by L1 magnitude, one shot, then the same fine-tuning "
            f"({args.device}): {tuned}. dwindle_l1: FilterPruning(criterion='l1') ranks a "
            "channel by its conv filter (Li et al. 2017); dwindle_group_l1: scope='group' ranks "
            "it by every weight removed with it (filter, batch-norm scale, next conv's input "
            "slice: the target's candidate); Torch-Pruning 1.6.1: MagnitudePruner with "
            "MagnitudeImportance(p=1) (group mean), every other layer ignored.",
            *log,
            *sorted(set(notes)),
            *report.notes,
        ],
        extra_packages=("torch-pruning",),
    )
    print(f"wrote {out}")


def run_distill(args: Any, data: Any) -> None:
    """ResNet-56 teacher -> its pruned copy: KD vs labels, same student, same budget."""
    base = published("resnet56")
    cfg = FilterPruning(ratio=args.ratio, kept="down", criterion="l1", targets=("layer*.*.conv1",))
    student = prune_filters_(copy.deepcopy(base), cfg, example_input=EXAMPLE).eval()
    log: list[str] = []
    labels = finetune(f"vs_tp_ours_r{args.ratio}", copy.deepcopy(student), None, data, args, log)
    kd = finetune(f"distill_r{args.ratio}", copy.deepcopy(student), base, data, args, log)
    models = {
        "resnet56_baseline": base,
        "resnet56_pruned_labels": labels,
        "resnet56_pruned_kd": kd,
    }
    report = measure(models, data, args)
    how = {
        "resnet56_pruned_labels": f"{budget(args)}; labels",
        "resnet56_pruned_kd": f"{budget(args)}; KD from the unpruned ResNet-56 (T 4, alpha 0.9)",
    }
    out = write_results(
        result_name("cifar_distill", args),
        result_rows(report, how, args.device),
        {},
        columns=COLUMNS,
        notes=[
            "Teacher: the published ResNet-56 (Idelbayev). Student: the same network with "
            f"{args.ratio:.0%} of every residual block's first-conv channels removed (L1), as "
            "in cifar_vs_torch_pruning; fine-tuned with labels only or with distillation "
            "(Hinton et al. 2015) for the same epochs on the same images.",
            *log,
            *report.notes,
        ],
    )
    print(f"wrote {out}")


def run_chain(args: Any, data: Any) -> None:
    """The whole chain on ResNet-56: Li 2017 pruned-B -> static int8 -> ONNX, one table."""
    from dwindle.export import check_onnx, export_onnx
    from dwindle.quantization import Int8Static, quantize_int8

    base = published("resnet56")
    log: list[str] = []
    tuned = finetune(
        "li2017_b", li2017_pruned_b(base, []), base if args.kd else None, data, args, log
    )
    int8 = quantize_int8(
        tuned,
        Int8Static(per_channel=True, calibration_samples=512),
        calibration=data.calib(512, seed=0),
    )
    onnx_path = ARTIFACTS / "cifar_chain_pruned_b.onnx"
    export_onnx(tuned, EXAMPLE, onnx_path)
    diff = check_onnx(onnx_path, tuned, EXAMPLE, atol=1e-3)
    models = {"resnet56_baseline": base, "resnet56_pruned_b": tuned, "resnet56_pruned_b_int8": int8}
    report = measure(models, data, args)
    rows = result_rows(
        report,
        {"resnet56_pruned_b": budget(args), "resnet56_pruned_b_int8": f"{budget(args)}; then PTQ"},
        args.device,
    )
    for r in rows:
        r["metrics"]["stage"] = {
            "resnet56_baseline": "published checkpoint",
            "resnet56_pruned_b": "prune (Li 2017 pruned-B) + fine-tune",
            "resnet56_pruned_b_int8": "int8 static (onnxruntime)",
        }[r["variant"]]
    out = write_results(
        result_name("cifar_chain", args),
        rows,
        {},
        columns=[
            ("stage", "metrics.stage"),
            *COLUMNS[:4],
            ("bytes", "metrics.bytes"),
            ("compression", "metrics.compression_rate"),
            *COLUMNS[4:],
        ],
        notes=[
            "The chain on the published ResNet-56: Li et al. 2017 pruned-B with the fine-tuning "
            f"of cifar_li2017 ({budget(args)}), then static int8 (per-channel weights, 512 "
            "calibration images, onnxruntime QLinearConv kernels), then export.",
            f"Pruned fp32 model exported to ONNX ({onnx_path.name}) and run by onnxruntime alone: "
            f"max |torch - ort| = {diff:.1e} on the example input; the int8 artifact is itself "
            "an .onnx file (bytes column).",
            *log,
            *report.notes,
        ],
        extra_packages=("onnxruntime", "onnx"),
    )
    print(f"wrote {out}")


def run_stage(args: Any, data: Any) -> None:
    """Stage widths (the residual streams through option-A shortcuts) vs block-internal only."""
    from dwindle.export import check_onnx, export_onnx
    from dwindle.pruning import StageWidthPruning, prune_stage_widths_

    base = published("resnet56")
    notes: list[str] = []
    block = FilterPruning(
        ratio=args.ratio, kept="down", criterion="l1", scope="group", targets=("layer*.*.conv1",)
    )
    stage = StageWidthPruning(ratio=args.stage_ratio, criterion="l1")
    arms = {"block": prune_filters_(copy.deepcopy(base), block, example_input=EXAMPLE)}
    arms["stage"] = copy.deepcopy(base)
    kept = prune_stage_widths_(arms["stage"], stage, example_input=EXAMPLE)
    arms["both"] = prune_filters_(copy.deepcopy(arms["stage"]), block, example_input=EXAMPLE)
    widths = ", ".join(f"{k} {len(v)}" for k, v in kept.items())
    log: list[str] = []
    tuned = {
        arm: finetune(
            f"stage_{arm}_r{args.ratio}_s{args.stage_ratio}", m.eval(), None, data, args, log
        )
        for arm, m in arms.items()
    }
    onnx_path = ARTIFACTS / "cifar_stage_width.onnx"
    export_onnx(tuned["both"], EXAMPLE, onnx_path)
    diff = check_onnx(onnx_path, tuned["both"], EXAMPLE, atol=1e-3)
    models = {
        "resnet56_baseline": base,
        "resnet56_block_conv1": tuned["block"],
        "resnet56_stage_widths": tuned["stage"],
        "resnet56_stage_widths_and_block": tuned["both"],
    }
    report = measure(models, data, args)
    how = {v: f"{budget(args)}; labels" for v in models if v != "resnet56_baseline"}
    out = write_results(
        result_name("cifar_stage_width", args),
        result_rows(report, how, args.device),
        {},
        columns=COLUMNS,
        notes=[
            "Published ResNet-56 (Idelbayev), accuracy on the 10,000 CIFAR-10 test images.",
            f"block_conv1: FilterPruning(scope='group', l1) removes {args.ratio:.0%} of every "
            "residual block's first-conv channels (what Torch-Pruning can do here); "
            f"stage_widths: StageWidthPruning(l1) removes {args.stage_ratio:.0%} of each stage's "
            f"residual-stream channels (kept: {widths}), the option-A shortcuts becoming "
            "ChannelGather (Slice+Pad+Gather); stage_widths_and_block: both, stage widths first.",
            f"stage_widths_and_block exported to ONNX ({onnx_path.name}) and run by onnxruntime "
            f"alone: max |torch - ort| = {diff:.1e} on the example input.",
            *log,
            *notes,
            *report.notes,
        ],
        extra_packages=("torch-pruning", "onnxruntime", "onnx"),
    )
    print(f"wrote {out}")


PARTS = {
    "li2017": run_li2017,
    "vs_tp": run_vs_tp,
    "distill": run_distill,
    "chain": run_chain,
    "stage": run_stage,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=["li2017", "vs_tp"])
    parser.add_argument("--ratio", type=float, default=0.51, help="vs_tp: conv1 channel ratio")
    parser.add_argument(
        "--stage-ratio", type=float, default=0.25, help="stage: residual-stream channel ratio"
    )
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (cpu 1, cuda 40)")
    parser.add_argument("--train-limit", type=int, help="training subset (cpu 20000, cuda all)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument(
        "--kd",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="li2017: fine-tune with KD from the unpruned model",
    )
    parser.add_argument("--runs", type=int, default=30)
    add_device_args(parser)
    args = parser.parse_args()
    data = training_budget(args, cpu_epochs=1, gpu_epochs=40)
    start = time.perf_counter()
    for part, run in PARTS.items():
        if part in args.only:
            print(f"== {part}", flush=True)
            run(args, data)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
