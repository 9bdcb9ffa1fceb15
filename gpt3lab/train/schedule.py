"""Schedules as pure functions of progress: the learning rate (of the step) and the batch (of tokens seen).

Both are recomputed from saved counters on resume, so the schedule itself needs no saved state.
"""
from __future__ import annotations

import math

from gpt3lab.config import TrainConfig
from gpt3lab.errors import ConfigError


def lr_at(step: int, cfg: TrainConfig) -> float:
    """LR for optimizer step `step` (0-based): linear warmup to cfg.lr over warmup_steps, then cosine
    decay to lr * min_lr_ratio at decay_steps (default max_steps), constant after that (GPT-3)."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    decay_end = cfg.decay_steps if cfg.decay_steps is not None else cfg.max_steps
    if step >= decay_end:
        return floor
    progress = (step - cfg.warmup_steps) / (decay_end - cfg.warmup_steps)   # 0 -> 1
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def micro_tokens(batch_size: int, context: int, world_size: int = 1) -> int:
    """Tokens in one micro-step across all processes."""
    return batch_size * context * world_size


def grad_accum_steps(target_tokens: int | None, batch_size: int, context: int, world_size: int = 1) -> int:
    """Micro-steps per optimizer step so that one step holds ~target_tokens (rounded, at least 1)."""
    per = micro_tokens(batch_size, context, world_size)
    if target_tokens is None:
        return 1
    return max(1, int(target_tokens / per + 0.5))          # round half up


def batch_tokens_at(tokens_seen: int, cfg: TrainConfig, context: int, world_size: int = 1) -> int:
    """Tokens in the next optimizer step, given the tokens already trained on (GPT-3's batch ramp).

    Grows linearly from ramp_start_tokens to batch_tokens over the first ramp_tokens tokens and is
    rounded to whole micro-batches (so the result is always accum * batch_size * context * world).
    """
    per = micro_tokens(cfg.batch_size, context, world_size)
    target = cfg.batch_tokens if cfg.batch_tokens is not None else per
    if cfg.ramp_tokens > 0:
        start = cfg.ramp_start_tokens if cfg.ramp_start_tokens is not None else per
        if start > target:
            raise ConfigError(f"train.ramp_start_tokens={start} exceeds train.batch_tokens={target}")
        frac = min(1.0, tokens_seen / cfg.ramp_tokens)
        target = start + frac * (target - start)
    return grad_accum_steps(int(target), cfg.batch_size, context, world_size) * per
