"""One table of requests, answered the same way by the Python API, `gpt3lab generate`, the engine and the server.

Every row is refused by all four with the same parameter named (or accepted by all four): the rules live
in SamplingParams.validate and nowhere else.
"""
import re

import pytest
from fastapi.testclient import TestClient

from gpt3lab.checkpoint import save_checkpoint
from gpt3lab.cli import main
from gpt3lab.generate import generate
from gpt3lab.generate.api import InvalidRequestError, SamplingParams
from gpt3lab.generate.engine import Engine
from gpt3lab.serve.app import create_app
from gpt3lab.serve.service import CompletionService

from gen_helpers import BYTES, tiny

CONTEXT = 32
PROMPT = "Hello"                                   # 5 byte tokens

# (request, the parameter a refusal names; None = accepted). Only controls every surface has.
TABLE = [
    (dict(temperature=2.5), "temperature"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=2.0), None),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(n=0), "n"),
    (dict(n=129), "n"),
    (dict(max_tokens=-1), "max_tokens"),
    (dict(max_tokens=CONTEXT - 4), "prompt"),      # 5 + 28 > 32: context exceeded
    (dict(max_tokens=CONTEXT - 5), None),          # exactly fits
    (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
    (dict(stop=["a", "b", "c", "d"]), None),
    (dict(stop=[""]), "stop"),
]
IDS = [f"{next(iter(r))}={next(iter(r.values()))!r}" for r, _ in TABLE]


def with_defaults(req: dict) -> dict:
    return {"max_tokens": 2, "temperature": 0.0, **req}


@pytest.fixture(scope="module")
def model():
    return tiny(context=CONTEXT, n_layer=2)


@pytest.fixture(scope="module")
def engine(model):
    e = Engine(model, BYTES, block_size=4)
    yield e
    e.shutdown(cancel_running=True)


@pytest.fixture(scope="module")
def http(engine):
    with TestClient(create_app(CompletionService(engine, "tiny"))) as c:
        yield c


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "ckpt", model, model.config, BYTES)


def python_api(model, req) -> str | None:
    try:
        generate(model, BYTES, PROMPT, **req)
    except InvalidRequestError as e:
        return e.param
    return None


def engine_submit(engine, req) -> str | None:
    try:
        h = engine.submit(BYTES.encode(PROMPT), SamplingParams(**req))
    except InvalidRequestError as e:
        return e.param
    list(h)
    return None


def server(http, req) -> str | None:
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": PROMPT, **req})
    if r.status_code == 200:
        return None
    assert r.status_code == 400, r.text
    return r.json()["error"]["param"]


def cli(ckpt, req, capsys) -> str | None:
    argv = ["generate", str(ckpt), "--prompt", PROMPT]
    for k, v in req.items():
        for one in (v if isinstance(v, list) else [v]):
            argv += [f"--{k.replace('_', '-')}", str(one)]
    try:
        rc = main(argv)
    except SystemExit as e:                        # argparse's usage error (a flag's type= check)
        rc = e.code
    out, err = capsys.readouterr()
    if rc == 0:
        return None
    assert rc == 2 and "Traceback" not in err, err
    err = err.strip().splitlines()[-1]             # the message (argparse prints its usage first)
    if "exceeds the model's context" in err:
        return "prompt"
    m = re.search(r"\b(temperature|top_p|top_k|n|max_tokens|stop)=|--(temperature|top-p|top-k|n|max-tokens|stop)\b", err)
    return (m.group(1) or m.group(2).replace("-", "_")) if m else err


@pytest.mark.parametrize("req, param", TABLE, ids=IDS)
def test_every_surface_answers_a_request_the_same_way(req, param, model, engine, http, ckpt, capsys):
    req = with_defaults(req)
    answers = {"python": python_api(model, req), "engine": engine_submit(engine, req),
               "server": server(http, req), "cli": cli(ckpt, req, capsys)}
    assert answers == dict.fromkeys(answers, param)


def test_the_validator_names_the_parameter_and_the_range():
    with pytest.raises(InvalidRequestError, match=r"temperature=3 must be a number in \[0.0, 2.0\]"):
        SamplingParams(temperature=3).validate(50, 10)
    with pytest.raises(InvalidRequestError, match="logit_bias") as e:
        SamplingParams(logit_bias={50: 1.0}).validate(50, 10)             # id 50 of a 50-token vocabulary
    assert e.value.param == "logit_bias"
    with pytest.raises(InvalidRequestError, match="best_of=2 must be >= n=3"):
        SamplingParams(n=3, best_of=2).validate(50, 10)
    assert SamplingParams(n=2, best_of=4).validate(50, 100, 10) == 4
