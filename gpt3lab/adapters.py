"""LoRA adapter directories and LoRA training checkpoints on disk (the layers are gpt3lab.model.lora).

    ADAPTER/adapter.safetensors   the lora_A / lora_B tensors only (+ adapter.safetensors.sha256, checked on load)
    ADAPTER/adapter_config.json   {"format": "gpt3lab-lora-adapter", "rank", "alpha", "dropout", "targets",
                                   "base": "<base checkpoint path>", "base_fingerprint": "<sha256>", ...}

The fingerprint (lora.fingerprint) hashes the base model's config and weights, so an adapter is never
silently applied to a different base model. A LoRA *training checkpoint* is a gpt3lab checkpoint whose
config.json carries "lora" and whose weights hold base + adapter tensors. Load either with gpt3lab.load.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file

from gpt3lab import checkpoint as ckpt_io
from gpt3lab.config import ModelConfig, from_dict
from gpt3lab.errors import CheckpointError, ConfigError
from gpt3lab.model.build import build_model, check_state
from gpt3lab.model.lora import LoRAConfig, fingerprint, inject_lora, lora_state

ADAPTER_FORMAT = "gpt3lab-lora-adapter"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"


def is_adapter_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / ADAPTER_CONFIG).is_file() and (p / ADAPTER_WEIGHTS).is_file()


def save_adapter(dest: str | Path, model: nn.Module, cfg: LoRAConfig, base: str, base_fingerprint: str,
                 tokenizer=None, extra: dict | None = None) -> Path:
    """Write ADAPTER/{adapter.safetensors, adapter_config.json[, tokenizer]} atomically."""
    state = lora_state(model)
    if not state:
        raise ConfigError("save_adapter: the model has no LoRA layers (inject_lora first)")

    def fill(tmp: Path) -> None:
        ckpt_io.save_weights(state, tmp / ADAPTER_WEIGHTS)       # + its SHA-256, checked on load
        meta = {"format": ADAPTER_FORMAT, "version": 1, **cfg.to_dict(), "base": str(base),
                "base_fingerprint": base_fingerprint, "base_model": asdict(model.config), **(extra or {})}
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)

    return ckpt_io.write_dir_atomically(dest, fill)


def read_adapter_config(adapter_dir: str | Path) -> tuple[LoRAConfig, dict]:
    """(LoRAConfig, the whole adapter_config.json) of an adapter dir; CheckpointError when unreadable."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    meta = ckpt_io.read_json(path, f"{adapter_dir} is not a LoRA adapter directory", "re-save the adapter")
    if meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path}: not a gpt3lab LoRA adapter config (format={meta.get('format')!r})")
    return LoRAConfig.from_dict(meta, where=str(path)), meta


def base_of(adapter_dir: str | Path) -> Path:
    """The base checkpoint an adapter names; CheckpointError when it is gone."""
    _, meta = read_adapter_config(adapter_dir)
    base = Path(meta["base"])
    if not base.exists():
        raise CheckpointError(f"{adapter_dir}: its base checkpoint {base} does not exist; copy the base there or "
                              f"edit \"base\" in {Path(adapter_dir) / ADAPTER_CONFIG}")
    return base


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
    ckpt_io.verify_checksum(Path(adapter_dir) / ADAPTER_WEIGHTS)
    try:
        state = load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{adapter_dir}/{ADAPTER_WEIGHTS}: truncated or corrupt ({e})") from None
    inject_lora(model, cfg)
    check_state({k: tuple(v.shape) for k, v in lora_state(model).items()}, state, str(adapter_dir))
    model.load_state_dict(state, strict=False)
    return model.eval()


def load_lora_checkpoint(ckpt: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a LoRA training checkpoint: GPT(config) + adapters, every tensor from the checkpoint."""
    meta = ckpt_io.read_config(ckpt)
    cfg = from_dict(ModelConfig, meta["model"], where=f"{ckpt}/config.json model")
    lcfg = LoRAConfig.from_dict(meta["lora"], where=f"{ckpt}/config.json lora")
    return build_model(cfg, ckpt_io.load_state(ckpt), f"{ckpt}/model.safetensors", device, lora=lcfg)


__all__ = ["ADAPTER_CONFIG", "ADAPTER_FORMAT", "ADAPTER_WEIGHTS", "base_of", "is_adapter_dir", "load_adapter",
           "load_lora_checkpoint", "read_adapter_config", "save_adapter"]
