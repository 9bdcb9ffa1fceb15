"""Decode on CUDA: batch-1 ms/token of gpt3lab vs transformers `generate` (same weights, greedy), and the
engine's aggregate throughput with 16 concurrent requests vs 1.

    python benchmarks/bench_gpu_decode.py [--config 124m] [--new-tokens 128] [--repeats 5] [--dtypes fp32,bf16]

Per-token time = (time for N new tokens - time for 1) / (N - 1): the prompt's prefill is excluded; medians
of --repeats, the two libraries alternating run by run in one process (bench_decode.step_times).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import CONFIGS, step_times, to_hf  # noqa: E402
from bench_engine import throughput as engine_throughput  # noqa: E402

from gpt3lab.config import ModelConfig  # noqa: E402
from gpt3lab.generate import generate  # noqa: E402
from gpt3lab.generate.engine import Engine  # noqa: E402
from gpt3lab.model import GPT  # noqa: E402
from gpt3lab.model.quant import prepare_for_inference  # noqa: E402
from gpt3lab.tokenizer import Tokenizer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="124m", choices=sorted(CONFIGS))
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--concurrent", type=int, default=16)
    ap.add_argument("--no-engine", action="store_true")
    ap.add_argument("--engine-only", action="store_true", help="only the engine's 16-vs-1 rows")
    ap.add_argument("--compile", action="store_true", help="also the engine with its decode step compiled "
                    "(CUDA graphs; batch-1 compiled rows: bench_decode.py --device cuda --compile)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu_decode: no CUDA GPU visible", file=sys.stderr)
        return 1
    tok = Tokenizer.gpt2()
    torch.manual_seed(0)
    base = GPT(ModelConfig(vocab_size=50257, context=1024, **CONFIGS[args.config])).eval()
    prompt = torch.randint(0, 50000, (16,), generator=torch.Generator().manual_seed(1)).tolist()
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, {args.config} "
          f"({base.num_params() / 1e6:.0f}M params), batch 1, greedy, {args.new_tokens} new tokens")
    runs = {}
    for dt in ([] if args.engine_only else args.dtypes.split(",")):
        ours = prepare_for_inference(copy.deepcopy(base).cuda(), "none" if dt == "fp32" else dt)
        runs[f"gpt3lab {dt}"] = (lambda m: lambda n: generate(m, tok, prompt, max_tokens=n, temperature=0).tokens)(ours)
        hf = to_hf(base).to("cuda", dtype=torch.float32 if dt == "fp32" else torch.bfloat16)
        x = torch.tensor([prompt], device="cuda")

        def hf_run(n, hf=hf):
            with torch.inference_mode():
                out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, use_cache=True, pad_token_id=tok.eot_id)
            return out[0, len(prompt):].tolist()
        runs[f"transformers {dt}"] = hf_run
    ref = runs["gpt3lab fp32"](args.new_tokens) if "gpt3lab fp32" in runs else None
    st = step_times(runs, args.new_tokens, args.repeats) if runs else {}
    for label, t in st.items():
        same = ""
        if ref is not None:
            toks = runs[label](args.new_tokens)
            same = f"  greedy = gpt3lab fp32's for {next((i for i, (a, b) in enumerate(zip(ref, toks)) if a != b), len(ref))}"
        peer = st.get(label.replace("gpt3lab", "transformers"))
        vs = f"  {peer / t:5.2f}x transformers" if label.startswith("gpt3lab") and peer else ""
        print(f"  {label:20s} {t * 1e3:7.2f} ms/token ({1 / t:7.1f} tok/s){vs}{same}")
    for compiled in ([] if args.no_engine else [False, True] if args.compile else [False]):
        engine = Engine(copy.deepcopy(base).cuda(), tok, max_batch_tokens=512, compile=compiled)
        t = time.perf_counter()
        engine_throughput(engine, 2, 4, seed=99)
        engine_throughput(engine, args.concurrent, 4, seed=98)         # every row bucket compiled once
        warm = time.perf_counter() - t
        one = [engine_throughput(engine, 1, 64, seed=r) for r in range(3)]
        many = [engine_throughput(engine, args.concurrent, 64, seed=100 + r) for r in range(3)]
        m1, mc = statistics.median(one), statistics.median(many)
        print(f"  engine fp32{' compiled' if compiled else ''}: warm-up {warm:.1f} s, 1 request {m1:.1f} tok/s "
              f"({1e3 / m1:.2f} ms/token), {args.concurrent} concurrent {mc:.1f} tok/s, ratio {mc / m1:.2f}x", flush=True)
        engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
