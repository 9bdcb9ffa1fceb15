"""Schemathesis fuzzes every route of the server's OpenAPI schema (loopback only, bounded examples): no 5xx."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

LIMITS = {"max_tokens": 4, "max_completion_tokens": 4, "n": 2, "best_of": 2}     # keep generated work small; types are left alone


def check(case) -> None:
    if isinstance(case.body, dict):
        for key, cap in LIMITS.items():
            v = case.body.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and v > cap:
                case.body[key] = cap
    response = case.call_and_validate(checks=[not_a_server_error])
    assert response.status_code < 500
    if response.status_code >= 400 and "application/json" in str(response.headers.get("content-type")):
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_fuzzed_requests_never_5xx(server):
    # schemathesis' pytest plugin (from_fixture) does not run under this pytest; drive hypothesis directly
    from hypothesis import given
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/tokenize", "/detokenize", "/v1/models/{model_id}",
                                              "/v1/inspect", "/metrics", "/health", "/v1/models", "/tokenizer_info"}
    for op in operations:
        settings(max_examples=40 if op.path == "/v1/completions" else 15, deadline=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))(given(case=op.as_strategy())(check))()
