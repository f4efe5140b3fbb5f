"""pruning_han.py's choice between its labels and KD rows: seeds tables first, then one run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CANDS = ["m_han_iterative", "m_han_iterative_kd"]
ONE_RUN = {  # this run's validation errors favour labels
    "m_han_iterative": {"metrics": {"val_error_pct": 1.5}},
    "m_han_iterative_kd": {"metrics": {"val_error_pct": 1.6}},
}


@pytest.fixture()
def han(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import _common
        import pruning_han
    finally:
        sys.path.remove(str(BENCHMARKS))
    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    return pruning_han


def _table(folder: Path, name: str, gaps: dict[int, float]) -> None:
    rows = [{"variant": f"m_seed{s}", "metrics": {"val_gap_pt": g}} for s, g in gaps.items()]
    rows.append({"variant": "m_mean_sd_2_seeds", "metrics": {"val_gap_pt": "0 ± 0"}})
    (folder / f"{name}.json").write_text(json.dumps({"rows": rows}))


def test_without_seed_tables_this_runs_validation_decides(han: Any) -> None:
    assert han.pick("m", CANDS, ONE_RUN) == "m_han_iterative"


def test_seed_tables_decide_over_their_common_seeds(han: Any, tmp_path: Path) -> None:
    _table(tmp_path, "pruning_han_seeds", {0: 0.2, 1: 0.3, 2: -5.0})
    _table(tmp_path, "pruning_han_seeds_kd", {0: 0.1, 1: 0.2})
    assert han.seeds_val_gaps("m", True) == {0: 0.1, 1: 0.2}
    # seed 2 is only in the labels table, so it does not count
    assert han.pick("m", CANDS, ONE_RUN) == "m_han_iterative_kd"
    _table(tmp_path, "pruning_han_seeds_kd", {0: 0.3, 1: 0.2})  # a tie keeps labels
    assert han.pick("m", CANDS, ONE_RUN) == "m_han_iterative"


def test_one_common_seed_is_not_enough(han: Any, tmp_path: Path) -> None:
    _table(tmp_path, "pruning_han_seeds", {0: 0.9})
    _table(tmp_path, "pruning_han_seeds_kd", {0: 0.1})
    assert han.pick("m", CANDS, ONE_RUN) == "m_han_iterative"
