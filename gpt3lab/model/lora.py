"""LoRA (Hu et al. 2021): low-rank adapters on the model's nn.Linear layers.

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        A: (r, in), B: (out, r), B = 0 at init

`LoRALinear` subclasses nn.Linear, so the frozen base weight keeps its name (`...c_attn.weight`) and a
LoRA model's state dict is the base state dict plus `...lora_A` / `...lora_B`. An adapter directory holds
only those:

    ADAPTER/adapter.safetensors   the lora_A / lora_B tensors
    ADAPTER/adapter_config.json   {"format": "gpt3lab-lora-adapter", "rank", "alpha", "dropout", "targets",
                                   "base": "<base checkpoint path>", "base_fingerprint": "<sha256>", ...}

The fingerprint hashes the base model's config and weights, so an adapter is never silently applied to a
different base model.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt3lab.errors import CheckpointError, ConfigError

ADAPTER_FORMAT = "gpt3lab-lora-adapter"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
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


# ---- adapter directories ------------------------------------------------------------------------------

def is_adapter_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / ADAPTER_CONFIG).is_file() and (p / ADAPTER_WEIGHTS).is_file()


def save_adapter(dest: str | Path, model: nn.Module, cfg: LoRAConfig, base: str, base_fingerprint: str,
                 tokenizer=None, extra: dict | None = None) -> Path:
    """Write ADAPTER/{adapter.safetensors, adapter_config.json[, tokenizer]} atomically."""
    from gpt3lab.checkpoint import write_dir_atomically

    state = lora_state(model)
    if not state:
        raise ConfigError("save_adapter: the model has no LoRA layers (inject_lora first)")

    def fill(tmp: Path) -> None:
        save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        meta = {"format": ADAPTER_FORMAT, "version": 1, **asdict(cfg), "targets": list(cfg.targets),
                "base": str(base), "base_fingerprint": base_fingerprint,
                "base_model": asdict(model.config), **(extra or {})}
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)

    return write_dir_atomically(dest, fill)


def read_adapter_config(adapter_dir: str | Path) -> tuple[LoRAConfig, dict]:
    """(LoRAConfig, the whole adapter_config.json) of an adapter dir; CheckpointError when unreadable."""
    from gpt3lab.checkpoint import read_json

    path = Path(adapter_dir) / ADAPTER_CONFIG
    meta = read_json(path, f"{adapter_dir} is not a LoRA adapter directory", "re-save the adapter")
    if meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path}: not a gpt3lab LoRA adapter config (format={meta.get('format')!r})")
    cfg = LoRAConfig(int(meta["rank"]), float(meta["alpha"]), float(meta["dropout"]), tuple(meta["targets"]))
    return cfg, meta


def load_lora_tensors(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy adapter tensors into an injected model; CheckpointError on missing/extra keys or shapes."""
    expected = lora_state(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{where}: adapter tensors do not match the model: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{where}: {k} has shape {tuple(v.shape)}, the model expects "
                                  f"{tuple(expected[k].shape)}")
    model.load_state_dict(state, strict=False)


def load_adapter(model: nn.Module, adapter_dir: str | Path, check: bool = True) -> nn.Module:
    """Inject the adapter of `adapter_dir` into base `model` (in place) and load its weights.

    check: refuse (CheckpointError) when the model's fingerprint differs from the adapter's base.
    """
    cfg, meta = read_adapter_config(adapter_dir)
    if check:
        fp = fingerprint(model)
        if fp != meta.get("base_fingerprint"):
            raise CheckpointError(
                f"{adapter_dir}: adapter was trained on a different base model (fingerprint "
                f"{str(meta.get('base_fingerprint'))[:12]}…, this model {fp[:12]}…; base named in the adapter: "
                f"{meta.get('base')}); load it on that base checkpoint")
    try:
        state = load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{adapter_dir}/{ADAPTER_WEIGHTS}: truncated or corrupt ({e})") from None
    inject_lora(model, cfg)
    load_lora_tensors(model, state, str(adapter_dir))
    return model.eval()


