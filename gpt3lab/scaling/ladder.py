"""An IsoFLOP ladder as ordinary `gpt3lab train` runs: plan, launch (or print), resume, evaluate, collect.

Layout of a ladder dir OUT:
  OUT/ladder.json                    the settings (data, budgets, sizes, batch, context, seed, eval tokens)
  OUT/runs/c{C}_d{width}-l{depth}/   one `gpt3lab train` run dir per (budget, size), plus
      run.json                       the plan of this run (budget, shape, params, FLOPs/token, steps, lr)
      eval.json                      its held-out loss on the ladder's eval tokens (written last: "finished")

A run's status follows from its files: eval.json -> done; a checkpoint at the planned step -> trained (only
the evaluation is left); an earlier checkpoint -> interrupted (resumed with `gpt3lab train --resume`);
nothing -> new. Re-running the ladder therefore skips finished runs and resumes an interrupted one.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpt3lab import sizing
from gpt3lab.config import ModelConfig
from gpt3lab.errors import ConfigError, DataError, UserError
from gpt3lab.scaling import shapes

MIN_STEPS = 20
CHINCHILLA_TOKENS_PER_PARAM = 20      # the per-budget ladder's default centre: C = flops_per_token(N) x 20 N
LADDER_FILE, RUN_FILE, EVAL_FILE = "ladder.json", "run.json", "eval.json"
# the plan fields that must match when a run dir is planned again (else its results mean something else)
PLAN_KEYS = ("budget", "model", "steps", "batch_size", "lr", "warmup_steps", "seed", "overrides")


@dataclass
class Settings:
    """What a ladder is: stored in OUT/ladder.json."""
    data: str
    budgets: list[float]
    sizes: list[float] | None = None          # target parameter counts, the same at every budget
    per_budget: int = 5                       # else: this many sizes per budget, centred on ~20 tokens/param
    span: float = 10.0                        # ...spread log-evenly over a factor `span` of parameters
    tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM   # ...around the N that sees this many tokens
    batch_size: int = 16
    context: int = 128
    seed: int = 1337
    eval_tokens: int = 131072                 # held-out tokens every run is evaluated on (0: the whole split)
    overrides: list[str] = field(default_factory=list)   # extra --set for every run (e.g. train.precision=bf16)
    min_steps: int = MIN_STEPS                # fewer optimizer steps than this is no run to fit


@dataclass
class RunPlan:
    """One (budget, size) run of the ladder."""
    name: str
    budget: float
    model: dict
    params: int
    flops_per_token: float
    steps: int
    tokens: int
    flops: float
    lr: float
    warmup_steps: int
    batch_size: int
    seed: int
    overrides: list[str]

    def argv(self, data: str, out: Path, resume: bool = False) -> list[str]:
        """The `gpt3lab train` arguments of this run (a fresh start, or --resume of an interrupted one)."""
        rd = str(run_dir(out, self.name))
        if resume:
            return ["train", "--data", data, "--out", rd, "--resume", "--no-progress"]
        m = self.model
        # every shape field explicitly: --set applies to a config whose d_head/d_ff were already derived
        sets = [f"model.{k}={m[k]}" for k in ("context", "n_layer", "d_model", "n_head", "d_head", "d_ff")]
        sets += ["model.attention_pattern=dense", f"train.lr={self.lr:.6g}", f"train.warmup_steps={self.warmup_steps}",
                 f"train.batch_size={self.batch_size}", f"train.seed={self.seed}", "train.eval_every=0",
                 "train.eval_batches=1", f"train.save_every={max(1, self.steps // 4)}", "train.keep_last=1",
                 f"train.log_every={self.steps}", *self.overrides]
        return ["train", "--data", data, "--out", rd, "--max-steps", str(self.steps), "--no-progress",
                *[a for s in sets for a in ("--set", s)]]


def run_dir(out: Path, name: str) -> Path:
    return Path(out) / "runs" / name


def _budget_tag(c: float) -> str:
    return "c" + f"{c:.3g}".replace("+", "")


def train_tokens(data: str) -> int:
    """Tokens in the data's train split (one epoch)."""
    from gpt3lab.data.shards import read_header
    return int(read_header(data, "train")["num_tokens"])


def sizes_for_budget(s: Settings, budget: float, vocab_size: int) -> list[ModelConfig]:
    """The shapes trained at `budget`: --sizes, or per_budget sizes around s.tokens_per_param tokens per
    parameter (Chinchilla's ~20 by default)."""
    if s.sizes:
        targets = s.sizes
    else:
        centre = centre_params(budget, vocab_size, s.context, s.tokens_per_param)
        k = s.per_budget
        targets = [centre * s.span ** ((i / (k - 1)) - 0.5) for i in range(k)] if k > 1 else [centre]
    out, seen = [], set()
    for t in targets:
        cfg = shapes.shape_for_params(t, vocab_size, s.context)
        if (cfg.d_model, cfg.n_layer) not in seen:
            seen.add((cfg.d_model, cfg.n_layer))
            out.append(cfg)
    return sorted(out, key=sizing.n_params)


