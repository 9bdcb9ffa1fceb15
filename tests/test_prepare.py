"""Streaming, parallel `prepare`: same tokens as the original single-process prepare, for any worker count
and input format; bounded memory; atomic shards; the output-directory marker; option validation."""
from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest

from gpt3lab.data import prepare

DOCS = [f"Document {i}: " + " ".join(f"word{(i * 7 + j) % 97} é✓" for j in range(300)) + "\n"
        for i in range(12)]


def _big_doc() -> str:
    rng = random.Random(5)
    words = ["the", "king", "é✓", "  ", "\n", "\n\n", " \n", "12", "x\t", "<|endoftext|>", "ROMEO:", "’tis"]
    return "".join(rng.choice(words) + rng.choice([" ", "", "\n"]) for _ in range(600_000))


def _write_corpus(d):
    d.mkdir()
    for i, t in enumerate(DOCS[:8]):
        (d / f"doc{i:02d}.txt").write_text(t, encoding="utf-8")
    with open(d / "more.jsonl", "w", encoding="utf-8") as f:
        for t in DOCS[8:]:
            f.write(json.dumps({"text": t, "id": 1}) + "\n")
    (d / "zbig.txt").write_text(_big_doc(), encoding="utf-8")
    return d


def _tokens(data_dir, split="train") -> np.ndarray:
    h = json.loads((data_dir / f"{split}.json").read_text())
    return np.concatenate([np.fromfile(data_dir / s["file"], dtype=h["dtype"]) for s in h["shards"]])


@pytest.fixture(scope="module")
def golden_corpus(tmp_path_factory):
    return _write_corpus(tmp_path_factory.mktemp("golden") / "c")


# sha256 of the train tokens the original (whole-corpus, single-process) prepare wrote for this corpus with
# val_fraction=0: 12 documents joined by <|endoftext|>, including a 2.5 MB document that is chunked.
GOLDEN = (1323305, "bad7570661201c87c743753900c4eae2983de16638b6c1648b0b327d4544c92f")


def test_tokens_equal_original_prepare(golden_corpus, tmp_path):
    prepare([str(golden_corpus)], tmp_path, "gpt2", val_fraction=0.0, progress=False)
    toks = _tokens(tmp_path)
    assert (len(toks), hashlib.sha256(toks.astype("<u2").tobytes()).hexdigest()) == GOLDEN
