"""Banded attention equals the masked reference; tokens outside the band have no influence."""
import pytest
import torch
import torch.nn.functional as F

from gpt3lab.config import ModelConfig
from gpt3lab.model import banded_attention, reference_attention
from gpt3lab.model.attention import CausalSelfAttention, _banded_unfold

CASES = [(64, 16, None), (100, 16, 8), (37, 8, 4), (200, 32, 32), (50, 16, 16), (17, 16, None),
         (9, 2, 1), (9, 1, None), (300, 64, None), (129, 48, 12)]


def _qkv(T, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, T, 8, generator=g, dtype=dtype).requires_grad_() for _ in range(3)]


def _fwd_bwd(fn, q, k, v):
    y = fn(q, k, v)
    grads = torch.autograd.grad(y, (q, k, v), torch.ones_like(y) * torch.linspace(-1, 1, y.shape[-1]))
    return y, grads


@pytest.mark.parametrize("T,W,block", CASES)
def test_banded_equals_reference_values_and_grads(T, W, block):
    q, k, v = _qkv(T)
    y, g = _fwd_bwd(lambda *t: banded_attention(*t, W, block=block), q, k, v)
    yr, gr = _fwd_bwd(lambda *t: reference_attention(*t, W), q, k, v)
    torch.testing.assert_close(y, yr, atol=2e-6, rtol=1e-5)
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b, atol=5e-6, rtol=1e-5)


@pytest.mark.parametrize("T,W,block", [(100, 16, 8), (37, 8, 4), (129, 48, 16)])
def test_portable_unfold_path_equals_reference(T, W, block):
    # the non-CPU/dropout fallback, run here on CPU to keep it honest
    q, k, v = _qkv(T)
    y, g = _fwd_bwd(lambda *t: _banded_unfold(*t, W, block, 0.0), q, k, v)
    yr, gr = _fwd_bwd(lambda *t: reference_attention(*t, W), q, k, v)
    torch.testing.assert_close(y, yr, atol=2e-6, rtol=1e-5)
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b, atol=5e-6, rtol=1e-5)


def test_bf16_close_to_fp32_reference():
    q, k, v = _qkv(150, torch.bfloat16)
    y = banded_attention(q, k, v, 32)
    yr = reference_attention(*(t.float() for t in (q, k, v)), 32)
    assert (y.float() - yr).abs().max().item() < 2e-2


def test_reference_without_window_is_causal_sdpa():
    q, k, v = _qkv(33)
    torch.testing.assert_close(reference_attention(q, k, v),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("pattern,expect_zero", [("banded", True), ("dense", False)])
def test_token_outside_window_has_exactly_zero_gradient(pattern, expect_zero):
    W, T, t = 8, 40, 30
    cfg = ModelConfig(vocab_size=10, context=64, n_layer=1, n_head=2, d_model=16,
                      attention_pattern=pattern, local_window=W)
    torch.manual_seed(0)
    attn = CausalSelfAttention(cfg, layer_idx=0)
    x = torch.randn(1, T, 16, requires_grad=True)
    y = attn(x)
    (gx,) = torch.autograd.grad(y[0, t].sum(), x)
    assert gx[0, t - W + 1].abs().sum() > 0                 # the oldest token inside the band matters
    outside = gx[0, : t - W + 1]                            # t-W and earlier
    if expect_zero:
        assert torch.count_nonzero(outside) == 0
    else:
        assert outside[-1].abs().sum() > 0
    assert torch.count_nonzero(gx[0, t + 1:]) == 0          # causal: no future influence


def test_training_after_inference_mode_reuses_the_cached_band_masks():
    """The band masks are cached; one first built under inference_mode (generating, inspecting) must not
    break a later training step ("Inference tensors cannot be saved for backward")."""
    from gpt3lab.model import attention
    attention._window_mask.cache_clear()
    attention._band_mask.cache_clear()
    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))
    with torch.inference_mode():
        attention.banded_attention(q, k, v, 16)
        attention._band_mask(4, 16, torch.device("cpu"))
    q.requires_grad_(True)
    attention.banded_attention(q, k, v, 16).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    assert not attention._band_mask(4, 16, torch.device("cpu")).is_inference()


@pytest.mark.parametrize("T, grad, dtype, math_kernel", [
    (128, True, torch.bfloat16, True),      # bf16 training at short context: the math kernel (faster there)
    (129, True, torch.bfloat16, False),     # longer: flash
    (128, False, torch.bfloat16, False),    # no gradients (inference): flash
    (128, True, torch.float32, False),      # fp32: flash
])
def test_causal_attention_picks_the_kernel_measured_faster_and_agrees(monkeypatch, T, grad, dtype, math_kernel):
    import gpt3lab.model.attention as attention

    used = []
    real = attention.sdpa_kernel
    monkeypatch.setattr(attention, "sdpa_kernel", lambda b: used.append(b) or real(b))
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, T, 16) for _ in range(3))
    qd, kd, vd = (t.to(dtype).requires_grad_(grad) for t in (q, k, v))
    y = attention.causal_attention(qd, kd, vd)
    assert bool(used) == math_kernel
    want = attention.reference_attention(q.detach(), k.detach(), v.detach())
    assert torch.allclose(y.float(), want, atol=3e-2 if dtype == torch.bfloat16 else 1e-5)
    if grad:
        y.float().pow(2).sum().backward()
        q32 = q.detach().clone().requires_grad_()
        attention.reference_attention(q32, k.detach(), v.detach()).pow(2).sum().backward()
        assert torch.allclose(qd.grad.float(), q32.grad, atol=5e-2 if dtype == torch.bfloat16 else 1e-4)
