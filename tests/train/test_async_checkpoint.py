"""Asynchronous checkpoints (train.async_checkpoint=true, one process): training continues while a save is
written; a SIGKILL in the middle of a save leaves the previous checkpoint the newest complete one, and a
resume from it reproduces an uninterrupted run bit for bit."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import gpt3lab
from gpt3lab import checkpoint as ckpt_io
from gpt3lab.cli import main

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--preset", "tiny", "--no-progress", "--set", "save_every=2", "--set", "eval_every=0",
        "--set", "eval_batches=1", "--set", "precision=fp32", "--set", "peak_flops=1e12",
        "--set", "model.context=32", "--set", "async_checkpoint=true"]

# Runs `gpt3lab train` with DCP's file writer stalled forever at its second save (after touching MARK), so the
# test can kill the process while that save is in flight. Only the test's own process is patched.
STALL_SECOND_SAVE = """
import sys, time
from pathlib import Path
import torch.distributed.checkpoint as dcp
write, calls = dcp.FileSystemWriter.write_data, []
def stalled(self, plan, planner):
    calls.append(1)
    if len(calls) == 2:
        Path(sys.argv[1]).write_text("saving")
        time.sleep(600)
    return write(self, plan, planner)
dcp.FileSystemWriter.write_data = stalled
from gpt3lab.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _steps(run: Path) -> list[int]:
    path = run / "log.jsonl"
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.endswith("}")] if path.exists() else []


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "log.jsonl").read_text().splitlines()]


def test_kill_during_an_async_save_keeps_the_previous_checkpoint(tiny_data, tmp_path):
    run, mark = tmp_path / "run", tmp_path / "mark"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", STALL_SECOND_SAVE, str(mark), "train", "--data", str(tiny_data),
                             "--out", str(run), "--max-steps", "20", *ARGS], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    # the save of step 4 is stalled; training goes on to step 6, where the next save waits for it
    while time.time() < deadline and proc.poll() is None and not (mark.exists() and 6 in _steps(run)):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert mark.exists() and max(_steps(run)) == 6            # trained on while step 4 was being written
    assert [c.name for c in ckpt_io.list_checkpoints(run)] == ["step_0000002"]
    assert (run / "checkpoints" / ".tmp-step_0000004").is_dir()   # the torn save, ignored

    assert main(["export", str(run), str(tmp_path / "out")]) == 0
    model, _ = gpt3lab.load(tmp_path / "out")
    assert ckpt_io.read_config(tmp_path / "out")["train"]["async_checkpoint"] is True

    # resume from step 2 (async saves again) == an uninterrupted synchronous single-file run, bit for bit
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "6", "--no-progress"]) == 0
    full = tmp_path / "full"
    assert main(["train", "--data", str(tiny_data), "--out", str(full), "--max-steps", "6", *ARGS[:-2]]) == 0
    assert _losses(run) == _losses(full)
    assert [c.name for c in ckpt_io.list_checkpoints(run)] == ["step_0000004", "step_0000006"]
    x = torch.randint(0, 300, (1, 32))
    assert main(["export", str(run), str(tmp_path / "out6")]) == 0
    with torch.no_grad():
        assert torch.equal(gpt3lab.load(tmp_path / "out6")[0](x)[0], gpt3lab.load(full)[0](x)[0])
