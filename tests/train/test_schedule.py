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


# ---- data parallelism, token schedules, GPT-3 defaults ------------------------------------------------

from dataclasses import replace  # noqa: E402

from gpt3lab.presets import GPT3_PRESETS, get_preset  # noqa: E402
from gpt3lab.train.schedule import (check_world_size, full_step_tokens, lr_at_tokens, lr_for,  # noqa: E402
                                    scaled, schedule_scale)


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_ramp_under_data_parallelism_equals_one_process_with_the_global_micro_batch(world):
    # W ranks x batch_size 2 must step exactly like 1 process x batch_size 2W (the loader's contract)
    ranks = TrainConfig(batch_size=2, batch_tokens=64 * 2 * 8 * 4, ramp_tokens=20_000, ramp_start_tokens=1024)
    one = replace(ranks, batch_size=2 * world)
    seen_r = seen_1 = 0
    for _ in range(60):                                  # walk both runs through (and past) the ramp
        a, b = batch_tokens_at(seen_r, ranks, 64, world), batch_tokens_at(seen_1, one, 64, 1)
        assert a == b and a % (2 * 64 * world) == 0      # whole micro-steps on every rank
        seen_r, seen_1 = seen_r + a, seen_1 + b
    assert batch_tokens_at(seen_r, ranks, 64, world) == 64 * 2 * 8 * 4


def test_token_lr_schedule_at_known_points():
    cfg = TrainConfig(lr=1e-3, min_lr_ratio=0.1, warmup_tokens=1000, decay_tokens=11_000, max_steps=10)
    assert lr_at_tokens(500, cfg, 8) == pytest.approx(5e-4)
    assert lr_at_tokens(1000, cfg, 8) == pytest.approx(1e-3)
    assert lr_at_tokens(6000, cfg, 8) == pytest.approx(0.55e-3)          # half way down the cosine
    assert lr_at_tokens(11_000, cfg, 8) == lr_at_tokens(10**12, cfg, 8) == pytest.approx(1e-4)
    # the loop's LR: by tokens at the END of the step when token fields are set, else by step
    assert lr_for(3, 400, 100, cfg, 8) == pytest.approx(5e-4)
    plain = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=100)
    assert [lr_for(s, 0, 1, plain, 8) for s in range(100)] == [lr_at(s, plain) for s in range(100)]


def test_schedule_scale_auto_squeezes_the_paper_schedule_to_the_run():
    p = get_preset("gpt3-small")
    cfg = replace(TrainConfig(**p.train), max_steps=1000)        # 1000 x 524288 tokens = 0.524B of 300B
    assert full_step_tokens(cfg, 2048) == 524_288
    f = 1000 * 524_288 / 300e9
    assert schedule_scale(cfg, 2048) == pytest.approx(f)
    s = scaled(cfg, 2048)
    assert s.warmup_tokens == int(375e6 * f) and s.decay_tokens == int(260e9 * f)
    assert s.ramp_tokens == int(4e9 * f) and s.ramp_start_tokens == 32_768
    # a run of the paper's length (or longer) keeps the paper's numbers
    assert scaled(replace(cfg, max_steps=600_000), 2048) == replace(cfg, max_steps=600_000)
    assert scaled(replace(cfg, schedule_scale="none"), 2048).warmup_tokens == 375_000_000
    assert scaled(replace(cfg, schedule_scale="0.5"), 2048).decay_tokens == 130_000_000_000
    # the LR reaches the floor exactly where the scaled decay ends (86.7% of the run), then stays
    end = s.decay_tokens
    assert lr_at_tokens(end, s, 2048) == pytest.approx(0.1 * cfg.lr)
    assert lr_at_tokens(end - 10**6, s, 2048) > 0.1 * cfg.lr


def test_gpt3_presets_carry_the_paper_training_defaults():
    for name in GPT3_PRESETS:
        t = get_preset(name).train
        cfg = TrainConfig(**t)
        assert cfg.warmup_tokens == 375_000_000 and cfg.decay_tokens == 260_000_000_000
        assert cfg.ramp_start_tokens == 32_768 and 4e9 <= cfg.ramp_tokens <= 12e9
        assert cfg.schedule_scale == "auto" and cfg.min_lr_ratio == 0.1
        assert cfg.batch_tokens % 2048 == 0
        check_world_size(replace(cfg, batch_size=8), 2048, 8)    # 8 GPUs x 8 sequences divide every batch
    assert get_preset("gpt3-small").train["ramp_tokens"] == 4_000_000_000
    assert get_preset("gpt3-175b").train["ramp_tokens"] == 12_000_000_000
    assert get_preset("gpt3-175b").train["batch_tokens"] == 1600 * 2048


def test_bad_schedule_scale_is_a_config_error():
    with pytest.raises(ConfigError, match="schedule_scale='half'"):
        TrainConfig(schedule_scale="half")
