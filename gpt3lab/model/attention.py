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

from gpt3lab.config import ModelConfig


@lru_cache(maxsize=32)
def _band_mask(block: int, window: int, device: torch.device) -> torch.Tensor:
    """Boolean mask (Bq, W+Bq): query a of a block (position s+a) may see key c (position s-W+c).

    The band 0 <= (s+a) - (s-W+c) < W is a < c <= a + W.
    """
    a = torch.arange(block, device=device)[:, None]
    c = torch.arange(window + block, device=device)[None, :]
    return (c > a) & (c <= a + window)


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                     dropout_p: float = 0.0, block: int | None = None) -> torch.Tensor:
    """Locally banded causal attention in O(T*W). q, k, v: (B, nh, T, hs) -> (B, nh, T, hs).

    The first W queries see every earlier token, so they are plain causal attention. After that,
    queries go in blocks of `block` (default W); a block starting at s needs only keys s-W .. s+block-1,
    which `unfold` cuts out as overlapping windows, so the work is T * (W + block) instead of T^2.
    """
    B, nh, T, hs = q.shape
    W = window
    if W >= T:   # the band covers everything: plain causal attention
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    Bq = block or W
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
    return torch.cat([head, y.view(B, nh, nb * Bq, hs)], dim=2)[:, :, :T]


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

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.d_head, self.d_attn = cfg.n_head, cfg.d_head, cfg.d_attn
        self.window = cfg.local_window if cfg.is_banded(layer_idx) else None
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_attn, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_attn, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split(self.d_attn, dim=2)                  # 3 x (B, T, d_attn)
        q, k, v = (t.view(B, T, self.n_head, self.d_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        p = self.dropout if self.training else 0.0
        if cache is not None:
            y = cache.attend(self.layer_idx, q, k, v, self.window)
        elif self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            y = banded_attention(q, k, v, self.window, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, self.d_attn)                     # (B, T, d_attn)
        return self.resid_dropout(self.c_proj(y))
