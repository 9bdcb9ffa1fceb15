"""Sharded checkpoints from elsewhere (issue 23): a hostile `.metadata` pickle is refused before any of it runs,
a damaged shard file fails export and resume with one line naming it, never wrong weights."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt3lab import checkpoint as ckpt_io
from gpt3lab.cli import main
from gpt3lab.config import ModelConfig, TrainConfig
from gpt3lab.errors import CheckpointError
from gpt3lab.model import GPT
from gpt3lab.tokenizer import Tokenizer
from gpt3lab.train import dcp_files, sharded_checkpoint
from gpt3lab.train.loop import make_optimizer

CFG = ModelConfig(vocab_size=300, context=32, n_layer=2, d_model=32, n_head=4)
ROOT = Path(__file__).resolve().parents[2]


def _model_and_opt(seed=0):
    torch.manual_seed(seed)
    model = GPT(CFG)
    return model, make_optimizer(model, TrainConfig(), torch.device("cpu"))


@pytest.fixture
def run(tmp_path):
    """A run directory holding one sharded checkpoint (one process), as a downloaded run would."""
    model, opt = _model_and_opt()
    x = torch.randint(0, 300, (2, 32))
    model(x, x)[1].backward()
    opt.step()
    tok = Tokenizer.train(["the king and the queen of the north, the sea and the land\n"] * 20, 300)
    sharded_checkpoint.ShardedCheckpointer().save(ckpt_io.step_dir(tmp_path / "run", 1), model, opt,
                                                  lambda t: ckpt_io.write_config(t, CFG, tok, {"train": {}}))
    return tmp_path / "run"


def _sharded(run) -> Path:
    return ckpt_io.resolve(run) / "sharded"


def _rewrite_sums(sharded: Path) -> None:
    """What an attacker would do: make SHA256SUMS match the files as they now are."""
    names = sorted(p.name for p in sharded.iterdir() if p.name != dcp_files.SUMS)
    (sharded / dcp_files.SUMS).write_text("".join(f"{ckpt_io.file_sha256(sharded / n)}  {n}\n" for n in names))


class _Payload:
    """A pickle that creates `marker` when unpickled by plain pickle.load (as DCP does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _export(run, out, capsys) -> str:
    assert main(["export", str(run), str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()
    return err


def test_the_saved_checkpoint_lists_a_digest_for_every_file(run):
    sharded = _sharded(run)
    sums = dcp_files.read_sums(sharded)
    assert sorted(sums) == [".metadata", "__0_0.distcp"]
    assert all(sums[n] == ckpt_io.file_sha256(sharded / n) for n in sums)
    assert not list(sharded.glob("*part*"))
    if subprocess.run(["which", "sha256sum"], capture_output=True).returncode == 0:   # the usual tool agrees
        assert subprocess.run(["sha256sum", "-c", "--quiet", dcp_files.SUMS], cwd=sharded).returncode == 0


@pytest.mark.parametrize("sums", ["rewritten", "deleted", "stale"])
def test_a_reduce_payload_in_metadata_is_refused_without_running(run, tmp_path, capsys, sums):
    """Whatever the digest file says, the payload never runs: the unpickler cannot name exec."""
    marker, sharded = tmp_path / "pwned", _sharded(run)
    (sharded / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    if sums == "rewritten":
        _rewrite_sums(sharded)
    elif sums == "deleted":
        (sharded / dcp_files.SUMS).unlink()
    err = _export(run, tmp_path / "out", capsys)
    assert ".metadata" in err and not marker.exists()
    assert ("builtins.exec" in err and "refused" in err) if sums != "stale" else "SHA-256" in err
    with pytest.raises(CheckpointError):
        sharded_checkpoint.load(ckpt_io.resolve(run), *_model_and_opt())
    assert not marker.exists()


def test_a_payload_nested_inside_real_metadata_is_refused(run, tmp_path, capsys):
    """A genuine index with one field swapped for a payload (the attack that survives a glance at the file)."""
    marker, sharded = tmp_path / "pwned", _sharded(run)
    md = dcp_files.read_metadata(sharded)
    md.planner_data = {"x": _Payload(marker)}
    (sharded / ".metadata").write_bytes(pickle.dumps(md))
    _rewrite_sums(sharded)
    assert "builtins.exec" in _export(run, tmp_path / "out", capsys) and not marker.exists()


def test_the_restricted_reader_reads_what_dcp_writes_exactly(run):
    sharded = _sharded(run)
    with open(sharded / ".metadata", "rb") as f:
        plain = pickle.load(f)        # our own file, written a moment ago: safe to compare against
    ours = dcp_files.read_metadata(sharded, dcp_files.read_sums(sharded))
    assert ours.state_dict_metadata == plain.state_dict_metadata and ours.storage_data == plain.storage_data


def test_an_index_pointing_outside_the_directory_is_refused(run, tmp_path, capsys):
    sharded = _sharded(run)
    md = dcp_files.read_metadata(sharded)
    key = next(iter(md.storage_data))
    md.storage_data[key].relative_path = "../../../config.json"
    (sharded / ".metadata").write_bytes(pickle.dumps(md))
    _rewrite_sums(sharded)
    assert "../../../config.json', not a shard file of this directory" in _export(run, tmp_path / "out", capsys)


def test_flipped_bytes_in_a_shard_fail_export_and_resume(tiny_data, tmp_path, capsys):
    """A real run (async_checkpoint: sharded on one process); 16 bytes flipped inside a weight tensor, which
    before digests exported silently as a weight of ~1e37 with a fresh SHA-256 over it."""
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_data), "--out", str(run), "--preset", "tiny", "--max-steps", "2",
                 "--no-progress", "--set", "save_every=2", "--set", "eval_every=0", "--set", "eval_batches=1",
                 "--set", "precision=fp32", "--set", "model.context=32", "--set", "async_checkpoint=true"]) == 0
    shard = _sharded(run) / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2:len(data) // 2 + 16] = b"\x7e" * 16
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert "__0_0.distcp: truncated or corrupt (SHA-256" in _export(run, tmp_path / "out", capsys)
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "4", "--no-progress"]) == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("gpt3lab: warning")]
    assert len(errors) == 1 and "__0_0.distcp: truncated or corrupt (SHA-256" in errors[0], errors
    assert [c.name for c in ckpt_io.list_checkpoints(run)] == ["step_0000002"]      # nothing trained on


