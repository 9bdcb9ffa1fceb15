"""`finetune --resume` goes through train's one resume path: the LR schedule keeps its shape on a new
--max-steps, the world-size check runs, the process group is closed on every error; chat content parts."""
import json
from dataclasses import replace

import pytest

from gpt3lab.errors import ConfigError
from gpt3lab.finetune import finetune
from gpt3lab.finetune.data import load_examples
from gpt3lab.train.loop import read_log
from gpt3lab.train.schedule import lr_at

# warmup (1 step) shorter than the 3 steps run: a schedule stretched to 6 steps is visibly different
FAST = ["train.peak_flops=1e12", "train.batch_size=4", "train.save_every=3", "train.eval_every=0",
        "train.device=cpu", "train.warmup_steps=1"]


def _ft(base, data, out, steps, resume=False, overrides=FAST, **kw):
    return finetune(base, data, out, method="full", resume=resume, max_steps=steps, progress=False,
                    overrides=overrides, **kw)


def test_resume_with_more_steps_keeps_the_lr_schedule_unless_rescheduled(base_ckpt, add_data, tmp_path, capsys):
    first = _ft(base_ckpt, add_data, tmp_path / "a", 3)
    _ft(base_ckpt, add_data, tmp_path / "b", 3)
    s = _ft(None, None, tmp_path / "a", 6, resume=True)
    planned = replace(_cfg(first), decay_steps=3)                       # the run's own schedule, continued
    lrs = [r["lr"] for r in read_log(tmp_path / "a")]
    assert lrs == pytest.approx([lr_at(i, planned) for i in range(6)])
    assert lrs[3:] == pytest.approx([planned.lr * planned.min_lr_ratio] * 3)     # decayed, then at its floor
    assert s["train"]["decay_steps"] == 3 and "keeps its shape" in capsys.readouterr().err
    stretched = _ft(None, None, tmp_path / "b", 6, resume=True, reschedule=True)
    assert stretched["train"]["decay_steps"] is None
    assert [r["lr"] for r in read_log(tmp_path / "b")][3:] == pytest.approx(
        [lr_at(i, _cfg(stretched)) for i in range(3, 6)])
    assert lrs[3] != pytest.approx(lr_at(3, _cfg(stretched)))


def _cfg(summary):
    from gpt3lab.config import TrainConfig
    return TrainConfig(**summary["train"])


def test_already_finished_closes_the_process_group(base_ckpt, add_data, tmp_path, monkeypatch):
    import gpt3lab.train.distributed as distributed

    _ft(base_ckpt, add_data, tmp_path / "r", 2)
    closed, real = [], distributed.from_env

    def recording(*a, **kw):
        d = real(*a, **kw)
        close = d.close
        d.close = lambda: (closed.append(True), close())
        return d

    monkeypatch.setattr(distributed, "from_env", recording)
    with pytest.raises(ConfigError, match="already at step 2"):
        _ft(None, None, tmp_path / "r", 2, resume=True)
    assert closed == [True]


def test_resume_on_another_world_size_is_checked(base_ckpt, add_data, tmp_path, monkeypatch):
    # 6 sequences a step on 1 process rounds to 2 micro-steps of 4; on 2 processes (2 x 2) it is 1.5 of them
    over = [*FAST, "train.batch_tokens=192"]
    _ft(base_ckpt, add_data, tmp_path / "w", 1, overrides=over)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="not a whole number of micro-steps of world size 2"):
        _ft(None, None, tmp_path / "w", 2, resume=True, overrides=[])       # batch_size is derived on resume


def test_chat_content_parts_are_accepted_like_the_server(tmp_path, ft_tok):
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "1+1"}, {"type": "text", "text": "="}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "2"}]}]}
    plain = {"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]}
    for name, rec in (("parts", parts), ("plain", plain)):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(rec) + "\n")
    (a,), _ = load_examples(tmp_path / "parts.jsonl", ft_tok, 64)
    (b,), _ = load_examples(tmp_path / "plain.jsonl", ft_tok, 64)
    assert a.ids == b.ids and a.targets == b.targets


def test_typed_endoftext_in_chat_data_is_text(tmp_path, ft_tok):
    rec = {"messages": [{"role": "user", "content": "a<|endoftext|>b"}, {"role": "assistant", "content": "c"}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(rec) + "\n")
    (ex,), _ = load_examples(tmp_path / "d.jsonl", ft_tok, 64)
    assert ex.ids.count(ft_tok.eot_id) == 1 and ex.ids[-1] == ft_tok.eot_id     # only the final one
    assert "<|endoftext|>b" in ft_tok.decode(ex.ids[:-1])
