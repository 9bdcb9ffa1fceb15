"""Evaluation benchmarks.

1. Batched multiple-choice scoring (shared context prefilled once in a KV cache, all choices in one
   pass) vs scoring each choice with its own full forward pass: median time per item and the ratio,
   side by side in the same run, on a random `demo`-shaped model (context 256).
2. If a demo checkpoint exists (default runs/demo): GPT-3-style in-context learning on built-in tasks,
   k = 0, 1, 8 (accuracy table) and perplexity / bits-per-byte of held-out Shakespeare text.

    python benchmarks/bench_eval.py [--checkpoint runs/demo] [--limit 50] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from gpt3lab.config import ModelConfig
from gpt3lab.eval import harness
from gpt3lab.eval.scoring import loglikelihood, perplexity, score_choices
from gpt3lab.eval.tasks import builtin_task, heldout_text
from gpt3lab.model import GPT
from gpt3lab.presets import get_preset


def bench_batched(repeats: int) -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(**get_preset("demo").model)).eval()
    g = torch.Generator().manual_seed(0)
    ctx = torch.randint(0, 4096, (200,), generator=g).tolist()          # a few-shot prompt
    conts = [torch.randint(0, 4096, (n,), generator=g).tolist() for n in (3, 5, 2, 6)]   # 4 choices
    with torch.inference_mode():
        for c in conts:                                                 # warm-up
            loglikelihood(model, ctx, c)
        score_choices(model, ctx, conts)
        t_b, t_u = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            score_choices(model, ctx, conts)
            t1 = time.perf_counter()
            for c in conts:
                loglikelihood(model, ctx, c)
            t_u.append(time.perf_counter() - t1)
            t_b.append(t1 - t0)
    mb, mu = statistics.median(t_b), statistics.median(t_u)
    print(f"MC item (200-token prompt, 4 choices, demo shape): batched+shared prefill {1e3 * mb:.1f} ms, "
          f"one pass per choice {1e3 * mu:.1f} ms, speedup x{mu / mb:.2f} (median of {repeats})")


def bench_demo(ckpt: str, limit: int) -> None:
    from gpt3lab import load
    model, tok = load(ckpt)
    text = heldout_text()[:200_000]
    t0 = time.perf_counter()
    r = perplexity(model, tok.encode_ordinary(text), len(text.encode()), tok.eot_id)
    print(f"held-out Shakespeare (first 200k chars): {r.n_tokens} tokens, loss {r.loss:.4f}, "
          f"ppl {r.perplexity:.2f}, bits/byte {r.bits_per_byte:.4f} ({time.perf_counter() - t0:.1f} s)")
    tasks = [builtin_task(n) for n in ("lambada", "arith-2d+", "arith-2d-", "unscramble-rw", "unscramble-cl",
                                       "unscramble-a1")]
    t0 = time.perf_counter()
    res = harness.run(model, tok, tasks, [0, 1, 8], seed=0, limit=limit)
    print(harness.format_table(res))
    print(f"({time.perf_counter() - t0:.0f} s)")
    harness.plot(res, "benchmarks/eval_demo.png", title="demo model: in-context learning")
    harness.save_json(res, "benchmarks/eval_demo.json")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="runs/demo")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    bench_batched(a.repeats)
    if Path(a.checkpoint).exists():
        bench_demo(a.checkpoint, a.limit)
    else:
        print(f"{a.checkpoint}: no checkpoint; run `make demo` first for the in-context learning table")


if __name__ == "__main__":
    main()
