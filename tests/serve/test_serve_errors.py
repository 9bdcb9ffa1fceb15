"""Bad requests -> the right 4xx in OpenAI's error shape; auth, body limit, queue limit, metrics, tokenize."""
from __future__ import annotations

import json

import httpx
import pytest

from serve_helpers import MODEL

COMPLETIONS = "/v1/completions"


def err(r: httpx.Response, status: int, param=None, code=None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def post(http, **body):
    return http.post(COMPLETIONS, json={"model": MODEL, **body})


def test_malformed_json_is_400(http):
    r = http.post(COMPLETIONS, content=b'{"model": "tiny", "prompt": ', headers={"content-type": "application/json"})
    assert "JSON" in err(r, 400)["message"]
    err(http.post(COMPLETIONS, content=b"[1, 2]", headers={"content-type": "application/json"}), 400)


@pytest.mark.parametrize("field,value", [
    ("max_tokens", "5"), ("max_tokens", -1), ("temperature", 2.5), ("temperature", "hot"), ("top_p", 0),
    ("top_p", 1.5), ("n", 0), ("logprobs", 6), ("logprobs", -1), ("stop", ["a", "b", "c", "d", "e"]),
    ("stop", 3), ("presence_penalty", 3), ("frequency_penalty", -2.5), ("echo", "yes"), ("stream", 1),
    ("logit_bias", {"abc": 1}), ("logit_bias", {"50": 101}), ("seed", 1.5), ("prompt", []), ("prompt", [[]]),
    ("prompt", [1, "a"]), ("prompt", {"text": "x"}), ("stop", [""]), ("best_of", 0), ("bogus_field", 1),
])
def test_wrong_types_and_ranges_are_400_naming_the_param(http, field, value):
    e = err(post(http, **{"prompt": "hi", field: value}), 400)
    assert e["type"] == "invalid_request_error"
    assert field in (e["param"] or "") or field in e["message"]


def test_missing_model_and_unknown_model(http):
    err(http.post(COMPLETIONS, json={"prompt": "hi"}), 400, param="model")
    err(http.post(COMPLETIONS, json={"model": "gpt-9", "prompt": "hi"}), 404, param="model", code="model_not_found")


def test_model_aware_checks(http):
    err(post(http, prompt=[50257]), 400, param="prompt")                  # outside the GPT-2 vocabulary
    err(post(http, prompt="hi", logit_bias={"99999": 1}), 400, param="logit_bias")
    err(post(http, prompt="hi", suffix="tail"), 400, param="suffix", code="unsupported_parameter")
    err(post(http, prompt="hi", n=3, best_of=2), 400, param="best_of")
    err(post(http, prompt="hi", n=1, best_of=2, stream=True), 400, param="best_of")


def test_too_long_prompt_is_context_length_exceeded(http):
    e = err(post(http, prompt=[1] * 120, max_tokens=9), 400, code="context_length_exceeded")
    assert "128" in e["message"]
    assert post(http, prompt=[1] * 120, max_tokens=8, temperature=0).status_code == 200   # exactly fits


def test_unknown_route_and_method(http):
    err(http.get("/v1/nothing"), 404)
    err(http.get(COMPLETIONS), 405)


def test_tokenize_detokenize_round_trip(http, model_and_tokenizer):
    _, tok = model_and_tokenizer
    r = http.post("/tokenize", json={"prompt": "héllo wörld"}).json()
    assert r["tokens"] == tok.encode("héllo wörld") and r["count"] == len(r["tokens"]) and r["max_model_len"] == 128
    assert http.post("/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": "héllo wörld"}
    err(http.post("/detokenize", json={"tokens": [-1]}), 400, param="tokens")
    info = http.get("/tokenizer_info").json()
    assert info["eos_token"] == "<|endoftext|>"


def test_health_playground_and_metrics(http):
    assert http.get("/health").json() == {"status": "ok", "model": MODEL}
    page = http.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "/v1/completions" in page.text
    before = http.get("/metrics").text
    assert post(http, prompt="metrics", max_tokens=3, temperature=0).status_code == 200
    m = http.get("/metrics").text

    def value(text, name):
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
                   or line.startswith(name + "{"))
    assert value(m, "gpt3lab_completion_tokens_total") - value(before, "gpt3lab_completion_tokens_total") == 3
    assert value(m, 'gpt3lab_requests_total{route="/v1/completions",status="200"}') >= 1
    assert value(m, "gpt3lab_request_latency_seconds_count") >= 1
    assert "gpt3lab_prefix_cache_hit_rate" in m and "gpt3lab_requests_waiting 0" in m
    assert m.count('le="+Inf"') == 2


def test_api_key_required_when_configured(server_factory):
    srv = server_factory(api_keys=["k1", "k2"])
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        err(c.post(COMPLETIONS, json={"model": MODEL, "prompt": "x"}), 401, code="invalid_api_key")
        err(c.post(COMPLETIONS, json={"model": MODEL, "prompt": "x"}, headers={"Authorization": "Bearer nope"}), 401)
        err(c.get("/v1/models", headers={"Authorization": "Basic k1"}), 401)
        ok = c.post(COMPLETIONS, json={"model": MODEL, "prompt": "x", "max_tokens": 1},
                    headers={"Authorization": "Bearer k2"})
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200   # open pages


def test_body_size_limit_is_413(server_factory):
    srv = server_factory(max_body_bytes=1000)
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        err(c.post(COMPLETIONS, json={"model": MODEL, "prompt": "x" * 2000}), 413, code="request_too_large")

        def chunked():               # no Content-Length: the limit still holds while reading
            yield json.dumps({"model": MODEL, "prompt": "y" * 1500}).encode()
        err(c.post(COMPLETIONS, content=chunked(), headers={"content-type": "application/json"}), 413)
        assert c.post(COMPLETIONS, json={"model": MODEL, "prompt": "x", "max_tokens": 1}).status_code == 200


def test_queue_full_is_429_and_slots_come_back(server_factory):
    import concurrent.futures as cf
    srv = server_factory(max_concurrent=1, max_queue=1, step_delay=0.05)
    body = {"model": MODEL, "prompt": "slow", "max_tokens": 10, "temperature": 0}
    with httpx.Client(base_url=srv.url, timeout=60) as c, cf.ThreadPoolExecutor(6) as pool:
        codes = sorted(f.result().status_code for f in [pool.submit(c.post, COMPLETIONS, json=body) for _ in range(6)])
        assert codes.count(200) >= 2 and codes.count(429) >= 1 and set(codes) <= {200, 429}
        r429 = [f for f in [pool.submit(c.post, COMPLETIONS, json=body) for _ in range(4)]]
        bodies = [f.result() for f in r429]
        for b in bodies:
            if b.status_code == 429:
                assert b.json()["error"]["type"] == "rate_limit_error"
        assert c.post(COMPLETIONS, json=body).status_code == 200       # drained: a lone request gets through
