"""gpt3lab.forward_pass: every stage's numbers equal a direct step-by-step computation of the model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gpt3lab.config import ModelConfig
from gpt3lab.forward_pass import forward_pass
from gpt3lab.inspect import InspectError, last_tokens, token_text
from gpt3lab.model import GPT
from gpt3lab.tokenizer import Tokenizer

TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom’s end"
WINDOW = 4


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.gpt2()


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=tok.vocab_size, context=64, n_layer=2, d_model=32, n_head=4,
                      attention_pattern="alternating", local_window=WINDOW)
    m = GPT(cfg).eval()
    with torch.no_grad():                 # larger residual contributions than GPT-2's init: a sharper check
        for name, p in m.named_parameters():
            if name.endswith("c_proj.weight"):
                p.mul_(10)
    return m


def direct(model, ids, i):
    """The block arithmetic written out (no hooks): embedding, per-block deltas, ln_f, logits at i."""
    tf = model.transformer
    with torch.no_grad():
        x = tf.wte.weight[ids] + tf.wpe.weight[:len(ids)]                                 # (T, d)
        emb, deltas = x[i].clone(), []
        for block in tf.h:
            a = block.attn(block.ln_1(x)[None])[0]
            x = x + a
            m = block.mlp(block.ln_2(x))
            x = x + m
            deltas.append((a[i], m[i]))
        return emb, deltas, x[i], tf.ln_f(x)[i], model(torch.tensor([ids]))[0][0, i]


@pytest.mark.parametrize("position", [0, 5, None])
def test_stages_equal_the_direct_computation(model, tok, position):
    ids = tok.encode(TEXT)
    i = len(ids) - 1 if position is None else position
    fp = forward_pass(model, tok, TEXT, position, top_k=5)
    emb, deltas, final, ln_f, logits = direct(model, ids, i)
    t = lambda v: torch.tensor(v)                                                          # noqa: E731
    assert fp["position"] == i and fp["token"]["id"] == ids[i] and fp["shapes"]["T"] == len(ids)
    e = fp["embedding"]
    torch.testing.assert_close(t(e["token"]), model.transformer.wte.weight[ids[i]].detach())
    torch.testing.assert_close(t(e["position"]), model.transformer.wpe.weight[i].detach())
    torch.testing.assert_close(t(e["sum"]), t(e["token"]) + t(e["position"]))
    torch.testing.assert_close(t(e["sum"]), emb)
    resid = t(e["sum"])
    for b, (a, m) in zip(fp["blocks"], deltas, strict=True):
        torch.testing.assert_close(t(b["attn"]["delta"]), a, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(t(b["mlp"]["delta"]), m, atol=1e-5, rtol=1e-4)
        assert b["norm_in"] == pytest.approx(float(resid.norm()), rel=1e-4)
        resid = resid + t(b["attn"]["delta"]) + t(b["mlp"]["delta"])
        assert b["norm_out"] == pytest.approx(float(resid.norm()), rel=1e-4)
    torch.testing.assert_close(resid, t(fp["final"]["resid"]), atol=1e-5, rtol=1e-4)   # deltas sum to it
    torch.testing.assert_close(t(fp["final"]["resid"]), final, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(t(fp["final"]["ln_f"]), ln_f, atol=1e-5, rtol=1e-4)
    top = fp["final"]["top"]
    assert [c["id"] for c in top] == logits.topk(5).indices.tolist()                       # the model's own
    assert top[0]["logit"] == pytest.approx(float(logits.max()), abs=1e-4)
    assert top[0]["prob"] == pytest.approx(float(logits.softmax(-1).max()), abs=1e-6)


def test_scores_softmax_to_the_weights_and_the_band_is_masked(model, tok):
    ids = tok.encode(TEXT)
    i = 9
    fp = forward_pass(model, tok, ids, i)
    tf = model.transformer
    with torch.no_grad():
        x = tf.wte.weight[ids] + tf.wpe.weight[:len(ids)]
        x_in = tf.h[0].ln_1(x)                                                             # block 0's input
        attn = tf.h[0].attn
        q, k, _ = F.linear(x_in, attn.c_attn.weight, attn.c_attn.bias).split(attn.d_attn, dim=-1)
    hs = attn.d_head
    for l, b in enumerate(fp["blocks"]):
        for h, head in enumerate(b["heads"]):
            assert len(head["weights"]) == len(head["scores"]) == i + 1
            assert sum(head["weights"]) == pytest.approx(1.0, abs=1e-5)
            s = torch.tensor([float("-inf") if v is None else v for v in head["scores"]])
            torch.testing.assert_close(s.softmax(-1), torch.tensor(head["weights"]), atol=1e-5, rtol=1e-4)
            if l == 0:                      # raw q.k / sqrt(d_head), recomputed here from the weights
                want = k[:i + 1, h * hs:(h + 1) * hs] @ q[i, h * hs:(h + 1) * hs] / math.sqrt(hs)
                torch.testing.assert_close(torch.tensor(head["scores"]), want)
    banded = [b for b in fp["blocks"] if b["window"] is not None]
    assert banded and all(b["window"] == WINDOW for b in banded)
    for b in banded:                        # keys older than the band: no score, no weight
        for head in b["heads"]:
            assert head["scores"][:i + 1 - WINDOW] == [None] * (i + 1 - WINDOW)
            assert head["weights"][:i + 1 - WINDOW] == [0.0] * (i + 1 - WINDOW)


def test_head_outputs_add_up_to_the_attention_delta(model, tok):
    """Each head's output norm is its slice of c_proj applied to its weighted values: with one head
    left, its norm is the whole delta minus the bias."""
    fp = forward_pass(model, tok, TEXT, 7)
    for b in fp["blocks"]:
        norms = [h["out_norm"] for h in b["heads"]]
        assert all(n is not None and n >= 0 for n in norms)
        bias = model.transformer.h[b["layer"]].attn.c_proj.bias.detach()
        total = torch.tensor(b["attn"]["delta"]) - bias
        assert float(total.norm()) <= sum(norms) + 1e-5                               # triangle inequality


def test_bytes_of_a_cut_character_and_errors(model, tok):
    ids = tok.encode("’")                          # one character, two byte-level tokens
    assert len(ids) == 2
    fp = forward_pass(model, tok, ids, 1)
    assert "\ufffd" not in fp["token"]["text"] and fp["token"]["text"].startswith("\\x")
    assert fp["token"]["bytes"] == "".join(f"\\x{b:02x}" for b in tok.token_bytes(ids[1]))
    assert token_text(tok, tok.encode(" the")[0]) == " the"
    with pytest.raises(InspectError, match="position 5 is outside") as e:
        forward_pass(model, tok, ids, 5)
    assert e.value.param == "forward"


def test_last_tokens_keeps_the_end():
    class Tok:
        def encode(self, s):
            return [ord(c) for c in s]
    assert last_tokens(Tok(), "abcdef", 4) == ([99, 100, 101, 102], 2)
    assert last_tokens(Tok(), [1, 2], 4) == ([1, 2], 0)
