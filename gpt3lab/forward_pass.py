"""One token's path through the model, stage by stage, as the GPT-3 explainers draw it.

    fp = forward_pass(model, tokenizer, "ROMEO: But soft", position=3)

text -> token id -> token embedding wte[id] + position embedding wpe[i] -> for every block: ln_1 -> the
query of token i scored against the keys 0..i -> masked softmax -> weighted sum of the values (per head)
-> c_proj, added to the residual stream; ln_2 -> MLP, added to the residual stream -> ln_f -> dot products
with every row of the (tied) embedding matrix -> softmax -> the next-token probabilities.

The numbers come from one read-only pass of the model itself: forward hooks capture the embedding sum
(the input dropout's output), every attention and MLP module's input and output (their outputs are
exactly what the block adds to the residual stream) and ln_f's input and output. The query-key scores
are recomputed from the captured attention input with the module's own c_attn weights, the weights
themselves come from gpt3lab.inspect.attention_weights (the playground's attention maps). As in
gpt3lab.inspect, the hooks ignore other threads (a serving engine may decode on the same model).
"""
from __future__ import annotations

import math
import threading

import torch

from gpt3lab import inspect as look
from gpt3lab.model import matvec


def _capture(model, ids: list[int]) -> dict:
    """One pass over `ids`; -> {"emb": (T, d), "attn_in"/"attn_out"/"mlp_out": [L x (T, d)], "final": (T, d),
    "ln_f": (T, d)}, all fp32. Padded past T like gpt3lab.inspect.residuals (causal: rows < T unchanged)."""
    T, tf = len(ids), model.transformer
    n = max(T, min(matvec.MAX_ROWS + 1, model.config.context))
    idx = torch.tensor([ids + [ids[-1]] * (n - T)], device=tf.wte.weight.device)          # (1, n)
    me, got = threading.get_ident(), {}

    def keep(name, use_input=False):
        def hook(module, args, output):
            if threading.get_ident() == me:
                got[name] = (args[0] if use_input else output)[0, :T].float()              # (T, d)
        return hook

    hooks = [(tf.drop, keep("emb")), (tf.ln_f, keep("final", True)), (tf.ln_f, keep("ln_f"))]
    for l, block in enumerate(tf.h):
        hooks += [(block.attn, keep(f"attn_in{l}", True)), (block.attn, keep(f"attn_out{l}")),
                  (block.mlp, keep(f"mlp_out{l}"))]
    handles = [m.register_forward_hook(h) for m, h in hooks]
    try:
        model.hidden(idx)
    finally:
        for h in handles:
            h.remove()
    L = len(tf.h)
    return {"emb": got["emb"], "final": got["final"], "ln_f": got["ln_f"],
            "attn_in": [got[f"attn_in{l}"] for l in range(L)], "attn_out": [got[f"attn_out{l}"] for l in range(L)],
            "mlp_out": [got[f"mlp_out{l}"] for l in range(L)]}


def _head_outputs(attn, probs: torch.Tensor, v: torch.Tensor, i: int) -> list[float] | None:
    """‖what each head adds to the residual stream‖ at query i: its weighted values through its slice of
    c_proj. None when c_proj is not a plain linear layer (an int8 or LoRA-wrapped projection)."""
    w = getattr(attn.c_proj, "weight", None)
    if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.dim() != 2:
        return None
    hs = attn.d_head
    y = probs[:, i, :i + 1] @ v[:, :i + 1].float()                                     # (nh, hs)
    return [float((y[h] @ w[:, h * hs:(h + 1) * hs].float().t()).norm()) for h in range(attn.n_head)]


def _block(attn, x_in: torch.Tensor, i: int, rnd) -> dict:
    """The attention stage of one block for query i: per head the raw scores q_i·k_j/sqrt(d_head) of keys
    0..i (None where the mask hides a key), the softmax weights, ‖v_j‖ and ‖the head's output‖."""
    x_in = x_in[:i + 1]                          # causal: rows after i change nothing for query i
    probs, v = look.attention_weights(attn, x_in)                                      # (nh, i+1, i+1), (nh, i+1, hs)
    q, k, _ = matvec.linear(attn.c_attn, x_in).split(attn.d_attn, dim=-1)             # 2 x (T, d_attn)
    q = q[i].view(attn.n_head, attn.d_head).float()                                    # (nh, hs)
    k = k[:i + 1].view(i + 1, attn.n_head, attn.d_head).transpose(0, 1).float()      # (nh, i+1, hs)
    scores = (k @ q[:, :, None])[..., 0] / math.sqrt(attn.d_head)                      # (nh, i+1)
    seen = [attn.window is None or i - j < attn.window for j in range(i + 1)]
    outs = _head_outputs(attn, probs, v, i)
    heads = []
    for h in range(attn.n_head):
        heads.append({"scores": [rnd(float(s)) if ok else None for s, ok in zip(scores[h].tolist(), seen)],
                      "weights": [rnd(float(p)) for p in probs[h, i, :i + 1].tolist()],
                      "value_norms": [rnd(float(n)) for n in v[h, :i + 1].float().norm(dim=-1).tolist()],
                      "out_norm": None if outs is None else rnd(outs[h])})
    return {"window": attn.window, "heads": heads}


