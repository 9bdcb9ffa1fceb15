"""Inference preparation: the decode-time weight layout, and bf16 or int8 weights for fast CPU decoding.

    prepare_for_inference(model, quantize="int8")   # in place, returns the model; the engine, generate()
                                                    # and inspect() call it with quantize=None (keep the mode)

Decoding on CPU is bound by reading the weights, so fewer bytes per weight is where the speed is.

  none  fp32 as trained: every fp32 CPU linear weight gets (in, out) storage (matvec.relayout). The
        parameters keep their shapes and stay trainable, so training after generating works.
  bf16  the whole model (weights, activations, KV cache) in bfloat16.
  int8  every Linear of the blocks and the tied unembedding becomes torch.ao's dynamic quantized Linear
        (fbgemm/x86 kernels): int8 weights with one symmetric scale per output channel, activations
        quantized per row-block on the fly, int32 accumulation. Measured at the 124M shapes (1 thread):
        3.6x faster than the fp32 (in, out) matvec for one row, 6x for 16 rows; torchao's int8 configs
        (eager CPU) and aten._weight_int8pack_mm were 3-6x slower than fp32 (docs/BENCHMARKS.md, #12).
        The embedding table stays fp32 (a lookup reads one row). CPU only, inference only.

A prepared model records its mode in `model.quantize_mode`; preparing again with the same mode is a
no-op, and a model prepared with "none" can still be quantized. Anything else is a QuantizeError.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from gpt3lab.errors import UserError
from gpt3lab.model import matvec

MODES = ("none", "bf16", "int8")


class QuantizeError(UserError, ValueError):
    """A quantize mode that does not exist or cannot be applied to this model."""


def check_mode(mode) -> str:
    """`mode` if it is one of MODES, else a QuantizeError naming it."""
    if mode not in MODES:
        raise QuantizeError(f"quantize={mode!r} is not a mode: use one of {', '.join(MODES)}")
    return mode


def mode_of(model: nn.Module) -> str:
    """The mode `model` was prepared with ("none" for a model never prepared)."""
    return getattr(model, "quantize_mode", "none")


def prepare_for_inference(model: nn.Module, quantize: str | None = None) -> nn.Module:
    """Make `model` ready for fast inference, in place. quantize None keeps the mode it has ("none" at first).

    Call it before decoding threads start: it rewrites weights (servers prepare once, at start-up).
    """
    current = getattr(model, "quantize_mode", None)
    mode = (current or "none") if quantize is None else check_mode(quantize)
    if current not in (None, "none") and mode != current:
        raise QuantizeError(f"the model was prepared with quantize={current!r} and cannot become {mode!r}; "
                            f"load the checkpoint again with quantize={mode!r}")
    if mode == "none":
        matvec.relayout(model)      # cheap when done already; picks up weights replaced since
    elif mode != current:
        _check_device(model, mode)
        model.eval()
        if mode == "bf16":
            model.to(torch.bfloat16)
        else:
            _to_int8(model)
    model.quantize_mode = mode
    return model


def _check_device(model: nn.Module, mode: str) -> None:
    dev = model.transformer.wte.weight.device
    if mode == "int8" and dev.type != "cpu":
        raise QuantizeError(f"quantize='int8' runs on CPU only (its kernels are fbgemm/oneDNN) and the model is "
                            f"on {dev}; use --device cpu, or quantize='bf16' on {dev.type}")


def _int8_linear(lin: nn.Linear) -> nn.Module:
    """torch.ao's dynamic int8 Linear with per-output-channel symmetric weight scales, from `lin`."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    plain = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
    plain.weight, plain.bias = lin.weight, lin.bias     # shared, not copied (from_float wants exactly nn.Linear)
    plain.qconfig = per_channel_dynamic_qconfig
    with warnings.catch_warnings():     # torch 2.13 flags quantized tensors as deprecated; still its kernels
        warnings.simplefilter("ignore", UserWarning)
        return DynamicInt8Linear.from_float(plain)


def _to_int8(model: nn.Module) -> None:
    """Replace each Linear (LoRA adapters merged first) and the tied lm_head by its int8 version."""
    from gpt3lab.model.lora import merge_lora

    merge_lora(model)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, _int8_linear(getattr(owner, child)))     # lm_head: wte.weight stays for lookups


__all__ = ["MODES", "QuantizeError", "check_mode", "mode_of", "prepare_for_inference"]
