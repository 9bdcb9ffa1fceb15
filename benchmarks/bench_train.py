"""Training tokens/s of gpt3lab's GPT vs transformers' GPT2LMHeadModel, side by side in one process.

Same config, batch, precision and allocator (whatever this process runs under: start it with and
without LD_PRELOAD=libtcmalloc_minimal.so.4 to compare allocators). One step = forward + loss +
backward + AdamW step; the two models alternate step by step and the medians are compared.
MFU = model FLOPs (6 N + attention, per token) x tokens/s / the measured matmul peak of that precision.

    python benchmarks/bench_train.py --preset cpu-6l --batch 8 --steps 5
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from gpt3lab.launcher import loaded_allocator
from gpt3lab.model import GPT
from gpt3lab.presets import get_preset
from gpt3lab.train.perf import flops_per_token


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Median FLOP/s of an n x n x n matmul in `dtype` (the achievable peak on this CPU)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(ts)


def hf_model(cfg):
    import transformers

    hc = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context, n_embd=cfg.d_model,
                                 n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.d_ff,
                                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(hc).train()


def make_steps(cfg, batch: int, precision: str):
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.context))
    y = torch.roll(x, -1, dims=1)
    ours, hf = GPT(cfg).train(), hf_model(cfg)
    opts = {m: torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (ours, hf)}
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else (
        lambda: torch.autocast("cpu", enabled=False))

    def step_ours():
        with ctx():
            _, loss = ours(x, y)
        loss.backward()
        opts[ours].step()
        opts[ours].zero_grad(set_to_none=True)

    def step_hf():
        with ctx():
            loss = hf(input_ids=x, labels=x).loss
        loss.backward()
        opts[hf].step()
        opts[hf].zero_grad(set_to_none=True)

    return {"gpt3lab": step_ours, "transformers": step_hf}


def bench(cfg, batch: int, precision: str, steps: int) -> dict[str, float]:
    fns = make_steps(cfg, batch, precision)
    for f in fns.values():      # warm-up (allocator pools, oneDNN kernels)
        f()
    ts = {n: [] for n in fns}
    for _ in range(steps):
        for n, f in fns.items():
            t = time.perf_counter()
            f()
            ts[n].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in ts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-6l")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both peers (0 = torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset).model_config()
    tokens = args.batch * cfg.context
    print(f"{args.preset}: {cfg.n_layer}L/{cfg.d_model}d T={cfg.context} vocab={cfg.vocab_size} batch={args.batch} "
          f"threads={torch.get_num_threads()} allocator={'tcmalloc' if loaded_allocator() else 'glibc'}")
    for prec in (["fp32", "bf16"] if args.precision == "both" else [args.precision]):
        peak = matmul_peak(torch.float32 if prec == "fp32" else torch.bfloat16)
        med = bench(cfg, args.batch, prec, args.steps)
        for name, t in med.items():
            mfu = flops_per_token(cfg) * tokens / t / peak
            print(f"  {prec} {name:12s} {t:6.2f} s/step  {tokens / t:7.0f} tok/s  MFU {100 * mfu:4.1f}% "
                  f"(peak {peak / 1e9:.0f} GFLOP/s)")
        print(f"  {prec} gpt3lab / transformers = {med['transformers'] / med['gpt3lab']:.2f}x")


if __name__ == "__main__":
    main()
