"""The lines `gpt3lab train` prints before its first step: what is about to run, in numbers.

Like nanoGPT's and litgpt's start-up lines: parameters, device and precision, the malloc, tokens per step,
steps and tokens in all, the data's size and how many passes (epochs) over it the run makes.
"""
from __future__ import annotations

from pathlib import Path

from gpt3lab.train.schedule import batch_tokens_at


def run_tokens(cfg, context: int, world: int, start_step: int = 0, start_tokens: int = 0) -> int:
    """Tokens the run trains on from (start_step, start_tokens) to cfg.max_steps, batch ramp included."""
    steps, tokens = start_step, start_tokens
    while steps < cfg.max_steps and cfg.ramp_tokens and tokens < cfg.ramp_tokens:   # the ramp, step by step
        tokens += batch_tokens_at(tokens, cfg, context, world)
        steps += 1
    return tokens + (cfg.max_steps - steps) * batch_tokens_at(tokens, cfg, context, world) - start_tokens


def summary_lines(trainer, run_dir: str | Path, data_dir: str | Path, allocator: str) -> list[str]:
    """The summary of a built Trainer (before fit)."""
    m, cfg, world = trainer.model_cfg, trainer.sched, trainer.dist.dp_size
    n = trainer.model.num_params()
    step_tokens = batch_tokens_at(trainer.tokens, cfg, m.context, world)
    per_micro = cfg.batch_size * m.context * world
    todo = run_tokens(cfg, m.context, world, trainer.step, trainer.tokens)
    data = trainer.train_data.num_tokens
    val = trainer.eval_data.num_tokens if trainer.eval_data is not None else 0
    ramp = f", ramping to {batch_tokens_at(cfg.ramp_tokens, cfg, m.context, world):,}" if cfg.ramp_tokens else ""
    warmup = (f"{cfg.warmup_tokens:,} tokens" if cfg.warmup_tokens is not None else f"{cfg.warmup_steps:,} steps")
    start = f"resuming at step {trainer.step:,}" if trainer.step else "new run"
    threads = f" ({_threads()} threads)" if trainer.device.type == "cpu" else ""
    return [
        f"gpt3lab train: {run_dir} ({start})",
        f"  parameters: {n:,} ({n / 1e6:.2f}M): {m.n_layer} layers, d_model {m.d_model}, {m.n_head} heads, "
        f"context {m.context}, vocab {m.vocab_size:,}, {m.attention_pattern} attention",
        f"  device: {trainer.device}{threads}, precision {trainer.precision}, {world} data-parallel process(es)",
        f"  allocator: {allocator}",
        f"  batch: {step_tokens:,} tokens per step = {step_tokens // per_micro} accumulation x {world} process(es) "
        f"x {cfg.batch_size} sequences x {m.context} tokens{ramp}",
        f"  steps: {trainer.step:,} -> {cfg.max_steps:,}, {todo:,} tokens to train on (lr {cfg.lr:g}, "
        f"warmup {warmup}, cosine to {cfg.min_lr_ratio:g}x)",
        f"  data: {data_dir}: {data:,} train tokens, {val:,} val tokens; this run is {todo / max(data, 1):.2f} "
        f"epochs of the train split",
    ]


def _threads() -> int:
    import torch
    return torch.get_num_threads()


__all__ = ["summary_lines", "run_tokens"]
