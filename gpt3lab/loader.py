"""gpt3lab.load: the one entry that turns any directory gpt3lab writes or reads into (model, tokenizer).

    checkpoint dir          CKPT/{config.json, model.safetensors, tokenizer.json}
    run dir                 its newest checkpoint, or its adapter/ when it is a LoRA fine-tune
    adapter dir             the base it names (any kind below) + the adapter
    LoRA checkpoint         base + adapter tensors in one checkpoint (config.json "lora")
    Hugging Face GPT-2 dir  imported on the fly (gpt3lab.convert)
    hub id                  gpt2 ... gpt2-xl or org/name: downloaded into the hub cache first (gpt3lab.hub)

The readers behind it (checkpoint.load_model, adapters.*, convert.load_hf) are internal.
"""
from __future__ import annotations

from pathlib import Path

import torch

from gpt3lab import adapters, checkpoint
from gpt3lab.convert import is_hf_dir, load_hf
from gpt3lab.errors import CheckpointError


def load(path: str | Path, device: str | torch.device = "cpu", tokenizer=None):
    """(model in eval mode, tokenizer) from any of the directories above; CheckpointError otherwise.

    tokenizer: overrides the stored one (a Tokenizer or any spec checkpoint.resolve_tokenizer takes); a
    plain checkpoint then needs no tokenizer files of its own.
    """
    from gpt3lab.hub import resolve_model

    tok = checkpoint.resolve_tokenizer(tokenizer) if tokenizer is not None else None
    model, stored = _load(resolve_model(path), device, need_tokenizer=tok is None)   # a hub id: downloaded
    tok = tok or stored
    if tok.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"tokenizer {tok.name!r} has {tok.vocab_size} ids but {path} has vocab_size "
                              f"{model.config.vocab_size}; pass the tokenizer the model was trained with")
    return model, tok


def _load(p: Path, device, need_tokenizer: bool):
    if not adapters.is_adapter_dir(p) and adapters.is_adapter_dir(p / "adapter"):
        p = p / "adapter"
    if adapters.is_adapter_dir(p):
        model, tok = load_base(adapters.base_of(p), device)
        return adapters.load_adapter(model, p), tok
    if is_hf_dir(p):
        return load_hf(p, device)
    ckpt = checkpoint.resolve(p)
    if checkpoint.is_lora_checkpoint(ckpt):
        model = adapters.load_lora_checkpoint(ckpt, device)
    else:
        model = checkpoint.load_model(ckpt, device)
    return model, checkpoint.load_tokenizer(ckpt) if need_tokenizer else None


def load_base(path: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer) of a base model to put adapters on or fine-tune: a plain checkpoint/run dir or an
    HF GPT-2 dir; a model that already carries adapters is refused."""
    if is_hf_dir(path):
        return load_hf(path, device)
    return checkpoint.load_model(path, device), checkpoint.load_tokenizer(path)


__all__ = ["load", "load_base"]
