"""GPU training throughput of the real loop (Trainer.train_step): tokens/s and MFU for gpt3-small (125M).

The GPU fast path: bf16 autocast (fp32 master weights), fused AdamW, flash SDPA in the dense layers
(F.scaled_dot_product_attention picks the flash kernel for causal bf16 on CUDA), the banded layers'
windowed SDPA, and optionally torch.compile. MFU = training FLOPs per token (gpt3lab.train.perf, the
loop's own formula: 6 N + attention) x tokens/s / the GPU's dense bf16 peak (gpt3lab.sizing.GPUS, picked
from the device name, or --gpu / --peak-tflops). Each figure is the median of --steps timed steps after
--warmup steps.

    python benchmarks/bench_gpu_train.py                       # T=1024 and T=2048, eager and compiled
    python benchmarks/bench_gpu_train.py --context 2048 --batch 8 --no-compile
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from gpt3lab.config import TrainConfig
from gpt3lab.model import GPT
from gpt3lab.presets import get_preset
from gpt3lab.sizing import GPUS, get_gpu
from gpt3lab.train.loop import Trainer


class RandomTokens:
    """A batch source of uniform random tokens (throughput does not depend on the text)."""

    def __init__(self, vocab: int, context: int):
        self.vocab, self.context, self.step = vocab, context, 0

    def next_batch(self, batch_size):
        x = torch.randint(0, self.vocab, (batch_size, self.context + 1))
        return x[:, :-1].pin_memory(), x[:, 1:].pin_memory()

    def state_dict(self):
        return {}


def gpu_peak(args) -> tuple[float, str]:
    """(bf16 dense peak FLOP/s, where it came from)."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "--peak-tflops"
    if args.gpu:
        g = get_gpu(args.gpu)
        return g.peak_flops, g.label
    name = torch.cuda.get_device_name().lower()
    for key, g in GPUS.items():
        if key in name:
            return g.peak_flops, f"{g.label} (matched {torch.cuda.get_device_name()!r})"
    sys.exit(f"unknown GPU {torch.cuda.get_device_name()!r}: pass --gpu {{{','.join(GPUS)}}} or --peak-tflops N")


def bench(context: int, batch: int, compile_: bool, args, attention: str = "alternating") -> dict:
    """Median tokens/s of optimizer steps (one micro-batch each) of gpt3-small at `context`; the first step's
    time (compilation included when compiled) is reported as `first_step_s`."""
    torch.manual_seed(0)
    mcfg = get_preset("gpt3-small").model_config(context=context, attention_pattern=attention)
    tcfg = TrainConfig(batch_size=batch, precision="bf16", compile=compile_, max_steps=10**6, lr=6e-4,
                       warmup_steps=10, activation_checkpointing=args.checkpointing)
    trainer = Trainer(GPT(mcfg), mcfg, tcfg, RandomTokens(mcfg.vocab_size, context), device="cuda")
    times, first = [], None
    for i in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train_step()
        torch.cuda.synchronize()
        if i == 0:
            first = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    tok_s = batch * context / statistics.median(times)
    flops = trainer.flops_per_token              # the loop's own count (what its logged MFU uses)
    mem = torch.cuda.max_memory_allocated() / 2**30
    del trainer
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return {"tokens_per_s": tok_s, "flops_per_token": flops, "max_mem_gib": mem, "first_step_s": first}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default 16 at T=1024, 8 at 2048)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="eager only (skip the torch.compile rows)")
    ap.add_argument("--compile-only", action="store_true", help="compiled rows only")
    ap.add_argument("--attention", nargs="+", default=["alternating"], choices=["dense", "alternating", "banded"],
                    help="attention patterns to time (gpt3-small is alternating, as GPT-3)")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    ap.add_argument("--gpu", help=f"peak from gpt3lab.sizing.GPUS: {', '.join(GPUS)}")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak in TFLOP/s (overrides --gpu)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu_train: no CUDA GPU visible (torch.cuda.is_available() is False); this benchmark "
              "measures the GPU path only - run it on a machine with an NVIDIA GPU", file=sys.stderr)
        return 1
    peak, where = gpu_peak(args)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, peak {peak / 1e12:.0f} TFLOP/s ({where})")
    print(f"{'T':>5} {'batch':>5} {'attention':>11} {'compile':>7} {'tokens/s':>10} {'MFU':>6} {'max mem GiB':>11} "
          f"{'1st step s':>10}")
    modes = [False] if args.no_compile else [True] if args.compile_only else [False, True]
    for T in args.context:
        B = args.batch or max(1, 16 * 1024 // T)
        for attention in args.attention:
            for compile_ in modes:
                r = bench(T, B, compile_, args, attention)
                mfu = r["tokens_per_s"] * r["flops_per_token"] / peak
                print(f"{T:>5} {B:>5} {attention:>11} {str(compile_):>7} {r['tokens_per_s']:>10.0f} {100 * mfu:>5.1f}% "
                      f"{r['max_mem_gib']:>11.1f} {r['first_step_s']:>10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
