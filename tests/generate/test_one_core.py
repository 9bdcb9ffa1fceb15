"""One inference core: generate(), the engine (alone and batched), inspect's step mode and compress give the
same tokens and logprobs for every sampling option, on dense and alternating models."""
import math

import pytest
import torch

from gpt3lab.compress.model import Predictor
from gpt3lab.generate import generate, sampling_params
from gpt3lab.generate.api import SamplingParams
from gpt3lab.generate.engine import Engine
from gpt3lab.inspect import next_step

from gen_helpers import BYTES, tiny

PROMPT = list(b"the cat ")
# name -> generate() keywords
TABLE = {
    "greedy": dict(temperature=0, max_tokens=12),
    "temperature": dict(temperature=0.9, seed=1, max_tokens=12),
    "top_k": dict(temperature=1.0, top_k=5, seed=2, max_tokens=12),
    "top_p": dict(temperature=0.8, top_p=0.7, seed=3, max_tokens=12),
    "penalties": dict(temperature=0.7, presence_penalty=0.8, frequency_penalty=0.5, seed=4, max_tokens=12),
    "logit_bias": dict(temperature=1.0, logit_bias={ord("e"): 4.0, ord("a"): -100.0}, seed=5, max_tokens=12),
    "stops": dict(temperature=1.2, stop=["e "], stop_token_ids=[ord("s"), ord("o")], seed=6, max_tokens=12),
    "n": dict(temperature=1.0, n=3, seed=7, max_tokens=10),
    "sliding_window": dict(temperature=0.5, seed=8, max_tokens=70, sliding_window=True),
}


@pytest.fixture(scope="module", params=["dense", "alternating"])
def model(request):
    return tiny(request.param, seed=5)


@pytest.fixture(scope="module")
def engine(model):
    e = Engine(model, BYTES, kv_memory_bytes=8 << 20)
    yield e
    e.shutdown()


def choices(events, n: int):
    """Engine events -> per choice (tokens incl. the one that stopped it, logprobs)."""
    out = [([], []) for _ in range(n)]
    for ev in events:
        toks, lps = out[ev.index]
        toks += ev.tokens
        lps += ev.logprobs
        if ev.stop_token is not None:
            toks.append(ev.stop_token)
            lps.append(ev.stop_logprob)
    return out


def as_choices(gen):
    return [(g.tokens, g.logprobs) for g in (gen if isinstance(gen, list) else [gen])]


@pytest.mark.parametrize("name", list(TABLE))
def test_every_entry_point_gives_the_same_tokens_and_logprobs(model, engine, name):
    kw = TABLE[name]
    want = as_choices(generate(model, BYTES, PROMPT, **kw))
    assert any(t for t, _ in want)
    params = sampling_params(**kw)
    n = params.n
    # the engine, one request
    assert choices(engine.submit(PROMPT, params), n) == want
    # the engine, batched with other requests (different settings, lengths and prompts)
    others = [engine.submit(list(b"xyz" * k), SamplingParams(max_tokens=9, temperature=0.5 * k, seed=k))
              for k in range(1, 4)]
    h = engine.submit(PROMPT, params)
    got = choices(h, n)
    for o in others:
        list(o)
    assert [t for t, _ in got] == [t for t, _ in want]
    for (_, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, abs=1e-5)
    # inspect's step mode: the first token and its probability
    step = next_step(model, BYTES, PROMPT, temperature=kw["temperature"], top_k=kw.get("top_k"),
                     top_p=kw.get("top_p"), seed=kw.get("seed"), logit_bias=kw.get("logit_bias"))
    assert step["token"]["id"] == want[0][0][0]
    assert math.log(step["token"]["model_prob"]) == pytest.approx(want[0][1][0], abs=1e-5)
    # compress's predictor (token by token through the same decode step) scores the same tokens alike
    if not kw.get("sliding_window"):      # compress slides its own way (context // 2), by its file format
        for toks, lps in want:
            pred = Predictor(model, PROMPT[0])
            with torch.inference_mode():
                logits = pred.first()
                for t in PROMPT[1:]:
                    logits = pred.feed(t)
                for t, lp in zip(toks, lps):
                    assert float(logits.log_softmax(-1)[t]) == pytest.approx(lp, abs=1e-4)
                    logits = pred.feed(t)


def test_greedy_compress_predictions_are_the_generated_tokens(model):
    gen = generate(model, BYTES, PROMPT, temperature=0, max_tokens=20)
    pred = Predictor(model, PROMPT[0])
    with torch.inference_mode():
        logits = pred.first()
        for t in PROMPT[1:]:
            logits = pred.feed(t)
        for t in gen.tokens:
            assert int(logits.argmax()) == t
            logits = pred.feed(t)
