"""DDP through the Distributed seam: torchrun with 2 CPU processes (gloo) x batch 2 == one process x batch 4."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _losses(out):
    return [json.loads(x)["loss"] for x in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ddp_two_processes_match_one_big_batch(tiny_data, tmp_path):
    common = ["--data", str(tiny_data), "--preset", "tiny", "--max-steps", "3", "--set", "precision=fp32",
              "--set", "peak_flops=1e12", "--set", "eval_batches=1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "gpt3lab",
                    "train", "--out", str(tmp_path / "ddp"), "--set", "batch_size=2", "--set", "parallel=ddp",
                    *common], env=env, check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "gpt3lab", "train", "--out", str(tmp_path / "one"), "--set",
                    "batch_size=4", *common], env=env, check=True, capture_output=True, timeout=300)
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "one"), rel=1e-5)
