import math

import pytest

from gpt3lab.config import TrainConfig
from gpt3lab.errors import ConfigError
from gpt3lab.train.schedule import batch_tokens_at, grad_accum_steps, lr_at


def test_lr_warmup_cosine_floor_at_known_steps():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)            # (0 + 1) / 10 of peak
    assert lr_at(4, cfg) == pytest.approx(5e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)            # warmup reaches the peak
    assert lr_at(10, cfg) == pytest.approx(1e-3)           # cosine starts at the peak
    assert lr_at(60, cfg) == pytest.approx(0.5 * (1e-3 + 1e-4))   # half way: the mean of peak and floor
    assert lr_at(35, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, cfg) == pytest.approx(1e-4)          # 10% of peak, then flat
    assert lr_at(10_000, cfg) == pytest.approx(1e-4)


def test_lr_decay_steps_and_no_warmup():
    cfg = TrainConfig(lr=2.0, warmup_steps=0, max_steps=1000, decay_steps=100, min_lr_ratio=0.0)
    assert lr_at(0, cfg) == pytest.approx(2.0)
    assert lr_at(50, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == 0.0 and lr_at(999, cfg) == 0.0
    # monotone non-increasing after warmup
    vals = [lr_at(s, cfg) for s in range(0, 120)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_grad_accum_steps_rounds_to_micro_batches():
    assert grad_accum_steps(None, 4, 64) == 1
    assert grad_accum_steps(4 * 64 * 8, 4, 64) == 8
    assert grad_accum_steps(4 * 64 * 8, 4, 64, world_size=2) == 4
    assert grad_accum_steps(10, 4, 64) == 1                 # never zero


def test_batch_ramp_tokens_at_given_points():
    # micro-batch = 2 * 8 = 16 tokens; ramp 32 -> 160 tokens over the first 1000 tokens
    cfg = TrainConfig(batch_size=2, batch_tokens=160, ramp_tokens=1000, ramp_start_tokens=32)
    assert batch_tokens_at(0, cfg, context=8) == 32
    assert batch_tokens_at(250, cfg, context=8) == 64       # 32 + 0.25 * 128
    assert batch_tokens_at(100, cfg, context=8) == 48       # 44.8 -> 3 whole micro-batches
    assert batch_tokens_at(500, cfg, context=8) == 96
    assert batch_tokens_at(1000, cfg, context=8) == 160
    assert batch_tokens_at(10**9, cfg, context=8) == 160
    assert all(batch_tokens_at(t, cfg, 8) % 16 == 0 for t in range(0, 1200, 7))
    # without a ramp: constant; two processes: whole multiples of 2 * 16
    assert batch_tokens_at(0, TrainConfig(batch_size=2, batch_tokens=160), 8) == 160
    assert batch_tokens_at(0, cfg, 8, world_size=2) == 32


def test_batch_ramp_leaves_lr_alone():
    base = TrainConfig(lr=1e-3, warmup_steps=5, max_steps=50)
    ramped = TrainConfig(lr=1e-3, warmup_steps=5, max_steps=50, batch_tokens=160, ramp_tokens=1000,
                         ramp_start_tokens=32, batch_size=2)
    assert [lr_at(s, base) for s in range(60)] == [lr_at(s, ramped) for s in range(60)]


def test_ramp_start_above_target_is_an_error():
    cfg = TrainConfig(batch_size=2, batch_tokens=32, ramp_tokens=100, ramp_start_tokens=64)
    with pytest.raises(ConfigError, match="ramp_start_tokens=64"):
        batch_tokens_at(0, cfg, 8)
