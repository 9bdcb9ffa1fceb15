import math

import torch

from gpt3lab.config import ModelConfig
from gpt3lab.data import WindowLoader, load_data_tokenizer
from gpt3lab.demo import _minimal_sample, split_bpb
from gpt3lab.model import GPT


def test_split_bpb_is_mean_token_loss_over_bytes(tiny_data):
    tok = load_data_tokenizer(tiny_data)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context=32, n_layer=1, d_model=32, n_head=2)).eval()
    val = WindowLoader(tiny_data, "val", 32, 4)
    losses = []
    with torch.no_grad():
        for x, y in val.sequential_batches(1):
            losses.append(model(x, y)[1].item())
    want = sum(losses) / len(losses) * val.num_tokens / (val.num_bytes * math.log(2))
    assert math.isclose(split_bpb(model, val, batch_size=3), want, rel_tol=1e-5)


def test_minimal_sample_is_seeded(tiny_data):
    tok = load_data_tokenizer(tiny_data)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context=32, n_layer=1, d_model=32, n_head=2)).eval()
    a, b = _minimal_sample(model, tok, "The king", 10), _minimal_sample(model, tok, "The king", 10)
    assert a == b and len(tok.encode(a)) >= 1
