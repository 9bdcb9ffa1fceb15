"""Fine-tuning data: masking, packing/padding, validation errors, split, the resumable batch source."""
import json

import pytest
import torch
import torch.nn.functional as F

from gpt3lab.errors import ConfigError, DataError
from gpt3lab.finetune.data import (IGNORE, Example, RowBatches, build_rows, encode_example, load_datasets, load_examples,
                                   read_jsonl, split)

from ft_helpers import tiny_model


def test_loss_is_cross_entropy_over_completion_tokens_only(ft_tok):
    ex = encode_example(ft_tok, "12+34=", "46")
    p, c = ft_tok.encode("12+34="), ft_tok.encode("46")
    assert ex.ids == p + c + [ft_tok.eot_id] and ex.n_prompt == len(p)
    X, Y = build_rows([ex], context=16, pad_id=ft_tok.eot_id)
    model = tiny_model(ft_tok, context=16).eval()
    _, loss = model(X, Y)
    # direct: logits of the bare example; position i predicts token i+1; targets = completion + eot
    logits, _ = model(torch.tensor([ex.ids]))
    pos = range(len(p) - 1, len(ex.ids) - 1)
    direct = F.cross_entropy(logits[0, list(pos)], torch.tensor(ex.ids[len(p):]))
    assert torch.allclose(loss, direct, atol=1e-6)
    assert (Y != IGNORE).sum() == len(c) + 1
    assert Y[0, len(p) + len(c) - 1] == ft_tok.eot_id          # the model learns to stop


def test_include_prompt_targets_every_example_token(ft_tok):
    ex = encode_example(ft_tok, "12+34=", "46")
    X, Y = build_rows([ex], 16, ft_tok.eot_id, include_prompt=True)
    assert Y[0, :len(ex.ids) - 1].tolist() == ex.ids[1:]
    assert (Y[0, len(ex.ids) - 1:] == IGNORE).all()           # padding never counts


def test_empty_prompt_starts_from_eot(ft_tok):
    ex = encode_example(ft_tok, "", "46")
    assert ex.ids[0] == ft_tok.eot_id and ex.n_prompt == 1


def test_pack_keeps_examples_whole_and_pad_puts_one_per_row():
    exs = [Example([i] * 3 + [100 + i] * 2, 3, i) for i in range(7)]    # 5 tokens: 3 prompt, 2 targets
    X, Y = build_rows(exs, 16, pad_id=0, pack=True)                       # rows of 17 tokens: 3 examples
    assert X.shape == (3, 16)
    assert X[0, :15].tolist() == sum((e.ids for e in exs[:3]), []) and X[0, 15] == 0
    assert X[2, :5].tolist() == exs[6].ids and (X[2, 5:] == 0).all()
    # the second example's prompt (row positions 5..7) is not a target; its completion is
    assert Y[0, 4:9].tolist() == [IGNORE, IGNORE, IGNORE, 101, 101]
    XP, YP = build_rows(exs, 16, pad_id=0, pack=False)
    assert XP.shape == (7, 16) and all(XP[i, :5].tolist() == exs[i].ids for i in range(7))
    assert (Y != IGNORE).sum() == (YP != IGNORE).sum() == 7 * 2


def _write(tmp_path, lines):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_bad_lines_are_reported_with_numbers(tmp_path):
    p = _write(tmp_path, ['{"prompt": "a", "completion": "b"}', '{"prompt": "a", "completion": ',
                          '{"prompt": "a", "completion": ""}', '{"prompt": "a"}', '[1, 2]',
                          '{"prompt": 3, "completion": "x"}', '{"prompt": "a", "completions": "x"}'])
    with pytest.raises(DataError) as e:
        read_jsonl(p)
    msg = str(e.value)
    for frag in ("6 bad line(s)", "line 2: invalid JSON", "line 3: empty completion", "line 4: missing key(s) completion",
                 "line 5: expected a JSON object", "line 6: prompt must be a string", "(and 1 more)"):
        assert frag in msg, frag


def test_too_long_examples_are_skipped_and_counted_or_strict_error(ft_tok, tmp_path):
    p = _write(tmp_path, [json.dumps({"prompt": "1+1=", "completion": "2"}),
                          json.dumps({"prompt": "The quick brown fox " * 10, "completion": "x"}),
                          json.dumps({"prompt": "2+2=", "completion": "4"})])
    exs, stats = load_examples(p, ft_tok, context=16)
    assert len(exs) == 2 and stats.skipped_too_long == 1 and stats.skipped_lines == [2]
    with pytest.raises(DataError, match="line 2: example is .* tokens, longer than"):
        load_examples(p, ft_tok, context=16, strict=True)


def test_missing_file_and_no_examples(ft_tok, tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no examples"):
        read_jsonl(_write(tmp_path, ["", "  "]))


def test_split_is_seeded_and_disjoint():
    items = list(range(50))
    a, b = split(items, 0.2, seed=3), split(items, 0.2, seed=3)
    assert a == b and len(a[1]) == 10 and sorted(a[0] + a[1]) == items
    assert split(items, 0.2, seed=4) != a
    with pytest.raises(ConfigError):
        split(items, 1.0, seed=0)


def test_separate_val_file(ft_tok, add_data, tmp_path):
    val = _write(tmp_path, [json.dumps({"prompt": "1+1=", "completion": "2"})] * 3)
    train, v, stats = load_datasets(add_data, ft_tok, 32, 4, val_data=val, seed=0)
    assert stats.train_examples == 64 and stats.val_examples == 3 and v is not None


def test_plain_text_rows_target_every_token_once(ft_tok, tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("The quick brown fox jumps over the lazy dog. " * 8)
    ids = ft_tok.encode(p.read_text()) + [ft_tok.eot_id]
    exs, _ = load_examples(p, ft_tok, context=16)
    X, Y = build_rows(exs, 16, ft_tok.eot_id, pack=False)
    targets = [t for t in Y.flatten().tolist() if t != IGNORE]
    assert targets == ids[1:]


def test_batches_resume_exactly_and_ranks_partition_rows():
    X = torch.arange(10 * 4).view(10, 4)
    src = RowBatches(X, X.clone(), batch_size=3, seed=1)
    for _ in range(5):
        src.next_batch()
    state = src.state_dict()
    want = [src.next_batch()[0] for _ in range(4)]
    again = RowBatches(X, X.clone(), batch_size=3, seed=1)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(want, [again.next_batch()[0] for _ in range(4)]))
    r0, r1 = (RowBatches(X, X.clone(), 5, seed=1, rank=r, world_size=2) for r in (0, 1))
    rows = torch.cat([r0.next_batch()[0], r1.next_batch()[0]])[:, 0].div(4).long().tolist()
    assert sorted(rows) == list(range(10))                      # one epoch: every row once across ranks
    with pytest.raises(DataError, match="same data file"):
        RowBatches(X[:8], X[:8], 3, seed=1).load_state_dict(state)
