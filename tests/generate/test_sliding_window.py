"""Generation past the context window (sliding_window): every token past the context equals what the
model predicts from the last `context` tokens, recomputed; in generate(), the engine and the server."""
import pytest
import torch

from gen_helpers import BYTES, tiny

from gpt3lab.generate import generate
from gpt3lab.generate.api import ContextLengthError, SamplingParams
from gpt3lab.generate.engine import Engine

C = 16


def reference_greedy(model, ids, n):
    """The definition: each next token = argmax of the model over the last C tokens, recomputed."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids[-C:]]))
            ids.append(int(logits[0, -1, :256].argmax()))       # byte tokens only: never <|endoftext|>
    return ids


@pytest.fixture(scope="module", params=["dense", "alternating"])
def model(request):
    m = tiny(request.param, context=C, n_layer=2, local_window=5)
    with torch.no_grad():
        m.lm_head.weight[256] = -10.0     # the tied eot row pushed down: greedy never stops early
    return m


def _engine_tokens(engine, prompt, params):
    return [t for ev in engine.submit(prompt, params) for t in ev.tokens]


def test_generate_past_the_context_equals_recomputing_the_last_context_tokens(model):
    prompt = list(b"sliding")
    want = reference_greedy(model, prompt, 40)[len(prompt):]
    g = generate(model, BYTES, prompt, max_tokens=40, temperature=0, sliding_window=True)
    assert g.tokens == want and g.finish_reason == "length"
    with pytest.raises(ContextLengthError, match="sliding_window"):
        generate(model, BYTES, prompt, max_tokens=40, temperature=0)
    with pytest.raises(ContextLengthError, match="prompt must fit"):
        generate(model, BYTES, list(range(C + 1)), max_tokens=2, sliding_window=True)


def test_engine_past_the_context_equals_generate_and_frees_every_block(model):
    prompt = list(b"window")
    engine = Engine(model, BYTES, block_size=4, kv_memory_bytes=1 << 20, max_batch_tokens=8)
    try:
        greedy = SamplingParams(max_tokens=35, temperature=0, sliding_window=True)
        assert _engine_tokens(engine, prompt, greedy) == reference_greedy(model, prompt, 35)[len(prompt):]
        sampled = SamplingParams(max_tokens=30, temperature=1.0, seed=5, n=2, sliding_window=True)
        got = {}
        for ev in engine.submit(prompt, sampled):
            got.setdefault(ev.index, []).extend(ev.tokens)
        ref = generate(model, BYTES, prompt, max_tokens=30, temperature=1.0, seed=5, n=2, sliding_window=True)
        assert [got[0], got[1]] == [r.tokens for r in ref]
        assert engine.stats()["kv_blocks_used"] == 0 and engine.counters["window_slides"] > 0
        with pytest.raises(ContextLengthError, match="sliding_window"):
            engine.submit(prompt, SamplingParams(max_tokens=35))
    finally:
        engine.shutdown()


def test_server_field(model):
    from fastapi.testclient import TestClient

    from gpt3lab.serve.app import create_app
    from gpt3lab.serve.service import CompletionService

    engine = Engine(model, BYTES, block_size=4, kv_memory_bytes=1 << 20)
    try:
        client = TestClient(create_app(CompletionService(engine, "m")))
        body = {"model": "m", "prompt": list(b"serve"), "max_tokens": 30, "temperature": 0}
        assert client.post("/v1/completions", json=body).status_code == 400
        r = client.post("/v1/completions", json={**body, "sliding_window": True})
        assert r.status_code == 200
        want = reference_greedy(model, list(b"serve"), 30)[5:]
        assert r.json()["choices"][0]["text"] == BYTES.decode(want)
        assert r.json()["usage"]["completion_tokens"] == 30
    finally:
        engine.shutdown()


def test_cli_flag(model, tmp_path, capsys):
    from gpt3lab.checkpoint import save_checkpoint
    from gpt3lab.cli import main

    save_checkpoint(tmp_path / "ck", model, model.config, BYTES)
    args = ["generate", str(tmp_path / "ck"), "--prompt", "cli", "--max-tokens", "25", "--temperature", "0"]
    assert main(args) == 2 and "--sliding-window" in capsys.readouterr().err
    assert main(args + ["--sliding-window"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == BYTES.decode(reference_greedy(model, list(b"cli"), 25)[3:]).rstrip("\n")
