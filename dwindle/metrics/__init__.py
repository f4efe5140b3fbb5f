"""Honest numbers: accuracy, size on disk, FLOPs, latency, memory and energy, side by side.

``measure(model, data)`` measures one model, ``compare({...}, data, baseline=...)`` several in
one run (latency interleaved) with ratios against the baseline. The primitives are public.
"""

from __future__ import annotations

from dwindle.metrics._model import eval_mode, model_device, model_input_dtype, prepare_input
from dwindle.metrics.accuracy import evaluate_accuracy
from dwindle.metrics.counts import count_nonzeros, count_params, sparsity, weight_density
from dwindle.metrics.energy import J_PER_FLOP, measure_energy, rapl_readable
from dwindle.metrics.flops import count_flops, count_flops_by_module, effective_flops
from dwindle.metrics.latency import fixed_threads, measure_latency, percentiles
from dwindle.metrics.memory import peak_memory, state_bytes
from dwindle.metrics.report import MeasureConfig, Report, compare, machine_info, measure
from dwindle.metrics.significance import mcnemar, wilson_interval
from dwindle.metrics.size import artifact_bytes

__all__ = [
    "J_PER_FLOP",
    "MeasureConfig",
    "Report",
    "artifact_bytes",
    "compare",
    "count_flops",
    "count_flops_by_module",
    "count_nonzeros",
    "count_params",
    "effective_flops",
    "eval_mode",
    "evaluate_accuracy",
    "fixed_threads",
    "machine_info",
    "mcnemar",
    "measure",
    "measure_energy",
    "measure_latency",
    "model_device",
    "model_input_dtype",
    "peak_memory",
    "percentiles",
    "prepare_input",
    "rapl_readable",
    "sparsity",
    "state_bytes",
    "weight_density",
    "wilson_interval",
]
