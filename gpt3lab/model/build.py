"""The one way to turn a config and a state dict into a model: meta init -> key/shape check -> load -> re-tie.

Every loader (gpt3lab checkpoints, LoRA checkpoints, Hugging Face GPT-2 imports) reads its files
elsewhere and calls `build_model` with the tensors; nothing here touches the file system.
"""
from __future__ import annotations

import torch

from gpt3lab.config import ModelConfig
from gpt3lab.errors import CheckpointError
from gpt3lab.model.gpt import GPT
from gpt3lab.model.lora import LoRAConfig, inject_lora

TIED_KEY = "lm_head.weight"        # the unembedding is wte: stored once, as transformer.wte.weight


def expected_shapes(model: torch.nn.Module) -> dict[str, tuple]:
    """Every tensor a state dict must hold for `model` (the tied lm_head excluded), with its shape."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k != TIED_KEY}


def check_state(expected: dict[str, tuple], state: dict[str, torch.Tensor], where: str) -> None:
    """CheckpointError naming `where` unless `state` has exactly the `expected` tensors, each of its shape."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{where}: the weights do not match the config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise CheckpointError(f"{where}: tensor {k} has shape {tuple(state[k].shape)}, the config implies "
                                  f"{shape}; the weights and the config disagree")


def build_model(cfg: ModelConfig, state: dict[str, torch.Tensor], where: str, device: str | torch.device = "cpu",
                lora: LoRAConfig | None = None, dtype: torch.dtype | None = None) -> GPT:
    """GPT(cfg) (with LoRA adapters when `lora`) holding exactly `state`, in eval mode on `device`.

    No random init runs (the model is built on the meta device); tensors are copied into fp32
    parameters, then cast to `dtype` when given. `where` names the source in errors.
    """
    with torch.device("meta"):
        model = GPT(cfg)
        if lora is not None:
            inject_lora(model, lora)
    model = model.to_empty(device=device)
    check_state(expected_shapes(model), state, where)
    model.load_state_dict(state, strict=False)
    model.lm_head.weight = model.transformer.wte.weight      # re-tie: to_empty made two tensors
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


__all__ = ["build_model", "check_state", "expected_shapes", "TIED_KEY"]
