import json
import subprocess

import pytest
import torch

import gpt3lab
from gpt3lab import checkpoint as ck
from gpt3lab.config import ModelConfig, TrainConfig
from gpt3lab.data import WindowLoader, load_data_tokenizer
from gpt3lab.errors import CheckpointError
from gpt3lab.model import GPT
from gpt3lab.train.loop import RunInfo, Trainer

TINY = dict(context=32, n_layer=2, d_model=32, n_head=4)


def _trainer(data, out, **train):
    tok = load_data_tokenizer(data)
    torch.manual_seed(0)
    mcfg = ModelConfig(vocab_size=tok.vocab_size, **TINY)
    cfg = TrainConfig(**{"batch_size": 4, "max_steps": 6, "warmup_steps": 2, "save_every": 3, "eval_every": 0,
                         "eval_batches": 1, "peak_flops": 1e12, "precision": "fp32", **train})
    return Trainer(GPT(mcfg), mcfg, cfg, WindowLoader(data, "train", 32, 4, seed=1),
                   info=RunInfo(out_dir=out, tokenizer=tok, progress=False))


def test_train_state_round_trip(tiny_data, tmp_path):
    a = _trainer(tiny_data, tmp_path / "run")
    a.fit()
    next_rand = torch.rand(3)                                    # the RNG as it was at the final save
    ckpt = ck.resolve(tmp_path / "run")
    assert ckpt.name == "step_0000006"
    model, tok = gpt3lab.load(tmp_path / "run")                       # the one-call loader
    for k, v in ck.model_state(a.model).items():
        assert torch.equal(model.state_dict()[k], v), k
    b = _trainer(tiny_data, tmp_path / "run")
    b.model.load_state_dict(model.state_dict())
    b.resume(ckpt)
    assert torch.equal(torch.rand(3), next_rand)
    assert (b.step, b.tokens) == (6, 6 * 4 * 32)
    assert b.train_data.state_dict() == a.train_data.state_dict()
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        for k in sa["state"][i]:
            assert torch.equal(sa["state"][i][k], sb["state"][i][k])


def test_rng_state_restored_exactly(tmp_path):
    torch.manual_seed(123)
    state = ck.rng_state()
    want = torch.rand(5)
    json.dumps(state)                                            # JSON-safe, no pickle
    torch.rand(7)
    ck.set_rng_state(state)
    assert torch.equal(torch.rand(5), want)


def test_interrupted_save_leaves_previous_checkpoint(tiny_data, tmp_path):
    tr = _trainer(tiny_data, tmp_path / "run", max_steps=3)
    tr.fit()                                                     # step_0000003 exists
    before = ck.resolve(tmp_path / "run")

    def boom(tmp):
        (tmp / "half-written").write_bytes(b"x" * 10)
        raise KeyboardInterrupt("killed mid-save")

    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(ck.step_dir(tmp_path / "run", 4), tr.model, tr.model_cfg, fill_extra=boom)
    assert ck.resolve(tmp_path / "run") == before
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_0000003"]
    # a SIGKILL leaves the temp dir behind: it must never be taken for a checkpoint
    stale = tmp_path / "run" / "checkpoints" / ".tmp-step_0000009-abc"
    stale.mkdir()
    for f in ("config.json", "model.safetensors"):
        (stale / f).write_bytes((before / f).read_bytes())
    assert ck.resolve(tmp_path / "run") == before
    assert ck.list_checkpoints(tmp_path / "run") == [before]
    gpt3lab.load(tmp_path / "run")


def test_keep_last_k(tiny_data, tmp_path):
    _trainer(tiny_data, tmp_path / "run", max_steps=12, save_every=2, keep_last=2).fit()
    assert [p.name for p in ck.list_checkpoints(tmp_path / "run")] == ["step_0000010", "step_0000012"]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_0000010", "step_0000012"]


@pytest.fixture()
def saved(tiny_data, tmp_path):
    _trainer(tiny_data, tmp_path / "run", max_steps=3).fit()
    return ck.resolve(tmp_path / "run")


def test_truncated_weights_are_a_checkpoint_error(saved):
    f = saved / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        gpt3lab.load(saved)


def test_a_flipped_byte_in_the_weights_fails_the_checksum(saved):
    f = saved / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01                 # inside tensor data: safetensors itself cannot notice
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated or corrupt \(SHA-256 .*at save"):
        gpt3lab.load(saved)
    assert subprocess.run(["sha256sum", "-c", "model.safetensors.sha256"], cwd=saved,
                          capture_output=True).returncode != 0          # the record is sha256sum's format


def test_checksum_record_matches_sha256sum_and_old_checkpoints_still_load(saved):
    assert subprocess.run(["sha256sum", "-c", "model.safetensors.sha256"], cwd=saved,
                          capture_output=True).returncode == 0
    (saved / "model.safetensors.sha256").unlink()        # written before checksums existed
    assert gpt3lab.load(saved)[0] is not None


def test_corrupt_train_state_is_a_checkpoint_error(saved):
    opt = saved / "train_state" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="optimizer.pt"):
        ck.load_train_state(saved)
    (saved / "train_state" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json"):
        ck.load_train_state(saved)
    (saved / "config.json").write_text("")
    with pytest.raises(CheckpointError, match="config.json"):
        gpt3lab.load(saved)


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').touch()",))


def test_optimizer_file_is_never_unpickled(saved, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (saved / "train_state" / "optimizer.pt").write_bytes(b"")
    torch.save({"state": _Evil()}, saved / "train_state" / "optimizer.pt")
    with pytest.raises(CheckpointError):
        ck.load_train_state(saved)
    assert not (tmp_path / "PWNED").exists()


def test_config_and_adapter_files_that_are_not_json_objects_are_clear_errors(tmp_path):
    import pytest

    from gpt3lab.checkpoint import CheckpointError, read_config
    from gpt3lab.adapters import ADAPTER_CONFIG, read_adapter_config

    (tmp_path / "config.json").write_text("[1, 2]")
    (tmp_path / ADAPTER_CONFIG).write_text('"text"')
    for read in (read_config, read_adapter_config):
        with pytest.raises(CheckpointError, match="not a JSON object"):
            read(tmp_path)


@pytest.mark.parametrize("edit, field", [
    (lambda s: {}, "field step: Field required"),
    (lambda s: {**s, "step": "abc"}, "field step: Input should be a valid integer"),
    (lambda s: {**s, "rng": {**s["rng"], "torch": s["rng"]["torch"][:-1]}}, "field rng.torch: List should have at least"),
    (lambda s: {**s, "rng": {**s["rng"], "python": s["rng"]["python"] + [1]}}, "field rng.python: List should have at most"),
    (lambda s: {**s, "train_data": [1]}, "field train_data: Input should be a valid dictionary"),
])
def test_invalid_state_json_names_the_field(saved, edit, field):
    path = saved / "train_state" / "state.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(CheckpointError, match=f"state.json: {field}"):
        ck.load_train_state(saved)


def test_invalid_state_json_is_one_line_on_resume(saved, tiny_data, capsys):
    from gpt3lab.cli import main
    path = saved / "train_state" / "state.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "step": "abc"}))
    rc = main(["train", "--data", str(tiny_data), "--out", str(saved.parent.parent), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "field step" in err and "Traceback" not in err
