"""Fixtures shared across test directories: a tiny prepared corpus (BPE-300, a few small documents)."""
import random

import pytest

WORDS = ("the king and queen of the realm went to the castle where a knight spoke of war and peace "
         "while the fool sang songs of love to the lady in the garden by the river").split()


def _doc(rng: random.Random, n_lines: int) -> str:
    lines = []
    for _ in range(n_lines):
        start = rng.randrange(len(WORDS))
        lines.append(" ".join(WORDS[(start + k) % len(WORDS)] for k in range(rng.randint(4, 10))).capitalize() + ".")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """DATA_DIR with train/val splits (whole documents) tokenized by a BPE of 300 tokens."""
    from gpt3lab.data import prepare

    root = tmp_path_factory.mktemp("corpus")
    src = root / "src"
    src.mkdir()
    rng = random.Random(0)
    for i in range(8):
        (src / f"doc{i}.txt").write_text(_doc(rng, 120))
    out = root / "data"
    prepare([str(src)], out, "bpe:300", val_fraction=0.25, seed=0, progress=False)
    return out
