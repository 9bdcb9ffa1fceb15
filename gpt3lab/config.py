"""Typed configs. Each is a dataclass that validates itself and round-trips through JSON.

A checkpoint directory stores `config.json` = {"model": ModelConfig, ...}; `--set key=value` on the
command line edits any field by name, with the value parsed to the field's type.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from gpt3lab.errors import ConfigError

ATTENTION_PATTERNS = ("dense", "alternating", "banded")
LOGGERS = ("csv", "tensorboard", "wandb")


@dataclass
class ModelConfig:
    """Shape of a decoder-only GPT (GPT-2/GPT-3 family).

    `local_window` counts the tokens a banded-attention query sees *including itself*: with window w,
    the query at position t attends to keys t-w+1 .. t (w tokens). window=1 sees only itself.
    `attention_pattern`: "dense" (every layer dense, GPT-2), "alternating" (GPT-3: even layers dense,
    odd layers locally banded) or "banded" (every layer banded).
    `d_head` defaults to d_model // n_head; it may differ (the attention width is n_head * d_head),
    which is how the paper's 13B row (d_model 5140, 40 heads x 128) is represented exactly.
    """

    vocab_size: int = 50257
    context: int = 1024
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_head: int | None = None
    d_ff: int | None = None
    attention_pattern: str = "dense"
    local_window: int = 256
    dropout: float = 0.0
    bias: bool = True
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "n_layer", "n_head", "d_model", "local_window"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"model.{name}={v!r} must be a positive integer")
        if self.d_head is None:
            if self.d_model % self.n_head:
                raise ConfigError(
                    f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}; "
                    f"pick n_head dividing d_model or set model.d_head explicitly")
            self.d_head = self.d_model // self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.d_head < 1 or self.d_ff < 1:
            raise ConfigError(f"model.d_head={self.d_head} and model.d_ff={self.d_ff} must be positive")
        if self.attention_pattern not in ATTENTION_PATTERNS:
            raise ConfigError(f"model.attention_pattern={self.attention_pattern!r} is not one of "
                              f"{', '.join(ATTENTION_PATTERNS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")

    def rederive(self, changes: dict) -> dict:
        """`changes` (an override) plus d_head / d_ff reset to their defaults where a new d_model or n_head would
        leave them stale: `--set model.d_model=32` on a 768-wide config must not keep d_head=64 and
        d_ff=3072. A value that differs from what the old shape derives (set on purpose, e.g. the 13B row's
        d_head=128) is kept."""
        out = dict(changes)
        if ({"d_model", "n_head"} & changes.keys()) and "d_head" not in changes \
                and self.d_head == self.d_model // self.n_head:
            out["d_head"] = None
        if "d_model" in changes and "d_ff" not in changes and self.d_ff == 4 * self.d_model:
            out["d_ff"] = None
        return out

    @property
    def d_attn(self) -> int:
        """Width of the concatenated heads (= d_model for every GPT-2 checkpoint)."""
        return self.n_head * self.d_head

    def is_banded(self, layer: int) -> bool:
        """True when `layer` uses locally banded attention (GPT-3 alternates: odd layers banded)."""
        if self.attention_pattern == "dense":
            return False
        if self.attention_pattern == "banded":
            return True
        return layer % 2 == 1


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping for `gpt3lab train` / `gpt3lab finetune` (one loop serves both)."""

    batch_size: int = 8              # sequences per micro-batch (per process)
    batch_tokens: int | None = None  # tokens per optimizer step (all processes); None = one micro-batch
    max_steps: int = 1000
    lr: float = 6e-4
    min_lr_ratio: float = 0.1        # cosine decays to lr * min_lr_ratio (GPT-3: 10%)
    warmup_steps: int = 100
    decay_steps: int | None = None   # cosine length in steps; None = max_steps
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0           # max global grad norm; 0 = no clipping (norm still reported)
    precision: str = "auto"          # "fp32" | "bf16" (autocast, fp32 master weights) | "auto"
    compile: bool = False
    device: str = "auto"
    seed: int = 1337
    eval_every: int = 100
    eval_batches: int = 20
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    peak_flops: float | None = None  # FLOP/s for MFU; None = a known GPU's bf16 datasheet peak, else measured
    # GPT-3 batch-size ramp: grow linearly from ramp_start_tokens to batch_tokens over ramp_tokens tokens
    ramp_tokens: int = 0
    ramp_start_tokens: int | None = None
    # token-denominated LR schedule (GPT-3 presets): when set, warmup/decay follow tokens, not steps
    warmup_tokens: int | None = None
    decay_tokens: int | None = None  # cosine ends here; None = the run's end
    schedule_scale: str = "none"     # "auto": scale warmup/decay/ramp tokens by run tokens / 300B; or a number
    parallel: str = "none"           # "none" | "ddp" | "fsdp" (ddp/fsdp under torchrun)
    tensor_parallel: int = 1         # K > 1: shard each block over K ranks (needs parallel=fsdp; FSDP over world/K)
    async_checkpoint: bool = False   # write sharded checkpoints in the background while training continues
    activation_checkpointing: bool = False
    logger: str = "csv"              # "csv" (log.jsonl + log.csv only) | "tensorboard" | "wandb" (also write there)
    on_nonfinite: str = "stop"       # NaN/inf loss or gradients: "stop" (error, non-zero exit) | "skip" the step

    def __post_init__(self) -> None:
        _check_number_types(self, "train")
        if self.logger not in LOGGERS:
            raise ConfigError(f"train.logger={self.logger!r} must be one of {', '.join(LOGGERS)}")
        for name in ("batch_size", "max_steps", "eval_batches", "log_every", "save_every", "keep_last",
                     "tensor_parallel"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"train.{name}={v!r} must be a positive integer")
        if self.warmup_steps < 0 or self.eval_every < 0 or self.ramp_tokens < 0:
            raise ConfigError("train.warmup_steps, train.eval_every and train.ramp_tokens must be >= 0")
        if not (self.lr > 0):
            raise ConfigError(f"train.lr={self.lr} must be > 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.precision={self.precision!r} must be auto, fp32 or bf16")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ConfigError(f"train.on_nonfinite={self.on_nonfinite!r} must be stop or skip")
        if self.parallel not in ("none", "ddp", "fsdp"):
            raise ConfigError(f"train.parallel={self.parallel!r} must be none, ddp or fsdp")
        if self.schedule_scale not in ("none", "auto"):
            try:
                ok = float(self.schedule_scale) > 0
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"train.schedule_scale={self.schedule_scale!r} must be none, auto or a "
                                  f"positive number")
        for name in ("warmup_tokens", "decay_tokens"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"train.{name}={v} must be >= 0")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise ConfigError(f"train.batch_tokens={self.batch_tokens} must be positive")
        if self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip={self.grad_clip} must be >= 0 (0 = no clipping)")


