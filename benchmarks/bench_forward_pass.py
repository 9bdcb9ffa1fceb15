"""What the playground's Forward pass view costs: one /v1/inspect computation with and without `forward`.

    python benchmarks/bench_forward_pass.py [--presets demo gpt2] [--tokens 128] [--repeats 5]

For each preset (random weights: the cost does not depend on what the model learnt) and a prompt of
--tokens tokens, measures side by side in the same run: gpt3lab.inspect.inspect with attention off (the
positions only: the base cost of any inspect call), the same plus gpt3lab.forward_pass.forward_pass of the
last token, and the size of the forward payload as the server sends it (JSON, 4 decimals). Prints medians
of --repeats and the ratio forward / base.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from gpt3lab.config import ModelConfig
from gpt3lab.forward_pass import forward_pass
from gpt3lab.inspect import inspect
from gpt3lab.model import GPT
from gpt3lab.presets import PRESETS


class Ids:
    """A tokenizer stand-in with the preset's vocabulary: the prompt is given as ids."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def decode(self, ids):
        return "".join(f"<{i}>" for i in ids)


def median_s(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["demo", "gpt2"])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| preset | params | T | inspect (positions) | + forward | ratio | forward payload |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.presets:
        torch.manual_seed(0)
        cfg = ModelConfig(**PRESETS[name].model)
        model, tok = GPT(cfg).eval(), Ids(cfg.vocab_size)
        ids = torch.randint(0, cfg.vocab_size, (min(args.tokens, cfg.context),)).tolist()

        def base():
            return inspect(model, tok, ids, layers=[], decimals=4)

        def both():
            base()
            return forward_pass(model, tok, ids, decimals=4)

        base(), both()                                            # warm-up
        b, f = median_s(base, args.repeats), median_s(both, args.repeats)
        kb = len(json.dumps(both())) / 1024
        print(f"| {name} | {model.num_params() / 1e6:.1f}M | {len(ids)} | {1000 * b:.0f} ms | {1000 * f:.0f} ms | "
              f"{f / b:.2f} | {kb:.0f} KiB |")


if __name__ == "__main__":
    main()
