"""Causal self-attention: dense (GPT-2) and locally banded (GPT-3's sparse layers).

A banded layer with window W lets the query at position t see keys t-W+1 .. t (W tokens, itself
included). It is computed block by block: each block of queries attends only to the W + block keys
that can reach it, so compute and memory grow with T*W, not T^2.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from gpt3lab.config import ModelConfig
from gpt3lab.attention_spec import AttentionSpec, layer_spec
from gpt3lab.model.matvec import linear


@lru_cache(maxsize=32)
def _band_mask(block: int, window: int, device: torch.device) -> torch.Tensor:
    """Boolean mask (Bq, W+Bq): query a of a block (position s+a) may see key c (position s-W+c).

    The band 0 <= (s+a) - (s-W+c) < W is a < c <= a + W.
    Cached, so built outside inference mode: a mask first made while generating must still be usable
    in a later training step (an inference tensor cannot be saved for backward).
    """
    with torch.inference_mode(False):
        a = torch.arange(block, device=device)[:, None]
        c = torch.arange(window + block, device=device)[None, :]
        return (c > a) & (c <= a + window)


@lru_cache(maxsize=32)
def _window_mask(nb: int, block: int, window: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask (1, nb, Bq, W+Bq) for the CPU kernel: the band, and for the first blocks the
    W zero keys padded in front of position 0 hidden too (key position s-W+c >= 0). Cached: built
    outside inference mode, like _band_mask."""
    with torch.inference_mode(False):
        a = torch.arange(block)[:, None]
        c = torch.arange(window + block)[None, :]
        s = torch.arange(nb)[:, None, None] * block
        ok = (c > a) & (c <= a + window) & (c >= window - s)                  # (nb, Bq, W+Bq)
        return torch.zeros(ok.shape, dtype=dtype).masked_fill_(~ok, float("-inf"))[None]


def _windows(t: torch.Tensor, W: int, Bq: int, nb: int) -> torch.Tensor:
    """(N, T', hs) -> overlapping key windows (N, nb, W+Bq, hs) as a strided view (no copy):
    window j covers positions j*Bq-W .. j*Bq+Bq-1 of t padded with W zero rows in front."""
    N, _, hs = t.shape
    p = F.pad(t, (0, 0, W, 0))                                          # (N, W+T', hs)
    return p.as_strided((N, nb, W + Bq, hs), (p.stride(0), Bq * hs, hs, 1))


def _fold_windows(gw: torch.Tensor, W: int, T: int) -> torch.Tensor:
    """Adjoint of _windows: sum the gradients of overlapping windows back onto positions 0..T-1."""
    N, nb, L, hs = gw.shape
    Bq = L - W
    r = L // Bq                                   # each window spans r chunks of Bq rows
    gw = gw.view(N, nb, r, Bq, hs)
    acc = gw.new_zeros(N, nb + r - 1, Bq, hs)
    for i in range(r):
        acc[:, i:i + nb] += gw[:, :, i]
    return acc.view(N, (nb + r - 1) * Bq, hs)[:, W:W + T]


