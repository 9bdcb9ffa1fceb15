"""The GPT-3 model: a decoder-only Transformer (Radford et al. 2019; Brown et al. 2020).

tokens -> wte + wpe -> N x [x + attn(ln_1(x)); x + mlp(ln_2(x))] -> ln_f -> lm_head (tied to wte) -> logits

Parameter names follow the GPT-2 checkpoints (transformer.wte, transformer.h.{i}.attn.c_attn, ...), so
importing Hugging Face GPT-2 weights is a key copy plus a transpose of the Conv1D matrices.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt3lab.config import ModelConfig
from gpt3lab.model.attention import CausalSelfAttention
from gpt3lab.errors import ContextOverflowError
from gpt3lab.model.matvec import FastLinear, linear


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2/3 use the tanh approximation of GELU ("gelu_new")
        return self.dropout(linear(self.c_proj, F.gelu(linear(self.c_fc, x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LN decoder block."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.d_model),
            wpe=nn.Embedding(config.context, config.d_model),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias),
        ))
        self.lm_head = FastLinear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight   # tied unembedding
        self.checkpoint_activations = False                 # set by the trainer (activation checkpointing)
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer) (two residual adds per block)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters (the tied lm_head counted once); non_embedding drops wte and wpe."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def hidden(self, idx: torch.Tensor, cache=None) -> torch.Tensor:
        """idx (B, T) token ids -> the final LayerNorm's output (B, T, d_model); lm_head of it = logits.

        cache: a KV cache (see kv_cache.py); positions continue from what it holds, and it advances by T.
        """
        B, T = idx.shape
        if cache is not None:
            pos = cache.positions(T)
        else:
            if T > self.config.context:
                raise ContextOverflowError(
                    f"sequence of {T} tokens exceeds the model's context of {self.config.context}; "
                    f"truncate the input or use a model with a longer context")
            pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, d)
        for block in self.transformer.h:
            if self.checkpoint_activations and self.training and cache is None:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, cache)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.advance(T)
        return x

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, cache=None,
                last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits, loss).

        targets (B, T): next-token ids, -100 = ignored; loss is the mean cross-entropy (fp32).
        cache: a KV cache (see kv_cache.py); positions continue from what it holds.
        last_only: compute logits for the last position only (decoding), shape (B, 1, V).
        """
        x = self.hidden(idx, cache)                                                      # (B, T, d)
        if targets is not None:
            logits = self.lm_head(x)                                                     # (B, T, V)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-100)
            return logits, loss
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x), None
