"""Shared by the generation tests: a byte-level tokenizer and small random GPTs with varied greedy paths.

A module of its own (not conftest): conftest names clash across test directories.
"""
import time

import torch

from gpt3lab.config import ModelConfig
from gpt3lab.model import GPT
from gpt3lab.tokenizer import Tokenizer

BYTES = Tokenizer({bytes([i]): i for i in range(256)}, name="bytes")   # 256 byte tokens + eot (256)


def tiny(pattern: str = "dense", seed: int = 0, context: int = 64, n_layer: int = 4, local_window: int = 5) -> GPT:
    """A random byte-vocab GPT; weights wider than the 0.02 init so greedy paths vary without near-ties."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=257, context=context, n_layer=n_layer, n_head=2, d_model=32,
                      attention_pattern=pattern, local_window=local_window)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


def wait_idle(engine, timeout: float = 10.0) -> None:
    """Block until the engine has nothing running or waiting (fail after `timeout` seconds)."""
    t0 = time.time()
    while engine.stats()["running"] or engine.stats()["waiting"]:
        assert time.time() - t0 < timeout
        time.sleep(0.01)
