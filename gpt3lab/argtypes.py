"""argparse `type=` callables for every size/count option of every command.

Each rejects 0, negatives, non-numbers, NaN/inf and absurd sizes with one line that names the value and
the accepted range (argparse prints it as `argument --flag: ...` and exits 2; no traceback, no runaway).
"""
from __future__ import annotations

import argparse
import math

# Large enough for any real use (2**40 tokens in one shard, 10**12 items), small enough that a typo
# like 1e30 cannot start an endless loop or a giant allocation.
MAX_INT = 2**40


def _parse_int(text: str) -> int:
    try:
        return int(text, 10)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _parse_float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def int_range(lo: int, hi: int = MAX_INT):
    """A whole number in [lo, hi]."""
    def parse(text: str) -> int:
        value = _parse_int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use a whole number in [{lo}, {hi}]")
        return value
    parse.__name__ = f"int in [{lo}, {hi}]"
    return parse


def float_range(lo: float, hi: float = float("inf"), *, lo_open: bool = False, hi_open: bool = False):
    """A finite number in [lo, hi] (either end open when asked)."""
    def parse(text: str) -> float:
        value = _parse_float(text)
        if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: use a number in {left}{lo:g}, {hi:g}{right}")
        return value
    parse.__name__ = "number"
    return parse


positive_int = int_range(1)
nonneg_int = int_range(0)
positive_float = float_range(0.0, lo_open=True)
nonneg_float = float_range(0.0)
seed_int = int_range(0, 2**63 - 1)                   # any seed torch.manual_seed takes
fraction = float_range(0.0, 1.0)                      # [0, 1]
open_fraction = float_range(0.0, 1.0, lo_open=True, hi_open=True)   # (0, 1)


QUANTIZE_MODES = ("none", "bf16", "int8")     # = gpt3lab.model.quant.MODES (not imported: no torch here)


def add_quantize_argument(p: argparse.ArgumentParser) -> None:
    """The --quantize flag of generate, serve, eval and compress (see gpt3lab.model.quant)."""
    p.add_argument("--quantize", default="none", choices=QUANTIZE_MODES,
                   help="weights for inference: none (fp32 as trained, default), bf16, or int8 (CPU only; "
                        "per-channel int8: 2.6x faster decoding of a GPT-2 124M shape on 1 CPU thread, docs/BENCHMARKS.md)")
    p.add_argument("--compile", action="store_true",
                   help="compile the decode step (torch.compile: inductor with freezing on CPU, CUDA graphs on "
                        "GPU; the first start compiles, later starts read the on-disk cache; falls back to eager "
                        "with one line if compilation fails)")
