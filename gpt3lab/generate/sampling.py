"""Logits -> next token: temperature, top-k, top-p (nucleus), greedy, and the chosen token's logprob.

Every function works on a batch of logits (B, V) and takes its controls either as one Python value
for all rows or as a (B,) tensor with one value per row, so a continuous-batching engine can mix
requests with different settings in one call. "Off" values: temperature 0 = greedy (argmax),
top_k None or 0 = no top-k, top_p None or 1.0 = no top-p.

Logprobs are those of the model's own distribution (log_softmax of the raw logits), not of the
temperature/top-k/top-p-filtered one, as in the OpenAI Completions API.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


Param = float | int | torch.Tensor | None


def _rows(x: Param, B: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A scalar or (B,) control as a (B, 1) tensor on the logits' device."""
    if isinstance(x, torch.Tensor):
        return x.to(device=like.device, dtype=dtype).reshape(B, 1)
    return torch.full((B, 1), x, device=like.device, dtype=dtype)


def top_k_filter(logits: torch.Tensor, k: Param) -> torch.Tensor:
    """Set all but the k largest logits of each row to -inf. k: int or (B,) ints; 0/None = keep all."""
    B, V = logits.shape
    if k is None or (not isinstance(k, torch.Tensor) and (k == 0 or k >= V)):
        return logits
    k = _rows(k, B, logits, torch.long).clamp(max=V)                         # (B, 1)
    kmax = int(k.max())
    if kmax == 0:
        return logits
    top = logits.topk(kmax, dim=-1).values                                   # (B, kmax) descending
    thresh = top.gather(1, (k - 1).clamp(min=0))                             # (B, 1) k-th largest
    drop = (logits < thresh) & (k > 0)
    return logits.masked_fill(drop, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: Param) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probability mass is >= p (per row).

    p: float or (B,) floats; None/1.0 = keep all. The most likely token is always kept.
    """
    B, V = logits.shape
    if p is None or (not isinstance(p, torch.Tensor) and p >= 1.0):
        return logits
    p = _rows(p, B, logits, torch.float32)                                   # (B, 1)
    sorted_logits, order = logits.sort(dim=-1, descending=True)              # (B, V)
    probs = sorted_logits.float().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs                               # mass of strictly better tokens
    drop_sorted = mass_before >= p                                           # set already reached p
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def draw(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row of x (B, V), logits already tempered/filtered, from u (B,) uniforms in [0, 1).

    Inverse CDF: the first token whose cumulative probability exceeds u * total. One uniform per
    row (torch.multinomial's exact path needs V exponentials, ~30x the cost at V = 50,257), and a row's
    token depends only on its own logits and u, so batching cannot change a seeded draw. Tokens of
    zero weight are never picked: the target stays strictly below the total.
    """
    cdf = x.softmax(dim=-1).cumsum_(dim=-1)                                  # (B, V); softmax is one fused pass
    total = cdf[:, -1:]                                                      # (B, 1)
    target = torch.minimum(u.to(cdf.dtype)[:, None] * total, total.nextafter(torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True)[:, 0]


def sample_generator(seed: int | None, j: int = 0, device=None) -> torch.Generator:
    """The generator of sample j of a request: seed + j when seeded (fresh entropy otherwise), so a seed
    gives the same samples in generate() and in the engine, whatever else the engine batches."""
    g = torch.Generator(device=device)
    g.manual_seed((seed + j) % 2 ** 64) if seed is not None else g.seed()
    return g


def uniforms(B: int, generator, device=None) -> torch.Tensor:
    """(B,) uniforms: from one generator for the batch, or one draw from each generator of a list."""
    if isinstance(generator, Sequence):
        return torch.cat([torch.rand(1, generator=g, device=device) for g in generator])
    return torch.rand(B, generator=generator, device=device)


def filtered(logits: torch.Tensor, temperature: Param = 1.0, top_k: Param = None, top_p: Param = None) -> torch.Tensor:
    """The logits `choose` draws from (B, V): tempered, then top-k and top-p filtered (-inf outside); for
    temperature 0 (greedy) all mass on the argmax. What inspect's step mode shows."""
    B = logits.shape[0]
    t = _rows(temperature, B, logits, logits.dtype)                                        # (B, 1)
    x = top_p_filter(top_k_filter(logits / t.clamp(min=1e-30), top_k), top_p)
    greedy = torch.full_like(logits, float("-inf")).scatter(1, logits.argmax(-1, keepdim=True), 0.0)
    return torch.where(t > 0, x, greedy)


def choose(logits: torch.Tensor, temperature: Param = 1.0, top_k: Param = None, top_p: Param = None,
           generator: torch.Generator | Sequence[torch.Generator | None] | None = None) -> torch.Tensor:
    """One token per row of logits (B, V) -> (B,) long: argmax where temperature is 0, else an inverse-CDF
    draw from the tempered, top-k/top-p filtered distribution.

    Only the sampled ("hot") rows are tempered, filtered and drawn, so greedy rows in a mixed batch cost
    one argmax. A list of generators gives each row its own stream (a greedy row's is left untouched);
    one generator draws B uniforms in row order whatever the temperatures.
    """
    B = logits.shape[0]
    t = temperature if isinstance(temperature, torch.Tensor) else torch.full((B,), float(temperature))
    hot = (t.reshape(B) > 0).nonzero()[:, 0].tolist()
    if len(hot) < B:
        tok = logits.argmax(dim=-1)                                          # (B,) greedy
    if not hot:
        return tok
    every = len(hot) == B
    pick = (lambda v: v) if every else (lambda v: v[torch.tensor(hot, device=v.device)])
    x = pick(logits) / pick(_rows(t, B, logits, logits.dtype))               # (H, V)
    H = len(hot)
    x = top_p_filter(top_k_filter(x, _pick(top_k, pick)), _pick(top_p, pick))
    if isinstance(generator, Sequence):
        u = uniforms(H, [generator[i] for i in hot], logits.device)
    else:
        u = pick(uniforms(B, generator, logits.device))
    drawn = draw(x, u)                                                       # (H,)
    if every:
        return drawn
    tok[hot] = drawn
    return tok


def _pick(control: Param, pick) -> Param:
    """A per-row control restricted to the hot rows (scalars apply to every row as they are)."""
    return pick(control) if isinstance(control, torch.Tensor) else control


def sample(logits: torch.Tensor, temperature: Param = 1.0, top_k: Param = None, top_p: Param = None,
           generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of logits (B, V) -> (tokens (B,) long, logprobs (B,) float32); see `choose`."""
    logits = logits.float()
    tok = choose(logits, temperature, top_k, top_p, generator)
    # log_softmax at the chosen ids only: no (B, V) logprobs tensor is written
    return tok, logits.gather(1, tok[:, None]).squeeze(1) - logits.logsumexp(dim=-1)


def apply_logit_bias(logits: torch.Tensor, biases: Sequence[dict[int, float] | None],
                     inplace: bool = False) -> torch.Tensor:
    """Add each row's {token id: bias} to logits (B, V); OpenAI's logit_bias (-100 bans, +100 forces).
    The one implementation (the engine's sampler, generate(), inspect's step); in place if `inplace`."""
    rows = [(i, t, b) for i, bias in enumerate(biases) for t, b in (bias or {}).items()]
    if not rows:
        return logits
    r, t, b = zip(*rows)
    out = logits if inplace else logits.clone()
    out[list(r), list(t)] += torch.tensor(b, device=logits.device, dtype=logits.dtype)
    return out


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, presence: Param, frequency: Param) -> torch.Tensor:
    """OpenAI's penalties: logit -= presence * [count > 0] + frequency * count.

    counts (B, V): how often each token was already generated in the row (the prompt does not count).
    presence, frequency: scalars or (B,) per row.
    """
    B = logits.shape[0]
    pres = _rows(presence if presence is not None else 0.0, B, logits, logits.dtype)   # (B, 1)
    freq = _rows(frequency if frequency is not None else 0.0, B, logits, logits.dtype)
    counts = counts.to(logits.dtype)
    return logits - pres * (counts > 0).to(logits.dtype) - freq * counts


__all__ = ["choose", "filtered", "sample", "draw", "uniforms", "top_k_filter", "top_p_filter", "apply_logit_bias",
           "apply_penalties"]
