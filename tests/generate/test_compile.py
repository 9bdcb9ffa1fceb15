"""The compiled decode step: equal greedy tokens to eager, no recompilation after warm-up, and one line and
eager decoding when compilation fails."""
import pytest
import torch

from gpt3lab.generate import core, generate

from gen_helpers import BYTES, tiny


def test_a_failing_compile_says_so_in_one_line_and_decodes_eagerly(monkeypatch, capsys):
    model = tiny("alternating", seed=1, context=64, n_layer=2)
    want = generate(model, BYTES, list(b"hi"), max_tokens=20, temperature=0).tokens

    def broken(*a, **k):
        raise RuntimeError("inductor exploded\nsecond line")
    monkeypatch.setitem(core._COMPILED, (id(model), "default"), broken)
    got = generate(model, BYTES, list(b"hi"), max_tokens=20, temperature=0, compile=True).tokens
    err = capsys.readouterr().err.strip().splitlines()
    assert got == want
    assert len(err) == 1 and "inductor exploded" in err[0] and "eagerly" in err[0]


def test_compile_modes_are_checked():
    from gpt3lab.errors import ConfigError
    with pytest.raises(ConfigError, match="fastest"):
        core.compile_mode("fastest", torch.device("cpu"))
    assert core.compile_mode(True, torch.device("cpu")) == "default"
    assert core.compile_mode(True, torch.device("cuda")) == "reduce-overhead"


@pytest.mark.slow
def test_compiled_greedy_equals_eager_for_200_steps_without_recompiling():
    from torch._dynamo.utils import counters

    model = tiny("alternating", seed=1, context=256, n_layer=2)
    prompt = list(b"hi")
    eager = generate(model, BYTES, prompt, max_tokens=200, temperature=0).tokens
    generate(model, BYTES, prompt, max_tokens=3, temperature=0, compile=True)              # warm-up: compiles
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    got = generate(model, BYTES, prompt, max_tokens=200, temperature=0, compile=True).tokens
    assert got == eager
    assert counters["stats"]["unique_graphs"] == graphs                                       # nothing recompiled
