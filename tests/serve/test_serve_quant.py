"""`serve --quantize int8`: the official openai client against a server over an int8 model."""
from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")

from serve_helpers import MODEL  # noqa: E402


@pytest.fixture(scope="module")
def model_and_tokenizer(checkpoint):
    """Overrides conftest's: this module's `server` runs the int8 model."""
    import gpt3lab

    return gpt3lab.load(checkpoint, quantize="int8")


def test_openai_client_on_int8_server_equals_int8_generate(server, model_and_tokenizer):
    from gpt3lab.generate import generate
    from gpt3lab.model.quant import mode_of

    model, tok = model_and_tokenizer
    assert mode_of(server.engine.model) == "int8"
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    want = generate(model, tok, "Hello there", max_tokens=8, temperature=0.0)
    assert want.tokens
    for stream in (False, True):
        r = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=8, temperature=0,
                                      stream=stream)
        text = "".join(c.choices[0].text for c in r) if stream else r.choices[0].text
        assert text == want.text


def test_serve_cli_rejects_a_bad_mode(capsys):
    from gpt3lab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "x", "--quantize", "int4"])
    assert e.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err
