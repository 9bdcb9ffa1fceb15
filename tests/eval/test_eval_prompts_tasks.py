import json
import random

import pytest

from gpt3lab.errors import ConfigError, DataError, UserError
from gpt3lab.eval.harness import evaluate_task
from gpt3lab.eval.prompts import Item, PromptFormat, build_prompt, render
from gpt3lab.eval.tasks import (ARITH, builtin_task, last_word_items, load_task_file, scramble, word_source)

POOL = [Item(f"Q: What is {i} plus 1? A:", target=str(i + 1)) for i in range(10)]


def test_prompt_layout_exact():
    fmt = PromptFormat("Add the numbers.", " ", "\n\n")
    assert render(fmt, POOL[:2], POOL[5]) == ("Add the numbers.\n\nQ: What is 0 plus 1? A: 1\n\n"
                                              "Q: What is 1 plus 1? A: 2\n\nQ: What is 5 plus 1? A:")
    mc = Item("Color of the sky:", choices=["green", "blue"], answer=1)
    assert render(PromptFormat(separator="\n"), [mc], Item("Grass is")) == "Color of the sky: blue\nGrass is"


def test_prompt_deterministic_per_seed_and_never_the_test_item():
    fmt = PromptFormat()
    for index in range(len(POOL)):
        a = build_prompt(fmt, POOL, POOL[index], 5, seed=3, index=index)
        b = build_prompt(fmt, POOL, POOL[index], 5, seed=3, index=index)
        assert a == b and a.shots == 5 and len(set(a.example_ids)) == 5
        assert index not in a.example_ids
        assert a.text.count(POOL[index].context) == 1 and a.text.endswith(POOL[index].context)
    draws = {tuple(build_prompt(fmt, POOL, POOL[0], 5, seed=s, index=0).example_ids) for s in range(6)}
    assert len(draws) > 1                                        # the seed matters
    # a separate pool that contains a copy of the test item: excluded by content
    dup = POOL[:4] + [Item(POOL[7].context, target="8")]
    for s in range(20):
        p = build_prompt(fmt, dup, POOL[7], 4, seed=s, index=0, pool_is_test_set=False)
        assert 4 not in p.example_ids and p.text.count(POOL[7].context) == 1


def test_k_larger_than_pool_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"10 examples requested but the few-shot pool has only 9"):
        build_prompt(PromptFormat(), POOL, POOL[0], 10, seed=0, index=0)
    build_prompt(PromptFormat(), POOL, POOL[0], 9, seed=0, index=0)  # 9 of 10 minus the test item is fine


def test_trimming_drops_leading_examples_and_errors_when_nothing_fits():
    count = len                                                   # 1 "token" per character
    full = build_prompt(PromptFormat(), POOL, POOL[0], 4, 1, 0)
    budget = len(full.text) - 1
    p = build_prompt(PromptFormat(), POOL, POOL[0], 4, 1, 0, count_tokens=count, budget=budget)
    assert p.shots == 3 and p.trimmed and p.example_ids == full.example_ids[1:] and len(p.text) <= budget
    with pytest.raises(UserError, match="do not fit"):
        build_prompt(PromptFormat(), POOL, POOL[0], 4, 1, 0, count_tokens=count, budget=budget, strict=True)
    with pytest.raises(UserError, match="even with 0 examples"):
        build_prompt(PromptFormat(), POOL, POOL[0], 4, 1, 0, count_tokens=count, budget=5)


def write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_jsonl_task_with_header_and_spec_file(tmp_path):
    f = write(tmp_path / "mc.jsonl", [{"gpt3lab_task": {"name": "colors", "context_field": "q",
                                                        "choices_field": "opts", "answer_field": "a"}},
                                      {"q": "Sky:", "opts": ["blue", "red"], "a": 0},
                                      {"q": "Grass:", "opts": ["blue", "green"], "a": "green"}])
    t = load_task_file(f)
    assert (t.name, t.kind, [i.answer for i in t.items]) == ("colors", "multiple_choice", [0, 1])
    write(tmp_path / "test.jsonl", [{"question": "2+2", "answer": "4"}])
    write(tmp_path / "train.jsonl", [{"question": "1+1", "answer": "2"}, {"question": "1+2", "answer": "3"}])
    (tmp_path / "spec.json").write_text(json.dumps({"name": "add", "kind": "generation", "data": "test.jsonl",
                                                    "fewshot_data": "train.jsonl", "context_field": "question",
                                                    "target_field": "answer", "separator": "\n"}))
    t = load_task_file(tmp_path / "spec.json")
    assert t.kind == "generation" and [i.target for i in t.pool] == ["2", "3"] and t.fmt.separator == "\n"


