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


__all__ = ["DEVICE_HELP", "resolve_device"]
