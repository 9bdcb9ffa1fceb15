"""Per-token overhead of the decode path: ms per decoded token of a 1-layer d=64 model (vocab 512), where
the matmuls cost next to nothing, so what is left is Python, dispatch and cache bookkeeping.

    python benchmarks/bench_step_overhead.py [--tokens 200] [--repeats 5] [--compile]

Paths timed one after the other in one process (medians of process CPU time, 1 thread): generate() (batch 1,
greedy), the engine with one request (its thread), and with --compile generate() over the compiled step.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from gpt3lab.config import ModelConfig
from gpt3lab.generate import generate
from gpt3lab.generate.api import SamplingParams
from gpt3lab.generate.engine import Engine
from gpt3lab.model import GPT
from gpt3lab.tokenizer import Tokenizer

BYTES = Tokenizer({bytes([i]): i for i in range(256)}, name="bytes")


def per_token(run, n: int, repeats: int) -> float:
    """(CPU time of n tokens - CPU time of 1 token) / (n - 1), medians of `repeats` runs: the prefill is
    excluded. CPU time of the process (all its threads), so time spent preempted on a loaded box is not counted."""
    run(2)
    a, b = [], []
    for _ in range(repeats):
        t = time.process_time(); run(n); a.append(time.process_time() - t)
        t = time.process_time(); run(1); b.append(time.process_time() - t)
    return (statistics.median(a) - statistics.median(b)) / (n - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time the compiled decode step")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=257, context=512, n_layer=1, n_head=1, d_model=64)).eval()
    prompt = list(b"hello there")
    eng = Engine(model, BYTES)

    def via_engine(n):
        return list(eng.submit(prompt, SamplingParams(max_tokens=n, temperature=0)))

    runs = {"generate()": lambda n: generate(model, BYTES, prompt, max_tokens=n, temperature=0),
            "engine, 1 request": via_engine}
    if args.compile:
        runs["generate(compile)"] = lambda n: generate(model, BYTES, prompt, max_tokens=n, temperature=0,
                                                       compile=True)
    for name, run in runs.items():
        t = per_token(run, args.tokens, args.repeats)
        print(f"  {name:22s} {t * 1e3:7.3f} ms/token   (load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    eng.shutdown()


if __name__ == "__main__":
    main()
