"""Model presets as data: the eight GPT-3 sizes of the paper's Table 2.1, plus small CPU sizes.

Choices where the paper's table contradicts itself (Brown et al. 2020, Table 2.1):
- GPT-3 XL: the table lists 24 heads x d_head 128 = 3072, but d_model = 2048. Heads must tile d_model for
  the stated 1.3B parameters (24 x 128 would give 1.52B), so we use 16 heads x 128 = 2048.
- GPT-3 13B: the table lists d_model 5140 but 40 heads x 128 = 5120. We keep d_model = 5140 and an
  attention width of 40 x 128 = 5120 (`d_head` is a separate field), which gives 12.94B (-0.5%);
  d_model 5120 would give 12.85B (-1.1%).
- Parameter names in the table are rounded: with the table's shapes, GPT-3 Medium is 355.9M (+1.7% vs
  "350M"), XL 1.316B (+1.2%) and 2.7B 2.652B (-1.8%); the others are within 1%. We keep the table's
  shapes rather than bend them to match the rounded names.
All GPT-3 sizes use context 2048, vocab 50257 and alternate dense / locally banded attention layers
(the paper: "alternating dense and locally banded sparse attention patterns, similar to the Sparse
Transformer"); the band width is not given in the paper; we use 256 by default.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gpt3lab.config import ModelConfig
from gpt3lab.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    model: dict
    train: dict = field(default_factory=dict)   # TrainConfig overrides (paper defaults for GPT-3 sizes)
    paper_params: float | None = None            # the paper's stated parameter count
    paper_batch_tokens: int | None = None
    note: str = ""

    def model_config(self, **overrides) -> ModelConfig:
        return ModelConfig(**{**self.model, **overrides})


_SEQS = {0.5: 256, 1.0: 512, 2.0: 1024, 3.2: 1600}   # the table's batch (M tokens) -> sequences


def _gpt3(n_layer, d_model, n_head, d_head, batch_m, lr, params, ramp_b, note="") -> Preset:
    batch_tokens = int(batch_m * 1_000_000)
    return Preset(
        model=dict(vocab_size=50257, context=2048, n_layer=n_layer, d_model=d_model, n_head=n_head,
                   d_head=d_head, attention_pattern="alternating", local_window=256),
        # Paper: Adam(0.9, 0.95, 1e-8), clip 1.0, wd 0.1, warmup 375M tokens, cosine to 10% over 260B of
        # 300B tokens, batch ramped linearly from 32k tokens over the first 4-12B tokens. The table's
        # 0.5M/1M/2M/3.2M-token batches are taken as whole 2048-token sequences (256/512/1024/1600),
        # so the batch splits evenly over power-of-two world sizes. The paper gives the ramp length only
        # as "4-12B depending on model size": we interpolate log-linearly in parameters (ramp_b).
        # schedule_scale=auto squeezes warmup, decay and ramp by run tokens / 300B (train/schedule.py).
        train=dict(lr=lr, batch_tokens=_SEQS[batch_m] * 2048, beta1=0.9, beta2=0.95, eps=1e-8,
                   weight_decay=0.1, grad_clip=1.0, min_lr_ratio=0.1, warmup_tokens=375_000_000,
                   decay_tokens=260_000_000_000, ramp_start_tokens=32_768, ramp_tokens=int(ramp_b * 1e9),
                   schedule_scale="auto"),
        paper_params=params, paper_batch_tokens=batch_tokens, note=note)


PRESETS: dict[str, Preset] = {
    # --- GPT-3, Table 2.1 -------------------------------------------------------------------------
    "gpt3-small": _gpt3(12, 768, 12, 64, 0.5, 6.0e-4, 125e6, 4.0),
    "gpt3-medium": _gpt3(24, 1024, 16, 64, 0.5, 3.0e-4, 350e6, 5.1),
    "gpt3-large": _gpt3(24, 1536, 16, 96, 0.5, 2.5e-4, 760e6, 6.0),
    "gpt3-xl": _gpt3(24, 2048, 16, 128, 1.0, 2.0e-4, 1.3e9, 6.6, "paper says 24 heads; 16 x 128 tiles d_model"),
    "gpt3-2.7b": _gpt3(32, 2560, 32, 80, 1.0, 1.6e-4, 2.7e9, 7.4),
    "gpt3-6.7b": _gpt3(32, 4096, 32, 128, 2.0, 1.2e-4, 6.7e9, 8.4),
    "gpt3-13b": _gpt3(40, 5140, 40, 128, 2.0, 1.0e-4, 13.0e9, 9.1, "d_model 5140 kept; attention width 5120"),
    "gpt3-175b": _gpt3(96, 12288, 96, 128, 3.2, 0.6e-4, 175.0e9, 12.0),
    # --- GPT-2 124M shape (dense, context 1024): what HF `gpt2` checkpoints have -----------------------
    "gpt2": Preset(model=dict(vocab_size=50257, context=1024, n_layer=12, d_model=768, n_head=12)),
    # --- small CPU sizes ------------------------------------------------------------------------------
    # tests: a few thousand parameters, runs in milliseconds
    "tiny": Preset(model=dict(vocab_size=256, context=64, n_layer=2, d_model=64, n_head=4,
                              attention_pattern="alternating", local_window=16),
                   train=dict(lr=1e-3, batch_size=4, warmup_steps=10, max_steps=100)),
    # the bundled demo (make demo): Shakespeare, BPE-4096; the demo fits the step count to its 525-s
    # training budget by timing a few steps (max_steps is only a ceiling); see docs/BENCHMARKS.md
    "demo": Preset(model=dict(vocab_size=4096, context=128, n_layer=4, d_model=128, n_head=4,
                              attention_pattern="dense"),
                   train=dict(lr=3e-3, batch_size=16, warmup_steps=50, max_steps=20000, eval_every=200,
                              eval_batches=20, save_every=400, weight_decay=0.1)),
    # the CPU benchmark sizes of docs/BENCHMARKS.md
    "cpu-6l": Preset(model=dict(vocab_size=50257, context=256, n_layer=6, d_model=384, n_head=6)),
    "cpu-12l": Preset(model=dict(vocab_size=50257, context=256, n_layer=12, d_model=768, n_head=12)),
}

GPT3_PRESETS = [n for n in PRESETS if n.startswith("gpt3-")]


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
