"""Decode fast path: the transposed weight copy gives nn.Linear's result and follows weight changes;
GPT.hidden is forward without the unembedding."""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt3lab.config import ModelConfig
from gpt3lab.model import GPT
from gpt3lab.model.matvec import linear


def test_fast_linear_matches_and_follows_in_place_updates():
    torch.manual_seed(0)
    lin = nn.Linear(24, 40)
    x = torch.randn(3, 1, 24)
    with torch.inference_mode():
        torch.testing.assert_close(linear(lin, x), F.linear(x, lin.weight, lin.bias))
    with torch.no_grad():
        lin.weight.mul_(2.0)                                     # optimizer-style in-place update
    with torch.inference_mode():
        torch.testing.assert_close(linear(lin, x), F.linear(x, lin.weight, lin.bias))
    lin.weight = nn.Parameter(torch.randn(40, 24))               # a new tensor
    with torch.no_grad():
        torch.testing.assert_close(linear(lin, x), F.linear(x, lin.weight, lin.bias))


def test_fast_path_only_without_grad_and_for_few_rows():
    lin = nn.Linear(8, 5)
    x = torch.randn(2, 8, requires_grad=True)
    linear(lin, x).sum().backward()                              # grad mode: plain F.linear, grads flow
    assert x.grad is not None and lin.weight.grad is not None
    assert "_wt_cache" not in lin.__dict__
    with torch.no_grad():
        linear(lin, torch.randn(100, 8))                         # many rows: plain path, no copy
    assert "_wt_cache" not in lin.__dict__


def test_hidden_then_lm_head_is_forward_and_decode_matches_after_training_step():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=97, context=16, n_layer=2, n_head=2, d_model=16)).eval()
    idx = torch.randint(0, 97, (2, 9))
    with torch.inference_mode():
        h = model.hidden(idx)
        assert h.shape == (2, 9, 16)
        torch.testing.assert_close(model.lm_head(h), model(idx)[0])
        last = model(idx, last_only=True)[0]                     # decode path (2 rows: transposed copy)
    # a training step changes the weights in place: the next decode must see them
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(idx, idx)[1].backward()
    opt.step()
    ref = copy.deepcopy(model)
    with torch.inference_mode():
        new_last = model(idx, last_only=True)[0]
        torch.testing.assert_close(new_last, ref(idx)[0][:, -1:], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(new_last, last)
