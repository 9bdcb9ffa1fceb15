"""Decode-time linear layers: y = x W^T + b for a few rows, with W stored column-major.

On CPU a product of a few rows with nn.Linear's (out, in) row-major weight runs a transposed gemv that
reads memory well below the speed of the (in, out) layout (measured, 1 thread: the 50257 x 384
unembedding 11.7 ms vs 3.8 ms per token; the 124M block weights 36 vs 27 ms). Decoding is bound by
reading the weights, so the inference preparation step (quant.prepare_for_inference, mode "none")
calls `relayout`, which re-lays each weight's storage out as (in, out) in place (the parameter keeps its
(out, in) shape: it becomes a transposed view). No second copy is kept; in-place optimizer updates keep
the layout, training works on either layout (safetensors saves contiguous copies). A forward pass never
changes a weight: an unprepared weight simply takes F.linear. fp32 only: for bf16 the (out, in) kernel
was as fast or faster (unembedding 5.2 vs 8.3 ms).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_ROWS = 16


def _eligible(w: torch.Tensor) -> bool:
    return type(w) in (nn.Parameter, torch.Tensor) and w.device.type == "cpu" and w.dtype == torch.float32


def relayout(model: nn.Module) -> None:
    """Give every eligible fp32 CPU linear weight of `model` (in, out) storage, in place (once).

    Done by the inference preparation step only, never by a forward pass, and before other threads read
    the weights. The tensors stay ordinary (not inference-mode) ones, so the model can still be trained.
    """
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if isinstance(mod, nn.Linear) and _eligible(w) and not w.t().is_contiguous():
            with torch.inference_mode(False), torch.no_grad():
                w.data = w.detach().clone().t().contiguous().t()


def use_transposed(w: torch.Tensor, x: torch.Tensor) -> bool:
    return (not torch.is_grad_enabled() and x.dtype == torch.float32 and _eligible(w)
            and x.numel() <= MAX_ROWS * w.shape[1] and w.t().is_contiguous())


def linear(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """mod(x) for an nn.Linear (other modules, e.g. LoRA wrappers or int8 layers, are just called)."""
    if type(mod) is not nn.Linear and not isinstance(mod, FastLinear):
        return mod(x)
    if not use_transposed(mod.weight, x):
        # a plain nn.Linear through its __call__: hooks (tensor parallelism's input/output layouts) run
        return F.linear(x, mod.weight, mod.bias) if isinstance(mod, FastLinear) else mod(x)
    wt = mod.weight.t()                                                      # (in, out) contiguous
    x2 = x.reshape(-1, x.shape[-1])                                          # (R, in)
    y = x2 @ wt if mod.bias is None else torch.addmm(mod.bias, x2, wt)       # (R, out)
    return y.view(*x.shape[:-1], wt.shape[1])


class FastLinear(nn.Linear):
    """nn.Linear whose few-row inference uses the (in, out) layout once prepared (the tied unembedding:
    callers such as the serving engine apply it directly)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self, x)
