"""Exact resume with dropout (issue 11): nothing may draw from the training RNGs between restoring them and
the first step (the MFU peak measurement did), and a run resumes from any working directory."""
import os

from gpt3lab.train import perf
from gpt3lab.train.cli import train
from gpt3lab.train.loop import read_log

# peak_flops deliberately unset: the measured peak must not touch the dropout generator
SETS = ["model.context=32", "model.dropout=0.1", "train.save_every=4", "train.eval_every=4", "train.eval_batches=1",
        "train.precision=fp32", "train.warmup_steps=2", "train.decay_steps=8", "train.device=cpu"]


def _train(data, out, steps, resume=False):
    perf._PEAK_CACHE.clear()              # as in a fresh process: the peak is measured again
    return train(data, out, preset="tiny", overrides=SETS, max_steps=steps, resume=resume, progress=False)


def test_resume_with_dropout_and_measured_peak_is_exact(tiny_data, tmp_path):
    _train(tiny_data, tmp_path / "full", 8)
    _train(tiny_data, tmp_path / "cut", 4)
    _train(tiny_data, tmp_path / "cut", 8, resume=True)
    a, b = read_log(tmp_path / "full"), read_log(tmp_path / "cut")
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in b] == [r["loss"] for r in a]           # exact, including steps 5..8
    assert [r.get("val_loss") for r in b] == [r.get("val_loss") for r in a]


def test_resume_from_another_working_directory(tiny_data, tmp_path, monkeypatch):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    os.symlink(tiny_data, "data")
    _train("data", "run", 4)                                        # relative --data and --out
    monkeypatch.chdir(tmp_path / "b")
    s = _train(None, tmp_path / "a" / "run", 6, resume=True)        # no --data: the saved path must work
    assert s["step"] == 6
