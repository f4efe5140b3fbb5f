"""Text-encoder recipes end to end on a tiny BERT: heads, layers, int8, sparsity, low rank."""

from __future__ import annotations

import pytest
from nlp_helpers import tiny_bert_dir, write_sst2, write_stsb

from dwindle.errors import ConfigError
from dwindle.pipeline import run_recipe
from dwindle.recipe import load_recipe


def _root(tmp_path):
    for name in ("stsb", "sst2"):
        (tmp_path / "data" / name).mkdir(parents=True)
    write_stsb(tmp_path / "data" / "stsb" / "sts-train.csv")
    write_stsb(tmp_path / "data" / "stsb" / "sts-dev.csv")
    write_sst2(tmp_path / "data" / "sst2" / "train.tsv")
    return tmp_path / "data"


def test_text_recipe_runs_and_reports_spearman(tmp_path):
    model = tiny_bert_dir(tmp_path, layers=2, heads=4, max_len=128)
    recipe = {
        "name": "tiny-text",
        "model": {"hf": str(model)},
        "data": {"name": "stsb", "root": str(_root(tmp_path))},
        "stages": [
            {
                "prune_heads": {"ratio": 0.25, "steps": 2, "recover": {"epochs": 1}},
                "name": "heads",
            },
            {
                "drop_layers": {"layers": 1, "method": "importance"},
                "name": "d1",
                "from": "baseline",
            },
            {"quantize_text": {"mode": "dynamic"}, "name": "int8", "from": "baseline"},
        ],
        "measure": {
            "batch_sizes": [1, 4],
            "runs": 1,
            "warmup": 0,
            "energy": "off",
            "memory": False,
        },
    }
    result = run_recipe(recipe, tmp_path / "run")
    rows = {r["variant"]: r["metrics"] for r in result.report["rows"]}
    assert set(rows) == {"baseline", "heads", "d1", "int8"}
    assert all(-100 <= m["spearman"] <= 100 for m in rows.values())
    assert rows["heads"]["params"] < rows["baseline"]["params"]
    assert rows["d1"]["params"] < rows["baseline"]["params"]
    assert rows["int8"]["bytes"] < rows["baseline"]["bytes"]
    assert any("prune_heads: 2 of 8 heads removed" in n for n in result.report["notes"])


def test_generic_sparsity_and_low_rank_stages_on_a_text_encoder(tmp_path):
    """The pruning and factorization stages target a transformer's linears by name pattern."""
    model = tiny_bert_dir(tmp_path, layers=2, heads=4, max_len=128)
    ffn = ["*.intermediate.dense", "*.layer.*.output.dense"]
    recipe = {
        "name": "tiny-text-extras",
        "model": {"hf": str(model)},
        "data": {"name": "stsb", "root": str(_root(tmp_path))},
        "stages": [
            {"prune": {"method": "nm", "n": 2, "m": 4, "targets": ffn}, "name": "s24"},
            {
                "prune": {"method": "magnitude", "ratio": 0.5, "targets": ["*encoder*"]},
                "name": "s50",
                "from": "baseline",
            },
            {"factorize": {"ratio": 0.5, "targets": ffn}, "name": "lowrank", "from": "baseline"},
        ],
        "measure": {"batch_sizes": [1], "runs": 1, "warmup": 0, "energy": "off", "memory": False},
    }
    result = run_recipe(recipe, tmp_path / "run")
    rows = {r["variant"]: r["metrics"] for r in result.report["rows"]}
    base = rows["baseline"]
    assert all(-100 <= m["spearman"] <= 100 for m in rows.values())
    assert rows["s24"]["nonzeros"] < base["nonzeros"] and rows["s24"]["params"] == base["params"]
    assert rows["s50"]["nonzeros"] < rows["s24"]["nonzeros"]
    assert rows["lowrank"]["params"] < base["params"]
    assert all(rows[v]["bytes"] < base["bytes"] for v in ("s24", "s50", "lowrank"))


def test_text_recipe_errors(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of 'zoo'"):
        load_recipe({"model": {"hf": "minilm", "zoo": "mlp"}})
    with pytest.raises(ConfigError, match="ratio"):
        load_recipe({"model": {"hf": "minilm"}, "stages": [{"prune_heads": {"ratio": 1.5}}]})
    model = tiny_bert_dir(tmp_path, max_len=128)
    with pytest.raises(ConfigError, match="measured on 'stsb'"):
        run_recipe({"model": {"hf": str(model)}, "data": {"name": "mnist"}}, tmp_path / "r")
