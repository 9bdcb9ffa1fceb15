"""`gpt3lab download` through the real huggingface_hub.snapshot_download, against a local fake hub
(tests/hub_fake.py; HF_ENDPOINT points at it), serving a small GPT-2 that transformers makes here."""
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")
from hub_fake import FakeHub  # noqa: E402

from gpt3lab import hub as dl  # noqa: E402
from gpt3lab.cli import main  # noqa: E402

REPO = "openai-community/gpt2"        # what `gpt2` stands for
DECOYS = ("pytorch_model.bin", "flax_model.msgpack", "README.md")
CUT = 1_000_000                       # bytes of model.safetensors sent before the connection drops


@pytest.fixture(scope="module")
def hf_repo(tmp_path_factory):
    """A GPT-2 repository as the hub has it: safetensors, config, tokenizer files, and files never to fetch."""
    from gpt3lab.hf_tokenizer import write_hf_tokenizer
    from gpt3lab.tokenizer import Tokenizer, gpt2_files

    d = tmp_path_factory.mktemp("gpt2-repo")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_positions=64, n_embd=16, n_layer=2, n_head=2)   # GPT-2's 50,257 vocab
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(d, safe_serialization=True)
    write_hf_tokenizer(Tokenizer.gpt2(), d, 64, None)
    vocab, merges = gpt2_files()
    shutil.copyfile(vocab, d / "vocab.json")
    shutil.copyfile(merges, d / "merges.txt")
    for name in DECOYS:                # a pickle and other files gpt3lab must never download
        (d / name).write_bytes(b"not for gpt3lab")
    assert (d / "model.safetensors").stat().st_size > 2 * CUT
    return d


@pytest.fixture
def hub(hf_repo, tmp_path, monkeypatch):
    with FakeHub() as h:
        h.add_repo(REPO, hf_repo)
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
        for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        yield h


def _logits_equal(out, hf_repo):
    from gpt3lab import load

    model, tok = load(out)
    ids = torch.tensor([tok.encode("Hello, my dog is cute")])
    with torch.no_grad():
        ours, _ = model(ids)
        ref = transformers.GPT2LMHeadModel.from_pretrained(hf_repo).eval()(ids).logits
    assert tok.name == "gpt2"
    assert (ours - ref).abs().max().item() <= 1e-4


def test_download_resumes_a_cut_connection_with_a_range_request(hub, hf_repo, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub writes what it received in 10 MiB pieces, and resumes from the last one written; our
    # 3 MB file stands for GPT-2's 548 MB, so the pieces shrink with it
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 256 * 1024)
    hub.cut["model.safetensors"] = CUT
    assert main(["download", "gpt2", "--out", str(tmp_path / "gpt2"), "--no-progress"]) == 0
    assert f"{REPO} (hub snapshot" in capsys.readouterr().out
    # the first GET broke off after CUT bytes; huggingface_hub asked for the rest only
    first, resumed = hub.gets("model.safetensors")
    assert first is None and resumed == f"bytes={CUT // (256 * 1024) * 256 * 1024}-"
    fetched = {p.rsplit("/resolve/", 1)[1].split("/", 1)[1] for m, p, _ in hub.log if m == "GET" and "/resolve/" in p}
    assert "model.safetensors" in fetched and "tokenizer.json" in fetched
    assert fetched == set(hub.repos[REPO]) - set(DECOYS)          # no pickle, no README, no other weights
    _logits_equal(tmp_path / "gpt2", hf_repo)
    # the hub cache is honoured: a second download fetches no file again
    assert main(["download", "gpt2", "--out", str(tmp_path / "again"), "--no-progress"]) == 0
    assert len(hub.gets("model.safetensors")) == 2
    assert list((tmp_path / "hf_home" / "hub").glob("models--openai-community--gpt2/snapshots/*/model.safetensors"))


def test_a_failed_download_is_one_line_and_a_rerun_resumes_it(hub, hf_repo, tmp_path, capsys):
    hub.fail["tokenizer.json"] = 1                      # one file fails; the others complete
    assert main(["download", "gpt2", "--out", str(tmp_path / "gpt2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot download openai-community/gpt2" in err and "rerun resumes" in err
    assert not (tmp_path / "gpt2").exists()            # nothing half-written
    assert main(["download", "gpt2", "--out", str(tmp_path / "gpt2"), "--no-progress"]) == 0
    assert len(hub.gets("model.safetensors")) == 1      # the weights came once, across both runs
    assert len(hub.gets("tokenizer.json")) == 2
    _logits_equal(tmp_path / "gpt2", hf_repo)


def test_unknown_id_and_no_hub_say_what_failed_and_how_to_convert_instead(hub, tmp_path, capsys, monkeypatch):
    import subprocess
    import sys

    # a fresh process: nothing imported beforehand (huggingface_hub's submodules load lazily)
    p = subprocess.run([sys.executable, "-m", "gpt3lab", "download", "nobody/no-such-model", "--out",
                        str(tmp_path / "x"), "--no-progress"], capture_output=True, text=True, timeout=120)
    err = p.stderr
    assert p.returncode == 2 and not (tmp_path / "x").exists()
    assert err.count("\n") == 1 and "'nobody/no-such-model' is no local directory and no model on" in err
    assert "gpt3lab convert --from-hf HF_DIR OUT_DIR" in err
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")          # nothing listens there: offline
    assert main(["download", "gpt2-medium", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot download openai-community/gpt2-medium" in err
    assert "gpt3lab convert --from-hf HF_DIR OUT_DIR" in err and "Traceback" not in err


def test_a_hub_id_works_where_a_model_directory_does(hub, hf_repo, tmp_path, capsys, monkeypatch):
    import gpt3lab

    assert main(["convert", "--from-hf", "gpt2", str(tmp_path / "conv")]) == 0
    assert "imported gpt2 ->" in capsys.readouterr().out
    _logits_equal(tmp_path / "conv", hf_repo)
    model, tok = gpt3lab.load(REPO)                      # e.g. what `serve`/`generate` call
    assert model.config.n_layer == 2 and tok.name == "gpt2"
    assert len(hub.gets("model.safetensors")) == 1
    # an existing path always wins, and `runs/x` under an existing runs/ is a local path, never a hub id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert dl.hub_id("runs/x") is None and dl.hub_id("conv") is None
    assert dl.hub_id("gpt2-xl") == "openai-community/gpt2-xl" and dl.hub_id("EleutherAI/gpt-neo") == "EleutherAI/gpt-neo"
