"""`gpt3lab generate` end to end through gpt3lab.cli.main on a saved tiny checkpoint."""
import io
import re
import json

import pytest

from gpt3lab import load
from gpt3lab.checkpoint import save_checkpoint
from gpt3lab.cli import main
from gpt3lab.generate import generate

from gen_helpers import BYTES, tiny


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = tiny("alternating", context=48, n_layer=2, local_window=4)
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run / "checkpoints" / "step_0000010", model, model.config, BYTES)
    return run


def cli(capsys, *argv):
    rc = main(["generate", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_streamed_output_equals_api_text(ckpt, capsys):
    model, tok = load(ckpt)
    want = generate(model, tok, "Hi", max_tokens=12, temperature=0.9, seed=5, top_k=50)
    rc, out, _ = cli(capsys, ckpt, "--prompt", "Hi", "--max-tokens", 12, "--temperature", 0.9,
                     "--seed", 5, "--top-k", 50)
    assert rc == 0 and out == want.text + "\n"
    rc, out2, _ = cli(capsys, ckpt, "--prompt", "Hi", "--max-tokens", 12, "--temperature", 0.9,
                      "--seed", 5, "--top-k", 50, "--no-stream")
    assert out2 == out


def test_stop_echo_and_stdin(ckpt, capsys, monkeypatch):
    model, tok = load(ckpt)
    full = generate(model, tok, "ab", max_tokens=20, temperature=0).text
    stop = full[3:5]
    cut = full[:full.find(stop)]
    monkeypatch.setattr("sys.stdin", io.StringIO("ab\n"))
    rc, out, _ = cli(capsys, ckpt, "--max-tokens", 20, "--temperature", 0, "--stop", stop, "--stop", "\x00\x01",
                     "--echo")
    assert rc == 0 and out == "ab" + cut + "\n"


def test_n_samples_and_prompt_file(ckpt, capsys, tmp_path):
    f = tmp_path / "prompts.jsonl"
    f.write_text(json.dumps({"prompt": "one"}) + "\n" + json.dumps({"prompt": "two"}) + "\n")
    rc, out, _ = cli(capsys, ckpt, "--prompt-file", f, "--n", 2, "--max-tokens", 5, "--temperature", 0)
    assert rc == 0
    model, tok = load(ckpt)
    want = ""
    for p, prompt in enumerate(["one", "two"], 1):
        text = generate(model, tok, prompt, max_tokens=5, temperature=0).text
        want += "".join(f"=== prompt {p} sample {s} ===\n{text}\n" for s in (1, 2))
    assert out == want


@pytest.mark.parametrize("argv, msg", [
    (["--prompt", "x" * 40, "--max-tokens", 20], "40 tokens.*max_tokens=20.*48"),
    # out-of-range --temperature/--top-p: refused by argparse (tests/test_cli_options.py)
    (["--prompt", "x", "--prompt-file", "f"], "either --prompt or --prompt-file"),
])
def test_user_errors_exit_2_with_one_line(ckpt, capsys, argv, msg):
    rc, out, err = cli(capsys, ckpt, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("gpt3lab: error:") and "Traceback" not in err
    assert re.search(msg, err), err


def test_missing_checkpoint(capsys, tmp_path):
    rc, _, err = cli(capsys, tmp_path / "nope", "--prompt", "x")
    assert rc == 2 and "nope" in err
