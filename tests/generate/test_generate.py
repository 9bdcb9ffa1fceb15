"""generate()/stream(): KV-cached decoding against full recomputation, seeds, stops, UTF-8, errors."""
import pytest
import torch
import torch.nn as nn

from gpt3lab.attention_spec import Dense
from gpt3lab.config import ModelConfig
from gpt3lab.errors import ConfigError
from gpt3lab.generate import generate, stream
from gpt3lab.model import GPT, ContextOverflowError
from gpt3lab.tokenizer import Tokenizer

from gen_helpers import BYTES, tiny



class Scripted(nn.Module):
    """A stand-in model that emits `script` token by token after a one-token prompt, through the engine's
    model contract (hidden over the cache's positions, then lm_head)."""

    def __init__(self, script: list[int], vocab_size: int = 257):
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab_size, context=256, n_layer=1, n_head=1, d_model=4)
        block = nn.Module()
        block.attn = nn.Module()
        block.attn.spec = Dense()                             # one layer of KV blocks, never read
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(vocab_size, 4), h=nn.ModuleList([block])))
        self.script = script

    def hidden(self, idx, cache=None):
        pos = cache.positions(idx.shape[1])                   # (1, N): position p predicts script[p]
        return pos.float()[..., None]                         # (1, N, 1)

    def lm_head(self, x):
        t = torch.tensor(self.script)[x[..., 0].long().clamp(max=len(self.script) - 1)]
        return torch.full((*t.shape, self.config.vocab_size), -20.0).scatter(-1, t[..., None], 20.0)


def full_recompute_greedy(model, ids: list[int], steps: int) -> tuple[list[int], list[float]]:
    toks, lps = [], []
    for _ in range(steps):
        with torch.no_grad():
            logits, _ = model(torch.tensor([ids + toks]))       # no cache: (1, T, V)
        lp = logits[0, -1].log_softmax(-1)
        toks.append(int(lp.argmax()))
        lps.append(float(lp[toks[-1]]))
    return toks, lps


@pytest.mark.parametrize("pattern", ["dense", "alternating"])
def test_greedy_matches_full_recompute_argmax(pattern):
    model = tiny(pattern)
    prompt = list(b"To be, or")
    want, want_lp = full_recompute_greedy(model, prompt, 20)
    assert len(set(want)) > 3                                   # a non-trivial path
    gen = generate(model, BYTES, prompt, max_tokens=20, temperature=0, stop=None)
    n_eot = want.index(256) + 1 if 256 in want else 20
    assert gen.tokens == want[:n_eot]
    assert gen.logprobs == pytest.approx(want_lp[:n_eot], abs=1e-4)
    assert gen.finish_reason == ("stop" if 256 in want else "length")


def test_sampled_logprobs_equal_full_recompute_log_softmax():
    model = tiny("alternating", seed=1)
    gen = generate(model, BYTES, "abc", max_tokens=15, temperature=1.3, top_p=0.9, seed=4)
    ids = gen.prompt_tokens + gen.tokens
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    lp = logits[0].log_softmax(-1)
    want = [float(lp[len(gen.prompt_tokens) - 1 + i, t]) for i, t in enumerate(gen.tokens)]
    assert gen.logprobs == pytest.approx(want, abs=1e-4)


def test_same_seed_same_text_other_seed_differs():
    model = tiny("alternating")
    run = lambda seed: generate(model, BYTES, "x", max_tokens=20, temperature=1.5, seed=seed).tokens
    assert run(1) == run(1)
    assert run(1) != run(2)


def test_top_k_1_equals_greedy_and_n_rows_share_prefill():
    model = tiny("dense")
    greedy = generate(model, BYTES, "hi", max_tokens=12, temperature=0).tokens
    assert generate(model, BYTES, "hi", max_tokens=12, temperature=2.0, top_k=1, seed=3).tokens == greedy
    gens = generate(model, BYTES, "hi", max_tokens=12, temperature=0, n=3)
    assert [g.tokens for g in gens] == [greedy] * 3
    sampled = generate(model, BYTES, "hi", max_tokens=12, temperature=2.0, seed=0, n=2)
    assert sampled[0].tokens != sampled[1].tokens


