"""A distill run as processes: kill -9 and --resume reproduce the uninterrupted run exactly; two DDP or FSDP
ranks (gloo, the environment torchrun gives them) match one process with the same global batch."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gpt3lab.checkpoint import read_config, resolve
from gpt3lab.distill.cli import distill

from train_helpers import STUDENT, kill_after_checkpoint

ROOT = Path(__file__).resolve().parents[2]
STEPS = 40


def _cmd(teacher, data, out, *extra):
    return [sys.executable, "-m", "gpt3lab", "distill", "--teacher", str(teacher), "--data", str(data),
            "--out", str(out), "--preset", "tiny", "--max-steps", str(STEPS), "--no-progress", "--alpha", "0.7",
            *(a for s in [*STUDENT, "save_every=5"] for a in ("--set", s)), *extra]


def _env(**more):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **more}


def _log(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def test_sigkill_then_resume_is_bit_identical(tiny_data, teacher, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    ref = subprocess.Popen(_cmd(teacher, tiny_data, full), env=_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)           # the uninterrupted run, meanwhile
    assert kill_after_checkpoint(_cmd(teacher, tiny_data, killed), killed, _env()) < STEPS
    assert ref.wait(timeout=300) == 0, ref.stderr.read()[-2000:]

    # --resume alone: the teacher, alpha and the data come from the run
    resumed = subprocess.run([sys.executable, "-m", "gpt3lab", "distill", "--out", str(killed), "--resume",
                              "--no-progress"], env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _log(full), _log(killed)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))      # records past the checkpoint dropped
    for key in ("loss", "ce_loss", "kd_loss", "val_loss", "lr"):
        assert [r.get(key) for r in b] == [r.get(key) for r in a]    # bit-identical (exact float equality)
    csv = (killed / "log.csv").read_text().splitlines()          # rewritten on resume with its own columns
    assert csv[0].endswith(",ce_loss,kd_loss") and len(csv) == STEPS + 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(tiny_data, teacher, tmp_path, mode):
    """batch_size 2 on each of 2 ranks (gloo; the teacher replicated on each) vs 4 in one process: the same
    losses; only rank 0 logs."""
    steps = ["--max-steps", "4"]
    common = [*(a for s in [*STUDENT, "save_every=2"] for a in ("--set", s)), "--alpha", "0.5"]
    port, procs = _free_port(), []
    for rank in range(2):
        env = _env(GPT3LAB_NO_TCMALLOC="1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "gpt3lab", "distill", "--teacher", str(teacher), "--data", str(tiny_data),
             "--out", str(tmp_path / "ddp"), "--preset", "tiny", *steps, "--no-progress", *common,
             "--set", f"parallel={mode}", "--set", "batch_size=2"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    distill(teacher, tiny_data, tmp_path / "one", preset="tiny", max_steps=4, progress=False, alpha=0.5,
            overrides=[*STUDENT, "save_every=2", "batch_size=4"])
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
    one, ddp = _log(tmp_path / "one"), _log(tmp_path / "ddp")
    assert len(ddp) == 4
    for key in ("loss", "ce_loss", "kd_loss"):
        assert [r[key] for r in ddp] == pytest.approx([r[key] for r in one], rel=1e-5, abs=1e-6)
    assert read_config(resolve(tmp_path / "ddp"))["distill"]["teacher"] == str(teacher.resolve())
