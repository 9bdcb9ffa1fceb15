"""Issue 11, server: strict logit_bias keys (no 5xx for any key or value), /metrics labels that a client
cannot forge or multiply, no silently empty API key, and a bounded time to send a request body."""
from __future__ import annotations

import argparse
import socket
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt3lab.errors import ConfigError
from gpt3lab.serve.app import route_label
from gpt3lab.serve.metrics import Metrics, escape_label

from serve_helpers import MODEL


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:      # one keep-alive connection throughout
        yield c


def _bias(http, bias):
    return http.post("/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 1, "logit_bias": bias})


@pytest.mark.parametrize("key", ["²", "٣", "１", "+5", "-1", " 5", "5 ", "", "1e3", "0x10", "1234567890"])
def test_non_ascii_digit_keys_are_400_and_the_connection_survives(http, key):
    r = _bias(http, {key: 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias", r.text
    assert _bias(http, {"11": 1}).status_code == 200       # same keep-alive connection, still fine


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(bias=st.dictionaries(st.text(max_size=12), st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(), st.text(max_size=3),
                                                             st.none(), st.booleans()), max_size=3))
def test_fuzzed_logit_bias_is_never_a_server_error(http, bias):
    r = _bias(http, bias)
    assert r.status_code in (200, 400), r.text


def test_metrics_route_labels_cannot_be_forged_or_multiplied(http):
    forged = "/v1/models/x%22%7D%200%0Ainjected_metric%7Broute%3D%22a%22%7D%201"
    http.get(forged)
    for i in range(20):
        http.get(f"/v1/models/probe-{i}")
    text = http.get("/metrics").text
    assert not any(line.startswith("injected_metric") for line in text.splitlines())
    routes = {line.split('route="')[1].split('"')[0] for line in text.splitlines()
              if line.startswith("gpt3lab_requests_total{")}
    assert "/v1/models/{model_id}" in routes and not any("probe" in r or "x" == r[-1:] for r in routes)


def test_route_label_and_escaping():
    assert route_label("/v1/models/anything/at/all") == "/v1/models/{model_id}"
    assert route_label("/nope\n") == "other" and route_label("/v1/completions") == "/v1/completions"
    assert escape_label('a"}\n\\') == 'a\\"}\\n\\\\'
    m = Metrics()
    m.request_done('x"}\nforged 1', 200)
    assert "\nforged" not in m.render()


def _serve_args(*argv):
    from gpt3lab.serve.cli import add_arguments
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["ckpt", *argv])


def test_empty_api_key_is_refused_and_keys_come_from_a_file(tmp_path, monkeypatch):
    from gpt3lab.serve.cli import api_keys, check_args
    monkeypatch.delenv("GPT3LAB_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="--api-key '' is empty"):
        check_args(_serve_args("--api-key", ""))
    keys = tmp_path / "keys"
    keys.write_text("k1\n\n  k2  \n")
    assert api_keys(None, str(keys)) == ["k1", "k2"]
    keys.write_text("\n \n")
    with pytest.raises(ConfigError, match="holds no key"):
        api_keys(None, str(keys))
    with pytest.raises(ConfigError, match="cannot read"):
        api_keys(None, str(tmp_path / "missing"))


def test_empty_api_key_cli_exits_2_before_loading(tmp_path, capsys):
    from gpt3lab.cli import main
    assert main(["serve", str(tmp_path / "missing"), "--api-key", ""]) == 2
    assert "--api-key '' is empty" in capsys.readouterr().err


def test_a_slow_body_gets_408_within_the_body_timeout(server_factory):
    srv = server_factory(body_timeout=0.5)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{")
        t0 = time.monotonic()
        reply = s.recv(4096)
        waited = time.monotonic() - t0
        while b"request_timeout" not in reply and (chunk := s.recv(4096)):   # the body may come separately
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply
    assert 0.4 < waited < 5


def test_chat_logit_bias_keys_are_strict_too(http):
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "a"}],
                                                "max_tokens": 1, "logit_bias": {"²": 1}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias", r.text
