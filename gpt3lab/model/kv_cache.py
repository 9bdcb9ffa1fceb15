"""Key/value cache for incremental decoding.

The model talks to a cache through three calls, so other layouts (the engine's paged cache) can
stand in for this one without the model knowing:
  positions(T)                     -> (T,) absolute positions of the next T tokens
  attend(layer, q, k, v, spec)     -> (B, nh, T, hs) attention output, after storing k, v
  advance(T)                       after a forward pass of T tokens

Which keys a query sees is the layer's AttentionSpec (attention_spec.py): its mask, and its horizon
`window`. A layer without one keeps every past key; a layer with one keeps only its last `window` keys in
a ring buffer (slot = position % window): its memory is O(window), whatever the sequence length.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt3lab.config import ModelConfig
from gpt3lab.errors import ContextOverflowError
from gpt3lab.attention_spec import AttentionSpec, layer_specs


class KVCache:
    """Contiguous cache: all `batch_size` rows share the same position (one prompt, or n samples of it)."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 specs: list[AttentionSpec] | None = None):
        """specs: the model's per-layer attention specs (gpt3lab.generate.core.model_specs); cfg's by default."""
        self.cfg = cfg
        self.specs = specs or layer_specs(cfg)
        self.max_len = min(max_len or cfg.context, cfg.context)
        self.pos = 0
        shape = (batch_size, cfg.n_head, 0, cfg.d_head)
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.ring: list[bool] = []
        for spec in self.specs:
            size = spec.held(self.max_len)
            banded = size < self.max_len
            s = shape[:2] + (size,) + shape[3:]
            self.k.append(torch.zeros(s, device=device, dtype=dtype))
            self.v.append(torch.zeros(s, device=device, dtype=dtype))
            self.ring.append(banded)

    def positions(self, T: int) -> torch.Tensor:
        if self.pos + T > self.max_len:
            raise ContextOverflowError(
                f"{self.pos} cached + {T} new tokens exceed the cache length {self.max_len} "
                f"(model context {self.cfg.context}); shorten the prompt or max_tokens")
        return torch.arange(self.pos, self.pos + T, device=self.k[0].device)

    def advance(self, T: int) -> None:
        self.pos += T

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep/duplicate batch rows (e.g. expand one prefilled prompt into n samples)."""
        self.k = [t.index_select(0, rows) for t in self.k]
        self.v = [t.index_select(0, rows) for t in self.v]

    def attend(self, layer: int, q, k, v, spec: AttentionSpec) -> torch.Tensor:
        """Store this step's k, v (B, nh, T, hs) for `layer`, then attend q over what `spec` lets it see."""
        T, p0 = q.shape[2], self.pos
        if not self.ring[layer]:
            self.k[layer][:, :, p0:p0 + T] = k
            self.v[layer][:, :, p0:p0 + T] = v
            keys, vals = self.k[layer][:, :, :p0 + T], self.v[layer][:, :, :p0 + T]
            k_pos = torch.arange(p0 + T, device=q.device)
        else:
            keys, vals, k_pos = self._ring_update(layer, k, v)
        q_pos = torch.arange(p0, p0 + T, device=q.device)
        allowed = spec.allowed(q_pos[:, None], k_pos[None, :])                        # (T, Tk)
        return F.scaled_dot_product_attention(q, keys.to(q.dtype), vals.to(q.dtype), attn_mask=allowed)

    def _ring_update(self, layer: int, k, v):
        """Banded layer: keys visible to this chunk = the kept window before p0 + the new ones."""
        W, T, p0 = self.k[layer].shape[2], k.shape[2], self.pos
        old_pos = torch.arange(max(0, p0 - W + 1), p0, device=k.device)
        old_k = self.k[layer].index_select(2, old_pos % W)
        old_v = self.v[layer].index_select(2, old_pos % W)
        keys = torch.cat([old_k, k.to(old_k.dtype)], dim=2)
        vals = torch.cat([old_v, v.to(old_v.dtype)], dim=2)
        k_pos = torch.cat([old_pos, torch.arange(p0, p0 + T, device=k.device)])
        keep = k_pos[-W:]                                   # only the last W keys survive in the ring
        self.k[layer][:, :, keep % W] = keys[:, :, -W:]
        self.v[layer][:, :, keep % W] = vals[:, :, -W:]
        return keys, vals, k_pos

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


def cache_bytes(cfg: ModelConfig, batch_size: int, seq_len: int, bytes_per_el: int = 2) -> int:
    """Memory the cache needs for `seq_len` tokens (layers with a horizon cap at their window)."""
    per_tok = 2 * cfg.n_head * cfg.d_head * bytes_per_el * batch_size
    return sum(per_tok * spec.held(seq_len) for spec in layer_specs(cfg))


__all__ = ["KVCache", "cache_bytes"]
