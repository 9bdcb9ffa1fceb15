"""The ladder's rules, stated once: model shape by size, learning rate by size, warm-up, FLOPs per token.

Shape (the GPT-3 presets' proportions, Brown et al. 2020 Table 2.1): heads as near 64 dimensions as the
width allows (GPT-3 Small and Medium use 64, the larger presets 80-128), width = 8·m, depth such that the aspect ratio d_model / n_layer
lies in the presets' range (43 for Medium .. 128 for 6.7B-175B; we allow 32-128 so that tiny widths have
more than one depth to choose from). For a target parameter count the rule takes the candidate shapes within
±15% of it and, among those, the aspect ratio closest to GPT-3 Small's 64 (768 / 12); without one in range,
the nearest in log-parameters.

Learning rate: a power law in parameters fitted (least squares in log-log) to the eight rows of Table 2.1,
lr(N) = 4.48e-4 · (N / 125M)^-0.305 (fitted at import from the presets, printed by `gpt3lab scaling`),
extrapolated to small N. Warm-up: 2% of the run's steps, at least 5 (GPT-3's 375M of 300B tokens, 0.125%, is under one
step for a CPU run); the cosine then ends at the run's own last step (Chinchilla: a longer schedule than the
run biases the fit).

FLOPs: gpt3lab.sizing.training_flops, the formula of `gpt3lab size` and of the MFU counter.
"""
from __future__ import annotations

import math

from gpt3lab import sizing
from gpt3lab.config import ModelConfig
from gpt3lab.errors import ConfigError

HEAD_DIM = 64
WIDTH_STEP = 8
ASPECT = 64.0                      # GPT-3 Small: d_model 768 / 12 layers
ASPECT_RANGE = (32.0, 128.0)
SIZE_TOLERANCE = 0.15              # candidates within ±15% of the target count are "that size"
MAX_WIDTH = 16384
WARMUP_FRACTION, MIN_WARMUP = 0.02, 5


def shape(d_model: int, n_layer: int, vocab_size: int, context: int) -> ModelConfig:
    """A dense GPT of width d_model and depth n_layer; heads tile d_model, their size nearest to 64."""
    n_head = min((h for h in range(1, d_model + 1) if d_model % h == 0),
                 key=lambda h: (abs(math.log(d_model / h / HEAD_DIM)), h))
    return ModelConfig(vocab_size=vocab_size, context=context, n_layer=n_layer, d_model=d_model, n_head=n_head,
                       attention_pattern="dense")


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token: sizing.training_flops (6N + attention), as `gpt3lab size` and MFU count them."""
    return sizing.training_flops(cfg, 1)["total"]


def label(cfg: ModelConfig) -> str:
    """Short name of a shape: d{width}-l{depth}."""
    return f"d{cfg.d_model}-l{cfg.n_layer}"


def candidates(vocab_size: int, context: int, max_params: float) -> list[tuple[int, ModelConfig]]:
    """(params, shape) of every width/depth pair in the aspect range, up to ~2 x max_params, by size."""
    out = []
    for d in range(WIDTH_STEP, MAX_WIDTH + 1, WIDTH_STEP):
        lo = max(1, math.ceil(d / ASPECT_RANGE[1]))
        hi = max(lo, math.floor(d / ASPECT_RANGE[0]))
        smallest = shape(d, lo, vocab_size, context)
        if out and sizing.n_params(smallest) > 2 * max_params:
            break
        for n_layer in range(lo, hi + 1):
            cfg = shape(d, n_layer, vocab_size, context)
            out.append((sizing.n_params(cfg), cfg))
    return sorted(out, key=lambda t: (t[0], t[1].d_model))


def shape_for_params(n_target: float, vocab_size: int, context: int) -> ModelConfig:
    """The rule's shape for a target parameter count (module docstring)."""
    if not n_target > 0:
        raise ConfigError(f"model size {n_target!r} must be a positive parameter count")
    cands = candidates(vocab_size, context, n_target)
    near = [(n, c) for n, c in cands if abs(math.log(n / n_target)) <= math.log1p(SIZE_TOLERANCE)]
    if near:
        return min(near, key=lambda t: (abs(math.log(t[1].d_model / t[1].n_layer / ASPECT)), t[0]))[1]
    return min(cands, key=lambda t: abs(math.log(t[0] / n_target)))[1]


def _lr_law() -> tuple[float, float]:
    """(lr at 125M, exponent p) of lr = lr0 · (N / 125M)^-p, least squares over the GPT-3 presets."""
    from gpt3lab.presets import GPT3_PRESETS, get_preset

    pts = [(math.log(get_preset(n).paper_params / 125e6), math.log(get_preset(n).train["lr"])) for n in GPT3_PRESETS]
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return math.exp(my - slope * mx), -slope


LR_AT_125M, LR_EXPONENT = _lr_law()


def lr_for_params(n_params: float) -> float:
    """Peak learning rate for a model of n_params parameters (Table 2.1's trend, extrapolated)."""
    return LR_AT_125M * (n_params / 125e6) ** -LR_EXPONENT


def warmup_steps(steps: int) -> int:
    """Warm-up steps of a run of `steps` steps: 2%, at least 5, at most half the run."""
    return max(1, min(steps // 2, max(MIN_WARMUP, round(WARMUP_FRACTION * steps))))


def rule_text() -> str:
    """The rules in one line each (printed at the start of a ladder and stored in results.json)."""
    return (f"shape: heads near {HEAD_DIM} dims, width multiple of {WIDTH_STEP}, aspect d_model/n_layer in "
            f"{ASPECT_RANGE[0]:.0f}-{ASPECT_RANGE[1]:.0f}, nearest to {ASPECT:.0f} within ±{SIZE_TOLERANCE:.0%} of "
            f"the size\nlr: {LR_AT_125M:.3g} x (N / 125M)^-{LR_EXPONENT:.3f} (least squares over Table 2.1); "
            f"warm-up {WARMUP_FRACTION:.0%} of steps (>= {MIN_WARMUP}); cosine to 10% at the run's last step")
