"""Diverged runs (issue 11): a NaN/inf loss or gradient stops the run with a clear error (or skips the step
with train.on_nonfinite=skip); a non-finite checkpoint is never written and the last finite one is never pruned."""
import pytest
import torch
from safetensors.torch import load_file

from gpt3lab.checkpoint import list_checkpoints
from gpt3lab.cli import main
from gpt3lab.config import ModelConfig, TrainConfig
from gpt3lab.errors import ConfigError
from gpt3lab.model import GPT
from gpt3lab.train.loop import MAX_CONSECUTIVE_SKIPS, NonFiniteError, RunInfo, Trainer

from test_loop import TINY, RowSource


class NaNAt(torch.nn.Module):
    """A GPT whose loss is NaN on the forward passes listed in `bad` (1-based; one forward per step here)."""

    def __init__(self, model, bad):
        super().__init__()
        self.inner, self.bad, self.calls = model, set(bad), 0

    def forward(self, x, y):
        self.calls += 1
        logits, loss = self.inner(x, y)
        return logits, loss * float("nan") if self.calls in self.bad else loss


def _trainer(tmp_path, bad, **train):
    torch.manual_seed(0)
    mcfg = ModelConfig(vocab_size=64, **TINY)
    model = NaNAt(GPT(mcfg), bad)
    x = torch.randint(0, 64, (400, 32))
    cfg = TrainConfig(**{**dict(batch_size=2, max_steps=8, lr=1e-3, warmup_steps=0, save_every=1, keep_last=1,
                                eval_batches=1, precision="fp32", peak_flops=1e12), **train})
    info = RunInfo(out_dir=tmp_path / "run", progress=False)
    return Trainer(model, mcfg, cfg, RowSource(x, x), info=info)


def _all_finite(ckpt):
    return all(bool(torch.isfinite(t).all()) for t in load_file(str(ckpt / "model.safetensors")).values())


def test_nan_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(tmp_path):
    tr = _trainer(tmp_path, bad={4})
    with pytest.raises(NonFiniteError, match=r"step 4: loss nan .*diverged.*step_0000003.*on_nonfinite=skip"):
        tr.fit()
    ckpts = list_checkpoints(tmp_path / "run")
    assert [c.name for c in ckpts] == ["step_0000003"] and _all_finite(ckpts[0])
    assert all(bool(torch.isfinite(p).all()) for p in tr.model.parameters())   # no NaN update applied


def test_skip_leaves_the_weights_untouched_and_continues(tmp_path):
    tr = _trainer(tmp_path, bad={4}, on_nonfinite="skip")
    tr.train_step(), tr.train_step(), tr.train_step()
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    rec = tr.train_step()
    assert rec["skipped"] and rec["step"] == 4
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())
    last = tr.fit()
    assert last["step"] == 8 and "skipped" not in last
    assert _all_finite(list_checkpoints(tmp_path / "run")[-1])


def test_skip_gives_up_when_every_step_is_non_finite(tmp_path):
    tr = _trainer(tmp_path, bad=range(1, 100), on_nonfinite="skip", max_steps=50)
    with pytest.raises(NonFiniteError, match=f"{MAX_CONSECUTIVE_SKIPS} non-finite steps in a row"):
        tr.fit()


def test_non_finite_weights_are_never_saved(tmp_path):
    tr = _trainer(tmp_path, bad=())
    tr.fit()
    with torch.no_grad():
        next(tr.model.parameters())[0] = float("inf")
    with pytest.raises(NonFiniteError, match="not saving"):
        tr.save()
    assert [c.name for c in list_checkpoints(tmp_path / "run")] == ["step_0000008"]


def test_bad_on_nonfinite_value():
    with pytest.raises(ConfigError, match="train.on_nonfinite='ignore'"):
        TrainConfig(on_nonfinite="ignore")


def test_diverging_cli_run_exits_non_zero_with_one_line(tiny_data, tmp_path, capsys):
    rc = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--preset", "tiny",
               "--max-steps", "30", "--set", "train.lr=1e5", "--set", "model.context=32",
               "--set", "peak_flops=1e12", "--set", "precision=fp32", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "diverged" in err and "Traceback" not in err
    assert all(_all_finite(c) for c in list_checkpoints(tmp_path / "r"))
