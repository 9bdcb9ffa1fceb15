import json

import pytest

from gpt3lab.cli import main


def _train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), "--preset", "tiny", "--max-steps", "2",
                 "--set", "eval_batches=1", "--set", "peak_flops=1e12", "--set", "model.context=32",
                 "--no-progress", *extra])


def test_missing_data_dir(tmp_path, capsys):
    assert _train(tmp_path / "nope", tmp_path / "run") == 2
    assert "nope: no such directory" in capsys.readouterr().err


def test_out_dir_with_a_run_needs_resume(tiny_data, tmp_path, capsys):
    assert _train(tiny_data, tmp_path / "run") == 0
    assert _train(tiny_data, tmp_path / "run") == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err


def test_resume_with_nothing_to_resume(tiny_data, tmp_path, capsys):
    assert _train(tiny_data, tmp_path / "empty", "--resume") == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_incompatible_config_on_resume(tiny_data, tmp_path, capsys):
    assert _train(tiny_data, tmp_path / "run") == 0
    assert _train(tiny_data, tmp_path / "run", "--resume", "--set", "model.n_layer=3") == 2
    assert "model.n_layer: 2 -> 3" in capsys.readouterr().err
    # extending max_steps is allowed and continues from step 2
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--max-steps", "3", "--no-progress"]) == 0
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]


def test_vocab_mismatch_names_both(tiny_data, tmp_path, capsys):
    assert _train(tiny_data, tmp_path / "run", "--set", "model.vocab_size=1000") == 2
    err = capsys.readouterr().err
    assert "model.vocab_size=1000" in err and "vocab_size 300" in err


def test_unknown_setting_and_config_file(tiny_data, tmp_path, capsys):
    assert _train(tiny_data, tmp_path / "run", "--set", "train.nope=1") == 2
    assert "--set train.nope: unknown setting" in capsys.readouterr().err
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {"n_layer": 1}, "train": {"lr": 0.01}}))
    assert _train(tiny_data, tmp_path / "run2", "--config", str(cfg), "--set", "train.lr=0.02") == 0
    saved = json.loads(next((tmp_path / "run2" / "checkpoints").iterdir()).joinpath("config.json").read_text())
    assert saved["model"]["n_layer"] == 1 and saved["train"]["lr"] == 0.02    # --set beats the file
    assert saved["model"]["vocab_size"] == 300 and saved["data"] == str(tiny_data)


def test_plot_writes_png(tiny_data, tmp_path, capsys):
    assert _train(tiny_data, tmp_path / "run") == 0
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(tmp_path / "nothing")]) == 2


@pytest.mark.parametrize("bad", ["precision=fp16", "batch_size=0"])
def test_bad_train_values(tiny_data, tmp_path, capsys, bad):
    assert _train(tiny_data, tmp_path / "run", "--set", bad) == 2
    assert "train." in capsys.readouterr().err


@pytest.mark.parametrize("key,value,msg", [
    ("lr", "3e-4", r"train\.lr='3e-4' \(str\) must be a number"),
    ("batch_size", True, r"train\.batch_size=True \(bool\) must be an integer"),
    ("max_steps", 10.5, r"train\.max_steps=10\.5 \(float\) must be an integer"),
    ("compile", 1, r"train\.compile=1 \(int\) must be true or false"),
    ("batch_tokens", "512", r"train\.batch_tokens='512'"),
])
def test_train_config_rejects_wrong_types_naming_the_field(key, value, msg):
    from gpt3lab.config import TrainConfig, from_dict
    from gpt3lab.errors import ConfigError

    with pytest.raises(ConfigError, match=msg):
        from_dict(TrainConfig, {key: value})
    assert from_dict(TrainConfig, {"lr": 1, "batch_tokens": None}).lr == 1     # an int is a valid float


def test_fit_to_budget_needs_a_time_budget_and_a_new_run(tiny_data, tmp_path, capsys):
    assert _train(tiny_data, tmp_path / "run", "--fit-to-budget") == 2
    assert "--fit-to-budget fits a new run's steps to --time-budget" in capsys.readouterr().err
    assert _train(tiny_data, tmp_path / "run") == 0
    assert _train(tiny_data, tmp_path / "run", "--resume", "--time-budget", "5", "--fit-to-budget") == 2


def test_fit_to_budget_refits_max_steps_and_saves_it(tiny_data, tmp_path):
    """--max-steps is only the ceiling: the run re-fits the count to its 3 s (logged and saved, so a resume
    continues the same schedule)."""
    out = tmp_path / "run"
    assert _train(tiny_data, out, "--max-steps", "1000000", "--time-budget", "3", "--fit-to-budget",
                  "--set", "eval_every=5", "--set", "save_every=1000000") == 0
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    fitted = [r["max_steps"] for r in log if "max_steps" in r]
    assert fitted and all(n < 1_000_000 for n in fitted)
    assert not [k for r in log for k in r if k.startswith("_")]     # the loop's own flags are not logged
    saved = json.loads(next((out / "checkpoints").iterdir()).joinpath("config.json").read_text())
    assert saved["train"]["max_steps"] == fitted[-1] >= log[-1]["step"]
