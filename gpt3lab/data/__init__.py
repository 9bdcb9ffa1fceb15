"""Corpus -> token shards -> (x, y) batches. See gpt3lab.data.prepare and gpt3lab.data.loader."""
from gpt3lab.data.loader import WindowLoader
from gpt3lab.data.prepare import load_data_tokenizer, prepare

__all__ = ["WindowLoader", "load_data_tokenizer", "prepare"]
