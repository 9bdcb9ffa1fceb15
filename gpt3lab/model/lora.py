"""LoRA (Hu et al. 2021): low-rank adapters on the model's nn.Linear layers.

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        A: (r, in), B: (out, r), B = 0 at init

`LoRALinear` subclasses nn.Linear, so the frozen base weight keeps its name (`...c_attn.weight`) and a
LoRA model's state dict is the base state dict plus `...lora_A` / `...lora_B`. `fingerprint` hashes the
base model's config and weights, so an adapter is never silently applied to a different base model.
No I/O here: adapter directories and LoRA checkpoints are read and written by gpt3lab.adapters.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt3lab.errors import ConfigError

LORA_KEYS = ("lora_A", "lora_B")
ALL_TARGETS = ("c_attn", "c_proj", "c_fc", "attn.c_proj", "mlp.c_proj")


@dataclass
class LoRAConfig:
    """Adapter shape. targets: module-name suffixes ("c_attn", "c_proj" = attn.c_proj and mlp.c_proj,
    "attn.c_proj", "mlp.c_proj", "c_fc")."""
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("c_attn", "c_proj")

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"--lora-rank {self.rank!r} must be a positive integer")
        if not self.alpha > 0:
            raise ConfigError(f"--lora-alpha {self.alpha!r} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--lora-dropout {self.dropout!r} must be in [0, 1)")
        bad = [t for t in self.targets if t not in ALL_TARGETS]
        if bad or not self.targets:
            raise ConfigError(f"--lora-targets {','.join(self.targets)!r}: unknown target(s) {bad}; "
                              f"choose from {', '.join(ALL_TARGETS)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        """JSON-ready: {"rank", "alpha", "dropout", "targets": [...]}."""
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "lora config") -> "LoRAConfig":
        """The inverse of to_dict; other keys of `d` are ignored (an adapter config holds more)."""
        try:
            return cls(int(d["rank"]), float(d["alpha"]), float(d["dropout"]), tuple(d["targets"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: not a LoRA config ({type(e).__name__}: {e}); expected rank, alpha, "
                              f"dropout and targets") from None


class LoRALinear(nn.Linear):
    """nn.Linear with a trainable low-rank update; the base weight and bias are frozen."""

    def __init__(self, base: nn.Linear, cfg: LoRAConfig):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None,
                         device="meta", dtype=base.weight.dtype)
        self.weight, self.bias = base.weight, base.bias      # share the base tensors, no copy
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(cfg.rank, self.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, cfg.rank, device=dev, dtype=dt))
        if dev.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))   # as nn.Linear; B = 0 makes the update 0
        self.scale = cfg.scale
        self.lora_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)   # (B, T, out)
        return F.linear(x, self.weight, self.bias) + self.scale * update

    def delta(self) -> torch.Tensor:
        """The dense weight update scale * B @ A, shape (out, in)."""
        return self.scale * (self.lora_B @ self.lora_A)

    def merged(self) -> nn.Linear:
        """A plain nn.Linear holding W + scale * B A (same output as this layer in eval mode)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight + self.delta())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def inject_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Freeze every parameter of `model`, then wrap each targeted nn.Linear in a LoRALinear (in place).

    The tied lm_head is never a target. Returns the wrapped module names; ConfigError when none match.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules()
             if type(m) is nn.Linear and n != "lm_head" and _matches(n, cfg.targets)]
    if not names:
        raise ConfigError(f"--lora-targets {','.join(cfg.targets)}: no nn.Linear module of the model matches")
    for n in names:
        parent, _, child = n.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, LoRALinear(getattr(owner, child), cfg))
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain nn.Linear with the update folded into W (in place)."""
    for n, m in lora_modules(model).items():
        parent, _, child = n.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, m.merged())
    return model


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only: {"transformer.h.0.attn.c_attn.lora_A": ..., ...}."""
    return {k.removeprefix("_orig_mod."): v.detach().contiguous()
            for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] in LORA_KEYS}


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without adapter tensors (the base weights, tied lm_head once)."""
    return {k: v for k, v in model.state_dict().items()
            if k.rsplit(".", 1)[-1] not in LORA_KEYS and k != "lm_head.weight"}


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, tied tensors counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def fingerprint(model: nn.Module) -> str:
    """sha256 over the base model's config (less dropout) and base weights (names, dtypes, shapes, bytes).

    Adapters are excluded, so a LoRA model has the fingerprint of the base it was built on.
    """
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    shape = {k: v for k, v in asdict(cfg).items() if k != "dropout"} if cfg is not None else {}
    h.update(json.dumps(shape, sort_keys=True).encode())      # dropout is a training knob, not the model
    for k, v in sorted(base_state(model).items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


__all__ = ["ALL_TARGETS", "LoRAConfig", "LoRALinear", "base_state", "fingerprint", "inject_lora", "lora_modules",
           "lora_state", "merge_lora", "param_counts"]
