"""Data and tensor parallelism on CPU (gloo, 2 processes): DDP, FSDP and TP equal one process with the same
global batch; FSDP/TP checkpoints are sharded and reshard on resume.

Each mode is one launch of 2 `python -m gpt3lab train` processes with the environment torchrun would
give them (RANK, WORLD_SIZE, MASTER_ADDR, ...), both modes at once. The reference run trains in-process.
Every run: tiny preset, 4 steps under a batch ramp of 1, 1, 2, 2 micro-steps (so the ramp and the skipped
all-reduce of accumulation are exercised), checkpoints at steps 2 and 4.
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
from gpt3lab.config import TrainConfig
from gpt3lab.errors import CheckpointError, ConfigError
from gpt3lab.train import distributed
from gpt3lab.train.cli import _resume_batch_size, train
from gpt3lab.train.schedule import check_world_size

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["--preset", "tiny", "--max-steps", "4", "--no-progress", "--set", "precision=fp32",
          "--set", "peak_flops=1e12", "--set", "eval_batches=1", "--set", "eval_every=0",
          "--set", "save_every=2", "--set", "keep_last=2", "--set", "batch_tokens=512",   # 512 = 2 x (4 x 64)
          "--set", "ramp_tokens=1024", "--set", "ramp_start_tokens=256"]   # steps of 1, 1, 2, 2 micro-steps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# mode -> the settings of a 2-process launch; a global micro-batch of 4 sequences in each (tp: FSDP over 1
# x TP over 2, saving in the background)
MODES = {"ddp": ["parallel=ddp", "batch_size=2"], "fsdp": ["parallel=fsdp", "batch_size=2"],
         "tp": ["parallel=fsdp", "tensor_parallel=2", "batch_size=4", "async_checkpoint=true"]}


def _launch(data, out: Path, mode: str, args=None, nproc: int = 2) -> list[subprocess.Popen]:
    """`nproc` ranks of `gpt3lab train` with MODES[mode] (what torchrun would start)."""
    port = _free_port()
    args = [*COMMON, *(a for s in MODES[mode] for a in ("--set", s))] if args is None else args
    procs = []
    for rank in range(nproc):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "GPT3LAB_NO_TCMALLOC": "1",
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "gpt3lab", "train", "--data", str(data), "--out", str(out), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _wait(launched: dict) -> None:
    for name, procs in launched.items():
        for p in procs:
            out, _ = p.communicate(timeout=300)
            assert p.returncode == 0, f"{name} rank failed:\n{out[-3000:]}"


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """{mode: run dir} for ddp, fsdp and tp (2 processes each) and 'one' (1 process, batch_size 4)."""
    root = tmp_path_factory.mktemp("dist")
    launched = {mode: _launch(tiny_data, root / mode, mode) for mode in MODES}
    train(tiny_data, root / "one", preset="tiny", progress=False, max_steps=4,
          overrides=[o for o in COMMON[5:] if o != "--set"] + ["batch_size=4"])
    _wait(launched)
    return {m: root / m for m in (*MODES, "one")} | {"root": root}


@pytest.mark.parametrize("mode", list(MODES))
def test_two_processes_match_one_with_the_same_global_batch(runs, mode):
    one = _losses(runs["one"])
    assert len(one) == 4 and one[-1] < one[0]
    assert _losses(runs[mode]) == pytest.approx(one, rel=1e-5, abs=1e-6)
    # only rank 0 wrote: one record per step, checkpoints at 2 and 4
    assert [c.name for c in ckpt_io.list_checkpoints(runs[mode])] == ["step_0000002", "step_0000004"]


@pytest.mark.parametrize("mode", list(MODES))
def test_export_loads_in_one_process_with_the_same_logits(runs, mode, tmp_path):
    """FSDP/TP checkpoints are sharded (one file per rank); `gpt3lab export` makes the single file."""
    ckpt = ckpt_io.resolve(runs[mode])
    assert ckpt_io.is_sharded(ckpt) == (mode != "ddp")
    assert sorted(p.name for p in (ckpt / "sharded").glob("*.distcp")) == (
        [] if mode == "ddp" else ["__0_0.distcp", "__1_0.distcp"])
    assert main(["export", str(runs[mode]), str(tmp_path / "out")]) == 0
    x = torch.randint(0, 300, (2, 64), generator=torch.Generator().manual_seed(0))
    ref, _ = gpt3lab.load(runs["one"])
    got, _ = gpt3lab.load(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(got(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)
    cfg = ckpt_io.read_config(tmp_path / "out")
    assert cfg["world_size"] == (1 if mode == "tp" else 2) and cfg["train"]["parallel"] == MODES[mode][0][9:]


def test_a_sharded_checkpoint_given_to_load_says_to_export_it(runs, capsys):
    with pytest.raises(CheckpointError, match="sharded checkpoint.*gpt3lab export"):
        gpt3lab.load(runs["fsdp"])
    assert main(["generate", str(runs["fsdp"]), "--prompt", "the"]) == 2
    assert "gpt3lab export" in capsys.readouterr().err


def test_fsdp_checkpoint_resumes_on_one_process(runs, tiny_data):
    """Across world size and mode: FSDP x 2 (batch 2) at step 2 -> 1 process (batch 4 derived) to step 4."""
    run = runs["root"] / "resumed"
    shutil.copytree(runs["fsdp"] / "checkpoints" / "step_0000002", run / "checkpoints" / "step_0000002")
    shutil.copy(runs["fsdp"] / "log.jsonl", run / "log.jsonl")
    s = train(None, run, resume=True, overrides=["parallel=none"], progress=False)
    assert s["step"] == 4 and s["train"]["batch_size"] == 4
    assert _losses(run) == pytest.approx(_losses(runs["one"]), rel=1e-5, abs=1e-6)


def test_checkpoints_resume_on_two_processes_in_fsdp_and_in_tp(runs, tiny_data):
    """Resharding: the FSDP x 2 step-2 checkpoint resumes as FSDP x 2 and as TP x 2, and the one-process
    (single-file) step-2 checkpoint as TP x 2; all with the losses of the uninterrupted run."""
    launched = {}
    for src, mode in (("fsdp", "fsdp"), ("fsdp", "tp"), ("one", "tp")):
        run = runs["root"] / f"resumed-{src}-{mode}"
        shutil.copytree(runs[src] / "checkpoints" / "step_0000002", run / "checkpoints" / "step_0000002")
        shutil.copy(runs[src] / "log.jsonl", run / "log.jsonl")
        settings = [s for s in MODES[mode] if not s.startswith("batch_size")]     # derived on resume
        launched[run] = _launch(tiny_data, run, mode, ["--resume", "--no-progress", "--max-steps", "4",
                                                       *(a for s in settings for a in ("--set", s))])
    _wait(launched)
    for run in launched:
        assert _losses(run) == pytest.approx(_losses(runs["one"]), rel=1e-5, abs=1e-6), run.name


@pytest.mark.slow
def test_fsdp_x_tp_on_four_processes_matches_one(runs, tiny_data):
    """2-D: FSDP over 2 x TP over 2 (4 processes, batch_size 2 per data-parallel replica)."""
    run = runs["root"] / "fsdp-x-tp"
    _wait({"fsdp x tp": _launch(tiny_data, run, "tp", [*COMMON, "--set", "parallel=fsdp", "--set",
                                                       "tensor_parallel=2", "--set", "batch_size=2"], nproc=4)})
    assert _losses(run) == pytest.approx(_losses(runs["one"]), rel=1e-5, abs=1e-6)


# ---- bad input --------------------------------------------------------------------------------------

def test_fsdp_without_torchrun_is_a_clear_error(tiny_data, tmp_path, capsys, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ConfigError, match="needs a torchrun launch"):
        distributed.from_env("fsdp", torch.device("cpu"))
    assert main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--preset", "tiny",
                 "--set", "parallel=fsdp", "--no-progress"]) == 2
    assert "torchrun" in capsys.readouterr().err


def test_ddp_without_torchrun_runs_single_process_with_a_warning(monkeypatch, capsys):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    d = distributed.from_env("ddp", torch.device("cpu"))
    assert type(d) is distributed.Distributed and d.world_size == 1
    assert "single process" in capsys.readouterr().err


def test_world_size_must_divide_the_batch():
    cfg = TrainConfig(batch_size=2, batch_tokens=6 * 2 * 64)      # 12 sequences
    check_world_size(cfg, 64, 1)
    check_world_size(cfg, 64, 3)                                  # 3 x 2 divides 12
    with pytest.raises(ConfigError, match="world size 4 x batch_size 2"):
        check_world_size(cfg, 64, 4)
    saved = {"train": {"batch_size": 2}, "world_size": 3}         # global micro-batch of 6
    assert _resume_batch_size(saved, TrainConfig(batch_size=2), [], 2).batch_size == 3
    assert _resume_batch_size(saved, TrainConfig(batch_size=2), [], 6).batch_size == 1
    with pytest.raises(ConfigError, match="world size 4: it does not divide"):
        _resume_batch_size(saved, TrainConfig(batch_size=2), [], 4)
    with pytest.raises(ConfigError, match="batch_size=5"):
        _resume_batch_size(saved, TrainConfig(batch_size=5), ["batch_size=5"], 2)
