"""Look inside the model for one prompt: next-token probabilities, surprisal and attention weights.

    info = inspect(model, tokenizer, "ROMEO: But soft", top_k=5)

One read-only forward pass of the model itself (so the logits are exactly the model's). Forward hooks
on the attention modules capture their inputs (ln_1's output); the attention weights are recomputed
from those inputs with the modules' own c_attn weights and masks. The model knows nothing of this:
the hooks are removed afterwards and ignore calls made by other threads (a serving engine may be
decoding on the same model object at the same time).
"""
from __future__ import annotations

import math
import threading

import torch

from gpt3lab.generate.api import InvalidRequestError, check_token_ids
from gpt3lab.model import matvec
from gpt3lab.model.quant import prepare_for_inference

MAX_TOKENS = 256          # keeps the attention payload small (layers x heads x T^2 / 2 numbers)


class InspectError(InvalidRequestError):
    """A prompt or layer selection that cannot be inspected; `param` names the offending field."""

    def __init__(self, message: str, param: str, code: str | None = None):
        super().__init__(message, param)
        self.code = code


def prompt_ids(tokenizer, text_or_ids, limit: int) -> list[int]:
    """A text or a list of token ids -> token ids, checked against the vocabulary and `limit`."""
    if isinstance(text_or_ids, str):
        ids = tokenizer.encode(text_or_ids)
    else:
        ids = [int(t) for t in text_or_ids]
    if not ids:
        raise InspectError("the prompt is empty: give at least one token to inspect", "prompt")
    check_token_ids(ids, tokenizer.vocab_size)
    if len(ids) > limit:
        raise InspectError(f"the prompt has {len(ids)} tokens; inspection takes at most {limit} "
                           f"(attention is returned for every pair of tokens): shorten the prompt", "prompt",
                           "context_length_exceeded")
    return ids


def last_tokens(tokenizer, text_or_ids, limit: int) -> tuple[list[int], int]:
    """The prompt's last `limit` tokens (what a sliding window keeps) and how many were dropped in front."""
    ids = tokenizer.encode(text_or_ids) if isinstance(text_or_ids, str) else [int(t) for t in text_or_ids]
    return ids[-limit:], max(0, len(ids) - limit)


def token_text(tokenizer, t: int) -> str:
    """One token as text; bytes that are not UTF-8 on their own (a character cut between byte-level
    tokens) are written as \\xe2 escapes instead of U+FFFD (as OpenAI's "bytes:" tokens keep them)."""
    if not hasattr(tokenizer, "decode_bytes"):
        return tokenizer.decode([t])
    return tokenizer.decode_bytes([t]).decode("utf-8", errors="backslashreplace")


def _layers(n_layer: int, layers) -> list[int]:
    if layers is None:
        return list(range(n_layer))
    out = sorted({int(l) for l in layers})
    bad = [l for l in out if not 0 <= l < n_layer]
    if bad:
        raise InspectError(f"layer {bad[0]} does not exist: the model has layers 0..{n_layer - 1}", "layers")
    return out