def centre_params(budget: float, vocab_size: int, context: int, tokens_per_param: float) -> float:
    """N with flops_per_token(N) x tokens_per_param x N = budget, interpolated (log-log) between the rule's
    shapes."""
    import numpy as np

    cands = shapes.candidates(vocab_size, context, 2 * math.sqrt(budget / (6 * tokens_per_param)))
    n = np.array([p for p, _ in cands], dtype=float)
    g = np.array([shapes.flops_per_token(c) * tokens_per_param * p for p, c in cands])
    order = np.argsort(g)
    return float(np.exp(np.interp(math.log(budget), np.log(g[order]), np.log(n[order]))))


def plan(s: Settings) -> list[RunPlan]:
    """Every run of the ladder, checked: at least MIN_STEPS steps each, none longer than one epoch."""
    from gpt3lab.data import load_data_tokenizer

    if not s.budgets:
        raise ConfigError("--budgets: give at least one compute budget in FLOPs, e.g. --budgets 1e12,3e12,1e13")
    vocab = load_data_tokenizer(s.data).vocab_size
    epoch, step_tokens = train_tokens(s.data), s.batch_size * s.context
    runs = []
    for c in sorted(s.budgets):
        for cfg in sizes_for_budget(s, c, vocab):
            fpt, n = shapes.flops_per_token(cfg), sizing.n_params(cfg)
            steps = round(c / (fpt * step_tokens))
            name = f"{_budget_tag(c)}_{shapes.label(cfg)}"
            if steps < s.min_steps:
                raise ConfigError(f"budget C={c:.3g} gives {name} (N={n:,}) only {steps} step(s) of {step_tokens} "
                                  f"tokens (at least {s.min_steps}); raise the budget, use smaller sizes or a smaller "
                                  f"--batch-size")
            if steps * step_tokens > epoch:
                raise ConfigError(f"budget C={c:.3g} gives {name} (N={n:,}) {steps * step_tokens:,} tokens, more than "
                                  f"one epoch of {s.data}'s train split ({epoch:,} tokens): the run would repeat "
                                  f"data; lower the budget or use larger sizes")
            runs.append(RunPlan(name=name, budget=c, model=asdict(cfg), params=n, flops_per_token=fpt, steps=steps,
                                tokens=steps * step_tokens, flops=steps * step_tokens * fpt,
                                lr=float(f"{shapes.lr_for_params(n):.6g}"), warmup_steps=shapes.warmup_steps(steps),
                                batch_size=s.batch_size, seed=s.seed, overrides=list(s.overrides)))
    return runs


# ---------------------------------------------------------------------------------------------
# files


def write_json(path: Path, obj) -> None:
    """Atomically replace `path` by `obj` as indented JSON."""
    from gpt3lab.train.loop import write_text_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read it ({e}); delete the run dir to plan and train it again") from None


def save_plan(out: Path, s: Settings, runs: list[RunPlan]) -> None:
    """Write OUT/ladder.json and every run's run.json; refuse a run dir planned with other settings."""
    out = Path(out)
    for r in runs:
        path = run_dir(out, r.name) / RUN_FILE
        if path.exists():
            old = read_json(path)
            diff = [k for k in PLAN_KEYS if old.get(k) != asdict(r)[k]]
            if diff:
                raise ConfigError(f"{path.parent} was planned with other settings ({', '.join(diff)} differ); "
                                  f"use a new --out for a different ladder")
        else:
            write_json(path, asdict(r))
    write_json(out / LADDER_FILE, asdict(s))


def load_ladder(out: Path) -> tuple[Settings, list[RunPlan]]:
    """The settings and the planned runs found under a ladder dir (for --fit)."""
    out = Path(out)
    if not (out / LADDER_FILE).is_file():
        raise UserError(f"--fit {out}: no {LADDER_FILE} there; point it at the --out of a `gpt3lab scaling` ladder")
    s = Settings(**read_json(out / LADDER_FILE))
    runs = [RunPlan(**read_json(p)) for p in (out / "runs").glob(f"*/{RUN_FILE}")]
    return s, sorted(runs, key=lambda r: (r.budget, r.params))      # plan()'s order


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("_")[-1])


def status(out: Path, r: RunPlan) -> str:
    """done | trained | interrupted | new (module docstring)."""
    from gpt3lab import checkpoint as ckpt_io

    d = run_dir(out, r.name)
    if (d / EVAL_FILE).is_file():
        return "done"
    ckpts = ckpt_io.list_checkpoints(d)
    if ckpts and checkpoint_step(ckpts[-1]) >= r.steps:
        return "trained"
    return "interrupted" if ckpts else "new"


