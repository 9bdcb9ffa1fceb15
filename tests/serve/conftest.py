"""Fixtures: a tiny random GPT checkpoint and a real server on a free loopback port (uvicorn in a thread).

Servers run the real inference engine (gpt3lab.generate.engine.Engine) over the checkpoint. Only tests
that need scripted timing (a slow stream to disconnect from, a full queue for 429s) ask for the
FakeEngine with `step_delay`: the real engine finishes a tiny model's request in milliseconds, so those
races could not be staged reliably with it.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

from gpt3lab import load
from gpt3lab.checkpoint import save_checkpoint
from gpt3lab.config import ModelConfig
from gpt3lab.model import GPT
from gpt3lab.tokenizer import Tokenizer

from serve_helpers import MODEL  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    tok = Tokenizer.gpt2()
    cfg = ModelConfig(vocab_size=tok.vocab_size, context=128, n_layer=2, d_model=64, n_head=4)
    model = GPT(cfg)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / MODEL, model, cfg, tok)


@pytest.fixture(scope="session")
def model_and_tokenizer(checkpoint):
    return load(checkpoint)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app):
        import uvicorn
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                    lifespan="on", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=20)


def make_server(model_and_tokenizer, api_keys=(), max_concurrent=64, max_queue=256, max_body_bytes=1 << 20,
                step_delay=None, engine_queue=256, body_timeout=10.0):
    """A server over the real Engine; over FakeEngine (one token per `step_delay` s) when step_delay is given."""
    from gpt3lab.generate.engine import Engine
    from gpt3lab.serve.app import create_app
    from gpt3lab.serve.service import CompletionService

    model, tok = model_and_tokenizer
    if step_delay is None:
        engine = Engine(model, tok, kv_memory_bytes=64 << 20, max_waiting=engine_queue)
    else:
        from fake_engine import FakeEngine
        engine = FakeEngine(model, tok, max_queue=engine_queue, step_delay=step_delay)
    from gpt3lab.inspector import Inspector
    service = CompletionService(engine, MODEL, max_concurrent=max_concurrent, max_queue=max_queue,
                                inspector=Inspector(model, tok))
    app = create_app(service, list(api_keys), max_body_bytes, on_shutdown=lambda: engine.shutdown(True),
                     body_timeout=body_timeout)
    srv = ThreadServer(app)
    srv.engine, srv.service = engine, service
    return srv


@pytest.fixture(scope="module")
def server(model_and_tokenizer):
    srv = make_server(model_and_tokenizer)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def server_factory(model_and_tokenizer):
    """Start extra servers with other settings; all are stopped at the end of the module."""
    started = []

    def start(**kw):
        started.append(make_server(model_and_tokenizer, **kw))
        return started[-1]
    yield start
    for s in started:
        s.stop()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test item (item.rep_call), so a fixture can act on failure (screenshots)."""
    rep = (yield).get_result()
    setattr(item, f"rep_{rep.when}", rep)
