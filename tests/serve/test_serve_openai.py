"""The official `openai` client against a real server on a loopback port."""
from __future__ import annotations

import pytest
import torch

openai = pytest.importorskip("openai")

from serve_helpers import MODEL  # noqa: E402


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def forward_logprobs(model, ids):
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    return logits[0].float().log_softmax(-1)          # (T, V)


def greedy(model, ids, n):
    ids = list(ids)
    for _ in range(n):
        ids.append(int(forward_logprobs(model, ids)[-1].argmax()))
    return ids


def test_string_prompt_greedy_matches_direct_forward(client, model_and_tokenizer):
    model, tok = model_and_tokenizer
    r = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=8, temperature=0)
    ids = tok.encode("Hello there")
    want = greedy(model, ids, 8)[len(ids):]
    assert r.object == "text_completion" and r.model == MODEL
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(r.choices[0].logprobs or want)
    if tok.eot_id not in want:
        assert r.choices[0].text == tok.decode(want)
        assert r.choices[0].finish_reason == "length"
        assert r.usage.total_tokens == len(ids) + 8


def test_greedy_equals_gpt3lab_generate(client, model_and_tokenizer):
    from gpt3lab.generate import generate
    model, tok = model_and_tokenizer
    g = generate(model, tok, "The quick brown", max_tokens=10, temperature=0)
    r = client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=10, temperature=0)
    assert r.choices[0].text == g.text
    assert r.choices[0].finish_reason == g.finish_reason


def test_token_prompts_and_prompt_major_indexing(client, model_and_tokenizer):
    model, tok = model_and_tokenizer
    p1, p2 = tok.encode("one two"), tok.encode("three")
    r = client.completions.create(model=MODEL, prompt=[p1, p2], max_tokens=4, temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    single = client.completions.create(model=MODEL, prompt=p2, max_tokens=4, temperature=0)
    by_index = {c.index: c.text for c in r.choices}
    assert by_index[2] == by_index[3] == single.choices[0].text      # prompt 2's choices are 2*... = 2, 3
    assert r.usage.prompt_tokens == len(p1) + len(p2)
    texts = client.completions.create(model=MODEL, prompt=["one two", "three"], max_tokens=4, temperature=0)
    assert [c.text for c in texts.choices] == [by_index[0], by_index[2]]


def test_streamed_chunks_concatenate_to_non_streamed_text(client):
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=20, temperature=0.9, seed=1234)
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_seed_reproducible_and_different_seeds_differ(client):
    kw = dict(model=MODEL, prompt="Seeds", max_tokens=16, temperature=1.0)
    a = client.completions.create(seed=7, **kw).choices[0].text
    b = client.completions.create(seed=7, **kw).choices[0].text
    others = {client.completions.create(seed=s, **kw).choices[0].text for s in (8, 9, 10)}
    assert a == b
    assert others - {a}


def test_logprobs_match_direct_forward(client, model_and_tokenizer):
    model, tok = model_and_tokenizer
    ids = tok.encode("Logprobs please")
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    out = greedy(model, ids, 5)
    rows = forward_logprobs(model, out)
    for k, (text, got, top) in enumerate(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs)):
        t = out[len(ids) + k]
        assert text == tok.decode([t])
        assert got == pytest.approx(float(rows[len(ids) + k - 1, t]), abs=1e-4)
        assert len(top) == 3 and max(top.values()) == pytest.approx(got, abs=1e-5)   # greedy = the top one
    assert lp.text_offset == [sum(len(x) for x in lp.tokens[:k]) for k in range(len(lp.tokens))]


def test_echo_max_tokens_zero_returns_prompt_logprobs(client, model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompt = "The cat sat on the mat"
    ids = tok.encode(prompt)
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    c = r.choices[0]
    rows = forward_logprobs(model, ids)
    assert c.text == prompt
    assert c.logprobs.tokens == [tok.decode([t]) for t in ids]
    assert c.logprobs.token_logprobs[0] is None and c.logprobs.top_logprobs[0] is None
    want = [float(rows[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert c.logprobs.token_logprobs[1:] == pytest.approx(want, abs=1e-4)
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(ids)


def test_echo_with_generation_prepends_prompt(client):
    kw = dict(model=MODEL, prompt="Echo this", max_tokens=5, temperature=0)
    plain = client.completions.create(**kw).choices[0].text
    echoed = client.completions.create(echo=True, **kw).choices[0].text
    assert echoed == "Echo this" + plain


def test_stop_string_cuts_text(client):
    kw = dict(model=MODEL, prompt="Stop test", max_tokens=30, temperature=0)
    full = client.completions.create(**kw).choices[0].text
    assert len(full) > 6
    stop = full[3:6]
    r = client.completions.create(stop=[stop, "zzzzz"], **kw).choices[0]
    assert r.text == full[:full.index(stop)] and r.finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, stop=stop, **kw))
    assert streamed == r.text


def test_n_samples_and_best_of(client):
    r = client.completions.create(model=MODEL, prompt="Many", max_tokens=8, temperature=1.0, n=3, seed=5)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.text for c in r.choices}) > 1
    b = client.completions.create(model=MODEL, prompt="Many", max_tokens=8, temperature=1.0, n=1, best_of=3,
                                  seed=5, logprobs=0)
    assert len(b.choices) == 1 and b.choices[0].index == 0
    assert b.usage.completion_tokens == r.usage.completion_tokens or b.usage.completion_tokens >= 3


def test_models_endpoints(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
