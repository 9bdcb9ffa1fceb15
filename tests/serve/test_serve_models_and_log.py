"""`serve --lora-modules NAME=DIR` (adapters by name next to the base model), the default model name, and the
access log: one line per request with method, route, status, tokens and time."""
import io
import re

import pytest
import torch
from fastapi.testclient import TestClient

from gpt3lab.serve.lora_modules import default_model_name, parse_lora_modules
from serve_helpers import MODEL


@pytest.fixture(scope="module")
def adapter(checkpoint, tmp_path_factory):
    """A LoRA adapter of the test checkpoint with non-zero B, so its completions differ from the base's."""
    from gpt3lab import load
    from gpt3lab.adapters import save_adapter
    from gpt3lab.model.lora import LoRAConfig, fingerprint, inject_lora, lora_modules

    model, tok = load(checkpoint)
    fp = fingerprint(model)
    cfg = LoRAConfig(rank=4, alpha=8.0, dropout=0.0, targets=("c_attn", "c_proj"))
    inject_lora(model, cfg)
    torch.manual_seed(3)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.normal_(0, 0.5)
    run = tmp_path_factory.mktemp("ft-run")
    return save_adapter(run / "adapter", model, cfg, base=str(checkpoint), base_fingerprint=fp, tokenizer=tok)


def _args(checkpoint, *extra):
    from gpt3lab.cli import build_parser
    return build_parser(["serve"]).parse_args(["serve", str(checkpoint), "--kv-memory", "16MiB", *extra])


def _greedy(path, prompt, n):
    import gpt3lab
    model, tok = gpt3lab.load(path)
    return gpt3lab.generate_text(model, tok, prompt, max_tokens=n, temperature=0)


def test_lora_modules_are_served_by_name_next_to_the_base(checkpoint, adapter):
    from gpt3lab.serve.cli import build_engine, engine_config, serve_lora_modules
    from gpt3lab.serve.service import CompletionService

    args = _args(checkpoint, "--lora-modules", f"bard={adapter.parent}", f"bard2={adapter}")
    adapters = parse_lora_modules(args.lora_modules, MODEL)
    engine, _, _, model = build_engine(args.checkpoint, "cpu", engine_config(args))
    service = CompletionService(engine, MODEL)
    app = serve_lora_modules(args, model, engine, service, adapters, None, [])
    base_params = {p.data_ptr() for p in model.parameters()}
    with TestClient(app) as client:
        listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert listed == [MODEL, "bard", "bard2"]
        assert client.get("/v1/models/bard").json()["id"] == "bard"
        texts = {}
        for name in (MODEL, "bard", "bard2"):
            r = client.post("/v1/completions", json={"model": name, "prompt": "The king", "max_tokens": 8,
                                                     "temperature": 0})
            assert r.status_code == 200 and r.json()["model"] == name
            texts[name] = r.json()["choices"][0]["text"]
        r = client.post("/v1/chat/completions", json={"model": "bard", "max_tokens": 4,
                                                      "messages": [{"role": "user", "content": "Hi"}]})
        assert r.status_code == 200 and r.json()["model"] == "bard"
        r = client.post("/v1/completions", json={"model": "nobody", "prompt": "x", "max_tokens": 1})
        assert r.status_code == 404 and "nobody" in r.json()["error"]["message"]
    assert texts[MODEL] == _greedy(checkpoint, "The king", 8)
    assert texts["bard"] == texts["bard2"] == _greedy(adapter, "The king", 8) != texts[MODEL]
    # the adapters' models hold no copy of the base weights
    for e in app.engines.values():
        shared = {p.data_ptr() for n, p in e.model.named_parameters() if "lora_" not in n}
        assert shared <= base_params


def test_lora_module_errors_are_one_clear_line(checkpoint, adapter, tmp_path):
    from gpt3lab.errors import ConfigError

    for spec, match in (("bard", "expected NAME=ADAPTER_DIR"), (f"{MODEL}={adapter}", "already taken"),
                        (f"x={tmp_path}", "not a LoRA adapter directory")):
        with pytest.raises(ConfigError, match=match):
            parse_lora_modules([spec], MODEL)


def test_the_default_model_name_is_the_runs_not_adapter(tmp_path):
    assert default_model_name(tmp_path / "shakespeare-ft" / "adapter") == "shakespeare-ft"
    assert default_model_name(tmp_path / "demo" / "checkpoints" / "step_0000100") == "demo"
    assert default_model_name(tmp_path / "gpt2") == "gpt2"


def test_access_log_has_one_line_per_request_with_route_status_tokens_and_time(model_and_tokenizer):
    from gpt3lab.generate.engine import Engine
    from gpt3lab.serve.app import create_app
    from gpt3lab.serve.service import CompletionService

    model, tok = model_and_tokenizer
    engine = Engine(model, tok, kv_memory_bytes=16 << 20)
    log = io.StringIO()
    app = create_app(CompletionService(engine, MODEL), ["k"], access_log=log,
                     on_shutdown=lambda: engine.shutdown(True))
    auth = {"Authorization": "Bearer k"}
    with TestClient(app) as client:
        r = client.post("/v1/completions", headers=auth, json={"model": MODEL, "prompt": "Hello there",
                                                               "max_tokens": 5, "temperature": 0})
        usage = r.json()["usage"]
        with client.stream("POST", "/v1/chat/completions", headers=auth,
                           json={"model": MODEL, "max_tokens": 3, "stream": True,
                                 "messages": [{"role": "user", "content": "Hi"}]}) as s:
            assert s.status_code == 200 and "".join(s.iter_text()).endswith("[DONE]\n\n")
        assert client.get("/v1/models").status_code == 401
        assert client.get("/health").status_code == 200
    lines = log.getvalue().splitlines()
    assert len(lines) == 4
    assert re.fullmatch(rf'gpt3lab serve: \S+ "POST /v1/completions" 200 tokens={usage["prompt_tokens"]}\+'
                        rf'{usage["completion_tokens"]} \d+\.\d{{3}}s', lines[0])
    assert re.fullmatch(r'gpt3lab serve: \S+ "POST /v1/chat/completions" 200 tokens=\d+\+3 \d+\.\d{3}s', lines[1])
    assert '"GET /v1/models" 401 ' in lines[2] and "tokens" not in lines[2]
    assert '"GET /health" 200 ' in lines[3]


def test_serve_access_log_flag_defaults_on_and_turns_off(checkpoint):
    assert _args(checkpoint).no_access_log is False
    assert _args(checkpoint, "--no-access-log").no_access_log is True
