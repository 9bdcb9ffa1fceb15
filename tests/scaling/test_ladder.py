"""A tiny IsoFLOP ladder end to end: ordinary `gpt3lab train` runs, results + plot, skip and resume, the FLOPs
of `gpt3lab size`, and the printed commands being exactly what runs."""
import json
import shlex
from pathlib import Path

import pytest
import torch

from gpt3lab import sizing
from gpt3lab.cli import main
from gpt3lab.config import ModelConfig
from gpt3lab.errors import ConfigError
from gpt3lab.scaling import ladder, shapes
from gpt3lab.scaling.cli import run_ladder
from gpt3lab.scaling.fit import FitError
from gpt3lab.train.perf import flops_per_token


class Seen(Exception):
    pass


def settings(data, **kw) -> ladder.Settings:
    # 3 sizes (d16, d32, d48; 1 layer) x 2 budgets; 8-80 steps of 4 x 16 tokens each
    return ladder.Settings(**{**dict(data=str(data), budgets=[1.3e8, 2.6e8], sizes=[8e3, 2.3e4, 4.3e4],
                                     batch_size=4, context=16, eval_tokens=1024, min_steps=5), **kw})


def run_quietly(out, s, **kw):
    """run_ladder on one thread; a fit that finds its minimum at the edge of so short a ladder is an
    acceptable outcome here (the fit itself is tested on synthetic ladders), any other error is not."""
    try:
        run_ladder(out, s, threads=1, bootstrap=20, **kw)
    except FitError as e:
        assert "extend the ladder" in str(e)


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ladder") / "a"
    run_quietly(out, settings(tiny_data))
    return out


def test_ladder_writes_runs_results_and_plot(finished):
    res = json.loads((finished / "results.json").read_text())
    assert len(res["runs"]) == 6 and res["pending_budgets"] == []
    assert (finished / "scaling.png").stat().st_size > 10_000
    assert len((finished / "results.csv").read_text().splitlines()) == 1 + 6
    assert "fit" in res or "extend the ladder" in res["error"]
    for r in res["runs"]:                     # every run is an ordinary train run dir, trained to its plan
        d = finished / "runs" / r["name"]
        assert (d / "log.jsonl").is_file()
        ckpt = sorted((d / "checkpoints").iterdir())[-1]
        assert ladder.checkpoint_step(ckpt) == r["steps"]
        plan = json.loads((d / "run.json").read_text())
        assert json.loads((ckpt / "config.json").read_text())["model"] == plan["model"]   # the planned shape
    assert {r["budget"] for r in res["runs"]} == {1.3e8, 2.6e8}
    assert len({r["params"] for r in res["runs"]}) == 3


def test_second_call_skips_finished_runs(finished, monkeypatch):
    before = (finished / "results.json").read_bytes()
    monkeypatch.setattr(ladder, "launch", lambda *a, **k: pytest.fail("a finished run was launched again"))
    run_quietly(finished, settings(json.loads((finished / "ladder.json").read_text())["data"]))
    assert (finished / "results.json").read_bytes() == before
    main(["scaling", "--fit", str(finished), "--bootstrap", "20"])              # the same fit from the files
    assert (finished / "results.json").read_bytes() == before


def test_interrupted_ladder_resumes_to_the_same_results(finished, tiny_data, tmp_path, monkeypatch):
    """A run stopped after its first step is resumed (--resume), no other run is redone twice, and the
    ladder's results.json equals the uninterrupted ladder's byte for byte (same seeds, same results)."""
    out = tmp_path / "b"
    s = settings(tiny_data)
    runs = ladder.plan(s)
    ladder.save_plan(out, s, runs)
    first, threads = runs[0], torch.get_num_threads()
    torch.set_num_threads(1)                                                   # as run_ladder(threads=1)
    try:
        assert main(first.argv(s.data, out) + ["--time-budget", "1e-6"]) == 0  # killed after step 1, as it were
    finally:
        torch.set_num_threads(threads)
    assert ladder.status(out, first) == "interrupted"
    assert main(["scaling", "--fit", str(out)]) == 2                           # nothing complete to fit yet
    calls = []
    real = ladder.launch
    monkeypatch.setattr(ladder, "launch", lambda argv, *a, **k: (calls.append(argv), real(argv, *a, **k)))
    run_quietly(out, s)
    assert sum("--resume" in c for c in calls) == 1 and len(calls) == len(runs)
    assert [c for c in calls if "--resume" in c][0][4] == str(ladder.run_dir(out, first.name))
    assert (out / "results.json").read_bytes() == (finished / "results.json").read_bytes()


