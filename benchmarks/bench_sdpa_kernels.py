"""SDPA's flash vs math kernel on CPU, causal, forward + backward, fp32 and bf16, at the training shapes
from the demo (T=128) to GPT-3's context (T=2048): the figures behind
`gpt3lab.model.attention.CPU_BF16_MATH_MAX_T` (bf16 training at T <= 128 uses the math kernel).

Kernels alternate within each round; prints the median ms per fwd+bwd and flash/math.

    python benchmarks/bench_sdpa_kernels.py [--rounds 9] [--threads 0]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [(16, 4, 128, 32), (8, 4, 256, 32), (4, 12, 512, 64), (2, 12, 1024, 64), (1, 12, 2048, 64)]
KERNELS = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}


def fwd_bwd(backend, q, k, v) -> float:
    t = time.perf_counter()
    with sdpa_kernel(backend):
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    y.sum().backward()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds (median ms fwd+bwd)")
    print(f"{'dtype':9} {'B,H,T,D':16} {'flash':>8} {'math':>8} {'flash/math':>10}")
    for dtype in (torch.float32, torch.bfloat16):
        for shape in SHAPES:
            torch.manual_seed(0)
            q, k, v = (torch.randn(*shape, dtype=dtype, requires_grad=True) for _ in range(3))
            ts = {n: [] for n in KERNELS}
            for b in KERNELS.values():
                fwd_bwd(b, q, k, v)                                  # warm-up
            for _ in range(args.rounds):
                for n, b in KERNELS.items():
                    ts[n].append(fwd_bwd(b, q, k, v))
            f, m = (statistics.median(ts[n]) * 1e3 for n in KERNELS)
            print(f"{str(dtype).split('.')[1]:9} {','.join(map(str, shape)):16} {f:8.1f} {m:8.1f} {f / m:10.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