# ---------------------------------------------------------------------------------------------
# JSON and --set helpers shared by every config


def _check_number_types(cfg: Any, prefix: str) -> None:
    """ConfigError naming the field when an int/float/bool field holds another type (e.g. "3e-4" from a
    JSON --config). bool is not accepted as a number; an int is a valid float."""
    for name, typ in typing.get_type_hints(type(cfg)).items():
        v = getattr(cfg, name)
        args = typing.get_args(typ)
        if v is None and type(None) in args:
            continue
        base = next((a for a in args if a is not type(None)), typ) if args else typ
        if base is bool:
            ok = isinstance(v, bool)
        elif base is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif base is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        else:
            continue
        if not ok:
            want = {bool: "true or false", int: "an integer", float: "a number"}[base]
            raise ConfigError(f"{prefix}.{name}={v!r} ({type(v).__name__}) must be {want}"
                              + (f"; write {prefix}.{name}: {v} without quotes" if isinstance(v, str) else ""))



def from_dict(cls: type, d: dict, where: str = "config") -> Any:
    """Build dataclass `cls` from a dict, rejecting unknown keys with the list of valid ones."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
    return cls(**d)


def _parse_value(text: str, typ: Any, key: str) -> Any:
    origin_args = typing.get_args(typ)
    if text.lower() in ("none", "null") and type(None) in origin_args:
        return None
    base = next((a for a in origin_args if a is not type(None)), typ) if origin_args else typ
    try:
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if base is int:
            return int(float(text)) if ("e" in text.lower() and float(text).is_integer()) else int(text)
        if base is float:
            return float(text)
        return text
    except ValueError:
        raise ConfigError(f"--set {key}={text}: expected a {getattr(base, '__name__', base)}") from None


def apply_overrides(cfg: Any, overrides: list[str], prefix: str) -> Any:
    """Apply `key=value` strings (key may be `prefix.key`) to dataclass `cfg`; returns a new instance.

    Keys for other prefixes are ignored so one --set list can address several configs.
    """
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in fields(cfg)}
    changes: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set lr=3e-4")
        key, value = item.split("=", 1)
        key = key.strip()
        if "." in key:
            pre, key = key.split(".", 1)
            if pre != prefix:
                continue
        if key not in names:
            continue
        changes[key] = _parse_value(value.strip(), hints[key], key)
    if changes and hasattr(cfg, "rederive"):      # fields derived from the changed ones follow them
        changes = cfg.rederive(changes)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def override_given(overrides: list[str], prefix: str, name: str) -> bool:
    """Whether a `key=value` override sets `name` (as `name` or `prefix.name`)."""
    return any(item.split("=", 1)[0].strip() in (name, f"{prefix}.{name}") for item in overrides)


def check_overrides_known(overrides: list[str], *cfgs: tuple[str, Any]) -> None:
    """Raise if an override names a key that none of the (prefix, config) pairs has."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        pre, _, bare = key.rpartition(".")
        ok = any((not pre or pre == p) and bare in {f.name for f in fields(c)} for p, c in cfgs)
        if not ok:
            valid = sorted(f"{p}.{f.name}" for p, c in cfgs for f in fields(c))
            raise ConfigError(f"--set {key}: unknown setting; valid: {', '.join(valid)}")


__all__ = ["ModelConfig", "TrainConfig", "ATTENTION_PATTERNS", "from_dict",
           "apply_overrides", "check_overrides_known", "field", "override_given"]
