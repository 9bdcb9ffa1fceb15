"""Corpus -> token shards -> (x, y) batches. See gpt3lab.data.prepare and gpt3lab.data.loader.

WindowLoader is imported on first use, so `prepare` and its worker processes never import torch."""
from gpt3lab.data.prepare import load_data_tokenizer, prepare

__all__ = ["WindowLoader", "load_data_tokenizer", "prepare"]


def __getattr__(name: str):
    if name == "WindowLoader":
        from gpt3lab.data.loader import WindowLoader
        return WindowLoader
    raise AttributeError(f"module 'gpt3lab.data' has no attribute {name!r}")
