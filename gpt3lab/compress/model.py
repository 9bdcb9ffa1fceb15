"""The model side of the compressor: next-token logits -> integer frequencies, identically on both sides.

Determinism: the decoder must rebuild exactly the frequency table the encoder used, or it decodes
garbage. Both sides therefore run the very same code path here: one token per forward pass (batch 1,
fp32 KV cache, CPU), the same sliding-window prefills, the same thread count (fixed while coding,
recorded in the file; the same decode step as generation, generate.core), and `quantise` computes the table with elementwise fp32 ops whose rounding
does not depend on anything but the inputs. What is *not* guaranteed to match is a different
checkpoint, torch version or CPU type (kernels may round differently); the file records those and
the original's SHA-256, so a mismatch is reported, never returned as silent garbage.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import asdict

import torch

from gpt3lab.generate.core import Session

TOTAL_BITS = 24
TOTAL = 1 << TOTAL_BITS   # every table sums to this; a floor of 1 per token keeps every token codable


def quantise(logits: torch.Tensor, total: int = TOTAL) -> torch.Tensor:
    """logits (V,) -> inclusive cumulative frequencies (V,) int64 ending at `total`; each freq >= 1.

    freq = 1 + floor(p * (total - V)); the rounding remainder (a few counts, either sign) goes to the
    most likely token, which holds at least (total - V) / V counts, so every freq stays >= 1.
    """
    V = logits.shape[-1]
    if total < 2 * V:
        raise ValueError(f"total {total} is too small for a vocabulary of {V}")
    p = torch.softmax(logits.float(), dim=-1)                                    # (V,) fp32
    freq = torch.floor(p * float(total - V)).to(torch.int64) + 1                 # (V,)
    freq[torch.argmax(p)] += total - int(freq.sum())
    return torch.cumsum(freq, dim=0)


def symbol_range(cum: torch.Tensor, token: int) -> tuple[int, int]:
    """(cumulative start, frequency) of `token` in an inclusive cumulative table."""
    hi = int(cum[token])
    lo = int(cum[token - 1]) if token > 0 else 0
    return lo, hi - lo


def find_symbol(cum: torch.Tensor, target: int) -> int:
    """The token whose [start, start + freq) holds `target`."""
    return int(torch.searchsorted(cum, torch.tensor([target]), right=True)[0])


class Predictor:
    """Next-token logits for a growing token sequence, through the decode core (generate.core.Session: the
    engine's own step), with a KV cache that slides when full.

    The sequence starts with `start_id` (the end-of-text token) so the first real token has a context.
    When the cache holds `context` tokens it is rebuilt from the last context // 2 tokens (one prefill),
    so every prediction sees at least context // 2 tokens of history; encoder and decoder slide at the
    same tokens because they call `feed` with the same sequence.
    """

    def __init__(self, model, start_id: int, compile=False):
        self.model = model
        self.cfg = model.config
        self.keep = max(1, self.cfg.context // 2)
        self.history = [start_id]
        self.session = Session(model, self.cfg.context, compile=compile)

    @torch.inference_mode()
    def first(self) -> torch.Tensor:
        """Logits (V,) of the first token."""
        return self._prefill()

    @torch.inference_mode()
    def feed(self, token: int) -> torch.Tensor:
        """Append `token`; logits (V,) of the token after it."""
        self.history.append(token)
        if self.session.length >= self.session.max_len:
            self.history = self.history[-self.keep:]
            return self._prefill()
        return self.session.feed([token])

    def _prefill(self) -> torch.Tensor:
        self.session.reset()
        return self.session.feed(self.history)


@contextmanager
def fixed_threads(n: int):
    """Run with exactly `n` intra-op threads (matmul reductions may split differently otherwise)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fingerprint(model, tokenizer) -> bytes:
    """16-byte SHA-256 prefix of the model config, tokenizer name and every weight's bytes."""
    h = hashlib.sha256()
    h.update(json.dumps(asdict(model.config), sort_keys=True).encode())
    h.update(tokenizer.name.encode())
    for k, v in sorted(model.state_dict().items()):
        for i, t in enumerate(_tensors(v)):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{k}:{i}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()[:16]


def _tensors(v) -> list[torch.Tensor]:
    """The plain tensors of a state-dict value (an int8 layer's packed (weight, bias) and its scales too)."""
    if isinstance(v, (tuple, list)):
        return [t for x in v for t in _tensors(x)]
    if not isinstance(v, torch.Tensor):
        return []
    if v.is_quantized:
        return [v.int_repr(), v.q_per_channel_scales()]
    return [v]