class _BandedCPU(torch.autograd.Function):
    """Banded attention on PyTorch's CPU flash kernel: one call over all query blocks, each block
    reading its key window through a strided view (no copies), with a hand-written backward that
    folds the window gradients back (the generic unfold/pad/cat backward costs more than the math)."""

    _fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    _bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default

    @staticmethod
    def forward(ctx, q, k, v, W: int, Bq: int):
        B, nh, T, hs = q.shape
        nb = -(-T // Bq)
        Tp = nb * Bq
        if Tp != T:   # whole blocks; padded keys sit after every real query, so the band hides them
            q, k, v = (F.pad(t, (0, 0, 0, Tp - T)) for t in (q, k, v))
        qb = q.reshape(B * nh, nb, Bq, hs)                                  # (B*nh, nb, Bq, hs)
        kw, vw = (_windows(t.reshape(B * nh, Tp, hs), W, Bq, nb) for t in (k, v))  # (B*nh, nb, W+Bq, hs)
        mask = _window_mask(nb, Bq, W, q.dtype)
        out, lse = _BandedCPU._fwd(qb, kw, vw, 0.0, False, attn_mask=mask)
        ctx.save_for_backward(qb, kw, vw, out, lse, mask)
        ctx.dims = (B, nh, T, W)
        return out.reshape(B, nh, Tp, hs)[:, :, :T]

    @staticmethod
    def backward(ctx, g):
        qb, kw, vw, out, lse, mask = ctx.saved_tensors
        B, nh, T, W = ctx.dims
        N, nb, Bq, hs = qb.shape
        if nb * Bq != T:
            g = F.pad(g, (0, 0, 0, nb * Bq - T))
        gq, gk, gv = _BandedCPU._bwd(g.reshape(N, nb, Bq, hs).contiguous(), qb, kw, vw, out, lse, 0.0, False,
                                     attn_mask=mask)
        gq = gq.reshape(B, nh, nb * Bq, hs)[:, :, :T]
        gk, gv = (_fold_windows(t, W, T).view(B, nh, T, hs) for t in (gk, gv))
        return gq, gk, gv, None, None


def _default_block(window: int) -> int:
    # measured at T=2048, W=256 (BENCHMARKS.md): Bq = W/4 balances wasted band work (T*Bq) against
    # the per-block overhead and the (W+Bq)/Bq-fold window gradients
    return window // 4 if window % 4 == 0 and window >= 16 else window


# bf16 training on CPU at short contexts: torch 2.13's flash kernel backward is slower there than the math
# kernel (fwd+bwd, bf16, causal: B16 H4 T128 D32 flash 20.9 ms vs math 8.9 ms; from T=256 flash wins,
# 0.84x at T=256 and 0.13x at T=2048; fp32 flash wins at T=128 too; same error against fp32 either way;
# docs/BENCHMARKS.md, issue 16)
CPU_BF16_MATH_MAX_T = 128


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Dense causal attention, (B, nh, T, hs) -> (B, nh, T, hs): SDPA, with its math kernel where that
    measured faster (CPU, bf16, with gradients, T <= CPU_BF16_MATH_MAX_T)."""
    if (q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] <= CPU_BF16_MATH_MAX_T
            and q.requires_grad and torch.is_grad_enabled()):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                     dropout_p: float = 0.0, block: int | None = None) -> torch.Tensor:
    """Locally banded causal attention in O(T*W). q, k, v: (B, nh, T, hs) -> (B, nh, T, hs).

    Queries go in blocks of `block` rows; a block starting at s needs only keys s-W .. s+block-1,
    so the work is T * (W + block) instead of T^2 / 2. On CPU (fp32/bf16, no dropout) this runs as
    one flash-kernel call over strided key windows with a custom backward; elsewhere the windows are
    cut with `unfold` and autograd derives the backward.
    """
    B, nh, T, hs = q.shape
    W = window
    if W >= T:   # the band covers everything: plain causal attention
        return causal_attention(q, k, v, dropout_p)
    if (q.device.type == "cuda" and dropout_p == 0.0 and q.dtype in (torch.bfloat16, torch.float16)
            and block is None and not torch.compiler.is_compiling() and _flex() is not None):
        return _flex()(q, k, v, block_mask=_flex_band(T, W, q.device))
    Bq = block or _default_block(W)
    if (q.device.type == "cpu" and dropout_p == 0.0 and q.dtype in (torch.float32, torch.bfloat16)
            and W % Bq == 0 and q.dtype == k.dtype == v.dtype):
        return _BandedCPU.apply(q, k, v, W, Bq)
    return _banded_unfold(q, k, v, W, Bq, dropout_p)


@lru_cache(maxsize=1)
def _flex():
    """FlexAttention, compiled once (None where this torch has none). Eager CUDA training in 16 bits runs the
    banded layers on it: at T=2048, W=256 on an H200 it was 1.6x faster than the unfold path (fwd+bwd,
    docs/BENCHMARKS.md, issue 22). Inside torch.compile the unfold path is traced instead (inductor fuses it)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    return torch.compile(flex_attention, dynamic=False)


@lru_cache(maxsize=32)
def _flex_band(T: int, window: int, device: torch.device):
    """The causal band (query i sees keys i-window+1 .. i) as a FlexAttention block mask: blocks wholly
    outside the band are skipped, so the work grows with T * window."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(lambda b, h, qi, ki: (ki <= qi) & (qi - ki < window), None, None, T, T,
                             device=device)


def _banded_unfold(q, k, v, W: int, Bq: int, dropout_p: float) -> torch.Tensor:
    """Portable banded attention: the first W queries are plain causal attention, then blocks of Bq
    queries attend to their W+Bq keys, cut out as overlapping windows by `unfold`."""
    B, nh, T, hs = q.shape
    head = F.scaled_dot_product_attention(q[:, :, :W], k[:, :, :W], v[:, :, :W], is_causal=True,
                                          dropout_p=dropout_p)                    # (B, nh, W, hs)
    nb = -(-(T - W) // Bq)
    pad = W + nb * Bq - T
    if pad:   # whole blocks; padded keys sit after every real query, so the band hides them
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    kk = k.unfold(2, W + Bq, Bq).transpose(-1, -2).reshape(B, nh * nb, W + Bq, hs)  # (B, nh*nb, W+Bq, hs)
    vv = v.unfold(2, W + Bq, Bq).transpose(-1, -2).reshape(B, nh * nb, W + Bq, hs)
    qb = q[:, :, W:].reshape(B, nh * nb, Bq, hs)                                   # (B, nh*nb, Bq, hs)
    y = F.scaled_dot_product_attention(qb, kk, vv, attn_mask=_band_mask(Bq, W, q.device),
                                       dropout_p=dropout_p)
    return torch.cat([head, y.reshape(B, nh, nb * Bq, hs)], dim=2)[:, :, :T]


def spec_attention(spec: AttentionSpec, q, k, v, dropout_p: float = 0.0) -> torch.Tensor:
    """Attention of a whole sequence (no cache) under `spec`, (B, nh, T, hs) -> (B, nh, T, hs): the spec's own
    kernel (dense: SDPA causal; banded: the O(T*W) band), else SDPA with the mask of spec.allowed."""
    if spec.kernel == "causal":
        return causal_attention(q, k, v, dropout_p)
    if spec.kernel == "banded":
        return banded_attention(q, k, v, spec.window, dropout_p=dropout_p)
    pos = torch.arange(q.shape[-2], device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=spec.allowed(pos[:, None], pos[None, :]),
                                          dropout_p=dropout_p)


def reference_attention(q, k, v, window: int | None = None, q_pos=None, k_pos=None) -> torch.Tensor:
    """Naive masked attention (materialises the full T x T scores): the test oracle.

    Query at position i sees key j when j <= i and, for a band, i - j < window.
    """
    Tq, Tk = q.shape[-2], k.shape[-2]
    q_pos = torch.arange(Tk - Tq, Tk, device=q.device) if q_pos is None else q_pos
    k_pos = torch.arange(Tk, device=q.device) if k_pos is None else k_pos
    allowed = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed &= (q_pos[:, None] - k_pos[None, :]) < window
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    att = att.masked_fill(~allowed, float("-inf"))
    return torch.softmax(att.float(), dim=-1).to(q.dtype) @ v


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; GPT-2 parameter names (c_attn = fused QKV, c_proj = output)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, spec: AttentionSpec | None = None):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.d_head, self.d_attn = cfg.n_head, cfg.d_head, cfg.d_attn
        self.spec = spec or layer_spec(cfg, layer_idx)       # which keys a query may see (attention_spec.py)
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_attn, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_attn, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    @property
    def window(self) -> int | None:
        """The spec's horizon (None: dense)."""
        return self.spec.window

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        B, T, _ = x.shape
        # -1 heads: c_attn may hold a subset of the heads (a tensor-parallel shard); d_attn = nh * hs
        q, k, v = linear(self.c_attn, x).chunk(3, dim=2)                            # 3 x (B, T, d_attn)
        q, k, v = (t.view(B, T, -1, self.d_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        p = self.dropout if self.training else 0.0
        if cache is not None:
            y = cache.attend(self.layer_idx, q, k, v, self.spec)
        else:
            y = spec_attention(self.spec, q, k, v, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, -1)                              # (B, T, d_attn)
        return self.resid_dropout(linear(self.c_proj, y))
