"""Shared plumbing of the MiniLM benchmark (benchmarks/minilm.py): measuring a part's models
beside the unmodified one, and caching compressed models with their structural plan."""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import ARTIFACTS
from torch import nn

from dwindle.export import load_weights, save
from dwindle.metrics import artifact_bytes, count_nonzeros, count_params, measure_latency
from dwindle.nlp import (
    count_heads,
    drop_layers_,
    load_sst2,
    load_stsb,
    prune_heads_,
    sst2_accuracy,
    stsb_spearman,
    transfer_sentences,
)

SEQ = 128
SST2_TRAIN = 2000  # SST-2 train rows the logistic head is fitted on (dev: all 872)
PAPER_STSB = {
    "spearman": 82.03,
    "split": "test",
    "source": "all-MiniLM-L6-v2 model card / MTEB STSBenchmark",
}


def run_name(args: argparse.Namespace) -> str:
    """The result file's and the cached artifacts' name: a ``--smoke`` run keeps its own."""
    return "minilm_smoke" if args.smoke else "minilm"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def structure(model: nn.Module) -> dict[str, Any]:
    try:
        heads = count_heads(model)
        return {"heads": sum(heads), "layers": len(heads), "heads_per_layer": heads}
    except Exception:
        return {}


def make_input(
    model: nn.Module, dev: list, pad_to: int | None = SEQ
) -> Callable[[int], torch.Tensor]:
    sentences = [p.sentence1 for p in dev]
    cache: dict[int, torch.Tensor] = {}

    def make(b: int) -> torch.Tensor:
        if b not in cache:
            cache[b] = model.tokenize(sentences[:b], pad_to=pad_to)
        return cache[b]

    return make


def measure_rows(
    part: str,
    models: dict[str, nn.Module],
    dev: list,
    *,
    runs: int,
    schemes: dict[str, str],
    extra: dict[str, dict[str, Any]] | None = None,
    spearman_skip: tuple[str, ...] = (),
    sst2: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    base = next(iter(models.values()))
    rows = []
    metrics: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        m: dict[str, Any] = {"part": part, "scheme": schemes.get(name, "")}
        if name not in spearman_skip:
            t = time.perf_counter()
            m["spearman"] = stsb_spearman(model, dev)["spearman"]
            log(f"{name}: Spearman {m['spearman']:.2f} ({time.perf_counter() - t:.0f} s)")
        m["params"] = count_params(model)
        m["nonzeros"] = count_nonzeros(model)
        m["bytes"], m["artifact"] = artifact_bytes(model)
        m.update(structure(model) or structure(getattr(model, "inner", model)))
        m.update((extra or {}).get(name, {}))
        metrics[name] = m
    if sst2:
        train, test = load_sst2("train")[:SST2_TRAIN], load_sst2("dev")
        for name in sst2:
            t = time.perf_counter()
            acc = sst2_accuracy(models[name], train, test)["sst2_accuracy"]
            metrics[name].update(sst2_accuracy=acc, sst2_train_rows=len(train))
            log(f"{name}: SST-2 {acc:.4f} ({time.perf_counter() - t:.0f} s)")
    log(f"latency b1/b32 at {SEQ} tokens, {runs} interleaved rounds: {', '.join(models)}")
    lat = measure_latency(models, make_input(base, dev), (1, 32), warmup=2, runs=runs)
    # realistic lengths: the same sentences padded only to the longest in the batch
    real = measure_latency(models, make_input(base, dev, None), (1, 32), warmup=2, runs=runs)
    base_name = next(iter(models))
    for name in models:
        m = metrics[name]
        m["latency_ms"] = lat[name]
        m["latency_ms_real_lengths"] = real[name]
        for b in (1, 32):
            m[f"speedup_b{b}"] = lat[base_name][f"b{b}"]["p50"] / lat[name][f"b{b}"]["p50"]
        log(f"{name}: b1 {lat[name]['b1']['p50']:.1f} ms, b32 {lat[name]['b32']['p50']:.0f} ms")
        row = {"variant": name, "model": "all-MiniLM-L6-v2", "dataset": "stsb", "split": "dev"}
        row["metrics"] = m
        if name.startswith("fp32"):
            row["paper"] = PAPER_STSB
        rows.append(row)
    return rows


def measure_against_fp32(
    part: str,
    teacher: nn.Module,
    candidate: str,
    model: nn.Module,
    dev: list,
    args: argparse.Namespace,
    scheme: str,
    extra: dict[str, Any],
) -> list[dict[str, Any]]:
    """Rows of one compressed ``model`` beside the unmodified ``teacher`` (``fp32@<part>``),
    both scored on STS-B and SST-2 and timed together."""
    baseline = f"fp32@{part}"
    return measure_rows(
        part,
        {baseline: teacher, candidate: model},
        dev,
        sst2=(baseline, candidate),
        runs=args.runs,
        schemes={baseline: "torch eager fp32", candidate: scheme},
        extra={candidate: extra},
    )


def cached(
    name: str,
    teacher: nn.Module,
    build: Callable[[], tuple[nn.Module, dict]],
    args: argparse.Namespace,
) -> nn.Module:
    """A compressed model from artifacts (plan JSON + safetensors), else built and saved."""
    stem = ARTIFACTS / f"{run_name(args)}-{name}"
    weights, plan_file = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if weights.exists() and plan_file.exists():
        plan = json.loads(plan_file.read_text())
        model = copy.deepcopy(teacher)
        if "keep_layers" in plan:
            drop_layers_(model, plan["keep_layers"])
        for step in plan.get("head_steps", []):
            prune_heads_(model, {int(k): v for k, v in step.items()})
        load_weights(model, weights)
        log(f"{name}: restored from {weights.name}")
        model.dwindle_plan = plan
        return model.eval()
    model, plan = build()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    save(model, weights, "safetensors")
    plan_file.write_text(json.dumps(plan, indent=1))
    model.dwindle_plan = plan
    return model.eval()


def teacher_sentences(limit: int) -> list[str]:
    # Transfer set: STS-B train + SST-2 train sentences, no labels; dev is never trained on.
    return transfer_sentences(load_stsb("train"), load_sst2("train"), limit=limit, seed=0)


def torchao_pt2e_peer(teacher: nn.Module, calibration: list[str]) -> nn.Module:
    """torchao's documented x86 int8 PTQ (pt2e tutorial "PyTorch 2 Export Post Training
    Quantization with X86 Backend through Inductor"): export, X86InductorQuantizer with its
    default static config, calibrate, convert, then torch.compile with freezing. Written out
    here from torchao's API; only the running wrapper (compile on first use) is dwindle's.
    The export has a dynamic batch and sequence, as the latency runs need both sizes."""
    import io

    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    from dwindle.nlp.quantize_inductor import InductorTextModule

    example = teacher.tokenize(calibration[:32], pad_to=SEQ)
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", min=2, max=SEQ)},)
    with torch.no_grad():
        exported = torch.export.export(copy.deepcopy(teacher), (example,), dynamic_shapes=dims)
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported.module(), quantizer)
        for i in range(0, len(calibration), 32):
            prepared(teacher.tokenize(calibration[i : i + 32]))
        converted = convert_pt2e(prepared)
        program = torch.export.export(converted, (example,), dynamic_shapes=dims)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    scheme = "torchao pt2e X86InductorQuantizer default static config, torch.compile freezing"
    return InductorTextModule(buf.getvalue(), teacher, scheme=scheme)
