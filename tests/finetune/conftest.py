import json
import random

import pytest
import torch

from gpt3lab.checkpoint import save_checkpoint
from gpt3lab.config import ModelConfig
from gpt3lab.model import GPT
from gpt3lab.tokenizer import Tokenizer

TEXT = "12+34=46\n57+21=78\n" * 30 + "The quick brown fox jumps over the lazy dog. " * 20


@pytest.fixture(scope="session")
def ft_tok():
    return Tokenizer.train([TEXT], 300)


def tiny_model(tok, context=32, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=tok.vocab_size, context=context, n_layer=2, n_head=2, d_model=32,
                           dropout=dropout))


def write_addition(path, n, seed=0):
    r = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = r.randint(10, 99), r.randint(10, 99)
            f.write(json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) + "\n")
    return path


@pytest.fixture(scope="session")
def base_ckpt(ft_tok, tmp_path_factory):
    """A saved tiny base checkpoint (context 32)."""
    d = tmp_path_factory.mktemp("base") / "ckpt"
    m = tiny_model(ft_tok)
    save_checkpoint(d, m, m.config, ft_tok)
    return d


@pytest.fixture(scope="session")
def add_data(tmp_path_factory):
    return write_addition(tmp_path_factory.mktemp("data") / "add.jsonl", 64)
