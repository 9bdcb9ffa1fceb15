"""Banded vs dense causal attention, forward + backward, at T=2048 and window 256.

Measures the attention op alone and a full decoder layer (Block: LN, QKV, attention, proj, MLP),
dense and banded interleaved round by round; prints medians and dense/banded ratios. Also times the
portable `unfold` formulation and a few block sizes of the CPU kernel path, to show the choice.

    python benchmarks/bench_attention.py --rounds 7
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from gpt3lab.config import ModelConfig
from gpt3lab.model import banded_attention
from gpt3lab.model.attention import _banded_unfold
from gpt3lab.model.gpt import Block


def timed(fn, args, grad) -> float:
    t = time.perf_counter()
    y = fn(*args)
    y.backward(grad)
    return time.perf_counter() - t


def run(cands: dict, args, grad, rounds: int) -> dict[str, float]:
    for f in cands.values():
        timed(f, args, grad)
    ts = {n: [] for n in cands}
    for _ in range(rounds):
        for n, f in cands.items():
            ts[n].append(timed(f, args, grad))
            for a in args:
                a.grad = None
    return {n: statistics.median(v) for n, v in ts.items()}


def report(title: str, med: dict[str, float]) -> None:
    print(title)
    for n, t in med.items():
        print(f"  {n:24s} {t * 1e3:8.1f} ms   dense/this = {med['dense'] / t:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--d-head", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    T, W, nh, hs = a.T, a.window, a.heads, a.d_head
    print(f"T={T} window={W} heads={nh} d_head={hs} threads={torch.get_num_threads()}")
    torch.manual_seed(0)
    qkv = [torch.randn(1, nh, T, hs, requires_grad=True) for _ in range(3)]
    grad = torch.randn(1, nh, T, hs)
    op = {"dense": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
          "banded (default)": lambda q, k, v: banded_attention(q, k, v, W)}
    for b in (32, 128):
        op[f"banded block={b}"] = (lambda b: lambda q, k, v: banded_attention(q, k, v, W, block=b))(b)
    op["unfold (old), block=W"] = lambda q, k, v: _banded_unfold(q, k, v, W, W, 0.0)
    report("attention op, fwd+bwd:", run(op, qkv, grad, a.rounds))

    d = nh * hs
    layers = {}
    for name, pattern in (("dense", "dense"), ("banded", "banded")):
        cfg = ModelConfig(vocab_size=64, context=T, n_layer=1, n_head=nh, d_model=d,
                          attention_pattern=pattern, local_window=W)
        layers[name] = Block(cfg, 0)
    x = torch.randn(1, T, d, requires_grad=True)
    report("full decoder layer, fwd+bwd:", run({n: (lambda m: lambda x: m(x))(m) for n, m in layers.items()},
                                                [x], torch.randn(1, T, d), a.rounds))


if __name__ == "__main__":
    main()
