import json
import math

import pytest

from gpt3lab.cli import main
from gpt3lab.eval.harness import evaluate_task
from gpt3lab.eval.prompts import PromptFormat, build_prompt
from gpt3lab.eval.scoring import loglikelihood
from gpt3lab.eval.tasks import Task, last_word_items, load_task_file

MC = [{"context": f"Item {i}: the sky is", "choices": ["blue", "a very long green", "red"], "answer": i % 3}
      for i in range(6)]


@pytest.fixture
def mc_file(tmp_path):
    f = tmp_path / "sky.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in MC) + "\n")
    return f


def test_acc_and_acc_norm_as_defined(model, tok, mc_file):
    task = load_task_file(mc_file)
    r = evaluate_task(model, tok, task, k=1, seed=4)
    acc = acc_norm = 0
    for i, item in enumerate(task.items):
        p = build_prompt(task.fmt, task.pool, item, 1, 4, i, True)
        ll = [loglikelihood(model, tok.encode(p.text), tok.encode(" " + c)).logprob for c in item.choices]
        acc += max(range(3), key=lambda j: ll[j]) == item.answer
        acc_norm += max(range(3), key=lambda j: ll[j] / len(item.choices[j])) == item.answer   # chars of the choice
    assert r.metrics == {"acc": acc / 6, "acc_norm": acc_norm / 6}


def test_last_word_metrics(model, tok):
    items = last_word_items("The cat sat on the mat today. " * 60, 5, seed=0, min_words=5, max_words=8)
    task = Task("lw", "last_word", items[:3], PromptFormat(None, "", "\n\n"), items[3:], [])
    r = evaluate_task(model, tok, task, k=1)
    lls, greedy = [], []
    for i, it in enumerate(task.items):
        p = build_prompt(task.fmt, task.pool, it, 1, 0, i, False)
        sc = loglikelihood(model, tok.encode(p.text), tok.encode(it.target))
        lls.append(sc.logprob)
        greedy.append(sc.is_greedy)
    assert r.metrics["acc"] == sum(greedy) / 3
    assert r.metrics["ppl"] == pytest.approx(math.exp(-sum(lls) / 3), rel=1e-5)


def test_cli_end_to_end(ckpt, mc_file, tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    rc = main(["eval", str(ckpt), "--task", str(mc_file), "--task", "arith-2d+", "--shots", "0,1,3",
               "--limit", "3", "--json", str(out), "--plot", str(png), "--show-prompt"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["tasks"]) == {"sky", "arith-2d+"} and set(res["tasks"]["sky"]["shots"]) == {"0", "1", "3"}
    assert res["tasks"]["arith-2d+"]["shots"]["1"]["n"] == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "acc_norm" in text and "exact_match" in text and "----- prompt: sky, k=3, item 0 -----" in text


def test_cli_perplexity(ckpt, model, tok, tmp_path, capsys, independent_nll):
    f = tmp_path / "t.txt"
    text = "To be, or not to be, that is the question. " * 8
    f.write_text(text)
    assert main(["eval", str(ckpt), "--perplexity", str(f), "--json", str(tmp_path / "p.json")]) == 0
    p = json.loads((tmp_path / "p.json").read_text())
    ids = tok.encode(text)   # the checkpoint holds `model` and `tok`; default stride is context / 2
    ref = independent_nll(model, ids, tok.eot_id, model.config.context, model.config.context // 2)
    assert p["windows"] > 1 and (p["tokens"], p["bytes"]) == (len(ids), len(text.encode()))
    assert p["loss"] == pytest.approx(ref / len(ids), rel=1e-5)
    assert p["bits_per_byte"] == pytest.approx(ref / (len(text.encode()) * math.log(2)), rel=1e-5)


@pytest.mark.parametrize("args, match", [
    (["--task", "BAD"], "malformed JSON"),
    (["--task", "nope"], "unknown task 'nope'"),
    (["--task", "SKY", "--shots", "9"], "9 examples requested but the few-shot pool has only 5"),
    (["--task", "arith-2d+", "--shots", "40", "--strict-shots", "--limit", "1"], "do not fit"),
    (["--task", "SKY", "--shots", "x"], "--shots 'x'"),
])
def test_cli_errors_exit_nonzero_without_traceback(ckpt, mc_file, tmp_path, capsys, args, match):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "a", "target": "b"}\n{oops\n')
    args = [str(bad) if a == "BAD" else str(mc_file) if a == "SKY" else a for a in args]
    assert main(["eval", str(ckpt), *args]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and err.startswith("gpt3lab: error:")


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_cli_checks_output_dirs_before_loading(tmp_path, capsys, flag):
    out = tmp_path / "missing" / "r.out"
    # the checkpoint does not exist either: the output check must come first (before any work)
    assert main(["eval", str(tmp_path / "no_ckpt"), "--task", "arith-2d+", flag, str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {out}: directory {out.parent} does not exist" in err and "Traceback" not in err


def test_last_word_prediction_is_the_predicted_text(model, tok):
    import torch

    items = last_word_items("The cat sat on the mat today. " * 60, 5, seed=0, min_words=5, max_words=8)
    task = Task("lw", "last_word", items[:3], PromptFormat(None, "", "\n\n"), items[3:], [])
    r = evaluate_task(model, tok, task, k=1)
    for i, (it, ex) in enumerate(zip(task.items, r.examples)):
        p = build_prompt(task.fmt, task.pool, it, 1, 0, i, False)
        ctx, cont = tok.encode(p.text), tok.encode(it.target)
        with torch.no_grad():
            logits, _ = model(torch.tensor([ctx + cont[:-1]]))
        want = logits[0, len(ctx) - 1:].argmax(-1).tolist()       # argmax at each target position
        assert ex["prediction"] == tok.decode(want) and not ex["prediction"].startswith("logprob")


def test_table_and_plot_mark_trimmed_k(model, tok, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from gpt3lab.eval import harness
    from gpt3lab.eval.tasks import builtin_task

    t = builtin_task("arith-2d+", n=4, pool=40)
    results = harness.run(model, tok, [t], [0, 30], limit=2)    # 30 examples cannot fit a 64-token context
    row = next(ln for ln in harness.format_table(results).splitlines() if "exact_match" in ln).split()
    assert not row[3].endswith("*") and row[4].endswith("*")
    assert "* arith-2d+ k=30: 2 prompts trimmed below k shots" in harness.format_table(results)
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    harness.plot(results, tmp_path / "p.png")
    rings = figs[0].axes[0].collections
    assert len(rings) == 1 and [tuple(o) for o in rings[0].get_offsets()] == [(30.0, rings[0].get_offsets()[0][1])]
