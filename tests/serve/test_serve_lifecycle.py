"""Client disconnects cancel generation; SIGTERM lets in-flight streams finish; the CLI's user errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serve_helpers import MODEL

HERE = Path(__file__).parent


def wait_for(cond, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


# The disconnect and SIGTERM tests use FakeEngine (step_delay): they need a request still generating when
# the client drops or the signal arrives, and the real engine finishes the tiny model's request in milliseconds.
def test_stream_disconnect_cancels_generation_and_frees_slot(server_factory):
    srv = server_factory(step_delay=0.02)
    body = {"model": MODEL, "prompt": "long", "max_tokens": 100, "temperature": 0, "stream": True}
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(3)]
            assert any(x.startswith("data: {") for x in got)
        # the response is closed after 3 lines: the server must notice, cancel, and free the slot
        assert wait_for(lambda: srv.engine.cancelled == 1)
        assert wait_for(lambda: srv.service.metrics.running == 0 and srv.engine.running == 0)
        assert srv.service.metrics.cancelled == 1


def test_non_streamed_disconnect_cancels_generation(server_factory):
    srv = server_factory(step_delay=0.02)
    body = {"model": MODEL, "prompt": "long", "max_tokens": 100, "temperature": 0}
    with httpx.Client(base_url=srv.url, timeout=0.5) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("/v1/completions", json=body)
    assert wait_for(lambda: srv.engine.cancelled == 1)
    assert wait_for(lambda: srv.service.metrics.running == 0)


def test_non_streamed_disconnect_is_counted_and_logs_no_traceback(server_factory):
    """A cancelled gather() ends with CancelledError as its exception: result() raised it, uvicorn logged
    "Exception in ASGI application" and the cancellation was not counted."""
    import logging

    srv = server_factory(step_delay=0.02)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.ERROR)
    handler.emit = records.append
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        body = {"model": MODEL, "prompt": "long", "max_tokens": 100, "temperature": 0, "n": 2}
        with httpx.Client(base_url=srv.url, timeout=0.5) as c:
            with pytest.raises(httpx.ReadTimeout):
                c.post("/v1/completions", json=body)
        assert wait_for(lambda: srv.service.metrics.cancelled == 1)
        assert wait_for(lambda: srv.service.metrics.running == 0)
        time.sleep(0.3)
    finally:
        logger.removeHandler(handler)
    assert not [r.getMessage() for r in records]


def start_server(checkpoint, delay: float, *extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(HERE / "fake_server.py"), str(checkpoint), str(delay), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "listening on http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, line.split("listening on ")[1].split()[0]


def test_sigterm_finishes_in_flight_stream_then_exits(checkpoint):
    proc, url = start_server(checkpoint, 0.02)
    try:
        body = {"model": checkpoint.name, "prompt": "bye", "max_tokens": 40, "temperature": 0, "stream": True}
        with httpx.Client(base_url=url, timeout=30) as c:
            with c.stream("POST", "/v1/completions", json=body) as r:
                lines = r.iter_lines()
                first = next(lines)
                proc.send_signal(signal.SIGTERM)
                rest = [first] + list(lines)
        data = [x[6:] for x in rest if x.startswith("data: ")]
        assert data[-1] == "[DONE]"
        assert json.loads(data[-2])["choices"][0]["finish_reason"] in ("length", "stop")
        assert proc.wait(timeout=20) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_gpt3lab_serve_cli_runs_the_real_engine(checkpoint):
    """`gpt3lab serve` end to end: engine flags parsed, greedy text equals gpt3lab.generate, SIGTERM exits 0."""
    from gpt3lab import load
    from gpt3lab.generate import generate
    model, tok = load(checkpoint)
    want = generate(model, tok, "The end is", max_tokens=12, temperature=0)
    proc = subprocess.Popen([sys.executable, "-m", "gpt3lab", "serve", str(checkpoint), "--port", "0", "--device", "cpu",
                             "--kv-memory", "16MiB", "--max-running", "4", "--block-size", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GPT3LAB_API_KEY": ""})
    try:
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, proc.stderr.read() if proc.poll() is not None else line
        url = line.split("listening on ")[1].split()[0]
        body = {"model": checkpoint.name, "prompt": "The end is", "max_tokens": 12, "temperature": 0}
        r = httpx.post(url + "/v1/completions", json=body, timeout=30).json()
        assert r["choices"][0]["text"] == want.text and r["choices"][0]["finish_reason"] == want.finish_reason
        blocks = [x for x in httpx.get(url + "/metrics").text.splitlines() if x.startswith("gpt3lab_engine_kv_blocks_total ")]
        assert blocks and float(blocks[0].split()[-1]) == 4 * 2 * (128 // 8)   # capped at max_running full contexts
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_engine_flags_map_to_engine_config_and_bad_ones_name_the_flag():
    import argparse

    from gpt3lab.errors import ConfigError
    from gpt3lab.serve.cli import add_arguments, check_args, engine_config
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["ck", "--kv-memory", "512MiB", "--max-running", "8", "--max-batch-tokens", "64",
                         "--block-size", "32", "--no-prefix-caching", "--max-queue", "10", "--max-concurrent", "4"])
    check_args(args)
    cfg = engine_config(args)
    assert (cfg.kv_memory_bytes, cfg.max_running, cfg.max_batch_tokens, cfg.block_size) == (512 << 20, 8, 64, 32)
    assert cfg.enable_prefix_caching is False and cfg.max_waiting == 14      # never below the server's own queue
    assert engine_config(p.parse_args(["ck", "--kv-memory", "2GB"])).kv_memory_bytes == 2 * 10 ** 9
    # numeric flags are range-checked by argparse (tests/test_cli_options.py); sizes here
    for flag, value in (("--kv-memory", "lots"), ("--kv-memory", "0")):
        with pytest.raises(ConfigError, match=flag):
            check_args(p.parse_args(["ck", flag, value]))


def test_cli_reports_bad_checkpoint_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gpt3lab", "serve", str(tmp_path / "missing"), "--port", "0"],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "GPT3LAB_API_KEY": ""})
    assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr


def test_api_keys_from_flag_or_env(monkeypatch):
    from gpt3lab.serve.cli import api_keys
    monkeypatch.setenv("GPT3LAB_API_KEY", "a, b,")
    assert api_keys(None) == ["a", "b"]
    assert api_keys(["x"]) == ["x"]
    monkeypatch.delenv("GPT3LAB_API_KEY")
    assert api_keys(None) == []
