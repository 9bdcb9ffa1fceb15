"""Engine: batching does not change results, seeds, prefix cache, echo logprobs, stops, UTF-8, biases, errors."""
import asyncio
import time

import pytest
import torch

from gpt3lab.generate import generate
from gpt3lab.generate.api import (ContextLengthError, EngineClosedError, InvalidRequestError, QueueFullError,
                                  SamplingParams)
from gpt3lab.generate.batch_sampler import BatchSampler
from gpt3lab.generate.engine import Engine

from gen_helpers import BYTES, tiny, wait_idle

PROMPTS = ["To be, or not", "a", "The quick brown fox jumps over", "xyz", "Hello there, general", "0123456789",
           "ab", "Once upon a time in a land", "q", "what is", "many many words here ok", "zz", "The end",
           "lorem ipsum dolor sit amet", "k", "so it goes"]


@pytest.fixture
def make_engine():
    engines = []

    def make(model=None, **kw):
        kw.setdefault("block_size", 4)
        kw.setdefault("max_batch_tokens", 16)      # small: long prompts are prefilled in chunks
        e = Engine(model if model is not None else tiny(), BYTES, **kw)
        engines.append(e)
        return e
    yield make
    for e in engines:
        e.shutdown(cancel_running=True)


def run(engine, prompt: str | list[int], **params):
    """-> (tokens, text, logprobs, finish_reason) of choice 0, and the handle."""
    ids = BYTES.encode(prompt) if isinstance(prompt, str) else prompt
    h = engine.submit(ids, SamplingParams(**params))
    evs = [ev for ev in h if ev.index == 0]
    return ([t for ev in evs for t in ev.tokens], "".join(ev.text for ev in evs),
            [x for ev in evs for x in ev.logprobs], evs[-1].finish_reason), h


@pytest.mark.parametrize("pattern", ["dense", "alternating"])
def test_greedy_alone_equals_inside_a_batch_of_16(make_engine, pattern):
    model = tiny(pattern)
    alone = [run(make_engine(model), p, max_tokens=24, temperature=0)[0] for p in PROMPTS[:3]]
    e = make_engine(model)
    hs = [e.submit(BYTES.encode(p), SamplingParams(max_tokens=24 - (i % 5), temperature=0))
          for i, p in enumerate(PROMPTS)]
    batched = [[t for ev in h for t in ev.tokens] for h in hs]
    for i in range(3):
        n = 24 - (i % 5)
        assert batched[i] == alone[i][0][:n]
    ref = generate(model, BYTES, PROMPTS[0], max_tokens=24, temperature=0)   # the single-request path
    assert alone[0][0] == [t for t in ref.tokens if t != BYTES.eot_id]   # engine stop tokens are not output
    assert e.stats()["steps"] < sum(len(p) + 24 for p in PROMPTS)            # rows really shared steps


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (20, 1.0), (0, 0.8)])
def test_seeded_sampling_equals_generate_inside_a_mixed_batch(make_engine, top_k, top_p):
    """The engine's batched draw (sampling.draw, one uniform from the row's own generator) is generate()'s:
    same seed, same tokens as gpt3lab.generate.generate, with greedy and other sampled rows in the same steps."""
    model = tiny()
    ref = generate(model, BYTES, "Hello", max_tokens=20, temperature=0.9, seed=42, top_k=top_k, top_p=top_p)
    e = make_engine(model)
    others = [e.submit(BYTES.encode(p), SamplingParams(max_tokens=20, temperature=t))
              for p, t in zip(PROMPTS[:6], (0, 1.0, 0, 0.5, 1.5, 0))]
    (toks, _, lps, _), _ = run(e, "Hello", max_tokens=20, temperature=0.9, seed=42, top_k=top_k, top_p=top_p)
    assert toks == [t for t in ref.tokens if t != BYTES.eot_id]
    assert lps == pytest.approx(ref.logprobs[:len(lps)], abs=1e-5)
    for h in others:
        list(h)


