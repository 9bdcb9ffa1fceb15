"""Exact resume: a run killed with SIGKILL and resumed logs the same losses as an uninterrupted run."""
import json
import os
import subprocess
import sys
from pathlib import Path

from train_helpers import kill_after_checkpoint

ROOT = Path(__file__).resolve().parents[2]
STEPS = 60


def _cmd(data, out, *extra):
    return [sys.executable, "-m", "gpt3lab", "train", "--data", str(data), "--out", str(out), "--preset", "tiny",
            "--max-steps", str(STEPS), "--set", "save_every=5", "--set", "eval_every=10", "--set", "eval_batches=2",
            "--set", "precision=fp32", "--set", "peak_flops=1e12", "--set", "model.context=32", "--no-progress",
            *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _log(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def test_sigkill_then_resume_is_bit_identical(tiny_data, tmp_path):
    full = tmp_path / "full"
    subprocess.run(_cmd(tiny_data, full), env=_env(), check=True, capture_output=True)

    killed = tmp_path / "killed"
    assert kill_after_checkpoint(_cmd(tiny_data, killed), killed, _env()) < STEPS

    subprocess.run(_cmd(tiny_data, killed, "--resume"), env=_env(), check=True, capture_output=True)
    a, b = _log(full), _log(killed)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))      # records past the checkpoint dropped
    assert [r["loss"] for r in b] == [r["loss"] for r in a]         # bit-identical (exact float equality)
    assert [r.get("val_loss") for r in b] == [r.get("val_loss") for r in a]
    assert [r["lr"] for r in b] == [r["lr"] for r in a]
