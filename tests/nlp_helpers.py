"""A tiny randomly initialised BERT sentence encoder, built offline for the fast NLP tests."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = [
    "a",
    "man",
    "woman",
    "child",
    "is",
    "are",
    "dancing",
    "riding",
    "horse",
    "playing",
    "guitar",
    "the",
    "dog",
    "cat",
    "runs",
    "eats",
    "food",
    "good",
    "bad",
    "movie",
    "great",
    "awful",
    "film",
    "fun",
    "boring",
    "plays",
    "music",
    "on",
    "in",
    "with",
    "and",
    "very",
    "not",
    "it",
    "was",
]

PAIRS = [
    ("a man is dancing", "a man is dancing", 5.0),
    ("a man is playing guitar", "a man plays the guitar", 4.2),
    ("a woman is riding a horse", "a child is riding a horse", 3.1),
    ("the dog runs", "the cat eats food", 0.8),
    ("a cat is playing", "a dog is playing", 2.5),
    ("the man eats food", "a woman plays music", 0.2),
    ("a child is dancing", "a child is dancing on the horse", 3.6),
    ("the dog is eating", "the dog eats food", 4.6),
]

SENTIMENT = [
    ("a great movie", 1),
    ("a very good film", 1),
    ("fun and great", 1),
    ("it was good", 1),
    ("an awful movie", 0),
    ("a very bad film", 0),
    ("boring and bad", 0),
    ("it was not good", 0),
]


def write_stsb(path: Path, pairs=PAIRS) -> Path:
    lines = [
        f"main-captions\tMSRvid\t2012test\t{i:04d}\t{score:.3f}\t{s1}\t{s2}"
        for i, (s1, s2, score) in enumerate(pairs)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_sst2(path: Path, rows=SENTIMENT) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in rows))
    return path


def tiny_bert_dir(
    root: Path, *, layers: int = 2, heads: int = 4, hidden: int = 32, max_len: int = 48
) -> Path:
    """A sentence-transformers style folder: BERT config + random weights + WordPiece vocab."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = root / "tiny-bert"
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(str(folder))
    config = BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=max(64, max_len),
        pad_token_id=0,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_len}))
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                },
            ]
        )
    )
    return folder
