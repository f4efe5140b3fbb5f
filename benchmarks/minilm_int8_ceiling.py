"""How fast can int8 make all-MiniLM-L6-v2 on this CPU? A measured upper bound.

    python benchmarks/minilm_int8_ceiling.py [--threads 2] [--runs 20]

The minilm_int8 target asks for an int8 model >= 2.5x faster than fp32 eager at batch 32,
128 tokens. Whatever else an int8 model does, it must run the encoder's weight GEMMs: per layer
q, k, v, o (384 -> 384), FFN in (384 -> 1536) and out (1536 -> 384), over 32 x 128 = 4 096
tokens, 6 layers. This script times exactly those 36 GEMMs with every int8 kernel installed
here (onnxruntime's MLAS MatMulInteger and DynamicQuantizeMatMul, PyTorch's fbgemm dynamic
int8 Linear and oneDNN qlinear, torch._int_mm) and with fp32 (torch F.linear), and the whole
fp32 model in eager
mode, in one process with the same threads. Then

    bound = fp32 eager model latency / fastest int8 time of the 36 GEMMs alone

is the speed-up an int8 model built on that kernel would reach if attention, softmax,
LayerNorm, GELU, embeddings, pooling and activation quantization all took no time at all, so
no int8 model on these kernels can beat it. MatMulInteger is timed on inputs already in uint8,
so its row leaves out even the activation quantization that a real model pays.
Writes benchmarks/results/minilm_int8_ceiling.{json,md}; no target reads it.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import write_results
from _minilm import SEQ, make_input

from dwindle.nlp import load_encoder, load_stsb
from dwindle.quantization.backends.ort import ort_cpu_session

TOKENS = 32 * SEQ
HIDDEN, FFN, LAYERS = 384, 1536, 6
# (in, out) of each weight GEMM of one encoder layer: q, k, v, attention out, FFN in, FFN out
SHAPES = [(HIDDEN, HIDDEN)] * 4 + [(HIDDEN, FFN), (FFN, HIDDEN)]


def median_ms(fn: Callable[[], Any], runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def gemm_set(make: Callable[[int, int], Callable[[], Any]]) -> Callable[[], None]:
    """One call runs the 36 GEMMs (6 layers x SHAPES) with kernels built by ``make(k, n)``."""
    calls = [make(k, n) for _ in range(LAYERS) for k, n in SHAPES]

    def run() -> None:
        for call in calls:
            call()

    return run


def torch_fp32(k: int, n: int) -> Callable[[], Any]:
    x, w = torch.randn(TOKENS, k), torch.randn(n, k)
    return lambda: F.linear(x, w)


def torch_fbgemm_int8(k: int, n: int) -> Callable[[], Any]:
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear

    torch.backends.quantized.engine = "fbgemm"
    lin = DynLinear(k, n)
    x = torch.randn(TOKENS, k)
    return lambda: lin(x)


def torch_onednn_qlinear(k: int, n: int) -> Callable[[], Any]:
    """oneDNN's int8 linear (uint8 activations x int8 per-channel weights -> float32), the
    kernel inductor's freezing passes put in a torchao pt2e x86 model."""
    w = torch.randint(-127, 127, (n, k), dtype=torch.int8)
    packed = torch.ops.onednn.qlinear_prepack(w, None)
    x = torch.randint(0, 255, (TOKENS, k), dtype=torch.uint8)
    scales, zeros = torch.full((n,), 0.02), torch.zeros(n, dtype=torch.long)
    return lambda: torch.ops.onednn.qlinear_pointwise(
        x, 0.05, 128, packed, scales, zeros, None, 1.0, 0, torch.float32, "none", [], ""
    )


def torch_int_mm(k: int, n: int) -> Callable[[], Any]:
    a = torch.randint(-128, 127, (TOKENS, k), dtype=torch.int8)
    b = torch.randint(-128, 127, (k, n), dtype=torch.int8)
    return lambda: torch._int_mm(a, b)


