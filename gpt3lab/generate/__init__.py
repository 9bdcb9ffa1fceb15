"""Text generation: prefill the prompt once, then decode one token at a time against a KV cache.

    gen = generate(model, tokenizer, "ROMEO:", max_tokens=50, temperature=0.8, seed=1)
    gen.text, gen.tokens, gen.logprobs, gen.finish_reason      # 'stop' | 'length'
    for ev in stream(model, tokenizer, "ROMEO:"): print(ev.text, end="", flush=True)

`n` samples share one prefill: the cache of the prompt is copied into n rows and decoded as a batch.
A sample ends at <|endoftext|> or a stop string (finish_reason 'stop') or after max_tokens ('length').
`tokens`/`logprobs` are exactly what was sampled (the final <|endoftext|> included when it ended the
sample); `text` excludes <|endoftext|>, the stop string and everything after it.

sliding_window=True lets max_tokens run past the context window: once prompt + generated tokens fill
the context, each next token is predicted from the last `context` tokens, recomputed at positions
0..context-1 (the learned position embeddings shift, so no cached key/value can be reused: a full
forward per token from then on). Without it, prompt + max_tokens > context is an error.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from gpt3lab.generate.api import SamplingParams, check_token_ids
from gpt3lab.generate.sampling import sample, sample_generator
from gpt3lab.generate.text import TextStream
from gpt3lab.model.kv_cache import KVCache
from gpt3lab.model.quant import prepare_for_inference


@dataclass
class StreamEvent:
    """One sampled token of sample `index`: its id, the text it releases (may be ""), its logprob."""

    index: int
    token: int
    text: str
    logprob: float
    finish_reason: str | None = None     # set on the sample's last event


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: list[int] = field(default_factory=list)


def prompt_ids(tokenizer, prompt: str | list[int]) -> list[int]:
    """Token ids of the prompt; an empty prompt starts from <|endoftext|> (a document boundary)."""
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
    check_token_ids(ids, tokenizer.vocab_size)
    return ids or [tokenizer.eot_id]


def _decode(model, ids: list[int], n: int, max_tokens: int, gen: list[torch.Generator], **params):
    """Yield (tokens (n,), logprobs (n,)) per step; the model runs only when the next step is asked for.

    Past the context (sliding_window), each step recomputes the last `context` tokens without a cache."""
    device = model.transformer.wte.weight.device
    dtype = model.transformer.wte.weight.dtype
    C = model.config.context
    cache = KVCache(model.config, 1, max_len=min(len(ids) + max_tokens, C), device=device, dtype=dtype)
    logits, _ = model(torch.tensor([ids], device=device), cache=cache, last_only=True)   # (1, 1, V)
    if n > 1:   # one prefill, n sample rows
        cache.reorder(torch.zeros(n, dtype=torch.long, device=device))
        logits = logits.expand(n, -1, -1)
    hist = torch.tensor([ids], device=device).expand(n, -1)                               # (n, L)
    for step in range(max_tokens):
        tok, lp = sample(logits[:, -1], generator=gen, **params)                          # (n,), (n,)
        yield tok.tolist(), lp.tolist()
        if step + 1 == max_tokens:
            break
        hist = torch.cat([hist, tok[:, None]], dim=1)
        if hist.shape[1] <= C:
            logits, _ = model(tok[:, None], cache=cache, last_only=True)                   # (n, 1, V)
        else:       # sliding window: positions shift, nothing cached is valid any more
            logits, _ = model(hist[:, -C:], last_only=True)                               # (n, 1, V)


def stream(model, tokenizer, prompt: str | list[int], *, max_tokens: int = 64, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           stop: str | list[str] | None = None, n: int = 1, sliding_window: bool = False) -> Iterator[StreamEvent]:
    """Yield a StreamEvent per sampled token (samples interleaved by `index` when n > 1).

    Text deltas are whole UTF-8 characters; a sample's deltas concatenate to its final text.
    Same seed (and settings) -> same tokens; seed None draws a fresh random seed.
    Bad settings raise here, before any decoding, exactly as the engine and the server refuse them
    (SamplingParams.validate: InvalidRequestError / ContextLengthError).
    """
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    ids = prompt_ids(tokenizer, prompt)
    SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=0 if top_k is None else top_k,
                   top_p=1.0 if top_p is None else top_p, n=n, seed=seed, stop=stops, sliding_window=sliding_window,
                   ).validate(tokenizer.vocab_size, model.config.context, len(ids))
    prepare_for_inference(model)     # keeps the mode a quantized model has; the fp32 decode layout otherwise
    gen = [sample_generator(seed, j, model.transformer.wte.weight.device) for j in range(n)]
    params = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    return _events(model, tokenizer, ids, max_tokens, n, gen, stops, params)


def _events(model, tokenizer, ids, max_tokens, n, gen, stops, params) -> Iterator[StreamEvent]:
    texts = [TextStream(tokenizer, stops) for _ in range(n)]
    done = [False] * n
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            steps = _decode(model, ids, n, max_tokens, gen, **params)
            for step, (toks, lps) in enumerate(steps):
                for i, (tok, lp) in enumerate(zip(toks, lps)):
                    if not done[i]:
                        ev = _event(i, tok, lp, texts[i], tokenizer.eot_id, last=step + 1 == max_tokens)
                        done[i] = ev.finish_reason is not None
                        yield ev
                if all(done):
                    break
    finally:
        model.train(was_training)


def _event(i: int, tok: int, lp: float, text: TextStream, eot: int, last: bool) -> StreamEvent:
    if tok == eot:
        return StreamEvent(i, tok, text.flush(), lp, "stop")
    delta, stopped = text.push(tok)
    if stopped:
        return StreamEvent(i, tok, delta, lp, "stop")
    if last:
        return StreamEvent(i, tok, delta + text.flush(), lp, "length")
    return StreamEvent(i, tok, delta, lp)


def generate(model, tokenizer, prompt: str | list[int], *, max_tokens: int = 64, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop: str | list[str] | None = None, n: int = 1,
             sliding_window: bool = False) -> Generation | list[Generation]:
    """Complete `prompt` (text or token ids). n == 1 -> a Generation; n > 1 -> a list of n of them."""
    events = stream(model, tokenizer, prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                    top_p=top_p, seed=seed, stop=stop, n=n, sliding_window=sliding_window)
    ids = prompt_ids(tokenizer, prompt)
    gens = [Generation(prompt_tokens=list(ids)) for _ in range(n)]
    parts: list[list[str]] = [[] for _ in gens]
    for ev in events:
        g = gens[ev.index]
        g.tokens.append(ev.token)
        g.logprobs.append(ev.logprob)
        parts[ev.index].append(ev.text)
        g.finish_reason = ev.finish_reason
    for g, p in zip(gens, parts):
        g.text = "".join(p)
        g.finish_reason = g.finish_reason or "length"      # max_tokens=0: nothing to sample
    return gens[0] if n == 1 else gens


__all__ = ["generate", "stream", "Generation", "StreamEvent", "prompt_ids"]