@pytest.mark.parametrize("damage", ["truncated", "missing", "empty-metadata", "bad-sums"])
@pytest.mark.parametrize("sums", ["recorded", "none"])
def test_damaged_files_are_one_line_naming_the_file(run, tmp_path, capsys, damage, sums):
    """With digests (new checkpoints) and without (checkpoints written before them): never a traceback."""
    sharded = _sharded(run)
    if sums == "none":
        (sharded / dcp_files.SUMS).unlink()
    if damage == "truncated":
        shard = sharded / "__0_0.distcp"
        shard.write_bytes(shard.read_bytes()[:4096])
        name = "__0_0.distcp: truncated or corrupt"
    elif damage == "missing":
        (sharded / "__0_0.distcp").unlink()
        name = "__0_0.distcp: missing"
    elif damage == "empty-metadata":
        (sharded / ".metadata").write_bytes(b"")
        name = ".metadata: truncated or corrupt" if sums == "recorded" else ".metadata: empty"
    else:
        if sums == "none":
            pytest.skip("no digest file to damage")
        (sharded / dcp_files.SUMS).write_text("not a digest\n")
        name = "SHA256SUMS: line 1 is not"
    assert name in _export(run, tmp_path / "out", capsys)


def test_a_checkpoint_without_digests_still_exports_the_same_weights(run, tmp_path):
    """Checkpoints saved before SHA256SUMS existed: read with the restricted unpickler alone."""
    model, _ = _model_and_opt()
    (_sharded(run) / dcp_files.SUMS).unlink()
    assert main(["export", str(run), str(tmp_path / "out")]) == 0
    got = ckpt_io.load_state(tmp_path / "out")
    want = sharded_checkpoint.load_model(ckpt_io.resolve(run), CFG).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in got)


def test_each_ranks_error_inside_dcps_checkpoint_exception_becomes_one_line():
    """Under torch.distributed DCP raises CheckpointException (a BaseException) holding every rank's error."""
    from torch.distributed.checkpoint import CheckpointException
    ours = CheckpointError("sharded/__1_0.distcp: truncated or corrupt (SHA-256 ...)")
    wrapped = CheckpointException("read", {1: (ours, None), 0: (ours, None)})
    assert sharded_checkpoint._load_error("CKPT", wrapped) is ours
    theirs = CheckpointException("plan", {0: (RuntimeError("Missing key in checkpoint\nstate_dict: x"), None)})
    err = sharded_checkpoint._load_error("CKPT", theirs)
    assert isinstance(err, CheckpointError) and "\n" not in str(err) and "does not fit this model" in str(err)


@pytest.mark.slow
def test_a_corrupt_shard_in_a_two_process_load_is_one_line_on_every_rank(run, tmp_path):
    """Under torch.distributed DCP wraps each rank's error in a CheckpointException (a BaseException); the
    CLI still prints one line naming the file."""
    shard = _sharded(run) / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-100])
    script = ("import sys, torch.distributed as d; d.init_process_group('gloo'); from gpt3lab.cli import main; "
              "sys.exit(main(sys.argv[1:]))")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", script, "export", str(run), str(tmp_path / f"out{r}")],
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        err = p.communicate(timeout=120)[1]
        lines = [x for x in err.splitlines() if x.startswith("gpt3lab: error:")]
        assert p.returncode == 2 and len(lines) == 1 and "__0_0.distcp: truncated or corrupt" in lines[0], err
        assert "Traceback" not in err, err


def test_a_mangled_pickle_is_corrupt_not_a_security_refusal(run, tmp_path, capsys):
    sharded = _sharded(run)
    (sharded / ".metadata").write_bytes(b"\x80\x04not a pickle at all")
    _rewrite_sums(sharded)
    err = _export(run, tmp_path / "out", capsys)
    assert ".metadata: truncated or corrupt (UnpicklingError)" in err
