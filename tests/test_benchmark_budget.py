"""The CIFAR benchmarks' budget plumbing: result file names and weight-cache keys."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def cifar() -> Iterator[object]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import _cifar

        yield _cifar
    finally:
        sys.path.remove(str(BENCHMARKS))


def _args(device: str, budget: str = "auto", smoke: int | None = None) -> argparse.Namespace:
    return argparse.Namespace(device=device, budget=budget, smoke=smoke)


def test_result_names_keep_each_budget_and_device_apart(cifar: object) -> None:
    name = cifar.result_name  # type: ignore[attr-defined]
    assert name("x", _args("cpu")) == "x"
    assert name("x", _args("cpu", "full")) == "x_full_cpu"
    assert name("x", _args("cuda")) == "x_cuda"
    assert name("x", _args("cuda", "cpu")) == "x_cuda"
    assert name("x", _args("cpu", "full", smoke=8)) == "x_smoke"


def test_full_budget_follows_the_device_unless_asked(cifar: object) -> None:
    full = cifar.full_budget  # type: ignore[attr-defined]
    assert full(_args("cuda")) and not full(_args("cpu"))
    assert full(_args("cpu", "full")) and not full(_args("cuda", "cpu"))


def test_cache_keys_ignore_progress_and_match_keys_written_without_it(cifar: object) -> None:
    cfg = cifar.train_config(3, 0.01, "cpu")  # type: ignore[attr-defined]
    assert cfg.progress  # the benchmarks print one line per epoch
    quiet = cifar.quiet(cfg)  # type: ignore[attr-defined]
    assert not quiet.progress
    old = cfg.model_copy(update={"progress": False})  # what train_config made before
    assert quiet.model_dump_json() == old.model_dump_json()
    assert quiet.model_dump_json() != cfg.model_dump_json()


def test_qat_cache_key_is_that_of_the_quiet_config(cifar: object) -> None:
    import cifar_lowbit

    cfg = cifar_lowbit.variant_config("w4a4", 3, 0.01, "cpu", 0)
    assert cfg.train.progress
    old = cfg.model_copy(update={"train": cfg.train.model_copy(update={"progress": False})})
    # fields that joined QAT after the first caches are left out at their defaults
    late = {"weight_range", "add_bits"}
    assert cifar_lowbit.config_key(cfg) == old.model_dump_json(exclude=late)
    pact = cifar_lowbit.variant_config("w4a4_pact", 3, 0.01, "cpu", 0)
    assert '"add_bits":8' in cifar_lowbit.config_key(pact)  # a set one counts


def test_compile_mode_is_passed_not_global(cifar: object) -> None:
    make = cifar.train_config  # type: ignore[attr-defined]
    assert not make(1, 0.1, "cpu").compile and make(1, 0.1, "cuda").compile  # auto: CUDA only
    assert make(1, 0.1, "cpu", "on").compile and not make(1, 0.1, "cuda", "off").compile
    assert not hasattr(cifar, "_COMPILE")


@pytest.fixture()
def common(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """benchmarks/_common with its result files in ``tmp_path``."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import _common
    finally:
        sys.path.remove(str(BENCHMARKS))
    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    return _common


def test_previous_result_reads_what_a_partial_run_keeps(common: Any, tmp_path: Path) -> None:
    _common = common
    assert _common.previous_result("x") == {"rows": [], "targets": {}}
    assert _common.previous_rows("x") == []
    row = {"variant": "a", "metrics": {"accuracy": 0.5}}
    (tmp_path / "x.json").write_text(
        '{"rows": [{"variant": "a", "metrics": {"accuracy": 0.5}}], "commit": "c"}'
    )
    old = _common.previous_result("x")
    assert old["rows"] == [row] and old["targets"] == {} and old["commit"] == "c"
    assert _common.previous_rows("x") == [row]


def test_smoke_results_declare_no_targets(common: Any, tmp_path: Path) -> None:
    _common = common
    rows = [{"variant": "a", "metrics": {"accuracy": 0.5}}]
    targets = {"t": {"candidate": "a"}}
    for name, kept in (("x", targets), ("x_smoke", {})):
        _common.write_results(name, rows, targets, columns=[("acc", "metrics.accuracy")])
        assert json.loads((tmp_path / f"{name}.json").read_text())["targets"] == kept


def test_bnn_target_stays_on_the_bnn_cnn() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import quant_qat
    finally:
        sys.path.remove(str(BENCHMARKS))
    candidate = {"bnn_mnist": {"candidate": "bnn_cnn"}}
    assert quant_qat.bnn_target({"fp32", "bnn", "bnn_cnn"}) == candidate  # an MLP rerun
    assert quant_qat.bnn_target({"bnn"}) == {"bnn_mnist": {"candidate": "bnn"}}
    assert quant_qat.bnn_target({"fp32", "qat_int8"}) == {}
