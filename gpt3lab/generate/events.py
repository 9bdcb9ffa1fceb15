"""The engine's output side: sampled tokens and echoed prompts become TokenEvents on a request's stream.

Text is released through each choice's TextStream (whole UTF-8 characters, stop strings cut out).
With best_of > n a choice's events are held back until every choice is done; then the n with the
highest total logprob are sent, renumbered 0..n-1.
"""
from __future__ import annotations

import itertools

import torch

from gpt3lab.generate.api import TokenEvent


def top_alternatives(decode, lp: torch.Tensor, k: int) -> list[dict[str, float]]:
    """The k most likely tokens of each row of logprobs (R, V) as {text: logprob}; equal texts keep the best."""
    vals, ids = lp.topk(k, dim=-1)
    out = []
    for vr, ir in zip(vals.tolist(), ids.tolist()):
        d: dict[str, float] = {}
        for v, i in zip(vr, ir):
            d.setdefault(decode([i]), v)
        out.append(d)
    return out


def token_event(s, tok: int, lp: float, top: dict | None, eot_id: int, decode) -> TokenEvent:
    """Record sampled token `tok` in sequence s -> its event; finish_reason set when s is done."""
    p = s.req.params
    if tok == eot_id or tok in p.stop_token_ids:
        return TokenEvent(s.index, s.stream.flush(), finish_reason="stop", stop_token=tok, stop_logprob=lp)
    s.tokens.append(tok)
    s.out.append(tok)
    s.counts[tok] += 1
    s.score += lp
    delta, stopped = s.stream.push(tok)
    text = decode([tok])
    ev = TokenEvent(s.index, delta, [tok], [text], [lp], [top] if p.logprobs else None, [s.offset])
    s.offset += len(text)
    if stopped:
        ev.finish_reason = "stop"
    elif len(s.out) >= p.max_tokens:
        ev.text += s.stream.flush()
        ev.finish_reason = "length"
    return ev


def echo_logprobs(req, start: int, logits: torch.Tensor, decode) -> None:
    """Logits (T, V) of prompt positions start.. -> the logprob of each following prompt token, kept on req."""
    if start == 0:
        req.echo_lp.append(None)
        req.echo_top.append(None)
    nxt = req.prompt[start + 1:start + 1 + logits.shape[0]]
    lp = logits[:len(nxt)].log_softmax(-1)                                     # (T, V)
    ids = torch.tensor(nxt, device=lp.device)[:, None]
    req.echo_lp += lp.gather(1, ids)[:, 0].tolist()
    if req.params.logprobs:
        req.echo_top += top_alternatives(decode, lp, req.params.logprobs)


def echo_event(req, j: int, decode) -> TokenEvent:
    """Choice j's first event under echo: the prompt, its tokens' texts, logprobs and offsets."""
    texts = [decode([t]) for t in req.prompt]
    offsets = list(itertools.accumulate([0] + [len(t) for t in texts[:-1]]))
    return TokenEvent(j, decode(req.prompt), list(req.prompt), texts, list(req.echo_lp),
                      list(req.echo_top) if req.params.logprobs else None, offsets)


def deliver(s, ev: TokenEvent) -> None:
    """Send the event, or hold it back when only the best n of best_of choices will be sent."""
    if s.req.best_of > s.req.params.n:
        s.events.append(ev)
    else:
        s.req.handle._put(ev)


def send_best(req) -> None:
    """All choices done under best_of > n: send the held events of the n best (by total logprob)."""
    best = sorted(req.seqs, key=lambda s: -s.score)[:req.params.n]
    for new, s in enumerate(best):
        for ev in s.events:
            ev.index = new
            req.handle._put(ev)


__all__ = ["deliver", "echo_event", "echo_logprobs", "send_best", "token_event", "top_alternatives"]