def test_printed_commands_are_what_runs(tiny_data, tmp_path, capsys, monkeypatch):
    s = settings(tiny_data)
    run_ladder(tmp_path, s, print_commands=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and all(line.startswith("gpt3lab train ") for line in lines)
    assert not any((tmp_path / "runs").glob("*/checkpoints"))              # planned, nothing trained
    launched = []

    def record(argv, *a, **k):
        launched.append(argv)
        raise Seen

    monkeypatch.setattr(ladder, "launch", record)
    with pytest.raises(Seen):
        run_ladder(tmp_path, s)
    assert launched == [shlex.split(lines[0])[1:]]


def test_run_flops_equal_gpt3lab_size(tiny_data, tmp_path, capsys):
    for r in ladder.plan(settings(tiny_data)):
        cfg = ModelConfig(**r.model)
        path = tmp_path / f"{r.name}.json"
        path.write_text(json.dumps(r.model))
        assert main(["size", str(path), "--json", "--tokens", str(r.tokens)]) == 0
        report = json.loads(capsys.readouterr().out)
        assert r.flops == pytest.approx(report["train_flops"]["total"], rel=1e-12)
        assert r.params == report["params"]["total"] == sizing.n_params(cfg)
        assert r.flops_per_token == flops_per_token(cfg)                      # the MFU counter's count
        assert r.tokens == r.steps * 4 * 16 and r.flops == r.tokens * r.flops_per_token


def test_plan_refuses_repeated_data_and_too_few_steps(tiny_data):
    epoch = ladder.train_tokens(str(tiny_data))
    with pytest.raises(ConfigError, match="more than one epoch"):
        ladder.plan(settings(tiny_data, budgets=[60 * epoch * 1e4]))
    with pytest.raises(ConfigError, match="only .* step"):
        ladder.plan(settings(tiny_data, budgets=[1e7]))


def test_replanning_a_run_dir_with_other_settings_is_refused(tiny_data, tmp_path):
    s = settings(tiny_data)
    ladder.save_plan(tmp_path, s, ladder.plan(s))
    s2 = settings(tiny_data, seed=7)
    with pytest.raises(ConfigError, match="planned with other settings"):
        ladder.save_plan(tmp_path, s2, ladder.plan(s2))


def test_shape_and_lr_rules():
    for n in (1e4, 1e5, 1e6, 1e8):
        cfg = shapes.shape_for_params(n, 257, 128)
        assert cfg.n_head * cfg.d_head == cfg.d_model
        assert cfg.n_layer == 1 or 32 <= cfg.d_model / cfg.n_layer <= 128
        assert abs(sizing.n_params(cfg) / n - 1) < 0.5
    # the LR law follows Table 2.1: within 35% of every row, decreasing with size
    from gpt3lab.presets import GPT3_PRESETS, get_preset
    for name in GPT3_PRESETS:
        p = get_preset(name)
        assert shapes.lr_for_params(p.paper_params) == pytest.approx(p.train["lr"], rel=0.35)
    assert shapes.lr_for_params(1e5) > shapes.lr_for_params(1e6) > shapes.lr_for_params(1e9)


def test_fit_of_a_dir_that_is_no_ladder(tmp_path):
    assert main(["scaling", "--fit", str(tmp_path)]) == 2
    assert not Path(tmp_path / "results.json").exists()
