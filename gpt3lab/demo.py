"""`gpt3lab demo` (what `make demo` runs): Shakespeare -> BPE shards -> the "demo" model -> plot -> sample.

1. prepare the bundled Shakespeare corpus with a BPE tokenizer trained on the train plays (cached in
   ./data/shakespeare-bpe4096 and reused when present; whole plays are held out for validation),
2. train the "demo" preset into runs/demo for a wall-clock budget: a probe estimates the step count, the
   run re-fits it as it goes (so the LR schedule ends with the budget), the preset's max_steps caps it,
3. plot runs/demo/loss.png, report bits/byte over the whole held-out split, print a sample.
"""
from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

import torch

from gpt3lab.argtypes import nonneg_int, positive_float, positive_int
from gpt3lab.errors import UserError

TOKENIZER = "bpe:4096"
DATA_DIR = Path("data") / "shakespeare-bpe4096"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=str(DATA_DIR), help="data dir (prepared here once, then reused)")
    p.add_argument("--out", default="runs/demo", help="run dir (replaced if it holds an earlier demo run)")
    p.add_argument("--time-budget", type=positive_float, default=525.0, metavar="SECONDS",
                   help="wall-clock cap on training (the preset's max_steps caps it too); the steps are "
                        "fitted to it by timing a few steps first and re-fitted as the run goes")
    p.add_argument("--max-steps", type=positive_int, help="override the preset's max_steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for gpt3lab train")
    p.add_argument("--prompt", default="ROMEO:\n", help="prompt of the printed sample")
    p.add_argument("--sample-tokens", type=nonneg_int, default=200)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--priming", action="store_true", help="instead: train the in-context-learning model of "
                   "gpt3lab.priming_demo (into runs/priming) and plot its accuracy at k = 0, 1, 2, 4, 8")
    p.add_argument("--scaling", action="store_true", help="instead: an IsoFLOP ladder on Shakespeare bytes (into "
                   "runs/scaling, data in data/shakespeare-bytes): fit the scaling laws, plot, predict "
                   "(gpt3lab.scaling.demo)")


def prepare_data(data_dir: Path, progress: bool = True, tokenizer: str = TOKENIZER) -> Path:
    """Prepare Shakespeare into `data_dir` unless a complete preparation is already there."""
    from gpt3lab.data import load_data_tokenizer, prepare

    if (data_dir / "prepare.json").is_file():
        try:
            load_data_tokenizer(data_dir)
            print(f"demo: reusing {data_dir}")
            return data_dir
        except UserError:
            pass  # incomplete or stale: prepare again
    print(f"demo: preparing Shakespeare into {data_dir} ({tokenizer})")
    prepare(["shakespeare"], data_dir, tokenizer=tokenizer, progress=progress)
    return data_dir


def fit_steps(data: Path, overrides: list[str], budget_s: float, **probe_kw) -> int:
    """Steps of the demo preset that fit in `budget_s` on this machine, measured now (at most the
    preset's max_steps): steps, evals, a save and the warm-up are timed by train.budget.probe. The
    cosine schedule then ends at the budget instead of being cut off mid-way."""
    import tempfile

    from gpt3lab.config import ModelConfig, apply_overrides
    from gpt3lab.data import WindowLoader, load_data_tokenizer
    from gpt3lab.model import GPT
    from gpt3lab.presets import get_preset
    from gpt3lab.train import budget
    from gpt3lab.train.distributed import local_device
    from gpt3lab.train.loop import RunInfo, Trainer

    p, tok = get_preset("demo"), load_data_tokenizer(data)
    mcfg = apply_overrides(ModelConfig(**{**p.model, "vocab_size": tok.vocab_size}), overrides, "model")
    cfg = _preset_train(overrides)
    loader = lambda split: WindowLoader(data, split, mcfg.context, cfg.batch_size, seed=cfg.seed)
    with tempfile.TemporaryDirectory(prefix="gpt3lab-demo-probe-") as scratch:
        # time on the device (and so the precision) train() will use, not the Trainer's CPU default
        tr = Trainer(GPT(mcfg), mcfg, cfg, loader("train"), loader("val"), device=local_device(cfg.device),
                     info=RunInfo(out_dir=Path(scratch), tokenizer=tok, progress=False))
        costs = budget.probe(tr, **probe_kw)
    steps = min(budget.steps_within(budget_s, costs, cfg.eval_every, cfg.save_every), cfg.max_steps)
    need = budget.run_seconds(steps, costs, cfg.eval_every, cfg.save_every)
    print(f"demo: {costs.step_s:.3f} s/step, {costs.eval_s:.1f} s/eval, {costs.save_s:.2f} s/save here -> "
          f"{steps} steps fit in {budget_s:.0f} s (~{need:.0f} s)")
    return steps