def ort_kernel(op: str, threads: int) -> Callable[[int, int], Callable[[], Any]]:
    """A one-node onnxruntime graph per shape: MatMulInteger (uint8 x int8 -> int32) or
    com.microsoft DynamicQuantizeMatMul (float in, int8 weights, float out)."""
    from onnx import TensorProto, helper, numpy_helper

    def make(k: int, n: int) -> Callable[[], Any]:
        rng = np.random.default_rng(0)
        w = numpy_helper.from_array(rng.integers(-127, 127, (k, n), dtype=np.int8), "w")
        if op == "MatMulInteger":
            zp = numpy_helper.from_array(np.array(128, dtype=np.uint8), "zp")
            node = helper.make_node("MatMulInteger", ["x", "w", "zp"], ["y"])
            x_type, y_type, inits = TensorProto.UINT8, TensorProto.INT32, [w, zp]
            x = rng.integers(0, 255, (TOKENS, k), dtype=np.uint8)
            domain = []
        else:
            scale = numpy_helper.from_array(np.full((n,), 0.01, dtype=np.float32), "s")
            node = helper.make_node(
                "DynamicQuantizeMatMul", ["x", "w", "s"], ["y"], domain="com.microsoft"
            )
            x_type, y_type, inits = TensorProto.FLOAT, TensorProto.FLOAT, [w, scale]
            x = rng.standard_normal((TOKENS, k), dtype=np.float32)
            domain = [helper.make_opsetid("com.microsoft", 1)]
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", x_type, [TOKENS, k])],
            [helper.make_tensor_value_info("y", y_type, [TOKENS, n])],
            initializer=inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17), *domain], ir_version=9
        )
        sess = ort_cpu_session(model.SerializeToString(), threads)
        return lambda: sess.run(None, {"x": x})

    return make


