"""`gpt3lab demo --priming`: a small model in which few-shot priming visibly works.

A small model of a real phenomenon: *induction heads* (Olsson et al. 2022), the attention circuit that
finds an earlier occurrence of the current pattern and copies what followed it, which is how in-context
learning first appears in Transformers. The Shakespeare demo model cannot show it (its priming scores
are flat at ~0%); this one is trained on a corpus where nothing else works:

    every document draws its OWN random mapping of 4 keys (of a..h) to 4 distinct values (of A..H)
    and then lists 3-character lines `<digit><key><value>` back to back, e.g. 7cH2bE0cH5aD9bE...

The digit is noise (it makes every query differ from its examples, as the harness requires), so a
line's value can only be read off an earlier line with the same key: after `c`, look back for an
earlier `c` and copy the token that followed it, which is exactly what an induction head does. At
evaluation the harness's own prompt builder (gpt3lab.eval.prompts) primes the model with k solved
lines of a held-out mapping (seeds never used in training) and scores the 4 values as multiple choice:
k = 0 is chance (25%); once an induction head forms, accuracy climbs with k as the query's key appears
among the examples.

Induction heads form late on the mapping documents alone (a long plateau at the "some value of this
document" solution: thousands of steps, more than 10 CPU minutes buy). So half of every training batch
is the task that grows them fastest: a random string of printable symbols repeated with a random
period (5-24), scored after its first period. The circuit it forms (previous-token head in layer 1,
match-and-copy head in layer 2) is the one the mappings need. A fixed period must be avoided: a
fixed-offset positional head then solves the repeats without any induction (measured: the repeats'
loss fell, the mappings' did not); periods of only 5-12 grew a head that looks back a few lines only
(k = 1 worked, k = 8 no better). Measured figures: docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from gpt3lab.eval.mapping import (HELDOUT_SEED, KEYS, N_KEYS, NOISE, VALUES, heldout_task,  # noqa: F401
                                  mapping_format, random_mapping)

REPEAT_SYMBOLS = "".join(chr(c) for c in range(33, 127))   # printable ASCII but the space
PERIODS = (5, 24)
SHOTS = (0, 1, 2, 4, 8)
TRAIN_SEED = 1                                # held-out mappings: eval.mapping.HELDOUT_SEED on
MODEL = dict(context=64, n_layer=2, d_model=128, n_head=4, attention_pattern="dense")  # two layers: the least an induction head needs
TRAIN = dict(lr=3e-3, batch_size=32, warmup_steps=50, max_steps=8000, eval_every=500, eval_batches=4,
             save_every=100_000, weight_decay=0.0, log_every=50, precision="fp32", device="cpu")
REPEAT = 0.5          # fraction of each training batch that is repeated random sequences (grows the induction head)


def byte_tokenizer():
    """One token per byte (plus <|endoftext|>): every character of the corpus is its own token."""
    from gpt3lab.tokenizer import Tokenizer
    return Tokenizer({bytes([i]): i for i in range(256)}, name="bytes256")


def document(rng: random.Random, n_chars: int) -> str:
    """One training document: a fresh mapping, then random `<digit><key><value>` lines (>= n_chars)."""
    m = random_mapping(rng)
    keys = list(m)
    return "".join(f"{rng.choice(NOISE)}{k}{m[k]}" for k in (rng.choice(keys) for _ in range(-(-n_chars // 3))))


def repeated_sequence(rng: random.Random, n_chars: int) -> tuple[str, int]:
    """A random string of printable symbols repeated up to n_chars, and its period: the task on which
    induction heads form fastest (after the first period, each symbol is the one that followed the same
    symbol before). The period is random per row (PERIODS), so no fixed look-back offset solves it, and
    up to 24 so the head learns to look back as far as a k = 8 prompt needs; the wide alphabet makes a symbol's earlier
    occurrence unambiguous."""
    period = rng.randint(PERIODS[0], max(PERIODS[0], min(PERIODS[1], n_chars // 2)))     # 2+ periods
    s = "".join(rng.choice(REPEAT_SYMBOLS) for _ in range(period))
    return (s * -(-n_chars // period))[:n_chars], period


class MappingStream:
    """Endless batches of documents, the trainer's data source: next_batch(B) -> (x, y) each (B, T).

    answers_only: targets other than the values are -100 (ignored by the loss), so every gradient goes
    to the one thing that needs the context; the digits and keys are random and teach nothing.
    repeat: the fraction of rows that are a repeated random sequence (`repeated_sequence`, loss after its
    first period) instead of a mapping document: they grow the induction head that the mappings then use.
    """

    def __init__(self, context: int, seed: int, answers_only: bool = True, repeat: float = 0.0):
        self.context, self.rng, self.answers_only, self.repeat = context, random.Random(seed), answers_only, repeat

    def next_batch(self, batch_size: int):
        T = self.context
        n_rep = round(batch_size * self.repeat)
        rows = [list(document(self.rng, T + 1).encode())[:T + 1] for _ in range(batch_size - n_rep)]
        reps = [repeated_sequence(self.rng, T + 1) for _ in range(n_rep)]
        t = torch.tensor(rows + [list(s.encode())[:T + 1] for s, _ in reps])     # (B, T+1)
        x, y = t[:, :-1], t[:, 1:].clone()
        if self.answers_only:
            y[:len(rows)] = torch.where((y[:len(rows)] >= ord(VALUES[0])) & (y[:len(rows)] <= ord(VALUES[-1])),
                                        y[:len(rows)], -100)                     # values only
        for i, (_, half) in enumerate(reps, start=len(rows)):
            y[i, :half] = -100                          # the first copy and its echo's first symbol are random
        return x, y


def evaluate(model, tokenizer, shots=SHOTS, n_mappings: int = 40, items: int = 5, seed: int = 0) -> dict:
    """The harness's accuracy at each k, averaged over `n_mappings` held-out mappings, in the harness's
    results shape ({"key->value mappings": {"primary", "shots": {k: {"metrics", ...}}}})."""
    from gpt3lab.eval.harness import evaluate_task

    tasks = [heldout_task(i) for i in range(n_mappings)]
    per_k = {}
    for k in shots:
        rs = [evaluate_task(model, tokenizer, t, k, seed=seed, limit=items) for t in tasks]
        acc = sum(r.metrics["acc"] for r in rs) / len(rs)
        per_k[str(k)] = {"k": k, "n": sum(r.n for r in rs), "metrics": {"acc": acc}, "trimmed": 0,
                         "mean_shots": float(k), "examples": rs[0].examples[:1]}
    return {"key->value mappings (held-out)": {"kind": "multiple_choice", "source": "gpt3lab.priming_demo",
                                                "n": per_k[str(shots[0])]["n"], "primary": "acc", "shots": per_k}}


def train(out: Path, budget_s: float, max_steps: int | None = None, progress: bool = True) -> dict:
    """Train the priming model into `out` (a checkpoint dir) within `budget_s` seconds of training."""
    from gpt3lab.checkpoint import save_checkpoint
    from gpt3lab.config import ModelConfig, TrainConfig
    from gpt3lab.model import GPT
    from gpt3lab.train.loop import RunInfo, Trainer

    tok = byte_tokenizer()
    torch.manual_seed(TRAIN_SEED)
    mcfg = ModelConfig(vocab_size=tok.vocab_size, **MODEL)
    steps = max_steps or fit_steps(mcfg, budget_s)
    cfg = TrainConfig(**{**TRAIN, "max_steps": steps})
    tr = Trainer(GPT(mcfg), mcfg, cfg, MappingStream(mcfg.context, TRAIN_SEED, repeat=REPEAT),
                 MappingStream(mcfg.context, TRAIN_SEED + 1),
                 info=RunInfo(out_dir=None, progress=progress, max_seconds=budget_s,
                              step_ceiling=None if max_steps else TRAIN["max_steps"]))
    t0 = time.perf_counter()
    rec = tr.fit()
    seconds = time.perf_counter() - t0
    save_checkpoint(out, tr.model, mcfg, tok, extra={"demo": "priming"})
    return {"steps": tr.step, "seconds": seconds, "loss": rec.get("loss"), "val_loss": rec.get("val_loss"),
            "params": tr.model.num_params(), "model": tr.model, "tokenizer": tok}


def trained_task(ckpt) -> str | None:
    """"mapping" when `ckpt` is this demo's checkpoint (its config.json says so), else None: the
    playground's Priming panel then opens on the task the model learnt."""
    import json
    try:
        extra = json.loads((Path(ckpt) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return "mapping" if isinstance(extra, dict) and extra.get("demo") == "priming" else None


def fit_steps(mcfg, budget_s: float) -> int:
    """Steps that fit in the budget on this machine now (timed by train.budget.probe), at most TRAIN's
    max_steps, so the cosine schedule ends at the budget instead of being cut off."""
    from gpt3lab.config import TrainConfig
    from gpt3lab.model import GPT
    from gpt3lab.train import budget
    from gpt3lab.train.loop import RunInfo, Trainer

    cfg = TrainConfig(**TRAIN)
    tr = Trainer(GPT(mcfg), mcfg, cfg, MappingStream(mcfg.context, 0, repeat=REPEAT), MappingStream(mcfg.context, 1),
                 info=RunInfo(progress=False))
    costs = budget.probe(tr, min_seconds=3.0)
    steps = min(cfg.max_steps, budget.steps_within(budget_s, costs, cfg.eval_every, 0))
    print(f"demo --priming: {costs.step_s * 1000:.0f} ms/step here -> {steps} steps in {budget_s:.0f} s")
    return steps


def run(args: argparse.Namespace) -> int:
    """Train (unless --priming-model names a trained checkpoint), evaluate k = 0,1,2,4,8, print and plot."""
    from gpt3lab.eval.harness import format_table, plot, save_json

    out = Path(args.out if args.out != "runs/demo" else "runs/priming")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    s = train(out, args.time_budget, args.max_steps, progress=not args.no_progress)
    print(f"demo --priming: {s['params'] / 1e6:.2f}M params, {s['steps']} steps in {s['seconds']:.0f} s, "
          f"train loss {s['loss']:.3f}; checkpoint {out}")
    from gpt3lab.loader import load
    model, tok = load(out)
    results = evaluate(model, tok)
    print(format_table(results))
    save_json(results, out / "priming.json")
    png = plot(results, out / "priming.png", title="priming: held-out key->value mappings (chance 25%)")
    print(f"demo --priming: plot {png}; done in {time.perf_counter() - t0:.0f} s. Serve it with "
          f"`gpt3lab serve {out}` and open the playground's Priming panel")
    return 0
