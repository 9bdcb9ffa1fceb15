import pytest
import torch

from gpt3lab.checkpoint import save_checkpoint
from gpt3lab.config import ModelConfig
from gpt3lab.model import GPT
from gpt3lab.tokenizer import Tokenizer

from ft_helpers import tiny_model, write_addition  # noqa: F401

TEXT = "12+34=46\n57+21=78\n" * 30 + "The quick brown fox jumps over the lazy dog. " * 20


@pytest.fixture(scope="session")
def ft_tok():
    return Tokenizer.train([TEXT], 300)


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
