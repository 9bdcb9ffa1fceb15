"""First contact with `train` and `plot`: YAML 1.2 numbers in --config, the start-up summary (and the allocator
said there, once), and a smoothed loss line that ends where the raw loss is."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from gpt3lab.cli import main

BASE = ["--preset", "tiny", "--set", "eval_batches=1", "--set", "peak_flops=1e12", "--set", "model.context=32",
        "--no-progress"]


def _train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), *BASE, *extra])


@pytest.mark.parametrize("text,lr", [("3e-3", 3e-3), ("1E-4", 1e-4), ("6.0e-4", 6e-4), (".5", 0.5), ("+2e+1", 20.0)])
def test_yaml_config_reads_every_float_form_as_a_number(tiny_data, tmp_path, capsys, text, lr):
    (tmp_path / "c.yaml").write_text(f"train:\n  lr: {text}\n  warmup_steps: 5\n")
    assert _train(tiny_data, tmp_path / "r", "--config", str(tmp_path / "c.yaml"), "--print-config") == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["lr"] == lr


def test_a_quoted_yaml_number_is_still_refused_and_the_advice_is_true(tiny_data, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("train:\n  lr: '3e-3'\n")
    assert _train(tiny_data, tmp_path / "r", "--config", str(tmp_path / "c.yaml"), "--print-config") == 2
    err = capsys.readouterr().err
    assert "train.lr='3e-3' (str) must be a number; write train.lr: 3e-3 without quotes" in err
    (tmp_path / "c.yaml").write_text("train:\n  lr: 3e-3\n")          # doing what it says works
    assert _train(tiny_data, tmp_path / "r", "--config", str(tmp_path / "c.yaml"), "--print-config") == 0


def test_yaml_ints_strings_and_versions_keep_their_types():
    from gpt3lab.yaml12 import safe_load
    got = safe_load("a: 12\nb: v1.2\nc: 1.2.3\nd: 1e5\ne: '1e5'\nf: 0x10\ng: true\n")
    assert got == {"a": 12, "b": "v1.2", "c": "1.2.3", "d": 1e5, "e": "1e5", "f": 16, "g": True}
    assert type(got["a"]) is int and type(got["d"]) is float


def test_train_prints_a_summary_before_the_first_step(tiny_data, tmp_path, capsys):
    assert _train(tiny_data, tmp_path / "run", "--max-steps", "3", "--set", "train.batch_size=4",
                  "--set", "train.batch_tokens=256") == 0
    err = capsys.readouterr().err
    head = err[:err.index("\nstep ")] if "\nstep " in err else err
    from gpt3lab import load
    model, _ = load(tmp_path / "run")
    header = json.loads((tiny_data / "train.json").read_text())
    tokens = header["num_tokens"]
    assert f"parameters: {model.num_params():,} " in head
    assert "device: cpu" in head and ("precision fp32" in head or "precision bf16" in head)
    assert "allocator: " in head
    # 256 tokens per step = 2 accumulation x 1 process x 4 sequences x 32 tokens; 3 steps = 768 tokens
    assert "batch: 256 tokens per step = 2 accumulation x 1 process(es) x 4 sequences x 32 tokens" in head
    assert "steps: 0 -> 3, 768 tokens to train on" in head
    assert f"{tokens:,} train tokens" in head and f"this run is {768 / tokens:.2f} epochs" in head


def test_summary_counts_the_batch_ramp_step_by_step():
    from gpt3lab.config import TrainConfig
    from gpt3lab.train.schedule import batch_tokens_at
    from gpt3lab.train.summary import run_tokens

    cfg = TrainConfig(batch_size=1, batch_tokens=64, ramp_tokens=100, ramp_start_tokens=16, max_steps=20)
    seen = 0
    for _ in range(20):
        seen += batch_tokens_at(seen, cfg, 16)
    assert run_tokens(cfg, 16, 1) == seen


def _cli(*argv, **env):
    e = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GPT3LAB_ALLOCATOR_REEXEC")}
    e.update(env)
    return subprocess.run([sys.executable, "-m", "gpt3lab", *argv], env=e, capture_output=True, text=True,
                          timeout=300)


def test_the_allocator_line_shows_only_at_verbose():
    quiet = _cli("eval", "no-such-run", "--task", "lambada", GPT3LAB_ALLOCATOR="glibc")
    assert quiet.returncode == 2 and "allocator" not in quiet.stderr
    loud = _cli("--verbose", "eval", "no-such-run", "--task", "lambada", GPT3LAB_ALLOCATOR="glibc")
    assert loud.returncode == 2 and loud.stderr.count("gpt3lab: allocator: glibc malloc") == 1


def test_plot_smoothing_ends_where_the_raw_loss_is():
    from gpt3lab.train.plot import smooth

    rng = np.random.default_rng(0)
    steps = np.arange(30)
    raw = 8.0 - 3.5 * steps / 29 + rng.normal(0, 0.1, 30)      # a short run: the loss falls fast
    s = smooth(list(raw))
    assert abs(s[-1] - 4.5) < 0.25 and abs(s[0] - 8.0) < 0.25  # no lag at either end
    long = 5 + rng.normal(0, 0.5, 4000)                          # a long noisy plateau is smoothed
    assert np.std(smooth(list(long))[100:-100]) < 0.1
    assert smooth([3.0, 1.0]) == [3.0, 1.0]
