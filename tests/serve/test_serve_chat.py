"""/v1/chat/completions through the official `openai` client: the rendered template goes down the
completion path (same text), streaming equals non-streaming, n / stop / logprobs / seed / usage."""
from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")

from gpt3lab.chat import DEFAULT_STOP, render  # noqa: E402

from serve_helpers import MODEL  # noqa: E402

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "How are you?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_chat_equals_completion_of_rendered_template(client):
    prompt = render(MESSAGES)
    assert prompt.endswith("User: How are you?\n\nAssistant:") and prompt.startswith("You are terse.\n\n")
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    c = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stop=DEFAULT_STOP)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == c.choices[0].text
    assert r.choices[0].finish_reason == c.choices[0].finish_reason
    assert r.usage.prompt_tokens == c.usage.prompt_tokens and r.usage.total_tokens == c.usage.total_tokens


def test_chat_streaming_equals_non_streaming_with_n_and_seed(client):
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=1.0, seed=11, n=2)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert all(c.object == "chat.completion.chunk" for c in chunks) and len({c.id for c in chunks}) == 1
    for i in range(2):
        mine = [ch for c in chunks for ch in c.choices if ch.index == i]
        assert mine[0].delta.role == "assistant" and all(ch.delta.role is None for ch in mine[1:])
        assert "".join(ch.delta.content or "" for ch in mine) == full.choices[i].message.content
        assert mine[-1].finish_reason == full.choices[i].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    again = client.chat.completions.create(**kw)
    assert [c.message.content for c in again.choices] == [c.message.content for c in full.choices]


def test_chat_logprobs_and_stop(client, model_and_tokenizer):
    _, tok = model_and_tokenizer
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.logprob - 1e-6
        assert bytes(t.bytes) == t.token.encode()
    text = r.choices[0].message.content
    if len(text) > 2:
        cut = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0,
                                             stop=[text[1:3]])
        assert cut.choices[0].message.content == text[:text.index(text[1:3])]
        assert cut.choices[0].finish_reason == "stop"


def test_chat_errors_are_400s(client):
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "robot", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, top_logprobs=2)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=MESSAGES)


def test_stored_template_is_used(model_and_tokenizer, server_factory):
    srv = server_factory()
    srv.service.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    r = c.chat.completions.create(model=MODEL, messages=MESSAGES[1:2], max_tokens=5, temperature=0)
    p = c.completions.create(model=MODEL, prompt="[user] Hi there\n[assistant]", max_tokens=5, temperature=0)
    assert r.choices[0].message.content == p.choices[0].text
    assert r.usage.prompt_tokens == p.usage.prompt_tokens


def test_request_stop_list_replaces_the_template_stop(client):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0,
                                       stop=["a1", "b2", "c3", "d4"])         # 4 stops + the default: still OK
    assert r.choices[0].finish_reason in ("stop", "length")
