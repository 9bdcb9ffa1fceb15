"""Inference engine: aggregate decode throughput 16 vs 1 requests, and time to first token with a cached prefix.

    python benchmarks/bench_engine.py [--config small] [--new-tokens 64] [--repeats 3] [--threads N]
                                      [--quantize none|bf16|int8]

* throughput: C concurrent requests (32-token prompts, --new-tokens each, greedy, no early stop)
  vs one request alone, same engine; tokens/s = generated tokens / wall time; ratio C-vs-1.
* sampling: the same C concurrent requests at temperature 0.8, seeded (draws reproduce
  gpt3lab.generate's) and unseeded (cheaper draws), vs greedy.
* TTFT: a 1,024-token prompt, submitted to an engine whose prefix cache already holds it
  (another request with the same prompt ran before) vs a fresh prompt of the same length.
Medians of --repeats; both sides of each ratio measured alternately in one process.
Batch-1 decode vs transformers is benchmarks/bench_decode.py.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from gpt3lab.config import ModelConfig
from gpt3lab.generate.api import SamplingParams
from gpt3lab.generate.engine import Engine
from gpt3lab.model import GPT
from gpt3lab.model.quant import MODES, prepare_for_inference
from gpt3lab.tokenizer import Tokenizer

CONFIGS = {"small": dict(n_layer=6, d_model=384, n_head=6), "124m": dict(n_layer=12, d_model=768, n_head=12)}


def throughput(engine: Engine, concurrent: int, new_tokens: int, seed: int, temperature: float = 0.0,
               seeded: bool = False) -> float:
    """Generated tokens per second with `concurrent` requests submitted together."""
    g = torch.Generator().manual_seed(seed)
    V = engine.tokenizer.vocab_size - 1
    no_eot = {engine.tokenizer.eot_id: -100}

    def params(i):
        return SamplingParams(max_tokens=new_tokens, temperature=temperature, logit_bias=no_eot,
                              seed=seed * 1000 + i if seeded else None)
    t = time.perf_counter()
    hs = [engine.submit(torch.randint(0, V, (32,), generator=g).tolist(), params(i)) for i in range(concurrent)]
    n = sum(len(ev.tokens) for h in hs for ev in h)
    return n / (time.perf_counter() - t)


def ttft(engine: Engine, prompt: list[int]) -> float:
    t = time.perf_counter()
    h = engine.submit(prompt, SamplingParams(max_tokens=1, temperature=0))
    next(iter(h))
    dt = time.perf_counter() - t
    list(h)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small", choices=sorted(CONFIGS))
    ap.add_argument("--concurrent", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quantize", default="none", choices=MODES, help="the engine's model weights")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = Tokenizer.gpt2()
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, context=2048, **CONFIGS[args.config])
    model = GPT(cfg).eval()
    n_params = model.num_params()
    engine = Engine(prepare_for_inference(model, args.quantize), tok, max_batch_tokens=512)
    print(f"config {args.config} ({n_params / 1e6:.0f}M params, quantize {args.quantize}), "
          f"torch threads {torch.get_num_threads()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    throughput(engine, 2, 4, seed=99)                                           # warm-up
    one, many, hot, hot_seeded = [], [], [], []
    for r in range(args.repeats):
        one.append(throughput(engine, 1, args.new_tokens, seed=r))
        many.append(throughput(engine, args.concurrent, args.new_tokens, seed=100 + r))
        hot.append(throughput(engine, args.concurrent, args.new_tokens, seed=200 + r, temperature=0.8))
        hot_seeded.append(throughput(engine, args.concurrent, args.new_tokens, seed=300 + r, temperature=0.8,
                                     seeded=True))
    m1, mc = statistics.median(one), statistics.median(many)
    print(f"decode throughput: 1 request {m1:.1f} tok/s, {args.concurrent} concurrent {mc:.1f} tok/s, "
          f"ratio {mc / m1:.2f}x")
    mh, ms = statistics.median(hot), statistics.median(hot_seeded)
    print(f"{args.concurrent} concurrent at temperature 0.8: unseeded {mh:.1f} tok/s ({mh / mc:.2f}x greedy), "
          f"seeded {ms:.1f} tok/s ({ms / mc:.2f}x greedy)")
    cold, warm = [], []
    g = torch.Generator().manual_seed(1)
    for r in range(args.repeats):
        prompt = torch.randint(0, tok.vocab_size - 1, (args.prompt_tokens,), generator=g).tolist()
        cold.append(ttft(engine, prompt))       # fresh prompt: nothing cached
        warm.append(ttft(engine, prompt))       # the same prompt again: all but the last block cached
    mcold, mwarm = statistics.median(cold), statistics.median(warm)
    print(f"TTFT {args.prompt_tokens}-token prompt: uncached {mcold * 1e3:.1f} ms, prefix cached "
          f"{mwarm * 1e3:.1f} ms ({100 * mwarm / mcold:.1f}% of uncached)")
    print(f"engine stats: {engine.stats()}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    engine.shutdown()


if __name__ == "__main__":
    main()
