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
        """-> (tokens, their logprobs, raw logprobs (S, V)). `logits` is left as it was."""
        adjusted, undo = self.adjust(seqs, logits)
        tok = self.choose(seqs, adjusted)                                          # (S,)
        if undo is not None:           # logit_bias was added in place: put the raw logits back exactly
            r, t, saved = undo
            logits[r, t] = saved
        raw = logits.log_softmax(-1)   # reported logprobs (S, V): one fused pass, cheaper than logsumexp
        return tok.tolist(), raw.gather(1, tok[:, None])[:, 0].tolist(), raw

    def adjust(self, seqs, logits: torch.Tensor):
        """logit_bias, presence/frequency penalties, and no ids beyond the tokenizer's vocabulary.

        -> (adjusted logits, undo). With logit_bias alone the bias is added in place (no (S, V) copy) and
        undo = (rows, ids, raw values) restores `logits`; otherwise a new tensor and undo None.
        """
        V = self.vocab_size
        ps = [s.req.params for s in seqs]
        penalized = any(p.presence_penalty or p.frequency_penalty for p in ps)
        if logits.shape[1] <= V and not penalized:
            rows = [(i, t, b) for i, p in enumerate(ps) for t, b in p.logit_bias.items()]
            if not rows:
                return logits, None
            r, t, b = (list(c) for c in zip(*rows))
            saved = logits[r, t]
            logits[r, t] += torch.tensor(b, device=logits.device, dtype=logits.dtype)
            return logits, (r, t, saved)
        if logits.shape[1] > V:
            logits = logits.clone()
            logits[:, V:] = float("-inf")
        logits = apply_logit_bias(logits, [p.logit_bias for p in ps])
        if not penalized:
            return logits, None
        counts = torch.zeros_like(logits)
        for i, s in enumerate(seqs):
            if s.counts:
                counts[i, list(s.counts)] = torch.tensor(list(s.counts.values()), dtype=logits.dtype,
                                                         device=logits.device)
        return apply_penalties(logits, counts, torch.tensor([p.presence_penalty for p in ps]),
                               torch.tensor([p.frequency_penalty for p in ps])), None

    def choose(self, seqs, logits: torch.Tensor) -> torch.Tensor:
        """One token per row of the adjusted logits (S, V), with each sequence's settings and generator."""
        ps = [s.req.params for s in seqs]
        hot = [p for p in ps if p.temperature > 0]
        return choose(logits, torch.tensor([p.temperature for p in ps], dtype=logits.dtype),
                      torch.tensor([p.top_k for p in ps]) if any(p.top_k for p in hot) else None,
                      torch.tensor([p.top_p for p in ps]) if any(p.top_p < 1 for p in hot) else None,
                      [s.generator for s in seqs])


__all__ = ["BatchSampler"]
