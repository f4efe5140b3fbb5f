"""STS-B / SST-2 readers and their line-numbered errors; Spearman and SST-2 metrics."""

from __future__ import annotations

import pytest
from nlp_helpers import PAIRS, write_sst2, write_stsb

from dwindle.errors import ConfigError
from dwindle.nlp.evaluate import spearman
from dwindle.nlp.text_data import (
    StsPair,
    load_sst2,
    load_stsb,
    read_sst2,
    read_stsb,
    transfer_sentences,
)


def test_read_stsb_parses_the_original_format(tmp_path):
    path = write_stsb(tmp_path / "sts-dev.csv")
    # the release has rows with 2 extra source columns and no quoting
    with path.open("a") as fh:
        fh.write('main-news\theadlines\t2015\t0009\t1.000\t"Quoted start\tother one\tx\ty\n')
    pairs = read_stsb(path)
    assert len(pairs) == len(PAIRS) + 1
    assert pairs[0] == StsPair("a man is dancing", "a man is dancing", 5.0)
    assert pairs[-1].sentence1 == '"Quoted start' and pairs[-1].score == 1.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a\tb\tc\td\t3.0\tonly one sentence", "line 3: expected at least 7 tab-separated"),
        ("a\tb\tc\td\tfive\ts1\ts2", "line 3: the score (5th field) must be a number"),
        ("a\tb\tc\td\t7.5\ts1\ts2", "line 3: score 7.5 is outside the STS-B range"),
        ("a,b,c,d,3.0,s1,s2", "line 3: expected at least 7 tab-separated"),
    ],
)
def test_read_stsb_reports_the_offending_line(tmp_path, line, message):
    path = write_stsb(tmp_path / "sts.csv", PAIRS[:2])
    with path.open("a") as fh:
        fh.write(line + "\n")
    with pytest.raises(ConfigError) as err:
        read_stsb(path)
    assert message in str(err.value) and "sts.csv" in str(err.value)


def test_read_sst2_and_its_errors(tmp_path):
    rows = read_sst2(write_sst2(tmp_path / "dev.tsv"))
    assert rows[0] == ("a great movie", 1) and len(rows) == 8
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\nfine \t1\nno label here\n")
    with pytest.raises(ConfigError, match=r"bad\.tsv line 3: expected 'sentence<TAB>label'"):
        read_sst2(bad)
    bad.write_text("text,label\n")
    with pytest.raises(ConfigError, match="line 1: expected the GLUE header"):
        read_sst2(bad)


def test_loaders_find_files_under_root_and_name_missing_ones(tmp_path):
    (tmp_path / "stsb").mkdir()
    write_stsb(tmp_path / "stsb" / "sts-train.csv")
    assert len(load_stsb("train", root=tmp_path)) == len(PAIRS)
    with pytest.raises(ConfigError, match="no split 'val'"):
        load_stsb("val", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"sts-dev\.csv"):
        load_stsb("dev", root=tmp_path)
    (tmp_path / "sst2").mkdir()
    write_sst2(tmp_path / "sst2" / "train.tsv")
    assert len(load_sst2("train", root=tmp_path)) == 8


def test_transfer_sentences_are_unique_and_seeded():
    pairs = [StsPair(a, b, s) for a, b, s in PAIRS]
    out = transfer_sentences(pairs, [("a great movie", 1), ("a man is dancing", 0)], seed=1)
    assert len(out) == len(set(out))
    assert "a great movie" in out and "a man is dancing" in out
    assert out == transfer_sentences(pairs, [("a great movie", 1), ("a man is dancing", 0)], seed=1)
    assert out != transfer_sentences(pairs, [("a great movie", 1), ("a man is dancing", 0)], seed=2)
    assert transfer_sentences(pairs, seed=3, limit=4) == transfer_sentences(pairs, seed=3)[:4]


def test_spearman_matches_scipy_convention():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(100.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-100.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(94.868, abs=1e-3)
