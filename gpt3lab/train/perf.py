"""Throughput bookkeeping: FLOPs per token and model-FLOPs utilisation (MFU) against a measured peak."""
from __future__ import annotations

import time

import torch

from gpt3lab import sizing
from gpt3lab.config import ModelConfig

_PEAK_CACHE: dict[tuple[str, str], float] = {}


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token (forward + backward = 3x forward) at the run's context `cfg.context`.

    The one formula, gpt3lab.sizing.training_flops: 6 * N (all parameters, embeddings included) plus
    3x the attention scores and weighted sum, with the exact mean keys per query under the causal
    mask (and the band for banded layers).
    """
    return sizing.training_flops(cfg, 1)["total"]


def measured_peak_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        n: int = 1024, repeats: int = 5) -> float:
    """Best observed FLOP/s of an n x n matmul on `device` in `dtype` (cached per process).

    A practical ceiling for MFU on machines without a datasheet figure (CPUs, shared boxes).
    Draws from a private generator: the global ones drive dropout, and a resumed run restores them
    before this is called (drawing from them here made resumed runs with dropout diverge).
    """
    device = torch.device(device)
    key = (str(device), str(dtype))
    if key not in _PEAK_CACHE:
        gen = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        best = float("inf")
        for _ in range(repeats + 1):                       # first run warms up kernels / caches
            _sync(device)
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        _PEAK_CACHE[key] = 2.0 * n ** 3 / best
    return _PEAK_CACHE[key]


def peak_flops(device: torch.device | str, dtype: torch.dtype) -> float:
    """The FLOP/s that MFU is measured against: a known GPU's datasheet dense 16-bit peak (gpt3lab.sizing.GPUS,
    matched by device name) for bf16/fp16 training, else the best measured matmul (CPUs, unknown GPUs, fp32).

    A 1024^3 matmul is far from a datacenter GPU's peak (58 TFLOP/s measured on an H200 against its 989), so
    on CUDA the measured fallback uses 4096^3."""
    device = torch.device(device)
    if device.type == "cuda":
        if dtype in (torch.bfloat16, torch.float16):
            name = torch.cuda.get_device_name(device).lower()
            for key, gpu in sizing.GPUS.items():
                if key in name:
                    return gpu.peak_flops
        return measured_peak_flops(device, dtype, n=4096)
    return measured_peak_flops(device, dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mfu(tokens_per_s: float, flops_token: float, peak_flops: float) -> float:
    """Achieved training FLOP/s over the peak, in [0, 1] (ideally)."""
    return tokens_per_s * flops_token / peak_flops if peak_flops > 0 else 0.0
