"""`gpt3lab demo --scaling` (`make demo-scaling`): an IsoFLOP ladder on the bundled Shakespeare, bytes as tokens.

Sized to fit 15 minutes on a quiet 2-core CPU (docs/BENCHMARKS.md, issue 26): four budgets a factor 2 apart,
1e11 to 8e11 FLOPs, up to five sizes per budget around ~20 tokens per parameter (span 8), 7.0e12 FLOPs in
all, one thread per run. Bytes (a 257-token vocabulary: 256 bytes + <|endoftext|>) rather than the demo's
BPE-4096 because a 4096 x d embedding alone would make every model larger than these budgets' optima, and
because the byte split holds 4.64M train tokens: the largest budget's smallest model sees 4.56M of them, so
no run repeats data (which is also what caps the largest budget). The smallest budget is 1e11 because below
it the rule's smallest shape (16 wide, 1 layer) is the centre of the ladder and no smaller one exists.
Re-running resumes: finished runs are skipped.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

TOKENIZER = "bpe:257"                   # byte-level: 256 bytes + <|endoftext|>, no merges
DATA_DIR = Path("data") / "shakespeare-bytes"
OUT_DIR = Path("runs") / "scaling"
BUDGETS = [1.25e10, 2.5e10, 5e10, 1e11]
PER_BUDGET, SPAN, EVAL_TOKENS, BATCH_SIZE, TOKENS_PER_PARAM = 7, 12.0, 65536, 16, 100.0
PREDICT = [4e11]                        # 4x beyond the largest budget
# models of 9k-200k parameters gain little from a second thread, and on a shared box two threads stall each
# other (25x slower per step measured under load 13, docs/BENCHMARKS.md issue 26)
THREADS = 1


def run(args: argparse.Namespace, default_data: str, default_out: str) -> int:
    from gpt3lab.demo import prepare_data
    from gpt3lab.scaling.cli import run_ladder
    from gpt3lab.scaling.ladder import Settings

    t0 = time.perf_counter()
    data = DATA_DIR if args.data == default_data else Path(args.data)
    out = OUT_DIR if args.out == default_out else Path(args.out)
    data = prepare_data(data, progress=not args.no_progress, tokenizer=TOKENIZER)
    s = Settings(data=str(data), budgets=BUDGETS, per_budget=PER_BUDGET, span=SPAN, eval_tokens=EVAL_TOKENS,
                 batch_size=BATCH_SIZE, tokens_per_param=TOKENS_PER_PARAM,
                 overrides=list(args.set))
    run_ladder(out, s, predict=PREDICT, threads=THREADS)
    print(f"demo: scaling ladder done in {time.perf_counter() - t0:.0f} s; plot {out / 'scaling.png'}")
    return 0
