"""Text generation for one prompt: the engine's offline entry (as vLLM's LLM is over the engine it serves with).

    gen = generate(model, tokenizer, "ROMEO:", max_tokens=50, temperature=0.8, seed=1)
    gen.text, gen.tokens, gen.logprobs, gen.finish_reason      # 'stop' | 'length'
    for ev in stream(model, tokenizer, "ROMEO:"): print(ev.text, end="", flush=True)

Each call runs an `Engine` without a thread (engine.drive): the steps run in the caller's thread as events
are read (a consumer that stops early costs nothing more), through the same scheduler, decode core and
sampler as the server, so every sampling option (temperature, top-k/p, presence/frequency penalties,
logit_bias, stop strings and stop token ids, seed, n, sliding_window) behaves exactly as it does there.
`n` samples share one prefill (the choices fork the prompt's blocks). A sample ends at <|endoftext|> or a
stop token id or a stop string (finish_reason 'stop') or after max_tokens ('length'). `tokens`/`logprobs`
are exactly what was sampled (the token that ended the sample included); `text` excludes <|endoftext|>, the
stop string and everything after it.

sliding_window=True lets max_tokens run past the context window (attention_spec.slide): once prompt +
generated tokens fill the context, each next token is predicted from the last `context` tokens, recomputed
at positions 0..context-1. Without it, prompt + max_tokens > context is an error.
compile=True (or a torch.compile mode) compiles the decode step (gpt3lab.generate.core); None follows the
model (gpt3lab.load(..., compile=True)).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from gpt3lab.generate.api import SamplingParams, check_token_ids, start_tokens


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
    return start_tokens(ids, tokenizer.eot_id)


def sampling_params(max_tokens: int = 64, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, seed: int | None = None, stop: str | list[str] | None = None,
                    n: int = 1, sliding_window: bool = False, **options) -> SamplingParams:
    """generate()'s keywords (None = off for top_k/top_p, one stop string allowed) -> SamplingParams."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    options = {k: v for k, v in options.items() if v is not None}
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=0 if top_k is None else top_k,
                          top_p=1.0 if top_p is None else top_p, n=n, seed=seed, stop=stops,
                          sliding_window=sliding_window, **options)


def offline_engine(model, tokenizer, params: SamplingParams, prompt_tokens: int, compile=None):
    """An Engine without a thread, its KV pool sized to this one request (the whole context when compiled,
    so every call of a compiled model sees the same pool shape)."""
    from gpt3lab.generate.core import model_specs
    from gpt3lab.generate.engine import Engine, EngineConfig
    from gpt3lab.generate.kv_manager import KVManager

    cfg = EngineConfig(enable_prefix_caching=False, max_running=params.best_of or params.n)
    C = model.config.context
    compiled = getattr(model, "compile_mode", None) if compile is None else compile
    total = C if compiled else min(prompt_tokens + params.max_tokens, C)
    cfg.num_blocks = cfg.max_running * KVManager.blocks_for(model_specs(model), cfg.block_size,
                                                            cfg.max_batch_tokens, total)
    return Engine(model, tokenizer, cfg, compile=compile, background=False)


def stream(model, tokenizer, prompt: str | list[int], *, max_tokens: int = 64, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           stop: str | list[str] | None = None, n: int = 1, sliding_window: bool = False,
           presence_penalty: float = 0.0, frequency_penalty: float = 0.0, logit_bias: dict | None = None,
           stop_token_ids: list[int] | None = None, compile=None) -> Iterator[StreamEvent]:
    """Yield a StreamEvent per sampled token (samples interleaved by `index` when n > 1).

    Text deltas are whole UTF-8 characters; a sample's deltas concatenate to its final text.
    Same seed (and settings) -> same tokens; seed None draws a fresh random seed.
    Bad settings raise here, before any decoding, exactly as the engine and the server refuse them
    (SamplingParams.validate: InvalidRequestError / ContextLengthError).
    """
    ids = prompt_ids(tokenizer, prompt)
    params = sampling_params(max_tokens, temperature, top_k, top_p, seed, stop, n, sliding_window,
                             presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                             logit_bias=logit_bias, stop_token_ids=stop_token_ids)
    params.validate(tokenizer.vocab_size, model.config.context, len(ids))
    was_training = model.training
    engine = offline_engine(model, tokenizer, params, len(ids), compile)     # model.eval(), prepared for inference
    handle = engine.submit(ids, params)
    return _events(engine, handle, model, was_training)


def _events(engine, handle, model, was_training: bool) -> Iterator[StreamEvent]:
    try:
        for ev in engine.drive(handle):
            if ev.tokens:
                yield StreamEvent(ev.index, ev.tokens[0], ev.text, ev.logprobs[0], ev.finish_reason)
            elif ev.stop_token is not None:
                yield StreamEvent(ev.index, ev.stop_token, ev.text, ev.stop_logprob, ev.finish_reason)
    finally:
        handle.cancel()
        model.train(was_training)


def generate(model, tokenizer, prompt: str | list[int], *, max_tokens: int = 64, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop: str | list[str] | None = None, n: int = 1, sliding_window: bool = False,
             presence_penalty: float = 0.0, frequency_penalty: float = 0.0, logit_bias: dict | None = None,
             stop_token_ids: list[int] | None = None, compile=None) -> Generation | list[Generation]:
    """Complete `prompt` (text or token ids). n == 1 -> a Generation; n > 1 -> a list of n of them."""
    events = stream(model, tokenizer, prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                    top_p=top_p, seed=seed, stop=stop, n=n, sliding_window=sliding_window,
                    presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, logit_bias=logit_bias,
                    stop_token_ids=stop_token_ids, compile=compile)
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


__all__ = ["generate", "stream", "Generation", "StreamEvent", "prompt_ids", "sampling_params"]
