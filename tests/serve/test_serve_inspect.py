"""POST /v1/inspect through a real server on a loopback port, and the playground's "Inside" panel."""
from __future__ import annotations

import json
import math
import re
import threading

import httpx
import pytest
import torch

from gpt3lab.inspect import inspect

MODEL = "tiny"           # the name conftest's servers serve the checkpoint under
PROMPT = "ROMEO: But soft, what light through yonder window breaks?"


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def openai_error(r: httpx.Response, status: int, param=None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and body["error"]["type"]
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


def test_route_returns_what_inspect_computes(http, model_and_tokenizer):
    model, tok = model_and_tokenizer
    r = http.post("/v1/inspect", json={"model": MODEL, "prompt": PROMPT, "top_k": 3})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got == {"model": MODEL, **inspect(model, tok, PROMPT, top_k=3, decimals=4)}
    ids = tok.encode(PROMPT)
    assert [t["id"] for t in got["tokens"]] == ids
    att = got["attention"]
    assert att["layers"] == [0, 1] and att["n_head"] == 4
    assert [len(r) for r in att["weights"][1][3]] == list(range(1, len(ids) + 1))
    assert all(abs(sum(row) - 1) < 5e-3 for layer in att["weights"] for head in layer for row in head)
    with torch.inference_mode():      # and against the model's logits directly
        logp = torch.log_softmax(model(torch.tensor([ids]))[0][0].float(), dim=-1)
    for i in range(len(ids) - 1):
        assert got["positions"][i]["surprisal_bits"] == pytest.approx(-logp[i, ids[i + 1]].item() / math.log(2),
                                                                        abs=1e-4)
        assert [c["id"] for c in got["positions"][i]["top"]] == logp[i].topk(3).indices.tolist()
    assert all(len(re.sub(r"^-?\d+\.?", "", repr(x))) <= 4 for x in att["weights"][0][0][-1])   # 4 decimals


def test_token_ids_and_layer_subset(http, model_and_tokenizer):
    model, tok = model_and_tokenizer
    ids = tok.encode("hello there")
    got = http.post("/v1/inspect", json={"model": MODEL, "prompt": ids, "layers": [1]}).json()
    assert got["attention"]["layers"] == [1] and len(got["attention"]["weights"]) == 1
    assert got == {"model": MODEL, **inspect(model, tok, ids, layers=[1], decimals=4)}


def test_too_long_prompt_is_400_in_openai_shape(http):
    e = openai_error(http.post("/v1/inspect", json={"model": MODEL, "prompt": list(range(129))}), 400, "prompt")
    assert e["code"] == "context_length_exceeded" and "129 tokens" in e["message"] and "at most 128" in e["message"]
    e = openai_error(http.post("/v1/inspect", json={"model": MODEL, "prompt": "word " * 300}), 400, "prompt")
    assert e["type"] == "invalid_request_error"


@pytest.mark.parametrize("body,status,param", [
    ({"model": MODEL, "prompt": "hi", "layers": [5]}, 400, "layers"),
    ({"model": MODEL, "prompt": "hi", "lens_top_k": 11}, 400, "lens_top_k"),
    ({"model": MODEL, "prompt": "hi", "step": {"temperature": -1}}, 400, "step"),
    ({"model": MODEL, "prompt": "hi", "step": {"top_p": 0}}, 400, "step"),
    ({"model": MODEL, "prompt": "hi", "top_k": 0}, 400, "top_k"),
    ({"model": MODEL, "prompt": "hi", "top_k": 21}, 400, "top_k"),
    ({"model": MODEL, "prompt": ""}, 400, "prompt"),
    ({"model": MODEL, "prompt": [1, 10 ** 6]}, 400, "prompt"),
    ({"model": MODEL}, 400, "prompt"),
    ({"model": MODEL, "prompt": "hi", "stream": True}, 400, "stream"),
    ({"model": "gpt-9", "prompt": "hi"}, 404, "model"),
])
def test_bad_requests(http, body, status, param):
    openai_error(http.post("/v1/inspect", json=body), status, param)


def test_api_key_applies(server_factory):
    srv = server_factory(api_keys=["sekret"])
    body = {"model": MODEL, "prompt": "hi"}
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        assert openai_error(c.post("/v1/inspect", json=body), 401)["code"] == "invalid_api_key"
        assert c.post("/v1/inspect", json=body, headers={"Authorization": "Bearer sekret"}).status_code == 200


def test_inspect_while_a_stream_decodes(server, http, model_and_tokenizer):
    """Inspections during a streamed greedy completion: both give what they give alone."""
    req = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 100, "temperature": 0}
    alone = http.post("/v1/completions", json=req).json()["choices"][0]["text"]
    want = http.post("/v1/inspect", json={"model": MODEL, "prompt": PROMPT}).json()
    texts = []

    def stream():
        with httpx.Client(base_url=server.url, timeout=30) as c, \
                c.stream("POST", "/v1/completions", json={**req, "stream": True}) as r:
            texts.append("".join(json.loads(line[6:])["choices"][0]["text"]
                                 for line in r.iter_lines() if line.startswith("data: {")))
    t = threading.Thread(target=stream)
    t.start()
    for _ in range(3):
        assert http.post("/v1/inspect", json={"model": MODEL, "prompt": PROMPT}).json() == want
    t.join()
    assert texts == [alone]


def test_playground_has_the_inside_panel(http):
    r = http.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    page = r.text
    for needed in ('id="inside"', 'id="inspect"', 'id="chips"', 'id="topk"', 'id="layer"', 'id="head"',
                   '<canvas id="heat"', 'id="hover"', '"/v1/inspect"'):
        assert needed in page, needed
    assert "http://" not in page and "https://" not in page        # no CDN: everything is inline


