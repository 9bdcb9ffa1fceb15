"""gpt3lab.inspect: its numbers equal the model's own forward, its attention is the module's attention."""
from __future__ import annotations

import math
import threading

import pytest
import torch

import gpt3lab.model.attention as attention_mod
from gpt3lab.generate.api import InvalidRequestError
from gpt3lab.config import ModelConfig
from gpt3lab.inspect import MAX_TOKENS, InspectError, attention_weights, inspect, token_text
from gpt3lab.model import GPT
from gpt3lab.tokenizer import Tokenizer

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.gpt2()


def make_model(tok, seed=0, window=8, pattern="alternating"):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, context=64, n_layer=2, d_model=32, n_head=4,
                      attention_pattern=pattern, local_window=window)
    return GPT(cfg).eval()


@pytest.fixture(scope="module")
def model(tok):
    return make_model(tok)


def test_probabilities_equal_the_models_logits(model, tok):
    ids = tok.encode(TEXT)
    info = inspect(model, tok, TEXT, top_k=4)
    assert [t["id"] for t in info["tokens"]] == ids
    assert [t["text"] for t in info["tokens"]] == [token_text(tok, i) for i in ids]
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0][0].float(), dim=-1)     # (T, V)
    for i, pos in enumerate(info["positions"]):
        top_lp, top_id = logp[i].topk(4)
        assert [t["id"] for t in pos["top"]] == top_id.tolist()
        assert [t["text"] for t in pos["top"]] == [token_text(tok, j) for j in top_id.tolist()]
        torch.testing.assert_close(torch.tensor([t["prob"] for t in pos["top"]]), top_lp.exp(), rtol=1e-4, atol=0)
        if i + 1 < len(ids):
            lp = logp[i, ids[i + 1]].item()
            assert pos["next_prob"] == pytest.approx(math.exp(lp), rel=1e-4)
            assert pos["surprisal_bits"] == pytest.approx(-lp / math.log(2), rel=1e-5)
        else:
            assert pos["next_prob"] is None and pos["surprisal_bits"] is None


def test_ids_and_text_give_the_same_result_and_rounding(model, tok):
    ids = tok.encode(TEXT)
    a, b = inspect(model, tok, TEXT), inspect(model, tok, ids)
    assert a == b
    r = inspect(model, tok, ids, decimals=4)
    assert r["positions"][3]["surprisal_bits"] == round(a["positions"][3]["surprisal_bits"], 4)
    assert r["attention"]["weights"][1][2][30] == [round(x, 4) for x in a["attention"]["weights"][1][2][30]]


@pytest.mark.parametrize("layer", [0, 1])          # 0 dense, 1 banded (window 8)
def test_attention_is_causal_banded_and_normalised(model, tok, layer):
    ids = tok.encode(TEXT)
    T = len(ids)
    info = inspect(model, tok, ids)
    att = info["attention"]
    assert att["windows"] == [None, 8] and att["n_head"] == 4 and att["layers"] == [0, 1]
    rows = att["weights"][layer]
    assert len(rows) == 4 and all(len(h) == T and [len(r) for r in h] == list(range(1, T + 1)) for h in rows)
    for head in rows:
        for i, r in enumerate(head):
            assert sum(r) == pytest.approx(1.0, abs=1e-5)
            if layer == 1:     # outside the band: exactly zero; inside it: all positive
                assert all(w == 0.0 for w in r[:max(0, i - 7)]) and all(w > 0 for w in r[max(0, i - 7):])


def _pre_c_proj(model, ids, layer, monkeypatch):
    """The attention module's output before c_proj, captured from the model's own forward."""
    seen, target = {}, model.transformer.h[layer].attn.c_proj
    real = attention_mod.linear

    def spy(mod, x):
        if mod is target:
            seen["y"] = x.clone()
        return real(mod, x)
    monkeypatch.setattr(attention_mod, "linear", spy)
    outs = {}
    h = model.transformer.h[layer].attn.register_forward_hook(lambda m, a, o: outs.update(x=a[0].clone(), out=o))
    try:
        with torch.inference_mode():
            model(torch.tensor([ids]))
    finally:
        h.remove()
        monkeypatch.setattr(attention_mod, "linear", real)
    return outs["x"][0], seen["y"][0], outs["out"][0]