def test_same_seed_same_text_with_other_requests_present(make_engine):
    model = tiny()
    (toks, text, _, _), _ = run(make_engine(model), "Hello", max_tokens=30, temperature=1.0, seed=123)
    e = make_engine(model)
    others = [e.submit(BYTES.encode(p), SamplingParams(max_tokens=30, temperature=1.0)) for p in PROMPTS[:6]]
    (toks2, text2, _, _), _ = run(e, "Hello", max_tokens=30, temperature=1.0, seed=123)
    (toks3, _, _, _), _ = run(e, "Hello", max_tokens=30, temperature=1.0, seed=124)
    assert (toks2, text2) == (toks, text)
    assert toks3 != toks
    for h in others:
        list(h)


def test_prefix_cached_results_equal_uncached(make_engine):
    model = tiny("alternating")
    system = "You are helpful. Answer briefly: "                       # 32 tokens: 8 full blocks of 4
    plain = make_engine(model, enable_prefix_caching=False)
    cached = make_engine(model)
    run(cached, system + "Q1", max_tokens=1, temperature=0)             # fills the cache
    for q in ("Q2: why?", "Q3"):
        (t0, _, lp0, _), h0 = run(plain, system + q, max_tokens=20, temperature=0, logprobs=0)
        (t1, _, lp1, _), h1 = run(cached, system + q, max_tokens=20, temperature=0, logprobs=0)
        assert t1 == t0
        assert lp1 == pytest.approx(lp0, abs=1e-4)
        assert h0.usage.cached_tokens == 0
        assert h1.usage.cached_tokens == 32                              # the shared whole blocks
    s = cached.stats()
    assert s["prefix_cache_hits"] == 64
    assert s["prefix_cache_queries"] == sum(len(system) + len(q) for q in ("Q1", "Q2: why?", "Q3"))


@pytest.mark.parametrize("pattern", ["dense", "alternating"])
def test_echo_logprobs_equal_a_direct_forward_pass(make_engine, pattern):
    model = tiny(pattern)
    prompt = BYTES.encode("The quick brown fox jumps over the lazy dog")   # 43 tokens: 3 prefill chunks
    h = make_engine(model).submit(prompt, SamplingParams(max_tokens=0, echo=True, logprobs=2))
    evs = list(h)
    assert evs[0].tokens == prompt and evs[0].text == "The quick brown fox jumps over the lazy dog"
    assert evs[-1].finish_reason == "length" and h.usage.completion_tokens == 0
    with torch.no_grad():
        lp = model(torch.tensor([prompt]))[0][0].log_softmax(-1)                  # (T, V)
    want = [float(lp[i - 1, t]) for i, t in enumerate(prompt) if i > 0]
    assert evs[0].logprobs[0] is None
    assert evs[0].logprobs[1:] == pytest.approx(want, abs=1e-5)
    assert evs[0].top_logprobs[0] is None and 1 <= len(evs[0].top_logprobs[5]) <= 2   # texts may collide
    assert max(evs[0].top_logprobs[5].values()) == pytest.approx(float(lp[4].max()), abs=1e-5)
    assert evs[0].text_offset[:3] == [0, 1, 2]


class Scripted(BatchSampler):
    """The real sampler's adjustments, but it picks a fixed script of tokens (to test text handling)."""

    def __init__(self, script: list[int]):
        super().__init__(BYTES.vocab_size)
        self.script = script

    def choose(self, seqs, logits):
        return torch.tensor([self.script[min(len(s.out), len(self.script) - 1)] for s in seqs])


def test_stop_string_spanning_token_boundaries(make_engine):
    e = make_engine(sampler=Scripted(list(b"ab\n\nQ: more")))
    h = e.submit([1, 2], SamplingParams(max_tokens=20, stop=["\n\nQ:"]))
    evs = list(h)
    assert "".join(ev.text for ev in evs) == "ab"
    assert evs[-1].finish_reason == "stop" and [t for ev in evs for t in ev.tokens] == list(b"ab\n\nQ:")
    assert [ev.text for ev in evs] == ["a", "b", "", "", "", ""]           # "\n\nQ" held back, then dropped


