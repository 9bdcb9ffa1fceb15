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

from gpt3lab.errors import UserError
from gpt3lab.model import matvec
from gpt3lab.model.quant import prepare_for_inference

MAX_TOKENS = 256          # keeps the attention payload small (layers x heads x T^2 / 2 numbers)


class InspectError(UserError, ValueError):
    """A prompt or layer selection that cannot be inspected; `param` names the offending field."""

    def __init__(self, message: str, param: str, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


def prompt_ids(tokenizer, text_or_ids, limit: int) -> list[int]:
    """A text or a list of token ids -> token ids, checked against the vocabulary and `limit`."""
    if isinstance(text_or_ids, str):
        ids = tokenizer.encode(text_or_ids)
    else:
        ids = [int(t) for t in text_or_ids]
    if not ids:
        raise InspectError("the prompt is empty: give at least one token to inspect", "prompt")
    V = tokenizer.vocab_size
    bad = [t for t in ids if not 0 <= t < V]
    if bad:
        raise InspectError(f"prompt token id {bad[0]} is outside the vocabulary (0..{V - 1})", "prompt")
    if len(ids) > limit:
        raise InspectError(f"the prompt has {len(ids)} tokens; inspection takes at most {limit} "
                           f"(attention is returned for every pair of tokens): shorten the prompt", "prompt",
                           "context_length_exceeded")
    return ids


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
    only when j <= i and, for a banded layer with window W, i - j < W.
    """
    T = x.shape[0]
    q, k, v = matvec.linear(attn.c_attn, x).split(attn.d_attn, dim=-1)             # 3 x (T, d_attn)
    q, k, v = (t.view(T, attn.n_head, attn.d_head).transpose(0, 1) for t in (q, k, v))  # (nh, T, hs)
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(attn.d_head)     # (nh, T, T)
    i = torch.arange(T, device=x.device)
    allowed = i[None, :] <= i[:, None]
    if attn.window is not None:
        allowed &= (i[:, None] - i[None, :]) < attn.window
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
        out.append({"top": [{"id": t, "text": tokenizer.decode([t]), "prob": p} for t, p in zip(tids, top_p[i])],
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
                windows.append(attn.window)
            positions = _positions(tokenizer, ids, logits, top_k, decimals)
    finally:
        if was_training:
            model.train()
    return {"tokens": [{"id": t, "text": tokenizer.decode([t])} for t in ids], "positions": positions,
            "attention": {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "layers": layers, "windows": windows,
                          "weights": weights}}
