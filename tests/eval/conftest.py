import pytest
import torch
import torch.nn.functional as F

from gpt3lab.checkpoint import save_checkpoint
from gpt3lab.config import ModelConfig
from gpt3lab.eval.scoring import rolling_windows
from gpt3lab.model import GPT
from gpt3lab.tokenizer import Tokenizer

TEXT = ("The quick brown fox jumps over the lazy dog. What is 12 plus 34? A: 46. "
        "To be, or not to be, that is the question. ") * 20


@pytest.fixture(scope="session")
def tok():
    return Tokenizer.train([TEXT], 300)


def make_model(tok, context=64, pattern="alternating", seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, context=context, n_layer=2, n_head=4, d_model=32,
                      attention_pattern=pattern, local_window=8)
    return GPT(cfg).eval(), cfg


@pytest.fixture(scope="session")
def new_model():
    """make_model(tok, context=64, pattern="alternating", seed=0) -> (model, cfg)."""
    return make_model


@pytest.fixture(scope="session")
def model(tok):
    return make_model(tok)[0]


@pytest.fixture(scope="session")
def ckpt(tok, tmp_path_factory):
    m, cfg = make_model(tok)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "ckpt", m, cfg, tok)


def _independent_nll(model, ids, eot, C, stride):
    """Token by token: each token's NLL given the up-to-(C - stride) (or all, in the first window)
    previous tokens, exactly as the rolling windows see it -- computed one position at a time."""
    seq = [eot] + ids
    total = 0.0
    for start, end, k in rolling_windows(len(ids), C, stride):
        for t in range(end - k, end):                   # predict seq[t+1] from seq[start : t+1]
            logits, _ = model(torch.tensor([seq[start:t + 1]]))
            total -= F.log_softmax(logits[0, -1].double(), -1)[seq[t + 1]].item()
    return total


@pytest.fixture(scope="session")
def independent_nll():
    """_independent_nll(model, ids, eot, C, stride) -> total NLL in nats (reference for perplexity)."""
    return _independent_nll
