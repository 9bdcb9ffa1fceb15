"""Decode fast path: the column-major weight gives nn.Linear's result, follows weight changes, keeps no
copy and leaves the model trainable; GPT.hidden is forward without the unembedding."""
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
    assert lin.weight.is_contiguous()                            # layout untouched
    with torch.no_grad():
        linear(lin, torch.randn(100, 8))                         # many rows: plain path
    assert lin.weight.is_contiguous()


def test_relayout_is_in_place_without_copy_and_stays_trainable():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=97, context=16, n_layer=2, n_head=2, d_model=16)).eval()
    idx = torch.randint(0, 97, (1, 5))
    before = sum(p.numel() for p in model.parameters())
    ref = model(idx)[0]
    with torch.inference_mode():
        model(idx, last_only=True)
    w = model.transformer.h[0].mlp.c_fc.weight
    assert w.shape == (64, 16) and w.t().is_contiguous()           # same shape, (in, out) storage
    assert model.lm_head.weight is model.transformer.wte.weight    # still tied
    assert sum(p.numel() for p in model.parameters()) == before
    assert all(not k.startswith("_") for m in model.modules() for k in m.__dict__ if "cache" in k)
    torch.testing.assert_close(model(idx)[0], ref)
    model.train()
    model(idx, idx)[1].backward()                                 # not an inference tensor: trains
    assert w.grad is not None and w.grad.shape == w.shape


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


def test_prepare_for_decode_relays_everything_up_front():
    from gpt3lab.model.matvec import prepare_for_decode

    model = GPT(ModelConfig(vocab_size=97, context=16, n_layer=2, n_head=2, d_model=16)).eval()
    idx = torch.randint(0, 97, (1, 5))
    ref = model(idx)[0]
    prepare_for_decode(model)
    lins = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert lins and all(m.weight.t().is_contiguous() for m in lins)
    ptrs = [m.weight.data_ptr() for m in lins]
    with torch.inference_mode():
        model(idx, last_only=True)                                # decoding moves nothing any more
    assert ptrs == [m.weight.data_ptr() for m in lins]
    torch.testing.assert_close(model(idx)[0], ref)