def attention_weights(attn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One attention module's weights for its input x (T, d_model), as the module computes them.

    -> (probs (nh, T, T) fp32, v (nh, T, hs)): row i is query i's softmax over keys; key j gets weight
    only where the layer's AttentionSpec allows it (j <= i and, for a banded layer with window W, i - j < W).
    """
    T = x.shape[0]
    q, k, v = matvec.linear(attn.c_attn, x).split(attn.d_attn, dim=-1)             # 3 x (T, d_attn)
    q, k, v = (t.view(T, attn.n_head, attn.d_head).transpose(0, 1) for t in (q, k, v))  # (nh, T, hs)
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(attn.d_head)     # (nh, T, T)
    i = torch.arange(T, device=x.device)
    allowed = attn.spec.allowed(i[:, None], i[None, :])                              # (T, T)
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1), v


def _forward(model, ids: list[int], layers: list[int]):
    """The model's logits (T, V) and the captured inputs (T, d) of the chosen attention modules."""
    T = len(ids)
    idx = torch.tensor([ids], device=model.transformer.wte.weight.device)            # (1, T)
    me, inputs = threading.get_ident(), {}

    def hook_for(l):
        def hook(module, args, output):
            if threading.get_ident() == me:       # never touch another thread's (the engine's) passes
                inputs[l] = args[0][0]                                               # (T, d)
        return hook

    blocks = model.transformer.h
    handles = [blocks[l].attn.register_forward_hook(hook_for(l)) for l in layers]
    try:
        logits, _ = model(idx)                                                      # (1, T, V)
    finally:
        for h in handles:
            h.remove()
    return logits[0, :T].float(), {l: inputs[l] for l in layers}


def _plain(t: torch.Tensor, decimals: int | None) -> list:
    t = t.double()
    return (t if decimals is None else torch.round(t, decimals=decimals)).tolist()


def _positions(tokenizer, ids: list[int], logits: torch.Tensor, top_k: int, decimals) -> list[dict]:
    logp = torch.log_softmax(logits, dim=-1)                                         # (T, V)
    top_lp, top_id = logp.topk(min(top_k, logp.shape[-1]), dim=-1)                   # (T, k)
    top_p = _plain(top_lp.exp(), decimals)
    nxt = torch.tensor(ids[1:], device=logp.device)
    next_lp = logp[:-1].gather(-1, nxt[:, None])[:, 0]                               # (T-1,)
    next_p, bits = _plain(next_lp.exp(), decimals), _plain(-next_lp / math.log(2), decimals)
    out = []
    for i, tids in enumerate(top_id.tolist()):
        out.append({"top": [{"id": t, "text": token_text(tokenizer, t), "prob": p} for t, p in zip(tids, top_p[i])],
                    "next_prob": next_p[i] if i < len(ids) - 1 else None,
                    "surprisal_bits": bits[i] if i < len(ids) - 1 else None})
    return out


def inspect(model, tokenizer, text_or_ids, *, top_k: int = 5, layers=None, max_tokens: int = MAX_TOKENS,
            decimals: int | None = None) -> dict:
    """What the model does with one prompt (a text or token ids, at most `max_tokens` tokens).

    -> {"tokens": [{"id", "text"}], "positions": [{"top": [{"id", "text", "prob"}] (the k likeliest next
    tokens after position i), "next_prob", "surprisal_bits"} (of the actual token i+1; None at the end)],
    "attention": {"n_layer", "n_head", "layers", "windows" (band width or None per layer),
    "weights": [layer][head][query i] = the weights of keys 0..i (the causal lower triangle; zeros outside
    a banded layer's band)]}. decimals rounds every float (the server sends 4).
    """
    cfg = model.config
    ids = prompt_ids(tokenizer, text_or_ids, min(max_tokens, cfg.context))
    layers = _layers(cfg.n_layer, layers)
    if not 1 <= top_k <= 100:
        raise InspectError(f"top_k={top_k} must be between 1 and 100", "top_k")
    T, was_training = len(ids), model.training
    prepare_for_inference(model)     # a no-op on a served (already prepared) model
    if was_training:
        model.eval()                 # dropout off; the serving engine's model is in eval mode already
    try:
        with torch.inference_mode():
            logits, inputs = _forward(model, ids, layers)
            weights, windows = [], []
            for l in layers:
                attn = model.transformer.h[l].attn
                probs, _ = attention_weights(attn, inputs[l])                     # (nh, n, n) padded
                full = _plain(probs[:, :T, :T], decimals)
                weights.append([[row[:i + 1] for i, row in enumerate(head)] for head in full])
                windows.append(attn.spec.describe())
            positions = _positions(tokenizer, ids, logits, top_k, decimals)
    finally:
        if was_training:
            model.train()
    return {"tokens": [{"id": t, "text": token_text(tokenizer, t)} for t in ids], "positions": positions,
            "attention": {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "layers": layers, "windows": windows,
                          "weights": weights}}


# ---- tracks: the logit lens ----------------------------------------------------------------------

def residuals(model, ids: list[int]) -> torch.Tensor:
    """The residual stream at every depth: (n_layer + 1, T, d_model) fp32; row 0 is the embedding
    (wte + wpe), row l + 1 the output of block l. Captured by forward hooks on one read-only pass."""
    T = len(ids)
    n = max(T, min(matvec.MAX_ROWS + 1, model.config.context))   # padded as in _forward (read-only matvec)
    dev = model.transformer.wte.weight.device
    idx = torch.tensor([ids + [ids[-1]] * (n - T)], device=dev)                      # (1, n)
    me, out = threading.get_ident(), {}

    def hook_for(row):
        def hook(module, args, output):
            if threading.get_ident() == me:
                out[row] = output[0, :T].float()                                     # (T, d)
        return hook

    mods = [model.transformer.drop, *model.transformer.h]
    handles = [m.register_forward_hook(hook_for(r)) for r, m in enumerate(mods)]
    try:
        model.hidden(idx)                         # no lm_head call: nothing is re-laid out (matvec)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([out[r] for r in range(len(mods))])                          # (L+1, T, d)


def lens_logits(model, resid: torch.Tensor) -> torch.Tensor:
    """What each depth would predict: lm_head(ln_f(residual)) -> (L+1, T, V) fp32 (the logit lens,
    nostalgebraist 2020); the last row is exactly the model's logits."""
    L1, T, d = resid.shape
    x = model.transformer.ln_f(resid.reshape(L1 * T, d).to(model.transformer.ln_f.weight.dtype))
    # lm_head itself (no side effects since #12), so an int8 model's lens uses its int8 unembedding
    return model.lm_head(x).float().reshape(L1, T, -1)


def lens(model, tokenizer, text_or_ids, *, top_k: int = 3, max_tokens: int = MAX_TOKENS,
         decimals: int | None = None) -> dict:
    """Tracks through the layers for one prompt: at every depth and position, the lens's top tokens.

    -> {"tokens": [{"id", "text"}], "rows": ["embedding", "block 0", ..., "block L-1"],
    "norms": [row][pos] (L2 norm of the residual stream), "cells": [row][pos] = {"top": [{"id", "text",
    "prob"}] (k likeliest next tokens under that depth's lens), "next_prob" (of the actual next token;
    None at the last position)}}. Size: (n_layer + 1) x T x top_k candidates.
    """
    ids = prompt_ids(tokenizer, text_or_ids, min(max_tokens, model.config.context))
    if not 1 <= top_k <= 20:
        raise InspectError(f"lens top_k={top_k} must be between 1 and 20", "lens_top_k")
    with _eval_mode(model), torch.inference_mode():
        resid = residuals(model, ids)                                               # (L+1, T, d)
        logp = torch.log_softmax(lens_logits(model, resid), dim=-1)                 # (L+1, T, V)
        top_lp, top_id = logp.topk(min(top_k, logp.shape[-1]), dim=-1)              # (L+1, T, k)
        nxt = torch.tensor(ids[1:] + [0], device=logp.device)
        next_p = _plain(logp.gather(-1, nxt.expand(logp.shape[0], -1)[..., None])[..., 0].exp(), decimals)
        top_p, norms = _plain(top_lp.exp(), decimals), _plain(resid.norm(dim=-1), decimals)
    text = {t: token_text(tokenizer, t) for t in set(top_id.flatten().tolist())}
    cells = [[{"top": [{"id": t, "text": text[t], "prob": p} for t, p in zip(tids, top_p[r][i])],
               "next_prob": next_p[r][i] if i + 1 < len(ids) else None}
              for i, tids in enumerate(row)] for r, row in enumerate(top_id.tolist())]
    rows = ["embedding"] + [f"block {l}" for l in range(model.config.n_layer)]
    return {"tokens": [{"id": t, "text": token_text(tokenizer, t)} for t in ids], "rows": rows, "norms": norms,
            "cells": cells}


class _eval_mode:
    """Dropout off for the duration (the serving engine's model is in eval mode already)."""

    def __init__(self, model):
        self.model, self.was = model, model.training

    def __enter__(self):
        if self.was:
            self.model.eval()

    def __exit__(self, *exc):
        if self.was:
            self.model.train()


# ---- the generation loop, one step -----------------------------------------------------------------

def next_step(model, tokenizer, text_or_ids, *, temperature: float = 1.0, top_k: int | None = None,
              top_p: float | None = None, seed: int | None = None, show: int = 10,
              max_tokens: int = MAX_TOKENS, logit_bias: dict | None = None) -> dict:
    """One step of the generation loop, as generate() and the engine take it: the decode core's logits for
    the prompt (gpt3lab.generate.core.Session), the engine's sampler (logit_bias, then temperature / top-k /
    top-p and the seeded draw of choice 0), so the token equals the first one generate() would give.

    -> {"top": [{"id", "text", "prob" (after the filters), "model_prob" (raw softmax)}] (the `show` most
    likely), "kept" (tokens left after the filters), "token": {"id", "text", "prob", "model_prob"}}.
    """
    import collections
    from types import SimpleNamespace

    from gpt3lab.generate import sampling, sampling_params
    from gpt3lab.generate.batch_sampler import BatchSampler
    from gpt3lab.generate.core import Session

    # the one request check (raises InvalidRequestError naming the field), as for every generation
    params = sampling_params(0, temperature, top_k, top_p, seed, logit_bias=logit_bias)
    params.validate(tokenizer.vocab_size, model.config.context)
    ids = prompt_ids(tokenizer, text_or_ids, min(max_tokens, model.config.context))
    prepare_for_inference(model)     # a no-op on a served (already prepared) model
    with _eval_mode(model), torch.inference_mode():
        logits = Session(model, len(ids)).feed(ids)[None]                              # (1, V) fp32
        seq = SimpleNamespace(req=SimpleNamespace(params=params), counts=collections.Counter(),
                              generator=sampling.sample_generator(seed, 0))
        adjusted = logits.clone()
        toks, _, raw = BatchSampler(tokenizer.vocab_size)([seq], adjusted)            # adjusts in place
        x = sampling.filtered(adjusted, temperature, top_k, top_p)
        probs, model_p = x.softmax(-1)[0], raw.exp()[0]                                # (V,)
        order = probs.topk(min(show, probs.shape[0])).indices.tolist()
        kept = int(torch.isfinite(x).sum())

    def entry(t):
        return {"id": t, "text": tokenizer.decode([t]), "prob": float(probs[t]), "model_prob": float(model_p[t])}
    return {"top": [entry(t) for t in order], "kept": kept, "token": entry(toks[0])}


# ---- priming: zero / one / few-shot ------------------------------------------------------------------

PRIMING_TASK = "mapping"      # the priming demo's held-out key->value mappings (gpt3lab.eval.mapping)


def priming_tasks() -> list[str]:
    """Task names priming() accepts: the harness's built-in tasks and the priming demo's mappings."""
    from gpt3lab.eval.tasks import builtin_names
    return [PRIMING_TASK, *builtin_names()]


def _priming_task(name: str, n: int, seed: int):
    from gpt3lab.eval.tasks import builtin_task
    from gpt3lab.eval.mapping import heldout_task

    if name not in priming_tasks():
        raise InspectError(f"task {name!r} is not a built-in task; choose one of {', '.join(priming_tasks())}",
                           "task")
    return heldout_task(seed) if name == PRIMING_TASK else builtin_task(name, n=n, seed=seed)


def priming(model, tokenizer, task: str, shots=(0, 1, 2, 4, 8), n: int = 20, seed: int = 0) -> dict:
    """In-context learning curve of one task: the eval harness's prompts (description + k examples +
    query, gpt3lab.eval.prompts) and metric at each k, plus the mean log-probability of the gold answer.

    -> {"task", "kind", "metric", "chance" (a random guess's metric), "shots": [{"k", "value" (the harness's primary metric), "answer_logprob"
    (mean over items, natural log), "mean_shots" (examples that fit), "prompt" (the first item's),
    "gold", "prediction"}]}
    """
    from gpt3lab.eval.harness import PRIMARY, _prompts, evaluate_task
    from gpt3lab.eval.scoring import score_requests

    t = _priming_task(task, n, seed)
    out = []
    with _eval_mode(model), torch.inference_mode():
        for k in shots:
            r = evaluate_task(model, tokenizer, t, k, seed=seed, limit=n, keep_examples=1)
            ps = _prompts(t, tokenizer, model, k, seed, n, False)      # the same prompts the harness scored
            reqs = [(tokenizer.encode(p.text), tokenizer.encode(t.fmt.delimiter + it.gold))
                    for p, it in zip(ps, t.items[:n])]
            lps = [s.logprob for s in score_requests(model, reqs, tokenizer.eot_id)]
            ex = r.examples[0]
            out.append({"k": k, "value": r.metrics[PRIMARY[t.kind]], "answer_logprob": sum(lps) / len(lps),
                        "mean_shots": r.mean_shots, "prompt": ex["prompt"], "gold": ex["gold"],
                        "prediction": ex["prediction"]})
    chance = (sum(1 / len(it.choices) for it in t.items[:n]) / len(t.items[:n])
              if t.kind == "multiple_choice" else 0.0)      # exact match: a random guess scores ~0
    return {"task": task, "kind": t.kind, "metric": PRIMARY[t.kind], "chance": chance, "shots": out}
