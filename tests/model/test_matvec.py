"""Decode fast path: the column-major weight gives nn.Linear's result, follows weight changes, keeps no
copy and leaves the model trainable; only the explicit preparation step lays weights out (a forward pass
never does); GPT.hidden is forward without the unembedding."""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt3lab.config import ModelConfig
from gpt3lab.model import GPT
from gpt3lab.model.matvec import linear, relayout, use_transposed
from gpt3lab.model.quant import prepare_for_inference


def _tiny(seed=0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=97, context=16, n_layer=2, n_head=2, d_model=16)).eval()


def test_fast_linear_matches_and_follows_in_place_updates():
    torch.manual_seed(0)
    lin = nn.Linear(24, 40)
    relayout(lin)
    x = torch.randn(3, 1, 24)
    with torch.inference_mode():
        assert use_transposed(lin.weight, x)
        torch.testing.assert_close(linear(lin, x), F.linear(x, lin.weight, lin.bias))
    with torch.no_grad():
        lin.weight.mul_(2.0)                                     # optimizer-style in-place update
    with torch.inference_mode():
        torch.testing.assert_close(linear(lin, x), F.linear(x, lin.weight, lin.bias))
    lin.weight = nn.Parameter(torch.randn(40, 24))               # a new tensor: plain path until prepared
    with torch.no_grad():
        torch.testing.assert_close(linear(lin, x), F.linear(x, lin.weight, lin.bias))
    assert lin.weight.is_contiguous()


def test_fast_path_only_without_grad_and_for_few_rows():
    lin = nn.Linear(8, 5)
    relayout(lin)
    x = torch.randn(2, 8, requires_grad=True)
    assert not use_transposed(lin.weight, x)                     # grad mode: plain F.linear, grads flow
    linear(lin, x).sum().backward()
    assert x.grad is not None and lin.weight.grad is not None
    with torch.no_grad():
        assert not use_transposed(lin.weight, torch.randn(100, 8))    # many rows: plain path


def test_forward_never_changes_weights():
    """Before #12 the first few-row no-grad call re-laid every weight out in place."""
    model = _tiny()
    idx = torch.randint(0, 97, (1, 5))
    strides = {n: p.stride() for n, p in model.named_parameters()}
    with torch.inference_mode():
        model(idx, last_only=True)
        model(idx[:, :1], last_only=True)
    assert {n: p.stride() for n, p in model.named_parameters()} == strides


def test_prepare_is_in_place_without_copy_and_stays_trainable():
    model = _tiny()
    idx = torch.randint(0, 97, (1, 5))
    before = sum(p.numel() for p in model.parameters())
    ref = model(idx)[0]
    prepare_for_inference(model)
    w = model.transformer.h[0].mlp.c_fc.weight
    assert w.shape == (64, 16) and w.t().is_contiguous()           # same shape, (in, out) storage
    lins = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert lins and all(m.weight.t().is_contiguous() for m in lins)
    assert model.lm_head.weight is model.transformer.wte.weight    # still tied
    assert sum(p.numel() for p in model.parameters()) == before
    ptrs = [m.weight.data_ptr() for m in lins]
    with torch.inference_mode():
        model(idx, last_only=True)                                # decoding moves nothing
    assert ptrs == [m.weight.data_ptr() for m in lins]
    torch.testing.assert_close(model(idx)[0], ref)
    model.train()
    model(idx, idx)[1].backward()                                 # not an inference tensor: trains
    assert w.grad is not None and w.grad.shape == w.shape


def test_training_after_generating_keeps_working():
    from gpt3lab.generate import generate
    from gpt3lab.tokenizer import Tokenizer

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=257, context=16, n_layer=2, n_head=2, d_model=16)).eval()
    tok = Tokenizer({bytes([i]): i for i in range(256)}, name="bytes")
    idx = torch.randint(0, 257, (4, 12))
    generate(model, tok, "ab", max_tokens=3, temperature=0.0)
    assert model.transformer.h[0].mlp.c_fc.weight.t().is_contiguous()    # generate prepared it
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(5):
        loss = model(idx, idx)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with torch.inference_mode():                                  # the decode path sees the new weights
        torch.testing.assert_close(model.eval()(idx[:1], last_only=True)[0], copy.deepcopy(model)(idx[:1])[0][:, -1:],
                                   atol=1e-5, rtol=1e-4)


def test_hidden_then_lm_head_is_forward_and_decode_follows_training():
    model = _tiny()
    idx = torch.randint(0, 97, (2, 9))
    prepare_for_inference(model)
    with torch.inference_mode():
        h = model.hidden(idx)
        assert h.shape == (2, 9, 16)
        torch.testing.assert_close(model.lm_head(h), model(idx)[0])
        last = model(idx, last_only=True)[0]                     # decode path (2 rows: transposed layout)
    # a training step changes the weights in place: the next decode must see them
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(idx, idx)[1].backward()
    opt.step()
    ref = copy.deepcopy(model)
    with torch.inference_mode():
        new_last = model(idx, last_only=True)[0]
        torch.testing.assert_close(new_last, ref(idx)[0][:, -1:], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(new_last, last)
