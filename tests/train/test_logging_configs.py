"""Loggers (read back by their readers), the plain log line, YAML = JSON configs, --print-config,
resume keeping the LR schedule, and plot comparing runs with the learning rate."""
import json

import pytest

from gpt3lab.cli import main
from gpt3lab.train.loop import read_log

BASE = ["--preset", "tiny", "--set", "eval_batches=1", "--set", "peak_flops=1e12", "--set", "model.context=32"]


def _train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), *BASE, "--no-progress", *extra])


def test_no_progress_prints_a_plain_line_every_log_every_steps(tiny_data, tmp_path, capsys):
    assert _train(tiny_data, tmp_path / "run", "--max-steps", "4", "--set", "log_every=2") == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["2/4", "4/4"]
    log = read_log(tmp_path / "run")
    assert f"loss {log[1]['loss']:.4f}" in lines[0] and "val " in lines[1]


def test_tensorboard_logger_events_read_back(tiny_data, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert _train(tiny_data, tmp_path / "run", "--max-steps", "3", "--set", "train.logger=tensorboard") == 0
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    log = read_log(tmp_path / "run")
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in log], rel=1e-6)
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx([r["lr"] for r in log], rel=1e-6)
    assert [e.step for e in acc.Scalars("val/val_loss")] == [3]


def test_wandb_logger_offline(tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install gpt3lab[logging])")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert _train(tiny_data, tmp_path / "run", "--max-steps", "2", "--set", "train.logger=wandb") == 0
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_unknown_logger_is_a_config_error(tiny_data, tmp_path, capsys):
    assert _train(tiny_data, tmp_path / "run", "--max-steps", "1", "--set", "train.logger=mlflow") == 2
    assert "train.logger='mlflow' must be one of csv, tensorboard, wandb" in capsys.readouterr().err


def test_yaml_config_equals_json_config_and_print_config(tiny_data, tmp_path, capsys):
    yaml = pytest.importorskip("yaml")
    cfg = {"model": {"n_layer": 3, "d_model": 32}, "train": {"lr": 3e-4, "warmup_steps": 5, "logger": "csv"}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    (tmp_path / "c.yaml").write_text("model:\n  n_layer: 3\n  d_model: 32\ntrain:\n  lr: 3.0e-4\n"
                                     "  warmup_steps: 5\n  logger: csv\n")
    outs = []
    for f in ("c.json", "c.yaml"):
        assert _train(tiny_data, tmp_path / "r", "--config", str(tmp_path / f), "--print-config") == 0
        outs.append(yaml.safe_load(capsys.readouterr().out))
    assert outs[0] == outs[1]
    assert outs[0]["model"]["n_layer"] == 3 and outs[0]["train"]["lr"] == 3e-4
    assert outs[0]["model"]["vocab_size"] == 300                  # resolved from the data's tokenizer
    assert not (tmp_path / "r").exists()                          # printing trains nothing
    (tmp_path / "bad.yaml").write_text("model: [1, 2\n")
    assert _train(tiny_data, tmp_path / "r", "--config", str(tmp_path / "bad.yaml")) == 2
    assert "invalid YAML" in capsys.readouterr().err


def test_resume_with_new_max_steps_keeps_the_schedule_unless_asked(tiny_data, tmp_path, capsys):
    kw = ["--set", "warmup_steps=1", "--set", "min_lr_ratio=0.1"]
    assert _train(tiny_data, tmp_path / "a", "--max-steps", "4", *kw) == 0
    assert _train(tiny_data, tmp_path / "b", "--max-steps", "4", *kw) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "a"), "--resume", "--max-steps", "8", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "differs from the run's 4" in err and "--reschedule" in err
    lrs = [r["lr"] for r in read_log(tmp_path / "a")]
    assert lrs[4:] == pytest.approx([1e-4] * 4)                 # decayed by step 4 as planned: stays at the floor
    assert main(["train", "--out", str(tmp_path / "b"), "--resume", "--max-steps", "8", "--no-progress",
                 "--reschedule"]) == 0
    assert "stretches" in capsys.readouterr().err
    stretched = [r["lr"] for r in read_log(tmp_path / "b")]
    assert stretched[4] > 2e-4                                   # re-stretched cosine: back up mid-decay


def test_plot_draws_lr_and_compares_runs(tiny_data, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    for name in ("a", "b"):
        assert _train(tiny_data, tmp_path / name, "--max-steps", "3") == 0
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp.png")]) == 0
    assert (tmp_path / "cmp.png").stat().st_size > 0
    ax, ax_lr = figs[0].axes
    assert [ln.get_label() for ln in ax_lr.lines] == ["a", "b"]
    assert list(ax_lr.lines[0].get_ydata()) == pytest.approx([r["lr"] for r in read_log(tmp_path / "a")])
    assert {"a train", "b train", "a val", "b val"} <= {ln.get_label() for ln in ax.lines}


def test_version_presets_and_defaults_in_help(capsys):
    import gpt3lab

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"gpt3lab {gpt3lab.__version__}"
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "gpt3-175b    174.60B" in out and "demo " in out and "dense" in out
    assert main(["presets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["gpt3-small"]["model"]["attention_pattern"] == "alternating" and rows["demo"]["params"] > 1e6
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_ = " ".join(capsys.readouterr().out.split())
    assert "requests generating at once (default: 64)" in help_ and "tokens per KV cache block (default: 16)" in help_


def test_tokenizer_cli_takes_a_run_dir(tiny_data, tmp_path, capsys):
    from gpt3lab.data import load_data_tokenizer

    assert _train(tiny_data, tmp_path / "run", "--max-steps", "1") == 0
    capsys.readouterr()
    tok = load_data_tokenizer(tiny_data)
    import io
    import sys
    old = sys.stdin
    try:
        sys.stdin = io.StringIO("the king")
        assert main(["tokenizer", "encode", "--ids-only", "--tokenizer", str(tmp_path / "run")]) == 0
    finally:
        sys.stdin = old
    assert capsys.readouterr().out.split() == [str(i) for i in tok.encode("the king")]
