"""GPT forward: shapes, loss, tied weights, names matching GPT-2, training through banded layers."""
import math

import torch
import torch.nn.functional as F

from gpt3lab.config import ModelConfig
from gpt3lab.model import GPT


def _cfg(**kw):
    return ModelConfig(**{**dict(vocab_size=101, context=32, n_layer=2, n_head=2, d_model=16,
                                 attention_pattern="alternating", local_window=4), **kw})


def test_loss_is_mean_cross_entropy_with_ignore_index():
    torch.manual_seed(0)
    model = GPT(_cfg()).eval()
    idx = torch.randint(0, 101, (2, 20))
    tgt = torch.randint(0, 101, (2, 20))
    tgt[0, :5] = -100
    logits, loss = model(idx, tgt)
    assert logits.shape == (2, 20, 101)
    ref = F.cross_entropy(logits.view(-1, 101), tgt.view(-1), ignore_index=-100)
    torch.testing.assert_close(loss, ref)
    # an untrained model predicts roughly uniformly
    assert abs(loss.item() - math.log(101)) < 0.5


def test_lm_head_tied_and_gpt2_key_names():
    model = GPT(_cfg(attention_pattern="dense"))
    assert model.lm_head.weight is model.transformer.wte.weight
    keys = set(model.state_dict())
    for k in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.1.attn.c_attn.weight",
              "transformer.h.1.attn.c_proj.bias", "transformer.h.0.mlp.c_fc.weight", "transformer.ln_f.bias"):
        assert k in keys
    n = sum(p.numel() for p in model.parameters())
    assert model.num_params() == n
    assert model.num_params(non_embedding=True) == n - 101 * 16 - 32 * 16


def test_banded_model_learns_a_copy_task():
    # the next token equals the token 3 back: inside a window of 4, so banded layers can learn it
    torch.manual_seed(0)
    model = GPT(_cfg(vocab_size=16, attention_pattern="banded", n_layer=2, d_model=32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = None
    for step in range(150):
        x = torch.randint(0, 16, (16, 32), generator=g)
        y = torch.full_like(x, -100)
        y[:, 2:] = x[:, :-2]            # target at t is x[t-2], i.e. the token 3 back from t+1
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert first > 2.5 and loss.item() < 0.5


def test_bf16_autocast_forward_close_to_fp32():
    torch.manual_seed(0)
    model = GPT(_cfg()).eval()
    idx = torch.randint(0, 101, (2, 24))
    ref, _ = model(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = model(idx)
    assert (out.float() - ref).abs().max().item() < 0.05
