"""The one `--device` resolver: every command takes cpu, cuda, cuda:N, mps or auto (the default).

auto picks cuda:LOCAL_RANK (so each torchrun process takes its own GPU) when CUDA is available, else
cpu. An unknown name or a device this machine lacks is a ConfigError naming the value and the fix,
never a torch traceback.
"""
from __future__ import annotations

import os

import torch

from gpt3lab.errors import ConfigError

DEVICE_HELP = "cpu, cuda, cuda:N, mps or auto (default: cuda when available, else cpu)"


def resolve_device(name: str | torch.device = "auto", flag: str = "--device") -> torch.device:
    """The torch.device `name` means on this machine; ConfigError (naming `flag`) when it is not usable."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{flag} {name!r} is not a device; use {DEVICE_HELP}") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"{flag} {name!r}: this machine has no CUDA device; use {flag} cpu (or auto)")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"{flag} {name!r}: only cuda:0..cuda:{n - 1} exist here")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{flag} {name!r}: MPS is not available on this machine; use {flag} cpu (or auto)")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise ConfigError(f"{flag} {name!r}: unsupported device type; use {DEVICE_HELP}")
    return dev


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 in hardware (x86 AVX512-BF16 or AMX-BF16, read from /proc/cpuinfo;
    False where that file is missing). There bf16 autocast trains the demo ~1.3x faster than fp32 at the
    same loss per step (docs/BENCHMARKS.md); without it oneDNN emulates bf16 and fp32 is the faster choice."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[-1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


__all__ = ["DEVICE_HELP", "cpu_has_native_bf16", "resolve_device"]