@pytest.mark.parametrize("layer", [0, 1])
def test_weighted_values_reproduce_the_module_output(model, tok, layer, monkeypatch):
    ids = tok.encode(TEXT)
    x, y_model, out_model = _pre_c_proj(model, ids, layer, monkeypatch)     # (T, d), (T, d_attn), (T, d)
    attn = model.transformer.h[layer].attn
    with torch.inference_mode():
        probs, v = attention_weights(attn, x)                               # (nh, T, T), (nh, T, hs)
        y = (probs @ v.float()).transpose(0, 1).reshape(len(ids), attn.d_attn)   # (T, d_attn)
        torch.testing.assert_close(y, y_model, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(attn.c_proj(y), out_model, rtol=1e-5, atol=1e-6)
    # and the weights inspect returns are these probabilities
    got = inspect(model, tok, ids, layers=[layer])["attention"]["weights"][0]
    for h in range(4):
        for i in (0, 5, len(ids) - 1):
            torch.testing.assert_close(torch.tensor(got[h][i], dtype=torch.float64), probs[h, i, :i + 1].double())
        assert torch.all(probs[h].triu(1) == 0)


def test_layers_subset_and_errors(model, tok):
    info = inspect(model, tok, "hello world", layers=[1])
    assert info["attention"]["layers"] == [1] and info["attention"]["windows"] == [8]
    assert len(info["attention"]["weights"]) == 1
    with pytest.raises(InspectError) as e:
        inspect(model, tok, "hi", layers=[2])
    assert e.value.param == "layers" and "0..1" in str(e.value)
    with pytest.raises(InspectError, match="at most 64"):       # the model's context caps MAX_TOKENS
        inspect(model, tok, list(range(65)))
    with pytest.raises(InspectError, match="empty"):
        inspect(model, tok, "")
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        inspect(model, tok, [1, tok.vocab_size])
    with pytest.raises(InspectError) as e:
        inspect(model, tok, "hi", top_k=0)
    assert e.value.param == "top_k"
    assert MAX_TOKENS == 256


def test_single_token_prompt(model, tok):
    info = inspect(model, tok, [tok.eot_id], top_k=2)
    assert info["positions"][0]["next_prob"] is None and len(info["positions"][0]["top"]) == 2
    assert all(h == [[1.0]] for layer in info["attention"]["weights"] for h in layer)


def test_read_only_hooks_removed_prepared_once_training_mode_restored(tok):
    m = make_model(tok, seed=1).train()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    inspect(m, tok, "short")          # prepares the model for inference (explicit; values unchanged)
    strides = {n: p.stride() for n, p in m.named_parameters()}
    inspect(m, tok, "x")              # 1 token: the few-row path; a prepared model is left as it is
    assert {n: p.stride() for n, p in m.named_parameters()} == strides
    assert all(torch.equal(p, before[n]) for n, p in m.named_parameters())
    assert m.training and all(not b.attn._forward_hooks for b in m.transformer.h)


def test_safe_while_another_thread_decodes(tok):
    """A generation running on the same model in another thread changes neither result."""
    from gpt3lab.generate.api import SamplingParams
    from gpt3lab.generate.engine import Engine
    m = make_model(tok, seed=2)
    solo = inspect(m, tok, TEXT)
    params = SamplingParams(max_tokens=40, temperature=0.0)
    engine = Engine(m, tok, kv_memory_bytes=8 << 20)
    try:
        want = "".join(ev.text for ev in engine.submit(tok.encode("Once upon"), params))
        stop, errors = threading.Event(), []

        def decode():
            while not stop.is_set():
                got = "".join(ev.text for ev in engine.submit(tok.encode("Once upon"), params))
                if got != want:
                    errors.append(got)
        t = threading.Thread(target=decode)
        t.start()
        try:
            for _ in range(5):
                assert inspect(m, tok, TEXT) == solo
        finally:
            stop.set()
            t.join()
        assert not errors
    finally:
        engine.shutdown(True)


# ---- tracks (logit lens) and one generation step ------------------------------------------------

def hooked_residuals(model, ids):
    """The residual streams, captured independently of gpt3lab.inspect: embedding + every block output."""
    got = []
    hs = [m.register_forward_hook(lambda mod, a, out: got.append(out[0].float()))
          for m in [model.transformer.drop, *model.transformer.h]]
    try:
        with torch.inference_mode():
            logits = model(torch.tensor([ids]))[0][0].float()
    finally:
        for h in hs:
            h.remove()
    return got, logits


def test_lens_equals_a_direct_computation_from_hooked_residuals(model, tok):
    from gpt3lab.inspect import lens
    ids = tok.encode(TEXT)
    info = lens(model, tok, ids, top_k=3)
    resid, _ = hooked_residuals(model, ids)
    assert info["rows"] == ["embedding", "block 0", "block 1"] and len(info["cells"]) == 3
    for r, x in enumerate(resid):
        with torch.inference_mode():
            logp = torch.log_softmax(model.lm_head(model.transformer.ln_f(x)).float(), dim=-1)    # (T, V)
        torch.testing.assert_close(torch.tensor(info["norms"][r]), x.norm(dim=-1), rtol=1e-5, atol=1e-6)
        for i, cell in enumerate(info["cells"][r]):
            top_lp, top_id = logp[i].topk(3)
            assert [c["id"] for c in cell["top"]] == top_id.tolist()
            torch.testing.assert_close(torch.tensor([c["prob"] for c in cell["top"]]), top_lp.exp(),
                                       rtol=1e-4, atol=1e-7)
            want = None if i + 1 == len(ids) else pytest.approx(logp[i, ids[i + 1]].exp().item(), rel=1e-4)
            assert cell["next_prob"] == want
    assert len({tuple(c["top"][0]["id"] for c in row) for row in info["cells"]}) > 1   # depths differ


def test_last_layer_lens_equals_the_models_logits(model, tok):
    from gpt3lab.inspect import lens
    ids = tok.encode(TEXT)
    last = lens(model, tok, TEXT, top_k=5)["cells"][-1]
    full = inspect(model, tok, TEXT, top_k=5)["positions"]
    _, logits = hooked_residuals(model, ids)
    logp = torch.log_softmax(logits, dim=-1)
    for i, (cell, pos) in enumerate(zip(last, full)):
        assert [c["id"] for c in cell["top"]] == [c["id"] for c in pos["top"]] == logp[i].topk(5).indices.tolist()
        torch.testing.assert_close(torch.tensor([c["prob"] for c in cell["top"]]),
                                   torch.tensor([c["prob"] for c in pos["top"]]), rtol=1e-4, atol=1e-7)


def test_lens_rejects_a_bad_top_k_and_leaves_training_mode(tok):
    from gpt3lab.inspect import lens
    m = make_model(tok).train()
    with pytest.raises(InspectError, match="top_k=0") as e:
        lens(m, tok, TEXT, top_k=0)
    assert e.value.param == "lens_top_k"
    lens(m, tok, TEXT)
    assert m.training


def test_next_step_is_the_samplers_filtered_distribution_and_draw(model, tok):
    from gpt3lab.generate import sampling
    from gpt3lab.inspect import next_step
    ids = tok.encode(TEXT)
    s = next_step(model, tok, ids, temperature=0.7, top_k=4, seed=3, show=6)
    with torch.inference_mode():
        logits = model(torch.tensor([ids]))[0][0, -1:].float()                       # (1, V)
    x = sampling.top_k_filter(logits / 0.7, 4)
    probs = x.softmax(-1)[0]
    assert s["kept"] == 4 and [c["id"] for c in s["top"][:4]] == probs.topk(4).indices.tolist()
    assert all(c["prob"] == 0 for c in s["top"][4:])
    assert sum(c["prob"] for c in s["top"]) == pytest.approx(1.0, abs=1e-5)
    tok_id, _ = sampling.sample(logits, 0.7, 4, None, sampling.sample_generator(3))
    assert s["token"]["id"] == int(tok_id[0]) and s["token"]["id"] in [c["id"] for c in s["top"][:4]]
    greedy = next_step(model, tok, ids, temperature=0)
    assert greedy["token"]["id"] == int(logits.argmax()) and greedy["top"][0]["prob"] == 1.0 and greedy["kept"] == 1