def load_base(path: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer) of a gpt3lab checkpoint/run dir or a Hugging Face GPT-2 dir."""
    from gpt3lab import checkpoint as ckpt_io

    p = Path(path)
    if _is_hf(p):
        from gpt3lab.convert import from_hf, hf_tokenizer
        model, cfg = from_hf(p, device=device)
        tok = hf_tokenizer(p)
        if tok is None:
            if cfg.vocab_size != 50257:
                raise CheckpointError(f"{p}: no vocab.json and vocab_size {cfg.vocab_size} is not GPT-2's; "
                                      f"add GPT-2's vocab.json/merges.txt or convert with a tokenizer")
            from gpt3lab.tokenizer import Tokenizer
            tok = Tokenizer.gpt2()
        return model, tok
    return ckpt_io.load_model(p, device=device), ckpt_io.load_tokenizer(p)


def _is_hf(p: Path) -> bool:
    try:
        return (p / "config.json").is_file() and "model_type" in json.loads((p / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def is_lora_checkpoint(path: str | Path) -> bool:
    """A training checkpoint of a LoRA fine-tune (config.json carries "lora"; weights hold base + adapters)."""
    p = Path(path)
    try:
        return (p / "model.safetensors").is_file() and "lora" in json.loads((p / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False


def load_lora_checkpoint(ckpt: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a LoRA training checkpoint: GPT(config) + adapters, every tensor from the checkpoint."""
    from gpt3lab import checkpoint as ckpt_io
    from gpt3lab.config import ModelConfig, from_dict
    from gpt3lab.model import GPT

    meta = ckpt_io.read_config(ckpt)
    with torch.device("meta"):          # every tensor comes from the checkpoint: skip the random init
        model = GPT(from_dict(ModelConfig, meta["model"], where=f"{ckpt}/config.json model"))
        cfg = meta["lora"]
        inject_lora(model, LoRAConfig(int(cfg["rank"]), float(cfg["alpha"]), float(cfg["dropout"]),
                                      tuple(cfg["targets"])))
    model = model.to_empty(device=device)
    state = ckpt_io.load_state(ckpt)
    expected = set(base_state(model)) | set(lora_state(model))
    if set(state) != expected:
        raise CheckpointError(f"{ckpt}/model.safetensors does not match its LoRA config: missing "
                              f"{sorted(expected - set(state))[:3]}, unexpected {sorted(set(state) - expected)[:3]}")
    model.load_state_dict(state, strict=False)
    model.lm_head.weight = model.transformer.wte.weight
    return model.eval()


def load_with_adapter(path: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer) from an adapter dir (base named in it + adapter), a LoRA training checkpoint,
    or a run dir of a LoRA fine-tune (its adapter/ when present, else its newest checkpoint)."""
    from gpt3lab import checkpoint as ckpt_io

    p = Path(path)
    if not is_adapter_dir(p) and is_adapter_dir(p / "adapter"):
        p = p / "adapter"
    if is_adapter_dir(p):
        _, meta = read_adapter_config(p)
        base = Path(meta["base"])
        if not base.exists():
            raise CheckpointError(f"{p}: its base checkpoint {base} does not exist; copy the base there or "
                                  f"edit \"base\" in {p / ADAPTER_CONFIG}")
        model, tok = load_base(base, device=device)
        return load_adapter(model, p), tok
    ckpt = ckpt_io.resolve(p)
    if not is_lora_checkpoint(ckpt):
        return ckpt_io.load(ckpt, device=device)
    return load_lora_checkpoint(ckpt, device=device), ckpt_io.load_tokenizer(ckpt)


__all__ = ["LoRAConfig", "LoRALinear", "inject_lora", "merge_lora", "lora_state", "base_state", "param_counts",
           "fingerprint", "save_adapter", "load_adapter", "read_adapter_config", "load_with_adapter",
           "is_adapter_dir", "is_lora_checkpoint", "load_lora_checkpoint", "load_base", "ALL_TARGETS"]