def forward_pass(model, tokenizer, text_or_ids, position: int | None = None, *, top_k: int = 10,
                 max_tokens: int = look.MAX_TOKENS, decimals: int | None = None) -> dict:
    """Token `position` (default: the last) of a prompt followed through the model.

    -> {"position", "token": {"id", "text", "bytes"}, "shapes": {"T", "d_model", "n_layer", "n_head",
    "d_head", "d_ff", "vocab_size"}, "embedding": {"token", "position", "sum" (vectors, d_model each),
    "norms": {...}}, "blocks": [{"layer", "window", "norm_in", "norm_mid", "norm_out", "heads": [{"scores",
    "weights", "value_norms", "out_norm"}], "attn": {"delta", "norm"}, "mlp": {"delta", "norm"}}],
    "final": {"resid", "ln_f" (vectors), "norm", "top": [{"id", "text", "logit", "prob"}]}}.
    Invariants (tested): embedding sum = wte[id] + wpe[position]; sum + every attn and mlp delta = final
    resid; every weights row sums to 1; top[0] is the model's own argmax at `position`.
    """
    cfg, tf = model.config, model.transformer
    ids = look.prompt_ids(tokenizer, text_or_ids, min(max_tokens, cfg.context))
    i = len(ids) - 1 if position is None else int(position)
    if not 0 <= i < len(ids):
        raise look.InspectError(f"forward position {i} is outside the prompt: it has tokens 0..{len(ids) - 1}",
                                "forward")
    if not 1 <= top_k <= 50:
        raise look.InspectError(f"forward top_k={top_k} must be between 1 and 50", "forward")

    def rnd(x: float) -> float:
        return x if decimals is None else round(x, decimals)

    def vec(t: torch.Tensor) -> list[float]:
        return [rnd(x) for x in t.double().tolist()]

    with look._eval_mode(model), torch.inference_mode():
        c = _capture(model, ids)
        tok_e, pos_e = tf.wte.weight[ids[i]].float(), tf.wpe.weight[i].float()        # (d,), (d,)
        tok_e, pos_e = tok_e.detach(), pos_e.detach()
        x, blocks = c["emb"][i], []
        for l, block in enumerate(tf.h):
            a, m = c["attn_out"][l][i], c["mlp_out"][l][i]                                 # (d,) each
            blocks.append({"layer": l, **_block(block.attn, c["attn_in"][l], i, rnd),
                           "norm_in": rnd(float(x.norm())), "norm_mid": rnd(float((x + a).norm())),
                           "norm_out": rnd(float((x + a + m).norm())),
                           "attn": {"delta": vec(a), "norm": rnd(float(a.norm()))},
                           "mlp": {"delta": vec(m), "norm": rnd(float(m.norm()))}})
            x = x + a + m
        h = c["ln_f"][i]                                                                   # (d,)
        logits = model.lm_head(h[None].to(tf.ln_f.weight.dtype)).float()[0]               # (V,)
        p = logits.softmax(-1)
        top = p.topk(min(top_k, p.shape[0]))
    t = ids[i]
    b = tokenizer.token_bytes(t) if hasattr(tokenizer, "token_bytes") else tokenizer.decode([t]).encode()
    return {"position": i,
            "token": {"id": t, "text": look.token_text(tokenizer, t), "bytes": "".join(f"\\x{x:02x}" for x in b)},
            "shapes": {"T": len(ids), "d_model": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                       "d_head": tf.h[0].attn.d_head,
                       "d_ff": cfg.d_ff, "vocab_size": cfg.vocab_size},
            "embedding": {"token": vec(tok_e), "position": vec(pos_e), "sum": vec(c["emb"][i]),
                          "norms": {"token": rnd(float(tok_e.norm())), "position": rnd(float(pos_e.norm())),
                                    "sum": rnd(float(c["emb"][i].norm()))}},
            "blocks": blocks,
            "final": {"resid": vec(c["final"][i]), "ln_f": vec(h), "norm": rnd(float(c["final"][i].norm())),
                      "top": [{"id": int(j), "text": look.token_text(tokenizer, int(j)), "logit": rnd(float(logits[j])),
                               "prob": rnd(float(pj))} for pj, j in zip(top.values.tolist(), top.indices.tolist())]}}