def command_for(out: Path, data: str, r: RunPlan) -> list[str] | None:
    """The `gpt3lab train` arguments that bring run r forward now (None when only evaluation is left)."""
    st = status(out, r)
    if st in ("done", "trained"):
        return None
    return r.argv(data, out, resume=st == "interrupted")


# ---------------------------------------------------------------------------------------------
# running


def launch(argv: list[str], in_process: bool = True, threads: int | None = None) -> None:
    """Run `gpt3lab <argv>`: the CLI's own entry function in this process, or a subprocess."""
    if in_process:
        import torch

        from gpt3lab.cli import main
        before = torch.get_num_threads()
        torch.set_num_threads(threads or before)
        try:
            rc = main(list(argv))
        finally:
            torch.set_num_threads(before)
    else:
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        rc = subprocess.call([sys.executable, "-m", "gpt3lab", *argv], env=env)
    if rc == 130:
        raise KeyboardInterrupt
    if rc:
        raise UserError(f"`gpt3lab {shlex.join(argv)}` failed (exit {rc}); fix the error above and run the ladder "
                        f"again (finished runs are kept)")


def evaluate(out: Path, r: RunPlan, data: str, eval_tokens: int) -> dict:
    """Held-out loss of the run's final checkpoint over the first eval_tokens tokens of the val split
    (consecutive non-overlapping windows: the same tokens for every run); writes eval.json."""
    import torch

    from gpt3lab import checkpoint as ckpt_io
    from gpt3lab.data import WindowLoader

    d = run_dir(out, r.name)
    ckpt = ckpt_io.list_checkpoints(d)[-1]
    model = ckpt_io.load_model(ckpt).eval()
    context = model.config.context
    val = WindowLoader(data, "val", context, 16)
    windows = (eval_tokens // context) if eval_tokens else None
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in val.sequential_batches(16):
            if windows is not None:
                x, y = x[:windows - count // context], y[:windows - count // context]
                if len(x) == 0:
                    break
            _, loss = model(x, y)
            total += loss.item() * y.numel()
            count += y.numel()
    if windows is not None and count < windows * context:
        raise DataError(f"{data}'s val split has {count:,} tokens in whole {context}-token windows, fewer than "
                        f"--eval-tokens {eval_tokens:,}; lower --eval-tokens")
    result = {"val_loss": total / count, "val_tokens": count, "step": checkpoint_step(ckpt)}
    write_json(d / EVAL_FILE, result)
    return result


def _eta(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


def execute(out: Path, s: Settings, runs: list[RunPlan], in_process: bool = True, threads: int | None = None,
            log=print) -> dict:
    """Bring every run to "done": train (or resume) and evaluate, with a progress line per run.
    Returns timing: seconds and FLOPs of the runs done now."""
    todo = [r for r in runs if status(out, r) != "done"]
    if len(todo) < len(runs):
        log(f"scaling: {len(runs) - len(todo)} of {len(runs)} runs already finished, skipped")
    done_flops, done_s = 0.0, 0.0
    remaining = sum(r.flops for r in todo)
    for i, r in enumerate(todo, 1):
        rate = done_flops / done_s if done_s else None
        eta = (lambda f: f / rate) if rate else (lambda f: None)
        st = status(out, r)
        log(f"scaling: run {i}/{len(todo)} {r.name} ({st}): C={r.budget:.3g}, N={r.params / 1e6:.3f}M, "
            f"D={r.tokens / 1e6:.3f}M tokens, {r.steps} steps, lr {r.lr:.3g}; ETA {_eta(eta(r.flops))}, "
            f"ladder ETA {_eta(eta(remaining))}")
        t0 = time.perf_counter()
        argv = command_for(out, s.data, r)
        if argv is not None:
            if st == "new":
                _clear_stale_logs(run_dir(out, r.name))
            launch(argv, in_process, threads)
        res = evaluate(out, r, s.data, s.eval_tokens)
        dt = time.perf_counter() - t0
        done_s += dt
        done_flops += r.flops
        remaining -= r.flops
        log(f"scaling: {r.name}: held-out loss {res['val_loss']:.4f} in {dt:.1f} s ({r.flops / dt / 1e9:.2f} GFLOP/s)")
    return {"seconds": done_s, "flops": done_flops, "runs": len(todo)}


def _clear_stale_logs(d: Path) -> None:
    """A run killed before its first checkpoint leaves only logs: remove them so it can start afresh."""
    for name in ("log.jsonl", "log.csv"):
        (d / name).unlink(missing_ok=True)


def finished(out: Path, s: Settings, runs: list[RunPlan], data: str | None = None) -> list[tuple[RunPlan, dict]]:
    """(plan, eval) of every run that has finished training (evaluating trained ones that lack eval.json)."""
    out_runs = []
    for r in runs:
        st = status(out, r)
        if st == "trained":
            evaluate(out, r, data or s.data, s.eval_tokens)
        elif st != "done":
            continue
        out_runs.append((r, read_json(run_dir(out, r.name) / EVAL_FILE)))
    return out_runs
