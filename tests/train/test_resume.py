"""Exact resume: a run killed with SIGKILL and resumed logs the same losses as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gpt3lab.checkpoint import list_checkpoints

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
    proc = subprocess.Popen(_cmd(tiny_data, killed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(int(c.name[5:]) >= 10 for c in list_checkpoints(killed)):
        time.sleep(0.02)
    alive = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert alive, "the run finished before it could be killed; raise STEPS"
    killed_at = max(int(c.name[5:]) for c in list_checkpoints(killed))
    assert killed_at < STEPS

    subprocess.run(_cmd(tiny_data, killed, "--resume"), env=_env(), check=True, capture_output=True)
    a, b = _log(full), _log(killed)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))      # records past the checkpoint dropped
    assert [r["loss"] for r in b] == [r["loss"] for r in a]         # bit-identical (exact float equality)
    assert [r.get("val_loss") for r in b] == [r.get("val_loss") for r in a]
    assert [r["lr"] for r in b] == [r["lr"] for r in a]