def test_stop_string_spanning_tokens_is_excluded():
    model = Scripted(list(b"Hello, END of story") + [256])
    gen = generate(model, BYTES, "p", max_tokens=30, stop=["ND o", "xyz"], temperature=0)
    assert gen.text == "Hello, E" and gen.finish_reason == "stop"
    assert BYTES.decode(gen.tokens) == "Hello, END o"     # sampling stopped at the token completing it
    deltas = [ev.text for ev in stream(model, BYTES, "p", max_tokens=30, stop="ND o", temperature=0)]
    assert "".join(deltas) == "Hello, E"
    # a partial match ("EN" of "ENDX") is held back, then released when it cannot match
    gen = generate(model, BYTES, "p", max_tokens=30, stop="ENDX", temperature=0)
    assert gen.text == "Hello, END of story" and gen.finish_reason == "stop"   # ended by eot
    assert gen.tokens[-1] == 256


def test_length_finish_releases_held_text():
    model = Scripted(list(b"abcab"))
    gen = generate(model, BYTES, "p", max_tokens=5, stop="abd", temperature=0)
    assert gen.text == "abcab" and gen.finish_reason == "length" and len(gen.tokens) == 5


@pytest.mark.parametrize("tokenizer", [BYTES, "gpt2"])
def test_utf8_split_across_tokens_never_breaks_deltas(tokenizer):
    tok = Tokenizer.gpt2() if tokenizer == "gpt2" else tokenizer
    text = "a😀 naïve 日本 🎉!"
    ids = tok.encode(text)
    if tokenizer == "gpt2":   # the emoji really is split across tokens
        assert any(not _is_utf8(tok.token_bytes(i)) for i in ids)
    model = Scripted(ids + [tok.eot_id], vocab_size=tok.vocab_size)
    deltas = [ev.text for ev in stream(model, tok, "p", max_tokens=len(ids) + 1, temperature=0)]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text
    assert sum(d == "" for d in deltas) >= 1                    # some bytes were held back


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_stream_deltas_concatenate_to_generate_text():
    model = tiny("alternating", seed=3)   # random byte model: many invalid/incomplete UTF-8 sequences
    events = list(stream(model, BYTES, "q", max_tokens=40, temperature=1.0, seed=9))
    gen = generate(model, BYTES, "q", max_tokens=40, temperature=1.0, seed=9)
    assert "".join(e.text for e in events) == gen.text
    eot = 256
    body = gen.tokens[:-1] if gen.tokens[-1] == eot else gen.tokens
    assert gen.text == BYTES.decode(body)                       # same as a one-shot decode (U+FFFD policy)
    assert [e.finish_reason for e in events[:-1]] == [None] * (len(events) - 1)


def test_empty_prompt_starts_from_eot():
    model = tiny("dense")
    gen = generate(model, BYTES, "", max_tokens=5, temperature=0)
    assert gen.prompt_tokens == [256]
    assert gen.tokens == full_recompute_greedy(model, [256], 5)[0][:len(gen.tokens)]


def test_errors_are_clear():
    model = tiny("dense")                                       # context 64
    with pytest.raises(ContextOverflowError, match=r"60 tokens.*max_tokens=10.*64"):
        generate(model, BYTES, [1] * 60, max_tokens=10)
    generate(model, BYTES, [1] * 54, max_tokens=10, temperature=0)          # exactly fits
    for kw, name in [(dict(temperature=-1.0), "temperature"), (dict(top_p=2.0), "top_p"),
                     (dict(top_k=-3), "top_k"), (dict(max_tokens=-1), "max_tokens"), (dict(n=0), "n="),
                     (dict(stop=[""]), "stop")]:
        with pytest.raises(ConfigError, match=name):
            stream(model, BYTES, "a", **kw)                     # raises at call time, before decoding
    with pytest.raises(ConfigError, match="300"):
        generate(model, BYTES, [300])


def test_training_mode_restored():
    model = tiny("dense").train()
    generate(model, BYTES, "a", max_tokens=2)
    assert model.training
