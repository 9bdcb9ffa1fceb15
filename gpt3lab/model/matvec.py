"""Decode-time linear layers: y = x W^T + b for a few rows, from a cached (in, out) copy of W.

On CPU a product of a few rows with nn.Linear's (out, in) weight runs a transposed gemv that reads
memory well below the speed the plain (in, out) layout gets (measured, 1 thread: the 50257 x 384
unembedding 11.7 ms vs 3.8 ms per token; the 124M block weights 36 vs 27 ms). Decoding is bound by
reading the weights, so inference with at most MAX_ROWS rows multiplies by a transposed copy, made
once and rebuilt whenever the weight changes (another tensor, or an in-place update that bumps its
version counter). The copy costs the weight's memory once more; training never uses it. fp32 only:
for bf16 the (out, in) kernel was as fast or faster (unembedding 5.2 vs 8.3 ms).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_ROWS = 16
ENABLED = True     # set False to trade decode speed for the copies' memory


def _transposed(mod: nn.Linear) -> torch.Tensor:
    """mod.weight as a contiguous (in, out) tensor, cached on the module until the weight changes."""
    w = mod.weight
    hit = mod.__dict__.get("_wt_cache")
    # src keeps the old storage alive, so a new weight can never reuse its address unnoticed
    if hit is not None and hit[0].data_ptr() == w.data_ptr() and hit[1] == w._version \
            and hit[0].shape == w.shape and hit[0].dtype == w.dtype:
        return hit[2]
    with torch.no_grad():
        wt = w.detach().t().contiguous()                                    # (in, out)
    mod.__dict__["_wt_cache"] = (w.detach(), w._version, wt)
    return wt


def use_transposed(w: torch.Tensor, x: torch.Tensor) -> bool:
    return (ENABLED and not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == w.dtype == torch.float32
            and x.numel() <= MAX_ROWS * w.shape[1] and type(w) in (nn.Parameter, torch.Tensor))


def linear(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """mod(x) for an nn.Linear (other modules, e.g. LoRA wrappers, are just called), fast for decoding."""
    if type(mod) is not nn.Linear and not isinstance(mod, FastLinear):
        return mod(x)
    if not use_transposed(mod.weight, x):
        return F.linear(x, mod.weight, mod.bias)
    wt = _transposed(mod)
    x2 = x.reshape(-1, x.shape[-1])                                          # (R, in)
    y = x2 @ wt if mod.bias is None else torch.addmm(mod.bias, x2, wt)       # (R, out)
    return y.view(*x.shape[:-1], wt.shape[1])


class FastLinear(nn.Linear):
    """nn.Linear whose few-row inference uses the transposed copy (the tied unembedding: callers such
    as the serving engine apply it directly)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self, x)
