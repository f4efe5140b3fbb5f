"""STS-B and SST-2 readers for the original release files, with line-numbered errors.

STS-B (Cer et al. 2017): tab-separated, no header, fields genre, source, year, id, score
(0-5), sentence1, sentence2 and sometimes extra source columns; train/dev/test share it.
SST-2 (GLUE): a ``sentence<TAB>label`` header, then one sentence and its 0/1 label per line.
Default root: ``../shared/data/<stsb|sst2>`` (see :mod:`dwindle.data.paths`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dwindle.data.paths import locate
from dwindle.errors import ConfigError

__all__ = [
    "StsPair",
    "load_sst2",
    "load_stsb",
    "read_sst2",
    "read_stsb",
    "transfer_sentences",
]

_STSB_FILES = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}
_SST2_FILES = {"train": "train.tsv", "dev": "dev.tsv"}
_STSB_SOURCE = "http://ixa2.si.ehu.eus/stswiki (stsbenchmark.tar.gz)"
_SST2_SOURCE = "https://gluebenchmark.com/tasks (SST-2)"


@dataclass(frozen=True)
class StsPair:
    """One STS-B pair: two sentences and the gold similarity score (0-5)."""

    sentence1: str
    sentence2: str
    score: float


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} does not exist or is not a file")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{str(path)!r} is not UTF-8 text ({exc.reason})") from None


def read_stsb(path: str | os.PathLike[str]) -> list[StsPair]:
    """Pairs of an STS-B file in the original tab-separated format (train, dev or test)."""
    p = Path(path)
    pairs = []
    for number, line in enumerate(_lines(p), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")  # no quoting: the release has unbalanced quotes
        where = f"{p.name} line {number}"
        if len(fields) < 7:
            raise ConfigError(
                f"{where}: expected at least 7 tab-separated fields (genre, source, year, id, "
                f"score, sentence1, sentence2) as in the original STS-B release, got "
                f"{len(fields)}: {line[:80]!r}"
            )
        try:
            score = float(fields[4])
        except ValueError:
            raise ConfigError(
                f"{where}: the score (5th field) must be a number between 0 and 5, got "
                f"{fields[4]!r}"
            ) from None
        if not 0.0 <= score <= 5.0:
            raise ConfigError(f"{where}: score {score} is outside the STS-B range 0-5")
        s1, s2 = fields[5].strip(), fields[6].strip()
        if not s1 or not s2:
            raise ConfigError(f"{where}: sentence1 or sentence2 is empty")
        pairs.append(StsPair(s1, s2, score))
    if not pairs:
        raise ConfigError(f"{str(p)!r} holds no STS-B pairs")
    return pairs


def read_sst2(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """``(sentence, label)`` rows of a GLUE SST-2 TSV file (header ``sentence\\tlabel``)."""
    p = Path(path)
    lines = _lines(p)
    if not lines or lines[0].strip().split("\t") != ["sentence", "label"]:
        head = lines[0][:60] if lines else ""
        raise ConfigError(
            f"{p.name} line 1: expected the GLUE header 'sentence<TAB>label', got {head!r}"
        )
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or fields[1].strip() not in ("0", "1"):
            raise ConfigError(
                f"{p.name} line {number}: expected 'sentence<TAB>label' with label 0 or 1, "
                f"got {line[:80]!r}"
            )
        rows.append((fields[0].strip(), int(fields[1])))
    return rows


def _folder(name: str, files: dict[str, str], split: str, root: object, source: str) -> Path:
    if split not in files:
        raise ConfigError(f"{name} has no split {split!r}; choose one of {', '.join(files)}")
    wanted = files[split]
    folder = locate(
        name,
        None if root is None else str(root),
        lambda d: [] if (d / wanted).is_file() else [wanted],
        expected=[wanted],
        source=source,
    )
    return folder / wanted


def load_stsb(split: str = "dev", root: str | os.PathLike[str] | None = None) -> list[StsPair]:
    """STS-B ``split`` from ``root`` (default ``../shared/data/stsb``)."""
    return read_stsb(_folder("stsb", _STSB_FILES, split, root, _STSB_SOURCE))


def load_sst2(
    split: str = "dev", root: str | os.PathLike[str] | None = None
) -> list[tuple[str, int]]:
    """SST-2 ``split`` from ``root`` (default ``../shared/data/sst2``)."""
    return read_sst2(_folder("sst2", _SST2_FILES, split, root, _SST2_SOURCE))


def transfer_sentences(
    stsb: Sequence[StsPair] = (),
    sst2: Sequence[tuple[str, int]] = (),
    *,
    limit: int | None = None,
    seed: int = 0,
) -> list[str]:
    """Unique sentences of STS-B pairs and SST-2 rows (labels unused), shuffled with ``seed``."""
    seen: dict[str, None] = {}
    for pair in stsb:
        seen.setdefault(pair.sentence1)
        seen.setdefault(pair.sentence2)
    for sentence, _ in sst2:
        seen.setdefault(sentence)
    sentences = list(seen)
    random.Random(seed).shuffle(sentences)
    return sentences[:limit] if limit is not None else sentences