def precision_overrides(overrides: list[str]) -> list[str]:
    """["train.precision=bf16"] when the demo trains on a CPU that multiplies bf16 in hardware (there bf16
    autocast trains ~1.3x faster at the same loss per step: docs/BENCHMARKS.md, issue 16) and the user set
    no train.precision; else [] ("auto": fp32 on other CPUs, bf16 on GPUs)."""
    from gpt3lab.config import override_given
    from gpt3lab.devices import cpu_has_native_bf16
    from gpt3lab.train.distributed import local_device

    if override_given(overrides, "train", "precision"):
        return []
    if local_device(_preset_train(overrides).device).type != "cpu" or not cpu_has_native_bf16():
        return []
    print("demo: training under bf16 autocast (this CPU multiplies bf16 in hardware; "
          "--set train.precision=fp32 for fp32)")
    return ["train.precision=bf16"]


def _preset_train(overrides: list[str]):
    """The demo preset's TrainConfig with the train.* overrides applied."""
    from gpt3lab.config import TrainConfig, apply_overrides
    from gpt3lab.presets import get_preset

    return apply_overrides(TrainConfig(**get_preset("demo").train), overrides, "train")


DEMO_MARKER = "DEMO_RUN"   # written into the run dir: only such a dir may be replaced by the next demo


def clear_previous_demo(out: Path) -> None:
    """Make `out` ready for a fresh demo run: delete it if an earlier demo wrote it (marker file),
    leave it if missing or empty; anything else (e.g. a real training run) raises UserError."""
    if out.is_dir() and (out / DEMO_MARKER).is_file():
        shutil.rmtree(out)
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"demo: {out} exists and is not an earlier demo run (no {DEMO_MARKER} file); "
                        f"the demo replaces its --out dir, so pass --out with a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by `gpt3lab demo`; the next demo run with this --out replaces "
                                   "this directory\n")


@torch.no_grad()
def split_bpb(model, loader, batch_size: int = 16) -> float:
    """Bits per UTF-8 byte over all non-overlapping windows of a split (mean token loss scaled by
    the split's tokens/bytes)."""
    model.eval()
    total, count = 0.0, 0
    for x, y in loader.sequential_batches(batch_size):
        _, loss = model(x, y)
        total += loss.item() * y.numel()
        count += y.numel()
    return total / count * loader.num_tokens / (loader.num_bytes * math.log(2))


def run(args: argparse.Namespace) -> int:
    from gpt3lab import load
    from gpt3lab.data import WindowLoader
    from gpt3lab.train.cli import train
    from gpt3lab.train.plot import plot_run

    if args.priming:
        from gpt3lab.priming_demo import run as run_priming
        return run_priming(args)
    if args.scaling:
        from gpt3lab.scaling import demo as scaling
        data = Path(args.data) if args.data != str(DATA_DIR) else scaling.DATA_DIR
        out = Path(args.out) if args.out != "runs/demo" else scaling.OUT_DIR
        return scaling.run(args, prepare_data(data, not args.no_progress, scaling.TOKENIZER), out)
    t0 = time.perf_counter()
    data = prepare_data(Path(args.data), progress=not args.no_progress)
    out = Path(args.out)
    clear_previous_demo(out)
    # the probe's count is a first estimate: the run re-fits it to the budget as it goes (train/budget.py),
    # at most the preset's max_steps; an explicit --max-steps is kept as given
    overrides = args.set + precision_overrides(args.set)
    max_steps = args.max_steps or fit_steps(data, overrides, args.time_budget)
    ceiling = None if args.max_steps else _preset_train(overrides).max_steps
    s = train(data, out, preset="demo", overrides=overrides, max_steps=max_steps,
              max_seconds=args.time_budget, progress=not args.no_progress, step_ceiling=ceiling)
    png = plot_run(out)
    model, tok = load(out)
    val = WindowLoader(data, "val", model.config.context, 16)
    bpb = split_bpb(model, val)
    print(f"demo: {s['params'] / 1e6:.2f}M params, {s['step']} steps, {s['tokens'] / 1e6:.1f}M tokens in "
          f"{s['seconds']:.0f} s; checkpoint {s['checkpoint']}, plot {png}")
    print(f"demo: held-out val bits/byte {bpb:.3f} (all {val.num_tokens:,} val tokens, whole plays)")
    print("demo: sample (temperature 0.8, top-k 50, seed 0):\n")
    print(args.prompt + _sample(model, tok, args.prompt, args.sample_tokens))
    print(f"\ndemo: done in {time.perf_counter() - t0:.0f} s; load it with gpt3lab.load({str(out)!r})")
    return 0


def _sample(model, tok, prompt: str, n: int) -> str:
    from gpt3lab.generate import generate

    n = max(1, min(n, model.config.context - len(tok.encode(prompt))))   # stay within the context
    return generate(model, tok, prompt, max_tokens=n, temperature=0.8, top_k=50, seed=0).text