def test_utf8_split_across_tokens_never_emits_broken_text(make_engine):
    want = "h€llo 😀!"
    e = make_engine(sampler=Scripted(list(want.encode()) + [BYTES.eot_id]))
    (toks, text, _, reason), h = run(e, "x", max_tokens=40)
    assert text == want and reason == "stop"
    h2 = e.submit([5], SamplingParams(max_tokens=40))
    deltas = [ev.text for ev in h2]
    assert all("\ufffd" not in d for d in deltas)
    assert deltas[1:4] == ["", "", "€"]                                  # 3 bytes, one character
    assert h.usage.completion_tokens == len(want.encode()) + 1           # the stop token counts


def test_stop_token_ids_and_length(make_engine):
    e = make_engine(sampler=Scripted(list(b"abcdef")))
    (toks, text, _, reason), _ = run(e, "x", max_tokens=10, stop_token_ids=[ord("d")])
    assert (toks, text, reason) == (list(b"abc"), "abc", "stop")
    (toks, text, _, reason), _ = run(e, "x", max_tokens=4)
    assert (text, reason) == ("abcd", "length")


def test_logit_bias_bans_and_forces(make_engine):
    e = make_engine()
    (toks, _, _, _), _ = run(e, "Hello", max_tokens=12, temperature=0)
    (banned, _, _, _), _ = run(e, "Hello", max_tokens=12, temperature=0,
                               logit_bias={toks[0]: -100, BYTES.eot_id: -100})
    assert len(banned) == 12
    assert banned[0] != toks[0] and toks[0] not in banned
    (forced, _, lps, _), _ = run(e, "Hello", max_tokens=12, temperature=1.0, seed=0, logit_bias={65: 100})
    assert forced == [65] * 12
    assert all(lp < 0 for lp in lps)                                     # logprobs are the model's own
    # the bias is added in place and undone: an unchosen biased token leaves tokens and logprobs exact
    (plain, _, plps, _), _ = run(e, "Hello", max_tokens=12, temperature=0)
    (same, _, slps, _), _ = run(e, "Hello", max_tokens=12, temperature=0, logit_bias={7: -50})
    assert (same, slps) == (plain, plps)


class Recording(BatchSampler):
    """Records each sampling step's (generated tokens per row, logits before and after the adjustments)."""

    def __init__(self):
        super().__init__(BYTES.vocab_size)
        self.log = []

    def adjust(self, seqs, logits):
        raw = logits.clone()
        out = super().adjust(seqs, logits)
        self.log.append(([list(s.out) for s in seqs], raw, out.clone()))
        return out


def test_penalties_follow_openai_definition(make_engine):
    rec = Recording()
    e = make_engine(sampler=rec)
    (toks, _, _, _), _ = run(e, "aaaa", max_tokens=12, temperature=0, presence_penalty=0.7,
                             frequency_penalty=0.3)
    checked = 0
    for outs, raw, adj in rec.log:
        counts = torch.bincount(torch.tensor(outs[0], dtype=torch.long), minlength=raw.shape[1]).float()
        want = raw[0] - 0.7 * (counts > 0).float() - 0.3 * counts
        assert torch.allclose(adj[0], want)
        checked += bool(outs[0])
    assert checked == 11
    (plain, _, _, _), _ = run(e, "aaaa", max_tokens=12, temperature=0)
    (pen, _, _, _), _ = run(e, "aaaa", max_tokens=12, temperature=0, frequency_penalty=2.0)
    assert max(pen.count(t) for t in pen) < max(plain.count(t) for t in plain)