def ort_chain(threads: int) -> Callable[[], Any]:
    """All 36 GEMMs as one onnxruntime graph of chained DynamicQuantizeMatMul nodes (float in,
    int8 weights, float out): one session call, no per-GEMM input/output copies."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i, (k, n) in enumerate(SHAPES * LAYERS):
        w = rng.integers(-127, 127, (k, n), dtype=np.int8)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        # scale ~ 1 / (127 sqrt(k)) keeps the activations' size steady along the chain
        s = np.full((n,), 1.0 / (127 * np.sqrt(k / 3)), dtype=np.float32)
        inits.append(numpy_helper.from_array(s, f"s{i}"))
        out = "y" if i == LAYERS * len(SHAPES) - 1 else f"h{i}"
        nodes.append(
            helper.make_node(
                "DynamicQuantizeMatMul", [prev, f"w{i}", f"s{i}"], [out], domain="com.microsoft"
            )
        )
        prev = out
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [TOKENS, HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [TOKENS, HIDDEN])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        ir_version=9,
    )
    sess = ort_cpu_session(model.SerializeToString(), threads)
    x = rng.standard_normal((TOKENS, HIDDEN), dtype=np.float32)
    return lambda: sess.run(None, {"x": x})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--target", type=float, default=2.5, help="the speed-up asked for")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    model = load_encoder(args.model).eval()
    ids = make_input(model, load_stsb("dev"))(32)
    with torch.no_grad():
        eager_ms = median_ms(lambda: model(ids), args.runs)
    print(f"fp32 eager model, b32 x {SEQ}: {eager_ms:.0f} ms", flush=True)

    # each builds a callable that runs the 36 GEMMs once
    kernels: dict[str, tuple[str, Callable[[], Callable[[], Any]]]] = {
        "torch_fp32_linear": ("fp32", lambda: gemm_set(torch_fp32)),
        "ort_matmulinteger_u8s8": (
            "int8",
            lambda: gemm_set(ort_kernel("MatMulInteger", args.threads)),
        ),
        "ort_dynamicquantizematmul": (
            "int8",
            lambda: gemm_set(ort_kernel("DynamicQuantizeMatMul", args.threads)),
        ),
        "ort_dynamicquantizematmul_one_graph": ("int8", lambda: ort_chain(args.threads)),
        "torch_fbgemm_dynamic_linear": ("int8", lambda: gemm_set(torch_fbgemm_int8)),
        "torch_onednn_qlinear_u8s8": ("int8", lambda: gemm_set(torch_onednn_qlinear)),
        "torch_int_mm": ("int8", lambda: gemm_set(torch_int_mm)),
    }
    rows: list[dict[str, Any]] = [
        {
            "variant": "fp32_eager_model",
            "model": "all-MiniLM-L6-v2",
            "dataset": "stsb",
            "split": "dev",
            "metrics": {"dtype": "fp32", "ms": round(eager_ms, 1), "what": "whole model"},
        }
    ]
    gemm_ms: dict[str, float] = {}
    calls: dict[str, int] = {}
    with torch.no_grad():
        for name, (dtype, make) in kernels.items():
            try:
                run = make()
                once = median_ms(run, 1, warmup=0)
                # a kernel far slower than fp32 (a reference implementation) is timed once
                slow = "torch_fp32_linear" in gemm_ms and once > 5 * gemm_ms["torch_fp32_linear"]
                gemm_ms[name] = once if slow else median_ms(run, args.runs)
                calls[name] = 1 if slow else args.runs
            except Exception as exc:  # a kernel this build lacks: say so in the table
                print(f"{name}: not available ({type(exc).__name__}: {exc})"[:200], flush=True)
                rows.append(
                    {
                        "variant": name,
                        "model": "36 weight GEMMs",
                        "dataset": "random",
                        "split": "—",
                        "metrics": {"dtype": dtype, "error": f"{type(exc).__name__}"[:80]},
                    }
                )
                continue
            print(f"{name}: {gemm_ms[name]:.0f} ms", flush=True)
    fp32_gemm = gemm_ms["torch_fp32_linear"]
    macs = LAYERS * TOKENS * sum(k * n for k, n in SHAPES)
    for name, ms in gemm_ms.items():
        rows.append(
            {
                "variant": name,
                "model": "36 weight GEMMs",
                "dataset": "random",
                "split": "—",
                "metrics": {
                    "dtype": kernels[name][0],
                    "what": f"6 layers x {len(SHAPES)} GEMMs, {TOKENS} tokens",
                    "ms": round(ms, 1),
                    "timed_calls": calls[name],
                    "gmacs_per_s": round(macs / ms / 1e6, 1),
                    "vs_fp32_gemm": round(fp32_gemm / ms, 2),
                    "bound_vs_eager_model": round(eager_ms / ms, 2),
                },
            }
        )
    best = min((n for n in gemm_ms if kernels[n][0] == "int8"), key=gemm_ms.__getitem__)
    bound = eager_ms / gemm_ms[best]
    # the eager model with its fp32 GEMMs swapped for the best int8 ones, all else as it is
    swapped = eager_ms - fp32_gemm + gemm_ms[best]
    # attention's own matmuls (QK^T and AV: 12 heads of 32 per token pair) at that int8 rate
    attn_macs = LAYERS * 32 * 2 * SEQ * SEQ * HIDDEN
    bound_attn = eager_ms / (gemm_ms[best] * (1 + attn_macs / macs))
    print(f"bound: {bound:.2f}x with {best} (target {args.target}x)", flush=True)
    print(f"with attention matmuls at the same int8 rate: {bound_attn:.2f}x", flush=True)
    print(f"eager with int8 GEMMs: {swapped:.0f} ms, {eager_ms / swapped:.2f}x", flush=True)
    write_results(
        "minilm_int8_ceiling",
        rows,
        {},
        columns=[
            ("dtype", "metrics.dtype"),
            ("what", "metrics.what"),
            ("p50 ms", "metrics.ms"),
            ("timed calls", "metrics.timed_calls"),
            ("GMAC/s", "metrics.gmacs_per_s"),
            ("× fp32 GEMMs", "metrics.vs_fp32_gemm"),
            ("fp32 eager model ÷ this", "metrics.bound_vs_eager_model"),
            ("not run", "metrics.error"),
        ],
        notes=[
            f"{args.threads} threads, median of {args.runs} runs after 3 warm-up calls (a kernel "
            "over 5x slower than fp32 is timed by one call); one process. The weight GEMMs are "
            f"{macs / 1e9:.1f} GMAC per batch of 32 x {SEQ} "
            "tokens.",
            f"Upper bound on the b32 speed-up over fp32 eager of an int8 model whose weight "
            f"GEMMs run the fastest kernel timed here: {bound:.2f}x "
            f"({best}: the 36 GEMMs alone, every other op free); the target asks for "
            f"{args.target}x. Adding attention's own matmuls (QK^T, AV: "
            f"{attn_macs / 1e9:.2f} GMAC) at that kernel's int8 rate, still with softmax, "
            f"LayerNorm, GELU and the rest free: {bound_attn:.2f}x. The eager model with only "
            "its weight GEMMs swapped for "
            f"{best}'s times (fp32 model - fp32 GEMMs + int8 GEMMs): {swapped:.0f} ms, "
            f"{eager_ms / swapped:.2f}x.",
            "onnxruntime sessions as dwindle's OrtModule builds them (ort_cpu_session: idle "
            "threads do not spin). The one-node rows run one session per GEMM, copying its "
            "input and output between numpy and the session on every call; the one-graph row "
            "runs the 36 GEMMs in one session call.",
            "fp32 eager model: the same all-MiniLM-L6-v2 and token ids (first 32 STS-B dev "
            "sentences padded to 128) as benchmarks/minilm.py.",
        ],
        extra_packages=("onnxruntime",),
    )


if __name__ == "__main__":
    main()
