"""`gpt3lab demo --scaling` (`make demo-scaling`): an IsoFLOP ladder on the bundled Shakespeare, bytes as tokens.

Sized to fit 15 minutes on a quiet 2-core CPU (docs/BENCHMARKS.md, issue 26): four budgets a factor 2 apart,
2.5e10 to 2e11 FLOPs, sizes spread over a factor 6 around ~100 tokens per parameter (3-4 distinct shapes per
budget: 4k-35k parameters, one layer each by the shape rule), 14 runs, 1.42e12 FLOPs in all, batches of
4 x 128 tokens, one thread per run. Bytes (a 257-token vocabulary: 256 bytes + <|endoftext|>) rather than
the demo's BPE-4096 because a 4096 x d embedding alone would make every model larger than these budgets'
optima. The largest budget's smallest model reads 2.9M of the 4.64M train tokens: no run repeats data (that
is what caps the largest budget and the span). Measured while choosing (docs/BENCHMARKS.md): centred on
Chinchilla's ~20 tokens/param, or with batches of 16 x 128 tokens (100-1,600 steps a run), the smallest
size won at every budget tried (the runs were step-starved); at 1.25e10 it still wins with 4 x 128.
Re-running resumes: finished runs are skipped.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

TOKENIZER = "bpe:257"                   # byte-level: 256 bytes + <|endoftext|>, no merges
DATA_DIR = Path("data") / "shakespeare-bytes"
OUT_DIR = Path("runs") / "scaling"
BUDGETS = [2.5e10, 5e10, 1e11, 2e11]
PER_BUDGET, SPAN, EVAL_TOKENS, BATCH_SIZE, TOKENS_PER_PARAM = 5, 6.0, 65536, 4, 100.0
PREDICT = [8e11]                        # 4x beyond the largest budget
# models of 9k-200k parameters gain little from a second thread, and on a shared box two threads stall each
# other (25x slower per step measured under load 13, docs/BENCHMARKS.md issue 26)
THREADS = 1


def run(args: argparse.Namespace, data: Path, out: Path) -> int:
    """Train (or resume) the demo ladder on `data` (prepared by gpt3lab.demo) into `out`, fit, plot, predict."""
    from gpt3lab.scaling.cli import run_ladder
    from gpt3lab.scaling.ladder import Settings

    t0 = time.perf_counter()
    s = Settings(data=str(data), budgets=BUDGETS, per_budget=PER_BUDGET, span=SPAN, eval_tokens=EVAL_TOKENS,
                 batch_size=BATCH_SIZE, tokens_per_param=TOKENS_PER_PARAM, overrides=list(args.set))
    run_ladder(out, s, predict=PREDICT, threads=THREADS)
    print(f"demo: scaling ladder done in {time.perf_counter() - t0:.0f} s; plot {out / 'scaling.png'}")
    return 0
