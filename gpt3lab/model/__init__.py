"""The GPT model, its attention variants and its KV cache."""
from gpt3lab.model.attention import banded_attention, reference_attention
from gpt3lab.model.gpt import GPT
from gpt3lab.errors import ContextOverflowError
from gpt3lab.model.kv_cache import KVCache

__all__ = ["GPT", "KVCache", "ContextOverflowError", "banded_attention", "reference_attention"]
