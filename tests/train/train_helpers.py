"""Helpers shared by the training tests (imported by name: tests/*/conftest.py modules share one name)."""
import os
import signal
import subprocess
import time

from gpt3lab.checkpoint import list_checkpoints

# a distillation student in the tests: the tiny preset with one layer instead of the teacher's two
STUDENT = ["model.n_layer=1", "model.context=32", "precision=fp32", "peak_flops=1e12", "eval_batches=2",
           "eval_every=5"]


def kill_after_checkpoint(cmd: list[str], run, env: dict, step: int = 10, timeout: float = 120) -> int:
    """Start `cmd`, SIGKILL it as soon as `run` holds a checkpoint at `step` or later; -> the newest
    checkpoint's step. Fails when the run finished before it could be killed."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and not any(int(c.name[5:]) >= step for c in list_checkpoints(run)):
        time.sleep(0.02)
    alive = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert alive, "the run finished before it could be killed; raise its step count"
    return max(int(c.name[5:]) for c in list_checkpoints(run))
