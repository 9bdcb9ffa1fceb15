"""The engine's sampler: one next token per sequence of a step, each with its own request's settings.

Built on gpt3lab.generate.sampling: the logits are adjusted (logit_bias, presence/frequency penalties,
ids past the tokenizer's vocabulary masked), then `sampling.choose` picks each row's token with the
row's own generator, the same draw gpt3lab.generate makes with that seed, whatever else is batched.
Reported logprobs are the model's own (log_softmax of the raw logits), as in the OpenAI API.

The engine takes a sampler as a parameter: a subclass may override `adjust` or `choose` (tests script
tokens or record the adjusted logits that way).
"""
from __future__ import annotations

import torch

from gpt3lab.generate.sampling import apply_logit_bias, apply_penalties, choose


class BatchSampler:
    """adjust -> choose -> the chosen tokens' logprobs, over (S, V) logits whose row i belongs to seqs[i]."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, seqs, logits: torch.Tensor) -> tuple[list[int], list[float], torch.Tensor]:
        """-> (tokens, their logprobs, raw logprobs (S, V)). `logits` is adjusted in place (taken raw first)."""
        raw = logits.log_softmax(-1)   # reported logprobs (S, V): one fused pass, before any adjustment
        tok = self.choose(seqs, self.adjust(seqs, logits))                         # (S,)
        return tok.tolist(), raw.gather(1, tok[:, None])[:, 0].tolist(), raw

    def adjust(self, seqs, logits: torch.Tensor) -> torch.Tensor:
        """logit_bias, presence/frequency penalties, and no ids beyond the tokenizer's vocabulary, in place."""
        ps = [s.req.params for s in seqs]
        if logits.shape[1] > self.vocab_size:
            logits[:, self.vocab_size:] = float("-inf")
        logits = apply_logit_bias(logits, [p.logit_bias for p in ps], inplace=True)
        if not any(p.presence_penalty or p.frequency_penalty for p in ps):
            return logits
        counts = torch.zeros_like(logits)
        for i, s in enumerate(seqs):
            if s.counts:
                counts[i, list(s.counts)] = torch.tensor(list(s.counts.values()), dtype=logits.dtype,
                                                         device=logits.device)
        return apply_penalties(logits, counts, torch.tensor([p.presence_penalty for p in ps]),
                               torch.tensor([p.frequency_penalty for p in ps]))

    def choose(self, seqs, logits: torch.Tensor) -> torch.Tensor:
        """One token per row of the adjusted logits (S, V), with each sequence's settings and generator."""
        ps = [s.req.params for s in seqs]
        hot = [p for p in ps if p.temperature > 0]
        if not hot:                    # every row greedy: what sampling.choose gives them, without its set-up
            return logits.argmax(dim=-1)
        return choose(logits, torch.tensor([p.temperature for p in ps], dtype=logits.dtype),
                      torch.tensor([p.top_k for p in ps]) if any(p.top_k for p in hot) else None,
                      torch.tensor([p.top_p for p in ps]) if any(p.top_p < 1 for p in hot) else None,
                      [s.generator for s in seqs])


__all__ = ["BatchSampler"]
