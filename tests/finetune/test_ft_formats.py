"""Chat `messages` and Alpaca instruction/input/output fine-tuning data: exactly the assistant / output
tokens are targets; the chat template is the serving one and travels into the fine-tuned checkpoint."""
import json

import pytest
import torch

from gpt3lab.chat import render
from gpt3lab.errors import DataError
from gpt3lab.finetune.data import (ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT, IGNORE, build_rows, load_examples,
                                   read_jsonl)

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "12+34="},
                     {"role": "assistant", "content": "46"}, {"role": "user", "content": "57+21="},
                     {"role": "assistant", "content": "78"}]}


def _targets(ex, tok, context=64):
    X, Y = build_rows([ex], context, tok.eot_id, pack=False)
    return [int(t) for t in Y[0] if t != IGNORE]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_chat_targets_are_exactly_the_assistant_turns(ft_tok, tmp_path):
    (ex,), _ = load_examples(_write(tmp_path / "c.jsonl", [CHAT]), ft_tok, context=64)
    tok = ft_tok
    # the served prompt for the first turn is a token-exact prefix of the training sequence
    prompt1 = tok.encode(render(CHAT["messages"][:2]))
    assert ex.ids[:len(prompt1)] == prompt1
    turn1, turn2 = tok.encode(" 46\n\n"), tok.encode(" 78\n\n")
    assert _targets(ex, tok) == turn1 + turn2 + [tok.eot_id]
    assert tok.decode(ex.ids) == render(CHAT["messages"], add_generation_prompt=False) + "<|endoftext|>"
    i = len(prompt1)
    assert ex.targets[:i] == [False] * i and ex.targets[i:i + len(turn1)] == [True] * len(turn1)
    # a conversation ending on the user: no final eot target
    (ex2,), _ = load_examples(_write(tmp_path / "c2.jsonl", [{"messages": CHAT["messages"][:4]}]), tok, 64)
    assert _targets(ex2, tok) == turn1


def test_chat_uses_a_given_template(ft_tok, tmp_path):
    tpl = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    (ex,), _ = load_examples(_write(tmp_path / "c.jsonl", [CHAT]), ft_tok, 64, chat_template=tpl)
    assert _targets(ex, ft_tok) == ft_tok.encode("46") + ft_tok.encode("78") + [ft_tok.eot_id]


def test_alpaca_targets_are_exactly_the_output(ft_tok, tmp_path):
    recs = [{"instruction": "Add.", "input": "12 34", "output": "46"}, {"instruction": "Say hi.", "output": "hi"}]
    ex1, ex2 = load_examples(_write(tmp_path / "a.jsonl", recs), ft_tok, context=512)[0]
    p1 = ft_tok.encode(ALPACA_PROMPT.format(instruction="Add.", input="12 34"))
    assert ex1.ids[:len(p1)] == p1 and _targets(ex1, ft_tok, 512) == ft_tok.encode("46") + [ft_tok.eot_id]
    p2 = ft_tok.encode(ALPACA_PROMPT_NO_INPUT.format(instruction="Say hi."))
    assert ex2.ids[:len(p2)] == p2 and _targets(ex2, ft_tok, 512) == ft_tok.encode("hi") + [ft_tok.eot_id]


def test_bad_chat_and_alpaca_lines_are_reported(tmp_path):
    p = _write(tmp_path / "bad.jsonl", [{"messages": []}, {"messages": [{"role": "user", "content": "x"}]},
                                        {"messages": [{"role": "bot", "content": "x"}]},
                                        {"instruction": "x"}, {"instruction": "x", "output": "y", "extra": 1}])
    with pytest.raises(DataError) as e:
        read_jsonl(p)
    msg = str(e.value)
    for frag in ("5 bad line(s)", "line 1: messages must be a non-empty list", "line 2: no non-empty assistant",
                 "line 3: messages[0] must be", "line 4: an Alpaca record", "line 5: an Alpaca record"):
        assert frag in msg, frag


def test_finetune_on_chat_keeps_the_base_template(ft_tok, tmp_path):
    from gpt3lab.checkpoint import chat_template_of, read_config, save_checkpoint
    from gpt3lab.cli import main
    from ft_helpers import tiny_model

    tpl = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    m = tiny_model(ft_tok, context=64)
    save_checkpoint(tmp_path / "base", m, m.config, ft_tok, extra={"chat_template": tpl})
    data = _write(tmp_path / "chat.jsonl", [{"messages": CHAT["messages"][1:3]}] * 8)
    assert main(["finetune", "--from", str(tmp_path / "base"), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--max-steps", "2", "--set", "batch_size=2", "--set", "peak_flops=1e12", "--no-progress"]) == 0
    assert chat_template_of(tmp_path / "run") == tpl
    assert read_config(next((tmp_path / "run/checkpoints").iterdir()))["finetune"]["data"].endswith("chat.jsonl")
    assert torch.isfinite(torch.tensor(json.loads((tmp_path / "run/log.jsonl").read_text().splitlines()[-1])["loss"]))
