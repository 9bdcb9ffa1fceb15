"""Which keys a query may see: the one place that says it, one spec per layer.

    specs = layer_specs(cfg)          # [Dense(), Banded(256), Dense(), Banded(256), ...] for "alternating"
    spec.allowed(q_pos, k_pos)        # elementwise: may a query at q_pos see the key at k_pos?
    spec.window                       # its horizon: no query at p or later sees a key before p - window + 1
    spec.first_kept(p)                # the first key position any query at p or later can still see
    spec.kernel                       # which full-sequence kernel computes it: "causal", "banded" or "masked"

The model (model/attention.py picks the kernel and passes the spec to a cache), the contiguous cache (ring of
`window` keys), the paged cache (its masks), the KV manager (which blocks it may give back and share),
inspect (the attention pattern it draws) and sizing (keys per query) all ask these objects, so a new
variant is a new subclass here (and its tests); vLLM maps each layer's attention spec to its cache
manager the same way. This module imports no torch: `allowed` uses only comparisons, so it works on
Python ints and on broadcasting tensors alike, and sizing stays torch-free.

The sliding-window generation rule (`sliding_window`, a sampling option) sits beside the specs: once a
sequence outgrows the context, the next token is predicted from its last `context` tokens recomputed at
positions 0..context-1 (`slide`).
"""
from __future__ import annotations

from gpt3lab.config import ModelConfig


class AttentionSpec:
    """A causal attention rule. Subclasses set `window` (None: unlimited) and may narrow `allowed`.

    The invariant every cache relies on: `allowed(q, k)` is False for k > q and for q - k >= window.
    """

    kind = "masked"
    kernel = "masked"                 # the generic kernel: SDPA with the mask of `allowed`
    window: int | None = None

    def allowed(self, q, k):
        """May the query at position q see the key at position k? Elementwise (ints or broadcasting tensors)."""
        ok = k <= q
        if self.window is not None:
            ok = ok & (q - k < self.window)
        return ok

    def first_kept(self, pos: int) -> int:
        """The first key position that a query at `pos` or later may still see (0 for unlimited)."""
        return 0 if self.window is None else max(0, pos - self.window + 1)

    def held(self, length: int) -> int:
        """Most keys a query of a sequence of `length` tokens sees (what a cache must hold for one)."""
        return length if self.window is None else min(self.window, length)

    def describe(self) -> int | None:
        """What inspect reports per layer: the band width, or None for a dense layer."""
        return self.window

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.window == other.window

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.window))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({'' if self.window is None else self.window})"


class Dense(AttentionSpec):
    """GPT-2's causal attention: every earlier key and itself."""

    kind, kernel = "dense", "causal"


class Banded(AttentionSpec):
    """GPT-3's locally banded layers: the query at t sees keys t-window+1 .. t (`window` keys, itself included)."""

    kind, kernel = "banded", "banded"

    def __init__(self, window: int):
        if window < 1:
            raise ValueError(f"a band needs window >= 1, got {window}")
        self.window = window


def layer_spec(cfg: ModelConfig, layer: int) -> AttentionSpec:
    """The spec of `layer` under cfg.attention_pattern (GPT-3 "alternating": odd layers banded)."""
    return Banded(cfg.local_window) if cfg.is_banded(layer) else Dense()


def layer_specs(cfg: ModelConfig) -> list[AttentionSpec]:
    return [layer_spec(cfg, layer) for layer in range(cfg.n_layer)]


def slide(tokens: list[int], context: int) -> list[int]:
    """The sliding-window rule: the tokens the next prediction is computed from, at positions 0..len-1.

    All of them while they fit the context; past it the last `context` (learned position embeddings shift
    with the window, so nothing cached stays valid: the window is recomputed like a prompt)."""
    return tokens if len(tokens) <= context else tokens[-context:]


__all__ = ["AttentionSpec", "Banded", "Dense", "layer_spec", "layer_specs", "slide"]
