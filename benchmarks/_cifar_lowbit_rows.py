"""The rows and result file of benchmarks/cifar_lowbit.py: the papers' figures beside each
variant, a QAT model's measured row, and the merge of one run's rows into the shared file."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from _cifar import result_name
from _common import previous_rows, write_results

from dwindle.metrics import artifact_bytes, count_params, evaluate_accuracy
from dwindle.quantization import QAT, convert_qat

NAME = "cifar_lowbit"
PAPERS = {
    "w4a4": {
        "accuracy_change_pt": -0.1,
        "source": "LSQ (Esser et al. 2020, Table 1): 4/4-bit ResNets within ~0.1-0.4 pt of full "
        "precision; PACT (Choi et al. 2018, Table 2): ResNet-20 CIFAR-10 4/4-bit 91.3 % vs 91.6 %",
    },
    "w4a4_full": {
        "accuracy_change_pt": -0.1,
        "source": "LSQ (Esser et al. 2020, §2: weights on [-2^(b-1), 2^(b-1) - 1]); Table 1 as "
        "for w4a4",
    },
    "w4a4_pact": {
        "accuracy_change_pt": -0.3,
        "source": "PACT (Choi et al. 2018, Table 2): ResNet-20 CIFAR-10 4/4-bit 91.3 % vs 91.6 %, "
        "inputs of conv layers quantized, residual-branch outputs before the addition not",
    },
    "w2a2": {
        "source": "PACT (Choi et al. 2018, Table 2): ResNet-20 CIFAR-10 2/2-bit 89.7 % vs 91.6 %",
    },
    "ternary": {
        "source": "TTQ (Zhu et al. 2017, Table 1): ternary ResNet-20 CIFAR-10 8.87 % error vs "
        "8.23 % full precision (ResNet-32/44/56 ternary better than float)",
    },
}
COLUMNS = [
    ("weights/acts", "metrics.scheme"),
    ("accuracy", "metrics.accuracy"),
    ("acc change pt", "metrics.accuracy_change_pt"),
    ("bytes", "metrics.bytes"),
    ("compression", "metrics.compression_rate"),
    ("packed agrees", "metrics.packed_agreement"),
    ("fine-tune", "metrics.finetune"),
    ("ran on", "metrics.ran_on"),
]


def measured_row(
    prepared: torch.nn.Module,
    base: torch.nn.Module,
    cfg: QAT,
    data: Any,
    args: Any,
    variant: str,
    finetune: str,
    name: str,
) -> dict[str, Any]:
    """The row of the QAT model ``prepared``: fake-quant accuracy, packed size and agreement."""
    prepared.eval()
    metrics = evaluate_accuracy(prepared, data, batch_size=500)
    packed = convert_qat(prepared)
    probe = data.x_test[: args.agreement]
    with torch.no_grad():
        same = (packed(probe).argmax(1) == prepared(probe).argmax(1)).float().mean().item()
    nbytes, fmt = artifact_bytes(packed)
    metrics.update(
        bytes=nbytes,
        artifact=fmt,
        params=count_params(base),
        packed_agreement=same,
        scheme=f"{variant}: "
        + (f"w{cfg.weight_bits}" if cfg.weight_method == "uniform" else "ternary w")
        + f"/a{cfg.act_bits or 32}"
        + (" LSQ" if cfg.learned_ranges else "")
        + (", weight codes -8..7 (LSQ's full grid)" if cfg.weight_range == "full" else "")
        + (
            f", residual-branch outputs {cfg.add_bits}-bit (PACT's placement)"
            if cfg.add_bits
            else ""
        ),
        finetune=finetune,
        ran_on=args.device,
    )
    return {
        "variant": f"resnet20_{name}",
        # rows of several runs share a file: each keeps the command that made it
        "command": " ".join(["python benchmarks/cifar_lowbit.py", *sys.argv[1:]]),
        "model": "resnet20",
        "dataset": "cifar10",
        "split": "test",
        "metrics": metrics,
        "paper": PAPERS[variant],
    }


def targets(rows: dict[str, Any]) -> dict[str, Any]:
    """The w4a4 target's candidate: PACT's placement where that row exists (pre-registered in
    the commit that added it, whatever it gives), else the first w4a4 graph's row."""
    for candidate in ("resnet20_w4a4_pact", "resnet20_w4a4"):
        if candidate in rows:
            target = {"baseline": "resnet20_fp32", "candidate": candidate}
            return {"cifar_w4a4_resnet20": target}
    return {}


def write_rows(
    rows: list[dict[str, Any]],
    mine: dict[str, dict[str, Any]],
    data: Any,
    args: argparse.Namespace,
    base_val: float,
    start: float,
) -> None:
    """Merge this run's rows into the result file's and write it (under :func:`result_lock`)."""
    kept = {
        r["variant"]: r
        for r in previous_rows(result_name(NAME, args))
        if r["variant"] != "resnet20_fp32"
    }
    kept.update(mine)
    write_results(
        result_name(NAME, args),
        rows + list(kept.values()),
        targets(kept),
        columns=COLUMNS,
        notes=[
            "Published ResNet-20 (Idelbayev), accuracy on the 10,000 CIFAR-10 test images.",
            "QAT from the checkpoint: BN folded, per-channel weights; LSQ learned step sizes "
            "(started at the MSE-optimal range) for weights and activations; activations "
            "quantized after every ReLU (an add feeding a ReLU is fused with it, so quantized "
            "once, after the ReLU), after the average pool and at each block's second conv "
            "output before its residual addition (4-bit in w4a4 and w4a4_full; 8-bit in "
            "w4a4_pact, PACT's placement, so every conv input is 4-bit and adds take 8-bit "
            "branches); the input image and the classifier's input 8-bit; first conv and "
            "classifier kept float (PACT/LSQ keep them at 8 bits).",
            "Accuracy of the fake-quant model in eval mode; 'packed agrees' is the share of "
            f"the first {args.agreement} test images on which the converted packed-integer "
            "model predicts the same class; bytes: that packed artifact on disk.",
            f"No held-out data selects among QAT runs: the {data.size('val')}-image val "
            "split is part of the training set the published checkpoint was trained on "
            f"(its fp32 accuracy there: {100 * base_val:.2f} %), so it cannot. Rows are "
            "reported as they came; a chain's fine-tune column lists every cycle it ran, "
            "including cycles added after earlier cycles' test figures were seen.",
            f"Ran on {args.device}; rows of earlier runs of other variants are kept "
            "(see each row's fine-tune column, and its command in the json); this run "
            f"{time.perf_counter() - start:.0f} s.",
        ],
    )
