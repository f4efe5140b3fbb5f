"""Shared plumbing of the CIFAR-10 benchmarks: the published checkpoints, devices and budgets.

The checkpoints are Idelbayev's published ResNet-20/56 (../shared/models/cifar10-resnet/,
README there), loaded as they come (``module.`` prefix, extra keys) with weights_only=True.
Every script takes ``--device``: ``cpu`` runs the CPU budget (a few fine-tuning epochs on a
training subset, documented in each result), ``cuda`` the papers' fine-tuning budget.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import ARTIFACTS
from torch import nn

import dwindle as dw
from dwindle.errors import DwindleError
from dwindle.export import load_weights, save
from dwindle.models import create
from dwindle.training.evaluate import resolve_device

SHARED = Path(__file__).resolve().parents[2] / "shared"
CHECKPOINTS = {
    "resnet20": SHARED / "models" / "cifar10-resnet" / "resnet20-12fca82f.th",
    "resnet56": SHARED / "models" / "cifar10-resnet" / "resnet56-4bfd9763.th",
}
PUBLISHED_ACC = {"resnet20": 0.9173, "resnet56": 0.9339}  # the zoo README's published figures


def published(name: str) -> nn.Module:
    """The published checkpoint ``name`` in dwindle's zoo ResNet, eval mode, on CPU."""
    model = create(name, num_classes=10)
    load_weights(model, CHECKPOINTS[name])
    return model.eval()


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu: the CPU budget (few epochs on a subset); cuda: the papers' fine-tuning budget",
    )
    parser.add_argument(
        "--budget",
        choices=["auto", "cpu", "full"],
        default="auto",
        help="cpu: few epochs on a 20 000-image subset; full: the papers' epochs on all "
        "training images (auto: full on cuda, cpu on cpu)",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for training")
    parser.add_argument(
        "--smoke",
        type=int,
        metavar="N",
        help="smoke test: N test/val images and N training images; writes <name>_smoke results",
    )
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="torch.compile the training forward (auto: on CUDA only)",
    )
    parser.add_argument(
        "--latency-threads",
        type=int,
        default=1,
        help="threads while timing (1: stable on a shared 2-core machine)",
    )


def check_device(device: str) -> torch.device:
    """``device`` if usable here; otherwise print the reason and exit 2 (no traceback)."""
    try:
        return resolve_device(device)
    except DwindleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def train_config(
    epochs: int, lr: float, device: str, compile_mode: str = "auto", **kw: Any
) -> dw.TrainConfig:
    """SGD + momentum + cosine, crop/flip augmentation: the CIFAR ResNet fine-tuning recipe.

    ``compile_mode`` is the scripts' ``--compile``: "auto" compiles the training forward
    (``TrainConfig.compile``) on CUDA only, where a QAT ResNet-20 step is hundreds of small
    kernels that eager mode launches one by one; "on"/"off" decide everywhere."""
    opts: dict[str, Any] = dict(
        epochs=epochs,
        batch_size=128,
        optimizer="sgd",
        lr=lr,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="cosine",
        augment=True,
        progress=True,  # one line per epoch in a log (the bar only on a terminal)
        device=device,
        eval_batch_size=500,
        compile=device.startswith("cuda") if compile_mode == "auto" else compile_mode == "on",
    )
    opts.update(kw)
    return dw.TrainConfig(**opts)


def quiet(cfg: dw.TrainConfig) -> dw.TrainConfig:
    """``cfg`` as the weight caches' keys hash it: with ``progress`` off, which changes only
    what is printed (so keys written before progress was on stay valid)."""
    return cfg.model_copy(update={"progress": False})


def cached_train(
    name: str, model: nn.Module, data: Any, cfg: dw.TrainConfig, log: list[str]
) -> nn.Module:
    """Fine-tune ``model`` with ``cfg``, or load the weights an earlier identical run cached.

    The cache key is the name plus the config, so a changed budget never reuses stale weights.
    """
    key = f"{name}_{hashlib.sha256(quiet(cfg).model_dump_json().encode()).hexdigest()[:8]}"
    path = ARTIFACTS / f"cifar_{key}.safetensors"
    if cfg.epochs == 0:
        return model.eval()
    if path.exists():
        load_weights(model, path)
        log.append(f"{name}: fine-tuned weights reused from {path.name}")
        return model.eval()
    start = time.perf_counter()
    dw.train(model, data, cfg)
    model.to("cpu").eval()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    save(model, path)
    print(f"   {name}: trained in {time.perf_counter() - start:.0f} s", flush=True)
    return model


def load_cifar(args: argparse.Namespace, limit: int | None) -> Any:
    """CIFAR-10 (seed 0) with ``limit`` training images; a ``--smoke N`` run keeps N of each."""
    import dataclasses

    from dwindle import data as dwdata

    if args.smoke:
        limit = args.smoke
    data = dwdata.load("cifar10", seed=0, limit=limit)
    if args.smoke:
        n = args.smoke
        data = dataclasses.replace(
            data,
            x_val=data.x_val[:n],
            y_val=data.y_val[:n],
            x_test=data.x_test[:n],
            y_test=data.y_test[:n],
        )
    return data


def load_cifar_test(smoke: int | None = None) -> Any:
    """Only the official CIFAR-10 test batch (what an inference benchmark needs, 30 MB instead
    of 180), normalised as the checkpoints expect; its train and val splits are placeholders
    (one test image each) that nothing trains on."""
    from dwindle.data.cifar import CIFAR_MEAN_STD, read_cifar_batch, scale_images
    from dwindle.data.paths import default_roots
    from dwindle.data.registry import make_bundle

    names = ("test_batch.bin", "test_batch.bin.gz")
    found = [d / n for d in default_roots("cifar10") for n in names if (d / n).is_file()]
    if not found:
        where = ", ".join(str(d) for d in default_roots("cifar10"))
        raise SystemExit(f"error: no CIFAR-10 test_batch.bin[.gz] in {where} (set $DWINDLE_DATA)")
    x, y = read_cifar_batch(found[0])
    if smoke:
        x, y = x[:smoke], y[:smoke]
    x = scale_images(x, CIFAR_MEAN_STD)
    return make_bundle("cifar10", (x[:1], y[:1]), (x[:1], y[:1]), (x, y), 10)


def training_budget(args: argparse.Namespace, cpu_epochs: int, gpu_epochs: int) -> Any:
    """Check ``--device``, fill the CPU or full budget (epochs; a 20 000-image subset for the CPU
    budget), set threads and seed, and load CIFAR-10 for it."""
    import warnings

    check_device(args.device)
    full = full_budget(args)
    if args.epochs is None:
        args.epochs = gpu_epochs if full else cpu_epochs
    if args.train_limit is None and not full:
        args.train_limit = 20000
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    return load_cifar(args, args.train_limit)


def full_budget(args: argparse.Namespace) -> bool:
    """Whether ``--budget`` (auto: by ``--device``) asks for the papers' full budget."""
    budget = getattr(args, "budget", "auto")
    return str(args.device).startswith("cuda") if budget == "auto" else budget == "full"


def result_name(name: str, args: argparse.Namespace) -> str:
    """``name`` for the CPU budget, ``name_cuda`` for any run on CUDA, ``name_full_cpu`` for
    the full budget run on CPU (each beside the others), or ``name_smoke``."""
    if args.smoke:
        return f"{name}_smoke"
    if str(args.device).startswith("cuda"):
        return f"{name}_cuda"
    return f"{name}_full_cpu" if full_budget(args) else name
