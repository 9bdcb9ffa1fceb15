"""The allocator the launcher picks changes speed only: the same fp32 losses, bit for bit, under each."""
import json
import os
import subprocess
import sys

from gpt3lab import launcher

TINY = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.context=32", "train.batch_size=4",
        "train.precision=fp32", "train.device=cpu", "train.eval_every=0", "train.eval_batches=2",
        "train.warmup_steps=2", "train.lr=1e-2"]


def available() -> list[str]:
    names = ["glibc"]
    names += ["mimalloc"] if launcher.find_mimalloc() else []
    names += ["tcmalloc"] if launcher.find_tcmalloc() else []
    return names


def train_losses(data, out, allocator: str) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", launcher.DISABLE_ENV,
                                                            "GPT3LAB_ALLOCATOR_REEXEC")}
    env.update({launcher.ENV: allocator, "OMP_NUM_THREADS": "1"})
    cmd = [sys.executable, "-m", "gpt3lab", "train", "--data", str(data), "--out", str(out), "--max-steps", "6",
           "--no-progress", *[a for s in TINY for a in ("--set", s)]]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    # said once, in train's start-up summary (the launcher's own line only at --verbose)
    assert p.stderr.count(f"  allocator: {'glibc malloc' if allocator == 'glibc' else allocator}") == 1
    assert "gpt3lab: allocator:" not in p.stderr
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_every_available_allocator_gives_the_same_fp32_losses_bit_for_bit(tiny_data, tmp_path):
    losses = {a: train_losses(tiny_data, tmp_path / a, a) for a in available()}
    ref = losses["glibc"]
    assert len(ref) == 6 and ref[-1] < ref[0]
    for name, got in losses.items():
        assert got == ref, name          # exact float equality: json round-trips doubles exactly
