"""Banded vs dense attention on CUDA at GPT-3's shape: forward + backward per layer, bf16.

Times, interleaved round by round (medians, CUDA events):
  * the attention op alone: dense causal SDPA (flash), gpt3lab.model.banded_attention (what an eager banded
    layer runs: FlexAttention in 16 bits on CUDA), its portable unfold path (what torch.compile traces), and
    FlexAttention called directly;
  * a whole decoder layer (gpt3lab.model.gpt.Block: LN, QKV, attention, proj, MLP), dense vs banded.
The goal of issue 22: a banded layer at T=2048 is no slower than a dense one.

    python benchmarks/bench_gpu_attention.py [--T 2048] [--window 256] [--batch 8] [--rounds 20]
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F

from gpt3lab.config import ModelConfig
from gpt3lab.model import banded_attention
from gpt3lab.model.attention import _banded_unfold, _default_block
from gpt3lab.model.gpt import Block


def cuda_ms(fn, rounds: int, warmup: int = 3) -> float:
    """Median milliseconds of fn() (forward + backward) over `rounds` CUDA-event-timed calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def flex_banded(T: int, W: int):
    """FlexAttention with a causal window-W block mask (None where this torch has no flex_attention)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    mask = create_block_mask(lambda b, h, qi, ki: (ki <= qi) & (qi - ki < W), None, None, T, T, device="cuda")
    flex = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: flex(q, k, v, block_mask=mask)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--d-head", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu_attention: no CUDA GPU visible", file=sys.stderr)
        return 1
    B, H, T, D, W = args.batch, args.heads, args.T, args.d_head, args.window
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, B={B} H={H} T={T} d_head={D} "
          f"window={W}, bf16, forward+backward")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
               for _ in range(3))
    dy = torch.randn_like(q)
    ops = {"dense (SDPA causal)": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
           "banded (gpt3lab)": lambda: banded_attention(q, k, v, W),
           "banded (unfold path)": lambda: _banded_unfold(q, k, v, W, _default_block(W), 0.0)}
    fx = flex_banded(T, W)
    if fx is not None:
        ops["banded (FlexAttention)"] = lambda: fx(q, k, v)
        ref = banded_attention(q, k, v, W).float()
        print(f"  FlexAttention vs gpt3lab banded: max |diff| {float((fx(q, k, v).float() - ref).abs().max().detach()):.3g}")
    res = {name: cuda_ms(lambda f=f: f().backward(dy), args.rounds) for name, f in ops.items()}
    for name, ms in res.items():
        print(f"  attention op  {name:24s} {ms:7.3f} ms   dense/this {res['dense (SDPA causal)'] / ms:5.2f}x")
    cfg = ModelConfig(vocab_size=50257, context=T, n_layer=2, n_head=H, d_model=H * D, local_window=W,
                      attention_pattern="alternating")
    x = torch.randn(B, T, H * D, device="cuda", requires_grad=True)
    dx = torch.randn_like(x)
    blocks = {"dense layer": Block(cfg, 0).cuda(), "banded layer": Block(cfg, 1).cuda()}

    def layer(b):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = b(x)
        y.backward(dx)
    lres = {name: cuda_ms(lambda b=b: layer(b), args.rounds) for name, b in blocks.items()}
    for name, ms in lres.items():
        print(f"  decoder layer {name:24s} {ms:7.3f} ms   dense/this {lres['dense layer'] / ms:5.2f}x")
    ok = lres["banded layer"] <= lres["dense layer"] * 1.0
    print(f"goal (banded layer no slower than dense at T={T}): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