def test_n_and_best_of_pick_the_highest_total_logprob(make_engine):
    e = make_engine()
    no_eot = {BYTES.eot_id: -100}
    h = e.submit(BYTES.encode("Hi"), SamplingParams(max_tokens=8, n=4, seed=7, logprobs=0, logit_bias=no_eot))
    evs = list(h)
    all4 = [[ev for ev in evs if ev.index == j] for j in range(4)]
    scores = [sum(x for ev in c for x in ev.logprobs) for c in all4]
    texts = ["".join(ev.text for ev in c) for c in all4]
    assert len(set(texts)) > 1 and h.usage.completion_tokens == 32
    h = e.submit(BYTES.encode("Hi"), SamplingParams(max_tokens=8, n=2, best_of=4, seed=7, logit_bias=no_eot))
    evs = list(h)
    best = sorted(range(4), key=lambda j: -scores[j])[:2]
    assert ["".join(ev.text for ev in evs if ev.index == i) for i in range(2)] == [texts[j] for j in best]


def test_async_iteration_and_empty_prompt(make_engine):
    model = tiny()
    e = make_engine(model)

    async def collect():
        h = e.submit([], SamplingParams(max_tokens=10, temperature=0))
        return [t async for ev in h for t in ev.tokens], h
    toks, h = asyncio.run(collect())
    assert h.usage.prompt_tokens == 1
    assert toks == generate(model, BYTES, [BYTES.eot_id], max_tokens=10, temperature=0).tokens[:len(toks)]


def test_cancel_frees_blocks_at_once(make_engine):
    e = make_engine(enable_prefix_caching=False, on_step=lambda _: time.sleep(0.005))
    h = e.submit(BYTES.encode("Hello"), SamplingParams(max_tokens=50, logit_bias={BYTES.eot_id: -100}))
    next(iter(h))
    assert e.stats()["kv_blocks_used"] > 0
    h.cancel()
    wait_idle(e)
    assert e.stats()["kv_blocks_used"] == 0 and e.stats()["cancelled"] == 1
    assert list(h) != [] and h.done


def test_banded_layers_free_blocks_outside_the_window(make_engine):
    model = tiny("banded")
    e = make_engine(model, enable_prefix_caching=False, max_batch_tokens=4)
    h = e.submit([1], SamplingParams(max_tokens=60, temperature=0))
    peak = 0
    for _ in h:
        peak = max(peak, e.stats()["kv_blocks_used"])
    # window 5, blocks of 4: at most 3-4 blocks per layer, never the 16 a dense layer would hold
    assert peak <= 4 * 4
    ref = generate(model, BYTES, [1], max_tokens=60, temperature=0)
    (toks, _, _, _), _ = run(e, [1], max_tokens=60, temperature=0)
    assert toks == ref.tokens[:len(toks)]


def test_requests_that_do_not_fit_wait_instead_of_failing(make_engine):
    # 4 layers x 16 blocks = one full-context request; the others wait their turn
    e = make_engine(kv_memory_bytes=64 * 2 * 2 * 4 * 16 * 4)
    assert e.pool.num_blocks == 64
    hs = [e.submit(BYTES.encode(p), SamplingParams(max_tokens=30, temperature=0)) for p in PROMPTS[:4]]
    assert all(list(h)[-1].finish_reason in ("stop", "length") for h in hs)


@pytest.mark.parametrize("params, param, kind", [
    (dict(temperature=2.5), "temperature", InvalidRequestError),
    (dict(top_p=0.0), "top_p", InvalidRequestError),
    (dict(presence_penalty=-2.1), "presence_penalty", InvalidRequestError),
    (dict(frequency_penalty=3), "frequency_penalty", InvalidRequestError),
    (dict(logprobs=21), "logprobs", InvalidRequestError),
    (dict(n=3, best_of=2), "best_of", InvalidRequestError),
    (dict(logit_bias={999: 1.0}), "logit_bias", InvalidRequestError),
    (dict(logit_bias={5: 101}), "logit_bias", InvalidRequestError),
    (dict(max_tokens=-1), "max_tokens", InvalidRequestError),
    (dict(max_tokens=60), "prompt", ContextLengthError),
])
def test_bad_requests_raise_typed_errors_at_submit(make_engine, params, param, kind):
    with pytest.raises(kind) as ei:
        make_engine().submit(BYTES.encode("Hello"), SamplingParams(**params))
    assert ei.value.param == param and ei.value.status == 400