@pytest.mark.parametrize("lines, match", [
    (['{"context": "a", "target": "b"}', '{"context": "c", "target": '], r"bad\.jsonl:2: malformed JSON"),
    ([{"context": "a", "choices": ["x", "y"], "answer": 0}, {"context": "b", "choices": ["x", "y"], "answer": 5}],
     r"bad\.jsonl:2: field 'answer'=5"),
    ([{"context": "a", "target": "b"}, {"context": "b", "target": "c"}, {"text": "c"}], r"bad\.jsonl:3: missing string field 'context'"),
    ([{"gpt3lab_task": {"kind": "essay"}}, {"context": "a", "target": "b"}], r"kind='essay'"),
    ([{"gpt3lab_task": {"max_tokens": "x"}}, {"context": "a", "target": "b"}], r"max_tokens='x' must be a positive"),
    ([{"gpt3lab_task": {"max_tokens": -3}}, {"context": "a", "target": "b"}], r"max_tokens=-3 must be a positive"),
    ([{"gpt3lab_task": {"max_tokens": True}}, {"context": "a", "target": "b"}], r"max_tokens=True must be a positive"),
])
def test_malformed_task_files_name_the_line(tmp_path, lines, match):
    with pytest.raises(DataError, match=match):
        load_task_file(write(tmp_path / "bad.jsonl", lines))


def test_non_utf8_task_files_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"context": "a", "target": "b"}\n{"context": "caf\xe9", "target": "b"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not UTF-8 \(byte 0xe9 at offset 48\)"):
        load_task_file(bad)
    (tmp_path / "spec.json").write_bytes(b'{"data": "bad.jsonl", "name": "\xff"}')
    with pytest.raises(DataError, match=r"spec\.json:1: not UTF-8"):
        load_task_file(tmp_path / "spec.json")
    (tmp_path / "spec.json").write_text('{"data": "bad.jsonl"}')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not UTF-8"):
        load_task_file(tmp_path / "spec.json")


def test_builtin_arithmetic_is_correct_and_seeded():
    for name in ARITH:
        t = builtin_task(name, n=30, pool=10, seed=1)
        assert len(t.items) == 30 and len(t.pool) == 10
        assert not {i.context for i in t.items} & {i.context for i in t.pool}
        for it in t.items:
            expr = it.context.removeprefix("Q: What is ").removesuffix("? A:")
            expr = expr.replace(" plus ", "+").replace(" minus ", "-").replace(" times ", "*")
            assert eval(expr) == int(it.target)
    assert builtin_task("arith-3d-", n=5, seed=2).items == builtin_task("arith-3d-", n=5, seed=2).items
    assert builtin_task("arith-3d-", n=5, seed=2).items != builtin_task("arith-3d-", n=5, seed=3).items
    assert all(len(x.rstrip('?')) == 5 for it in builtin_task("arith-5d+", n=10).items for x in it.context.split()[3:6:2])


def test_scrambles_keep_the_letters():
    rng = random.Random(0)
    w = "succession"
    cl = scramble(w, "cl", rng)
    assert cl != w and cl in w + w and sorted(cl) == sorted(w)
    a1 = scramble(w, "a1", rng)
    assert a1[0] == "s" and a1[-1] == "n" and sorted(a1) == sorted(w) and a1 != w
    a2 = scramble(w, "a2", rng)
    assert a2[:2] == "su" and a2[-2:] == "on" and sorted(a2) == sorted(w)
    ri = scramble(w, "ri", rng)
    assert ri[::2] == w and len(ri) == 2 * len(w) - 1
    assert scramble(w, "rw", rng) == "noisseccus"
    src, words = word_source("builtin")
    t = builtin_task("unscramble-a1", n=20, pool=5, words="builtin")
    assert src == "builtin" and all(i.target in words and i.context.endswith(" =") for i in t.items)


def test_last_word_items():
    text = "The cat sat on the mat today. " * 100
    items = last_word_items(text, 10, seed=0, min_words=10, max_words=20)
    assert len(items) == 10
    for it in items:
        assert it.target == " today" and (it.context + it.target + ".") in text


def test_evaluate_generation_with_trimming(model, tok):
    t = builtin_task("arith-2d+", n=4, pool=40)
    r = evaluate_task(model, tok, t, k=30, limit=3)      # 30 examples cannot fit a 64-token context
    assert r.n == 3 and r.trimmed == 3 and r.mean_shots < 30 and 0 <= r.metrics["exact_match"] <= 1
    with pytest.raises(UserError, match="do not fit"):
        evaluate_task(model, tok, t, k=30, limit=3, strict=True)


def test_lambada_passages_keep_the_texts_own_newlines():
    """Verse keeps its line breaks (a model trained on it predicts "\\n" where they were flattened away)."""
    verse = ("ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
             "Arise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief,\n"
             "That thou her maid art far more fair than she.\n\n") * 6
    items = last_word_items(verse, 5, seed=0, min_words=10, max_words=20)
    assert items and all("\n" in it.context for it in items)
    for it in items:
        assert it.context in verse and (it.context + it.target) in verse   # a verbatim cut of the text
        assert it.target.startswith(" ") and not it.context.endswith((" ", "\n"))
    # a sentence's last word that opens a line has no " " before it in the text: never a target
    with pytest.raises(UserError, match="too short to cut"):
        last_word_items("a b c d\nbreaks. " * 40, 5, 0, 3, 4)
