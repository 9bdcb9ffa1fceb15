"""`gpt3lab finetune` under FSDP on CPU (gloo, 2 processes): sharded checkpoints resume on 2 and on 1
process, the final weights are exported to RUN/model, `gpt3lab export` reads the run; LoRA is refused.

Launched as in tests/train/test_distributed.py: 2 `python -m gpt3lab finetune` processes with the
environment torchrun would give them. Every run: the tiny base of conftest, 4 steps, checkpoints at 2 and 4.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpt3lab
from gpt3lab import checkpoint as ckpt_io
from gpt3lab.cli import main
from gpt3lab.errors import ConfigError
from gpt3lab.finetune import finetune
from gpt3lab.finetune.data import RowBatches
from gpt3lab.model import lora

ROOT = Path(__file__).resolve().parents[2]
SETS = ["train.peak_flops=1e12", "train.eval_batches=1", "train.eval_every=0", "train.save_every=2",
        "train.keep_last=2", "train.device=cpu", "train.precision=fp32", "train.lr=3e-3", "train.warmup_steps=1"]
X = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, args: list[str], nproc: int = 2) -> None:
    """`nproc` ranks of `gpt3lab finetune --out OUT ARGS` (what torchrun would start); waits for them."""
    port, procs = _free_port(), []
    for rank in range(nproc):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "GPT3LAB_NO_TCMALLOC": "1",
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "gpt3lab", "finetune", "--out", str(out),
                                       "--no-progress", *args],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        text, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"rank failed:\n{text[-3000:]}"


def _sets(*extra: str) -> list[str]:
    return [a for kv in (*SETS, *extra) for a in ("--set", kv)]


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "log.jsonl").read_text().splitlines()]


def _copy_step_2(src: Path, dest: Path) -> Path:
    shutil.copytree(src / "checkpoints" / "step_0000002", dest / "checkpoints" / "step_0000002")
    shutil.copy(src / "log.jsonl", dest / "log.jsonl")
    return dest


@pytest.fixture(scope="module")
def fsdp_run(base_ckpt, add_data, tmp_path_factory):
    """A full fine-tune, FSDP x 2 with batch_size 2 per process, 4 steps."""
    run = tmp_path_factory.mktemp("ftdist") / "fsdp"
    _launch(run, ["--from", str(base_ckpt), "--data", str(add_data), "--max-steps", "4",
                  *_sets("train.parallel=fsdp", "train.batch_size=2")])
    return run


def test_fsdp_finetune_writes_sharded_checkpoints_and_a_single_file_model(fsdp_run, tmp_path):
    assert [c.name for c in ckpt_io.list_checkpoints(fsdp_run)] == ["step_0000002", "step_0000004"]
    last = ckpt_io.resolve(fsdp_run)
    assert ckpt_io.is_sharded(last) and len(list((last / "sharded").glob("*.distcp"))) == 2
    model, tok = gpt3lab.load(fsdp_run / "model")        # RUN/model: the final weights, one file
    cfg = ckpt_io.read_config(fsdp_run / "model")
    assert cfg["finetune"]["method"] == "full" and cfg["world_size"] == 2
    # `gpt3lab export` of the run gives the same model
    assert main(["export", str(fsdp_run), str(tmp_path / "exp")]) == 0
    with torch.no_grad():
        got = gpt3lab.load(tmp_path / "exp")[0](X)[0]
        assert torch.equal(got, model(X)[0])
    losses = _losses(fsdp_run)
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_fsdp_finetune_resumes_on_two_processes_with_the_same_losses(fsdp_run, tmp_path):
    run = _copy_step_2(fsdp_run, tmp_path / "r2")
    _launch(run, ["--resume", "--max-steps", "4", *_sets("train.parallel=fsdp")])
    assert _losses(run) == pytest.approx(_losses(fsdp_run), rel=1e-5, abs=1e-6)
    with torch.no_grad():
        a, b = gpt3lab.load(run / "model")[0], gpt3lab.load(fsdp_run / "model")[0]
        torch.testing.assert_close(a(X)[0], b(X)[0], rtol=1e-5, atol=1e-5)


def test_fsdp_finetune_resumes_on_one_process(fsdp_run, tmp_path):
    """Resharding: FSDP x 2 (batch 2) -> 1 process, batch 4 derived, going on from the same data position.
    The losses are close, not equal: 2 ranks average 2 per-rank means of their unmasked tokens."""
    run = _copy_step_2(fsdp_run, tmp_path / "r1")
    s = finetune(None, None, run, resume=True, max_steps=4, progress=False, overrides=["train.parallel=none"])
    assert s["step"] == 4 and s["train"]["batch_size"] == 4
    assert _losses(run)[:2] == _losses(fsdp_run)[:2]
    assert _losses(run) == pytest.approx(_losses(fsdp_run), rel=2e-2)
    # single-file checkpoints from here on: the run's result is its last checkpoint
    assert not ckpt_io.is_sharded(ckpt_io.resolve(run)) and s["result"] == str(ckpt_io.resolve(run))
    gpt3lab.load(run)


def test_row_batches_resume_on_another_world_size_at_the_same_global_position():
    X = torch.arange(24).view(12, 2)
    two = [RowBatches(X, X, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    for src in two:
        src.next_batch()
    one = RowBatches(X, X, 4, seed=1)
    one.load_state_dict(two[0].state_dict())
    ref = RowBatches(X, X, 4, seed=1)
    ref.next_batch()
    assert one.k == 4 and torch.equal(one.next_batch()[0], ref.next_batch()[0])


@pytest.mark.parametrize("setting", ["train.parallel=fsdp", "train.async_checkpoint=true"])
def test_lora_with_sharded_checkpoints_is_refused_up_front(base_ckpt, add_data, tmp_path, setting):
    with pytest.raises(ConfigError, match="--method lora saves single-file checkpoints: use train.parallel=ddp"):
        finetune(base_ckpt, add_data, tmp_path / "l", method="lora", lora_cfg=lora.LoRAConfig(rank=4),
                 max_steps=2, progress=False, overrides=[*SETS, setting])
    assert not (tmp_path / "l" / "checkpoints").exists()


def test_full_finetune_with_async_checkpoints_resumes_and_exports_in_one_process(base_ckpt, add_data, tmp_path):
    """async_checkpoint=true writes sharded checkpoints on one process too: the same resume and export."""
    sets = [*SETS, "train.async_checkpoint=true", "train.batch_size=4"]
    finetune(base_ckpt, add_data, tmp_path / "a", max_steps=2, progress=False, overrides=sets)
    assert ckpt_io.is_sharded(ckpt_io.resolve(tmp_path / "a")) and (tmp_path / "a" / "model").is_dir()
    s = finetune(None, None, tmp_path / "a", resume=True, max_steps=4, progress=False, overrides=sets)
    assert s["step"] == 4 and s["result"] == str(tmp_path / "a" / "model")
    assert ckpt_io.read_config(tmp_path / "a" / "model")["train"]["max_steps"] == 4
    gpt3lab.load(tmp_path / "a" / "model")
