"""Helpers shared by the fine-tuning tests (a module of its own: `conftest` names clash across test dirs)."""
import json
import random

import torch

from gpt3lab.config import ModelConfig
from gpt3lab.model import GPT


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
