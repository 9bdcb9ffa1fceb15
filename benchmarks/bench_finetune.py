"""End-to-end fine-tuning example: exact-match accuracy on 2-digit addition before and after.

    python benchmarks/bench_finetune.py [--out runs/bench_finetune] [--quick]

1. a byte-level tokenizer and a tiny random GPT (4 layers, d_model 128, context 48);
2. "pretraining" with `finetune` on a plain-text corpus of 3-digit additions and 2-digit subtractions
   ("Q: What is 123 plus 456? A: 579"), so the base knows the format but has never seen 2-digit addition;
3. fine-tuning that base on 2-digit addition as prompt/completion JSONL ("Q: What is 48 plus 76? A:" ->
   " 124"), with LoRA (rank 8, c_attn + c_proj) and with full fine-tuning;
4. zero-shot exact match (greedy, gpt3lab.eval harness) on 200 held-out problems (disjoint from training)
   for the base, the LoRA adapter (base + adapter and merged) and the full fine-tune.
Everything is seeded; the figures are reproducible on the same machine and torch build.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

import gpt3lab
from gpt3lab import checkpoint as ckpt_io
from gpt3lab.config import ModelConfig
from gpt3lab.eval.harness import evaluate_task
from gpt3lab.eval.tasks import builtin_task
from gpt3lab.finetune import finetune
from gpt3lab.model import GPT, lora
from gpt3lab.tokenizer import Tokenizer


def _lines(task_name: str, n: int, seed: int) -> list[str]:
    t = builtin_task(task_name, n=n, pool=0, seed=seed)
    return [f"{it.context} {it.target}" for it in t.items]


def make_data(out: Path, n_train: int) -> tuple[Path, Path, object]:
    """(pretraining text, fine-tuning JSONL, held-out test task)."""
    text = "\n".join(_lines("arith-3d+", 3000, 1) + _lines("arith-2d-", 3000, 2))
    corpus = out / "pretrain.txt"
    corpus.write_text(text + "\n")
    task = builtin_task("arith-2d+", n=200, pool=n_train, seed=0)     # items: test; pool: disjoint train
    jsonl = out / "add2.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": it.context, "completion": " " + it.target}) + "\n"
                             for it in task.pool))
    return corpus, jsonl, task


def accuracy(model, tok, task) -> float:
    return evaluate_task(model.eval(), tok, task, k=0).metrics["exact_match"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench_finetune")
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke run, not the documented figures)")
    args = ap.parse_args()
    # one thread: on a shared 2-core box two threads per tiny matmul lose more to contention than they gain
    torch.set_num_threads(1)
    steps = dict(pre=30, ft=20) if args.quick else dict(pre=400, ft=350)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    corpus, jsonl, task = make_data(out, n_train=2000)
    tok = Tokenizer.train([corpus.read_text()], 257)                   # bytes only: digits stay digits
    torch.manual_seed(0)
    init = GPT(ModelConfig(vocab_size=tok.vocab_size, context=48, n_layer=4, n_head=4, d_model=128))
    ckpt_io.save_checkpoint(out / "init", init, init.config, tok)
    common = ["train.batch_size=32", "train.device=cpu", "train.peak_flops=1e12", "train.eval_batches=4",
              "train.eval_every=100", "train.save_every=100000"]
    t0 = time.perf_counter()
    finetune(out / "init", corpus, out / "base", method="full", max_steps=steps["pre"], progress=False,
             overrides=common + ["train.lr=3e-3", "train.warmup_steps=50", "train.weight_decay=0.1"])
    t_pre = time.perf_counter() - t0
    base, _ = gpt3lab.load(out / "base")
    rows = [("base (pretrained, never saw 2-digit +)", accuracy(base, tok, task), t_pre, "-")]

    t0 = time.perf_counter()
    s = finetune(out / "base", jsonl, out / "lora", method="lora", max_steps=steps["ft"], merge=True,
                 progress=False, lora_cfg=lora.LoRAConfig(rank=8, alpha=16, targets=("c_attn", "c_proj")),
                 overrides=common + ["train.lr=5e-3", "train.warmup_steps=20"])
    t_lora = time.perf_counter() - t0
    frac = f"{100 * s['trainable_params'] / s['total_params']:.1f}%"
    m, _ = gpt3lab.load(out / "lora" / "adapter")
    rows.append(("LoRA r=8 (base + adapter)", accuracy(m, tok, task), t_lora, frac))
    m, _ = gpt3lab.load(out / "lora" / "merged")
    rows.append(("LoRA r=8 merged checkpoint", accuracy(m, tok, task), t_lora, frac))

    t0 = time.perf_counter()
    s = finetune(out / "base", jsonl, out / "full", method="full", max_steps=steps["ft"], progress=False,
                 overrides=common + ["train.lr=2e-3", "train.warmup_steps=20"])
    t_full = time.perf_counter() - t0
    m, _ = gpt3lab.load(out / "full")
    rows.append(("full fine-tune", accuracy(m, tok, task), t_full, "100%"))

    size = lambda p: sum(f.stat().st_size for f in Path(p).iterdir() if f.is_file())  # noqa: E731
    print(f"model: {init.num_params():,} params; pretrain {steps['pre']} steps, fine-tune {steps['ft']} steps "
          f"x 32 rows x 48 tokens; {len(task.pool)} train / {len(task.items)} held-out problems")
    print(f"total {time.perf_counter() - start:.0f} s")
    print("| model | exact match (200 held-out) | train seconds | trainable |")
    print("|---|---|---|---|")
    for name, acc, sec, tr in rows:
        print(f"| {name} | {100 * acc:.1f}% | {sec:.0f} | {tr} |")
    print(f"adapter dir {size(out / 'lora' / 'adapter') / 1e3:.0f} kB (incl. tokenizer) vs merged checkpoint "
          f"{size(out / 'lora' / 'merged') / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
