"""The resume warnings of train and finetune (one path: settle_train_config) are printed by rank 0 only."""
from dataclasses import asdict

import pytest

from gpt3lab.config import ModelConfig, TrainConfig
from gpt3lab.train.cli import settle_train_config


@pytest.mark.parametrize("rank,printed", [("0", True), ("1", False), ("3", False)])
def test_the_schedule_warning_is_printed_once_under_torchrun(rank, printed, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "4")
    mcfg = ModelConfig(vocab_size=64, context=8, n_layer=1, n_head=1, d_model=8)
    old = TrainConfig(batch_size=2, max_steps=10, warmup_steps=1)
    saved = {"model": asdict(mcfg), "train": asdict(old), "world_size": 4}
    for reschedule in (False, True):
        tcfg = settle_train_config(mcfg, TrainConfig(batch_size=2, max_steps=20, warmup_steps=1), [],
                                   (saved, tmp_path), reschedule)
        assert tcfg.decay_steps == (None if reschedule else 10)      # every rank settles the same config
        assert ("warning: --max-steps 20" in capsys.readouterr().err) == printed
