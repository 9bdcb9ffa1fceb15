"""Log-likelihood scoring: continuations (one, many, or all choices of an item at once) and
rolling-window perplexity / bits per byte of a text.

Conventions (as in lm-eval-harness):
* The continuation's tokens are scored given the context: logprob = sum_j log p(c_j | ctx, c_<j).
  The context and continuation are tokenized separately and concatenated.
* An empty context is replaced by <|endoftext|> so the first token has something to condition on.
* `is_greedy` is True when every continuation token is the argmax of its distribution (what a greedy
  decoder would have produced).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpt3lab.errors import ContextOverflowError
from gpt3lab.model.kv_cache import KVCache


@dataclass
class Score:
    logprob: float     # sum of the continuation's token log-probabilities (natural log)
    is_greedy: bool    # every continuation token was the argmax
    n_tokens: int
    argmax: list[int] | None = None   # score_requests: the argmax token at each continuation position


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _fit(model, ctx: list[int], cont: list[int], eot: int | None) -> list[int]:
    """ctx + cont, left-truncated to context+1 tokens (the continuation itself must fit)."""
    C = model.config.context
    if not cont:
        raise ValueError("empty continuation")
    if len(cont) > C:
        raise ContextOverflowError(f"a continuation of {len(cont)} tokens does not fit the model's "
                                   f"context of {C}; shorten the target")
    if not ctx:
        if eot is None:
            raise ValueError("empty context needs an eot id")
        ctx = [eot]
    return (ctx + cont)[-(C + 1):]


def _gather(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (..., V), targets (...) -> (token logprobs (...), target is argmax (...))."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), logp.argmax(-1) == targets


@torch.no_grad()
def loglikelihood(model, ctx: list[int], cont: list[int], eot: int | None = None) -> Score:
    """Unbatched reference scorer: Score of `cont` after `ctx`."""
    ids = torch.tensor(_fit(model, ctx, cont, eot), device=_device(model))
    logits, _ = model(ids[None, :-1])
    lp, greedy = _gather(logits[0, -len(cont):], ids[-len(cont):])
    return Score(float(lp.sum()), bool(greedy.all()), len(cont))


@torch.no_grad()
def score_requests(model, requests: list[tuple[list[int], list[int]]], eot: int | None = None,
                   batch_size: int = 16) -> list[Score]:
    """Score many (ctx, cont) pairs, `batch_size` rows per forward pass (right-padded; causal attention
    means padding after a row's last token cannot change that row's logits)."""
    out: list[Score] = []
    dev = _device(model)
    for b in range(0, len(requests), batch_size):
        rows = [_fit(model, c, k, eot) for c, k in requests[b:b + batch_size]]
        ns = [len(k) for _, k in requests[b:b + batch_size]]
        T = max(len(r) for r in rows) - 1
        x = torch.zeros(len(rows), T, dtype=torch.long, device=dev)
        for i, r in enumerate(rows):
            x[i, :len(r) - 1] = torch.tensor(r[:-1])
        logits, _ = model(x)                                            # (B, T, V)
        for i, (r, n) in enumerate(zip(rows, ns)):
            L = len(r) - 1
            lp, greedy = _gather(logits[i, L - n:L], torch.tensor(r[-n:], device=dev))
            out.append(Score(float(lp.sum()), bool(greedy.all()), n, logits[i, L - n:L].argmax(-1).tolist()))
    return out


@torch.no_grad()
def score_choices(model, ctx: list[int], conts: list[list[int]], eot: int | None = None) -> list[Score]:
    """Score every continuation of one item with the shared context computed once: prefill `ctx` into a
    KV cache (batch 1), copy the cache to one row per choice, then run all continuations in one pass."""
    ctx = ctx or ([eot] if eot is not None else [])
    Lmax = max(len(c) for c in conts)
    if not ctx or any(not c for c in conts) or len(ctx) + Lmax - 1 > model.config.context:
        return [loglikelihood(model, ctx, c, eot) for c in conts]     # too long to share: slow path
    dev, n = _device(model), len(conts)
    cache = KVCache(model.config, 1, max_len=len(ctx) + Lmax - 1, device=dev,
                    dtype=next(model.parameters()).dtype)
    first, _ = model(torch.tensor([ctx], device=dev), cache=cache, last_only=True)  # (1, 1, V)
    logits = first.expand(n, 1, first.size(-1))
    targets = torch.zeros(n, Lmax, dtype=torch.long, device=dev)
    for i, c in enumerate(conts):
        targets[i, :len(c)] = torch.tensor(c)
    if Lmax > 1:
        cache.reorder(torch.zeros(n, dtype=torch.long, device=dev))
        rest, _ = model(targets[:, :-1], cache=cache)                   # (n, Lmax-1, V)
        logits = torch.cat([logits, rest], dim=1)                       # (n, Lmax, V)
    lp, greedy = _gather(logits, targets)
    return [Score(float(lp[i, :len(c)].sum()), bool(greedy[i, :len(c)].all()), len(c))
            for i, c in enumerate(conts)]


@dataclass
class Perplexity:
    nll: float           # total negative log-likelihood (nats) over all tokens
    n_tokens: int
    n_bytes: int         # UTF-8 bytes of the text
    n_windows: int

    @property
    def loss(self) -> float:
        return self.nll / self.n_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (self.n_bytes * math.log(2))


def rolling_windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a sequence of n+1 ids (eot + n tokens): (start, end, n_scored). Window inputs are
    ids[start:end], targets ids[start+1:end+1]; only its last n_scored targets count, so every token is
    scored exactly once, each after as much overlap (up to context - stride tokens) as fits."""
    if not 1 <= stride <= context:
        raise ValueError(f"stride {stride} must be in [1, context={context}]")
    out, scored = [], 0
    while scored < n:
        end = min(scored + stride, n) if scored else min(context, n)
        start = max(0, end - context)
        out.append((start, end, end - scored))
        scored = end
    return out


@torch.no_grad()
def perplexity(model, ids: list[int], n_bytes: int, eot: int, stride: int | None = None,
               batch_size: int = 8) -> Perplexity:
    """Perplexity and bits/byte of a token sequence of any length, by rolling windows of the model's
    context advancing `stride` tokens (default context // 2); no token is scored twice."""
    C = model.config.context
    stride = stride or max(1, C // 2)
    seq = torch.tensor([eot] + list(ids), device=_device(model))
    wins = rolling_windows(len(ids), C, stride)
    nll = 0.0
    for b in range(0, len(wins), batch_size):
        group = wins[b:b + batch_size]
        T = max(e - s for s, e, _ in group)
        x = torch.zeros(len(group), T, dtype=torch.long, device=seq.device)
        for i, (s, e, _) in enumerate(group):
            x[i, :e - s] = seq[s:e]
        logits, _ = model(x)                                            # (B, T, V)
        for i, (s, e, k) in enumerate(group):
            L = e - s
            lp, _ = _gather(logits[i, L - k:L], seq[e - k + 1:e + 1])
            nll -= float(lp.double().sum())
    return Perplexity(nll, len(ids), n_bytes, len(wins))