def test_context_error_names_both_numbers_and_unknown_ids(make_engine):
    e = make_engine()
    with pytest.raises(ContextLengthError, match=r"10 tokens \+ max_tokens=60 = 70 .* context of 64"):
        e.submit(list(range(10)), SamplingParams(max_tokens=60))
    with pytest.raises(InvalidRequestError, match="token id 300") as ei:
        e.submit([1, 300], SamplingParams())
    assert ei.value.param == "prompt"


def test_budget_too_small_for_one_request_and_queue_full(make_engine):
    e = make_engine(kv_memory_bytes=10 * 2 * 2 * 4 * 16 * 4, max_waiting=2)
    with pytest.raises(InvalidRequestError, match="KV cache blocks") as ei:
        e.submit([1] * 20, SamplingParams(max_tokens=20))
    assert ei.value.param == "max_tokens"
    with pytest.raises(QueueFullError):
        for _ in range(8):      # each fills the pool: one runs, two wait, then the queue is full
            e.submit([1] * 4, SamplingParams(max_tokens=4))
    e.shutdown(cancel_running=True)
    with pytest.raises(EngineClosedError):
        e.submit([1], SamplingParams())


def test_draws_follow_the_distribution_and_never_pick_zero_probability():
    from gpt3lab.generate.sampling import draw, uniforms
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).expand(4000, -1).contiguous()
    x = probs.log()                                                           # logits with a -inf entry
    tok = draw(x, uniforms(4000, [torch.Generator().manual_seed(i) for i in range(4000)]))
    freq = torch.bincount(tok, minlength=4).float() / 4000
    assert freq[1] == 0 and torch.allclose(freq, probs[0], atol=0.03)
    again = draw(x[:7], uniforms(7, [torch.Generator().manual_seed(i) for i in range(7)]))
    assert torch.equal(tok[:7], again)                                        # a row's draw is its generator's
    edge = draw(x[:3], torch.tensor([0.0, 0.1, 1 - 2 ** -24]))   # u at the very ends: never the 0-prob token
    assert edge.tolist() == [0, 2, 3]


def test_unseeded_top_k_1_is_greedy(make_engine):
    model = tiny()
    greedy = run(make_engine(model), "Hello", max_tokens=16, temperature=0)[0][0]
    assert run(make_engine(model), "Hello", max_tokens=16, temperature=1.5, top_k=1)[0][0] == greedy


def fail_once():
    """An on_step hook that fails the first step (a device error, say)."""
    calls = []

    def hook(engine):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("device lost")
    return hook


def test_an_engine_failure_ends_requests_with_a_clear_error_and_the_engine_goes_on(make_engine):
    from gpt3lab.generate.api import EngineInternalError

    e = make_engine(tiny(), on_step=fail_once())
    h = e.submit(BYTES.encode("Hello"), SamplingParams(max_tokens=5, temperature=0))
    with pytest.raises(EngineInternalError, match="device lost") as info:
        list(h)
    assert info.value.status == 500 and h.done
    (toks, _, _, _), _ = run(e, "Hello", max_tokens=5, temperature=0)   # the scheduler thread survived
    assert len(toks) == 5
    assert e.stats()["running"] == 0


def test_seeded_n_samples_equal_generate_for_every_choice(make_engine):
    model = tiny()
    ref = generate(model, BYTES, "Hello", max_tokens=12, temperature=1.0, seed=5, n=3)
    h = make_engine(model).submit(BYTES.encode("Hello"), SamplingParams(max_tokens=12, temperature=1.0, seed=5, n=3))
    got = {j: [] for j in range(3)}
    for ev in h:
        got[ev.index] += ev.tokens
    assert len({tuple(g.tokens) for g in ref}) > 1                   # the samples differ from each other
    for j, g in enumerate(ref):                                      # the engine does not output eot
        assert got[j] == [t for t in g.tokens if t != BYTES.eot_id]