def test_lens_and_step_fields_are_what_gpt3lab_inspect_computes(http, model_and_tokenizer):
    from gpt3lab.inspect import lens, next_step
    model, tok = model_and_tokenizer
    body = {"model": MODEL, "prompt": PROMPT, "attention": False, "lens": True, "lens_top_k": 2,
            "step": {"temperature": 0.8, "top_k": 5, "seed": 7, "show": 6}}
    got = http.post("/v1/inspect", json=body).json()
    assert got["attention"]["weights"] == [] and got["attention"]["layers"] == []
    want = lens(model, tok, PROMPT, top_k=2, decimals=4)
    assert got["lens"] == {k: want[k] for k in ("rows", "norms", "cells")}
    assert len(got["lens"]["cells"]) == 3 and len(got["lens"]["cells"][0]) == len(tok.encode(PROMPT))
    assert got["step"] == next_step(model, tok, PROMPT, temperature=0.8, top_k=5, seed=7, show=6)
    assert got["step"]["kept"] == 5
    plain = http.post("/v1/inspect", json={"model": MODEL, "prompt": PROMPT}).json()
    assert "lens" not in plain and "step" not in plain          # only when asked for


def test_priming_route_runs_the_harness_curve(http, model_and_tokenizer):
    from gpt3lab.inspect import priming
    model, tok = model_and_tokenizer
    body = {"model": MODEL, "task": "mapping", "shots": [0, 2], "n": 4, "seed": 1}
    r = http.post("/v1/inspect/priming", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got == {"model": MODEL, **priming(model, tok, "mapping", [0, 2], 4, 1)}
    assert [s["k"] for s in got["shots"]] == [0, 2] and got["metric"] == "acc"
    assert len(got["shots"][1]["prompt"]) == 2 * 3 + 2 and len(got["shots"][0]["prompt"]) == 2   # 3-char lines
    assert all(s["answer_logprob"] < 0 for s in got["shots"])
    assert got["chance"] == pytest.approx(0.25)           # 4 values to choose from


def test_priming_info_names_the_task_the_checkpoint_was_trained_for(http, server, tmp_path):
    from gpt3lab.priming_demo import trained_task
    info = http.get("/v1/inspect/priming").json()
    assert info["trained_for"] is None and info["tasks"][0] == "mapping" and "lambada" in info["tasks"]
    (tmp_path / "config.json").write_text('{"model": {}, "demo": "priming"}')
    assert trained_task(tmp_path) == "mapping" and trained_task(tmp_path / "missing") is None
    server.service.trained_task = "mapping"
    try:
        assert http.get("/v1/inspect/priming").json()["trained_for"] == "mapping"
    finally:
        server.service.trained_task = None


def test_forward_field_is_what_forward_pass_computes(http, model_and_tokenizer):
    from gpt3lab.forward_pass import forward_pass
    model, tok = model_and_tokenizer
    r = http.post("/v1/inspect", json={"model": MODEL, "prompt": PROMPT, "attention": False,
                                       "forward": {"position": 4, "top_k": 3}})
    assert r.status_code == 200, r.text
    got = r.json()["forward"]
    assert got == forward_pass(model, tok, PROMPT, 4, top_k=3, decimals=4)
    assert got["position"] == 4 and len(got["blocks"]) == model.config.n_layer and len(got["final"]["top"]) == 3
    e = openai_error(http.post("/v1/inspect", json={"model": MODEL, "prompt": "hi", "forward": {"position": 9}}),
                     400, "forward")
    assert "outside the prompt" in e["message"]


def test_truncate_inspects_the_last_tokens_instead_of_refusing(http, model_and_tokenizer):
    model, tok = model_and_tokenizer
    ids = [int(t) for t in torch.randint(0, tok.vocab_size, (300,), generator=torch.Generator().manual_seed(0))]
    r = http.post("/v1/inspect", json={"model": MODEL, "prompt": ids, "truncate": True, "lens": True,
                                       "forward": {}})
    assert r.status_code == 200, r.text
    got = r.json()
    assert [t["id"] for t in got["tokens"]] == ids[-128:] and got["dropped"] == 172
    assert len(got["lens"]["cells"][0]) == 128 and got["forward"]["position"] == 127
    short = http.post("/v1/inspect", json={"model": MODEL, "prompt": ids[:5], "truncate": True}).json()
    assert short["dropped"] == 0 and len(short["tokens"]) == 5


def test_tokenize_messages_applies_the_chat_template(http):
    from gpt3lab.chat import render
    msgs = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    r = http.post("/tokenize", json={"model": MODEL, "messages": msgs})
    assert r.status_code == 200, r.text
    assert r.json()["prompt"] == render(msgs, None) and r.json()["prompt"].endswith("Assistant:")
    openai_error(http.post("/tokenize", json={"model": MODEL}), 400, "prompt")
    openai_error(http.post("/tokenize", json={"model": MODEL, "prompt": "a", "messages": msgs}), 400, "prompt")


@pytest.mark.parametrize("body,param", [
    ({"task": "/etc/passwd"}, "task"),                   # never a file path: built-in names only
    ({"task": "nope"}, "task"),
    ({"shots": [33]}, "shots"),
    ({"shots": []}, "shots"),
    ({"n": 0}, "n"),
])
def test_priming_bad_requests(http, body, param):
    e = openai_error(http.post("/v1/inspect/priming", json={"model": MODEL, **body}), 400, param)
    if param == "task":
        assert "arith-2d+" in e["message"] and "mapping" in e["message"]


def test_favicon_is_served(http):
    r = http.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg")
