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


# ---- token-denominated schedules (GPT-3 presets) -------------------------------------------------

GPT3_RUN_TOKENS = 300_000_000_000   # the paper's training length; its warmup/decay/ramp are fractions of it


def full_step_tokens(cfg: TrainConfig, context: int, world_size: int = 1) -> int:
    """Tokens in an optimizer step once the batch ramp is over."""
    return batch_tokens_at(cfg.ramp_tokens, cfg, context, world_size)


def schedule_scale(cfg: TrainConfig, context: int, world_size: int = 1) -> float:
    """The factor applied to warmup_tokens, decay_tokens and ramp_tokens.

    schedule_scale="auto": run_tokens / 300B, capped at 1, where run_tokens = max_steps * full step
    tokens. A GPT-3 preset trained for 3B tokens thus warms up over 3.75M tokens, ramps its batch over
    1% of the paper's 4-12B and decays over 2.6B tokens: the paper's curve squeezed to the run.
    "none" (or 1): the configured token counts as they are.
    """
    if cfg.schedule_scale == "none":
        return 1.0
    if cfg.schedule_scale == "auto":
        return min(1.0, cfg.max_steps * full_step_tokens(cfg, context, world_size) / GPT3_RUN_TOKENS)
    return float(cfg.schedule_scale)


def scaled(cfg: TrainConfig, context: int, world_size: int = 1) -> TrainConfig:
    """cfg with warmup_tokens, decay_tokens and ramp_tokens multiplied by `schedule_scale` (ints)."""
    from dataclasses import replace

    f = schedule_scale(cfg, context, world_size)
    if f == 1.0:
        return cfg
    sc = (lambda v: None if v is None else max(1, int(v * f)))
    return replace(cfg, warmup_tokens=sc(cfg.warmup_tokens), decay_tokens=sc(cfg.decay_tokens),
                   ramp_tokens=sc(cfg.ramp_tokens) if cfg.ramp_tokens else 0, schedule_scale="none")


def lr_at_tokens(tokens_after: int, cfg: TrainConfig, context: int, world_size: int = 1) -> float:
    """LR of the step that ends at `tokens_after` tokens: linear warmup over warmup_tokens, cosine to
    lr * min_lr_ratio at decay_tokens (default: the run's max_steps * full step tokens), then flat."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    warm = cfg.warmup_tokens or 0
    if tokens_after < warm:
        return peak * tokens_after / warm
    end = cfg.decay_tokens if cfg.decay_tokens is not None else \
        cfg.max_steps * full_step_tokens(cfg, context, world_size)
    if tokens_after >= end:
        return floor
    progress = (tokens_after - warm) / (end - warm)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def lr_for(step: int, tokens: int, step_tokens: int, cfg: TrainConfig, context: int, world_size: int = 1) -> float:
    """The loop's LR: token-denominated when cfg.warmup_tokens is set (GPT-3 presets), else by step."""
    if cfg.warmup_tokens is None and cfg.decay_tokens is None:
        return lr_at(step, cfg)
    return lr_at_tokens(tokens + step_tokens, cfg, context, world_size)


def pin_schedule(old: TrainConfig, new: TrainConfig, context: int, world_size: int = 1) -> TrainConfig:
    """`new` (a resumed run's config with another max_steps) with the LR/batch schedule of `old` fixed in
    place: every length that defaulted to the run's length (decay_steps, decay_tokens) or scaled with it
    (schedule_scale=auto) is written out as `old` resolved it."""
    from dataclasses import replace

    o = scaled(old, context, world_size)
    if o.warmup_tokens is None and o.decay_tokens is None:          # step-denominated (lr_at)
        return replace(new, decay_steps=o.decay_steps if o.decay_steps is not None else o.max_steps)
    end = o.decay_tokens if o.decay_tokens is not None else o.max_steps * full_step_tokens(o, context, world_size)
    return replace(new, warmup_tokens=o.warmup_tokens, decay_tokens=end, ramp_tokens=o.ramp_tokens,
                   schedule_scale="none")


def check_world_size(cfg: TrainConfig, context: int, world_size: int) -> None:
    """With several processes the full batch must be whole micro-steps of all ranks (no silent rounding)."""
    per = micro_tokens(cfg.batch_size, context, world_size)
    if world_size > 1 and cfg.batch_tokens is not None and cfg.batch_tokens % per:
        raise ConfigError(
            f"train.batch_tokens={cfg.batch_tokens} is not a whole number of micro-steps of world size "
            f"{world_size} x batch_size {cfg.batch_size} x context {context} = {per} tokens; pick a world "
            f"size (or batch_size) dividing {cfg.batch_tokens // context} sequences, or change batch_tokens")
