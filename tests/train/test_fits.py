"""Runs that cannot fit are refused before anything is built, as one line naming the estimate and the
memory; `export` onto a file is one line too."""
import re

import pytest
import torch

from gpt3lab.cli import main
from gpt3lab.config import ModelConfig, TrainConfig
from gpt3lab.sizing import memory_per_gpu
from gpt3lab.train import fits


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [x for x in err.splitlines() if "error" in x]


@pytest.mark.parametrize("setting,named", [("model.context=100000000", "context 100000000"),
                                           ("train.batch_size=1e20", "batch_size 100000000000000000000")])
def test_a_run_too_big_for_the_machine_is_one_line(tiny_data, tmp_path, capsys, setting, named):
    rc = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--preset", "tiny",
               "--max-steps", "1", "--no-progress", "--set", setting])
    (line,) = _errors(capsys)
    assert rc == 2 and named in line and "this machine's memory is" in line
    assert len(re.findall(r"[\d.,]+ GB|[\d.]+e\+\d+ bytes", line)) == 2          # the estimate and the memory
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_estimate_is_gpt3lab_size_and_the_check_uses_the_device_memory(monkeypatch):
    m = ModelConfig(vocab_size=100, context=64, n_layer=2, n_head=2, d_model=32)
    t = TrainConfig(batch_size=4)
    assert fits.training_bytes(m, t, 1) == memory_per_gpu(m, micro_batch=4)["total"]
    ckpt = TrainConfig(batch_size=4, activation_checkpointing=True)
    assert fits.training_bytes(m, ckpt, 1) == memory_per_gpu(m, micro_batch=4)["total_ckpt"]
    lora = fits.training_bytes(m, t, 1, frozen=True)             # LoRA: no grads or Adam states for W
    assert fits.training_bytes(m, t, 1) - lora == memory_per_gpu(m)["grads"] + memory_per_gpu(m)["adam"]
    need = fits.training_bytes(m, t, 1)
    monkeypatch.setattr(fits, "device_memory", lambda d: (int(need) + 1, "test memory"))
    fits.check_fits(m, t, 1, torch.device("cpu"))
    monkeypatch.setattr(fits, "device_memory", lambda d: (int(need) - 1, "test memory"))
    with pytest.raises(fits.ConfigError, match="test memory is"):
        fits.check_fits(m, t, 1, torch.device("cpu"))


def test_local_processes_share_the_machines_memory(monkeypatch):
    one, _ = fits.device_memory(torch.device("cpu"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    four, what = fits.device_memory(torch.device("cpu"))
    assert four == one // 4 and "4 local processes" in what


def test_export_onto_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "somefile").write_text("x")
    assert main(["export", str(tmp_path), str(tmp_path / "somefile")]) == 2
    (line,) = _errors(capsys)
    assert "somefile is a file" in line
