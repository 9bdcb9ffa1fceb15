"""Streaming, parallel `prepare`: same tokens as the original single-process prepare, for any worker count
and input format; bounded memory; atomic shards; the output-directory marker; option validation."""
from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest

from gpt3lab.data import prepare

DOCS = [f"Document {i}: " + " ".join(f"word{(i * 7 + j) % 97} é✓" for j in range(300)) + "\n"
        for i in range(12)]


def _big_doc() -> str:
    rng = random.Random(5)
    words = ["the", "king", "é✓", "  ", "\n", "\n\n", " \n", "12", "x\t", "<|endoftext|>", "ROMEO:", "’tis"]
    return "".join(rng.choice(words) + rng.choice([" ", "", "\n"]) for _ in range(600_000))


def _write_corpus(d):
    d.mkdir()
    for i, t in enumerate(DOCS[:8]):
        (d / f"doc{i:02d}.txt").write_text(t, encoding="utf-8")
    with open(d / "more.jsonl", "w", encoding="utf-8") as f:
        for t in DOCS[8:]:
            f.write(json.dumps({"text": t, "id": 1}) + "\n")
    (d / "zbig.txt").write_text(_big_doc(), encoding="utf-8")
    return d


def _tokens(data_dir, split="train") -> np.ndarray:
    h = json.loads((data_dir / f"{split}.json").read_text())
    return np.concatenate([np.fromfile(data_dir / s["file"], dtype=h["dtype"]) for s in h["shards"]])


@pytest.fixture(scope="module")
def golden_corpus(tmp_path_factory):
    return _write_corpus(tmp_path_factory.mktemp("golden") / "c")


# sha256 of the train tokens the original (whole-corpus, single-process) prepare wrote for this corpus with
# val_fraction=0: 12 documents joined by <|endoftext|>, including a 2.5 MB document that is chunked.
GOLDEN = (1323305, "bad7570661201c87c743753900c4eae2983de16638b6c1648b0b327d4544c92f")


def test_tokens_equal_original_prepare(golden_corpus, tmp_path):
    prepare([str(golden_corpus)], tmp_path, "gpt2", val_fraction=0.0, progress=False)
    toks = _tokens(tmp_path)
    assert (len(toks), hashlib.sha256(toks.astype("<u2").tobytes()).hexdigest()) == GOLDEN


def test_workers_give_the_same_tokens(golden_corpus, tmp_path):
    one = prepare([str(golden_corpus)], tmp_path / "w1", "gpt2", val_fraction=0.25, seed=1, progress=False)
    two = prepare([str(golden_corpus)], tmp_path / "w2", "gpt2", val_fraction=0.25, seed=1, progress=False,
                  workers=2, shard_tokens=100_000)
    assert one["workers"] == 1 and two["workers"] == 2
    for split in ("train", "val"):
        assert np.array_equal(_tokens(tmp_path / "w1", split), _tokens(tmp_path / "w2", split))
        assert one[f"{split}_bytes"] == two[f"{split}_bytes"] and one[f"{split}_documents"] == two[f"{split}_documents"]
    assert 0 < one["val_documents"] < one["documents"] == 13
    assert len(json.loads((tmp_path / "w2" / "train.json").read_text())["shards"]) > 5


# ---- formats: the same documents from every kind of source give the same tokens -------------------

def _format_sources(root) -> dict:
    import gzip

    import zstandard
    srcs = {}
    for kind in ("txt", "txt.gz", "txt.zst"):
        d = root / kind
        d.mkdir()
        for i, t in enumerate(DOCS):
            data = t.encode()
            data = gzip.compress(data) if kind.endswith("gz") else data
            data = zstandard.ZstdCompressor().compress(data) if kind.endswith("zst") else data
            (d / f"doc{i:02d}.{kind}").write_bytes(data)
        srcs[kind] = d
    lines = "".join(json.dumps({"body": t, "n": i}) + "\n" for i, t in enumerate(DOCS)).encode()
    (root / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    (root / "docs.jsonl.gz").write_bytes(gzip.compress(lines))
    srcs["jsonl.zst"], srcs["jsonl.gz"] = root / "docs.jsonl.zst", root / "docs.jsonl.gz"
    return srcs


def test_formats_give_the_same_tokens(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    srcs = _format_sources(tmp_path)
    pq.write_table(pa.table({"n": list(range(12)), "body": DOCS}), tmp_path / "docs.parquet", row_group_size=5)
    srcs["parquet"] = tmp_path / "docs.parquet"
    datasets.Dataset.from_dict({"body": DOCS}).save_to_disk(str(tmp_path / "saved"))
    srcs["dataset"] = tmp_path / "saved"
    results = {}
    for kind, src in srcs.items():
        s = prepare([str(src)], tmp_path / f"out-{kind}", "gpt2", val_fraction=0.25, seed=2, progress=False,
                    text_field="body")
        results[kind] = [_tokens(tmp_path / f"out-{kind}", sp).tolist() for sp in ("train", "val")], s["val_bytes"]
    assert all(r == results["txt"] for r in results.values()), [k for k, r in results.items() if r != results["txt"]]
    tok_train, tok_val = results["txt"][0]
    assert len(tok_val) > 0 and len(tok_train) > 2 * len(tok_val)


def test_format_errors_name_the_fix(tmp_path, monkeypatch):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from gpt3lab.data import sources
    from gpt3lab.errors import DataError
    pq.write_table(pa.table({"body": DOCS}), tmp_path / "a.parquet")
    with pytest.raises(DataError, match=r"a.parquet has no column 'text' \(columns: body\); pass --text-field"):
        prepare([str(tmp_path / "a.parquet")], tmp_path / "o", progress=False)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="holds several splits.*dd/train"):
        prepare([str(tmp_path / "dd")], tmp_path / "o2", progress=False)
    s = prepare([str(tmp_path / "dd" / "train")], tmp_path / "o3", progress=False)
    assert s["documents"] == 12
    real_import = __import__("importlib").import_module
    monkeypatch.setattr("importlib.import_module",
                        lambda m, *a: (_ for _ in ()).throw(ImportError(m)) if m.startswith("zstandard") else real_import(m, *a))
    (tmp_path / "x.txt.zst").write_bytes(b"")
    with pytest.raises(DataError, match=r"needs the `zstandard` package; install it with: pip install 'gpt3lab\[formats\]'"):
        list(sources.iter_documents([str(tmp_path / "x.txt.zst")]))


# ---- bounded memory: the corpus is read once, as a stream, and tokens are written as it goes -------------

def test_streams_the_corpus_once_with_bounded_memory(tmp_path, monkeypatch):
    import sys
    import tracemalloc

    from gpt3lab.data import shards, sources
    from gpt3lab.tokenizer import Tokenizer
    rng = random.Random(0)
    words = [f"w{i}" for i in range(500)]
    big = tmp_path / "big.txt"
    with open(big, "w") as f:
        for _ in range(60_000):
            f.write(" ".join(rng.choice(words) for _ in range(12)) + "\n")
    size = big.stat().st_size
    assert size > 3_000_000
    prep_mod = sys.modules["gpt3lab.data.prepare"]  # (the package's `prepare` attribute is the function)
    monkeypatch.setattr(sources, "BLOCK_BYTES", 1 << 16)
    monkeypatch.setattr(sources, "PIECE_CHARS", 1 << 16)
    monkeypatch.setattr(prep_mod, "JOB_CHARS", 1 << 16)
    opened, read_at_write = [], []

    class Once:  # a source stream that counts what was read and refuses to be opened twice
        def __init__(self, path):
            if opened:
                raise AssertionError(f"{path} was opened twice")
            opened.append(0)
            self.f = open(path, "rb")

        def read(self, n):
            data = self.f.read(n)
            opened[0] += len(data)
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(sources, "open_binary", Once)
    real_write = shards.ShardWriter.write
    monkeypatch.setattr(shards.ShardWriter, "write", lambda self, t: (read_at_write.append(opened[0]), real_write(self, t)))
    tok = Tokenizer.train(["w1 w2 w3 w4 w5\n" * 50], 300)  # small: saving it allocates little
    tracemalloc.start()
    try:
        s = prepare([str(big)], tmp_path / "o", tok, val_fraction=0.0, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert s["bytes"] == size and opened[0] == size
    assert read_at_write[0] < size / 10 and len(read_at_write) > 30  # tokens are written while reading
    assert peak < size / 2, f"peak Python memory {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB corpus"


# ---- interruption: kill -9 mid-run leaves nothing `train` reads; a rerun starts over cleanly --------------

def test_kill_during_prepare_leaves_no_readable_shard(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from gpt3lab.data import WindowLoader, load_data_tokenizer
    from gpt3lab.errors import DataError
    rng = random.Random(1)
    src = tmp_path / "big.txt"
    words = DOCS[0].split()
    src.write_text("".join(" ".join(rng.choice(words) for _ in range(12)) + "\n" for _ in range(50_000)))
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "gpt3lab", "prepare", str(src), "--out", str(out), "--shard-tokens", "20000",
           "--no-progress", "--val-fraction", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "train_0002.bin").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "train_0002.bin").exists() and not (out / "train.json").exists()
    assert json.loads((out / "prepare.json").read_text())["complete"] is False
    with pytest.raises(DataError, match="train.json is missing"):
        WindowLoader(out, "train", 8, 2)
    with pytest.raises(DataError, match="train.json is missing"):
        load_data_tokenizer(out)
    # the marker makes the rerun replace the directory without --overwrite
    rerun = subprocess.run(cmd[:-2] + ["--val-fraction", "0.1"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert not list(out.glob("*.tmp")) and json.loads((out / "prepare.json").read_text())["complete"] is True
    fresh = prepare([str(src)], tmp_path / "fresh", "gpt2", val_fraction=0.1, shard_tokens=20000, progress=False)
    for split in ("train", "val"):
        assert np.array_equal(_tokens(out, split), _tokens(tmp_path / "fresh", split))
    assert WindowLoader(out, "train", 8, 2).num_tokens == fresh["train_tokens"]


# ---- output directory marker and option validation (issue 11) ----------------------------------------

def test_out_dir_marker_and_overwrite(tmp_path, capsys):
    from gpt3lab.cli import main
    src = tmp_path / "a.txt"
    src.write_text(DOCS[0] * 3)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train_0000.bin").write_bytes(b"precious")
    (mine / "train.json").write_text("{}")
    rc = main(["prepare", str(src), "--out", str(mine), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "not written by `gpt3lab prepare`" in err and "--overwrite" in err and str(mine) in err
    assert (mine / "train_0000.bin").read_bytes() == b"precious" and (mine / "train.json").read_text() == "{}"
    (mine / "notes.txt").write_text("keep me")
    assert main(["prepare", str(src), "--out", str(mine), "--no-progress", "--overwrite"]) == 0
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "train_0000.bin").read_bytes() != b"precious"
    assert main(["prepare", str(src), "--out", str(mine), "--no-progress"]) == 0  # ours now: replaced freely
    assert main(["prepare", str(src), "--out", str(src), "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.parametrize("value", [0, -1, -(2**31), 2**41, 2.5, True, "8"])
def test_shard_tokens_validated_in_the_api(value, tmp_path):
    from gpt3lab.errors import DataError
    src = tmp_path / "a.txt"
    src.write_text("hello world\n")
    with pytest.raises(DataError, match=r"shard_tokens=.* must be a whole number in \[1, "):
        prepare([str(src)], tmp_path / "o", shard_tokens=value, progress=False)
    assert not (tmp_path / "o").exists()  # refused before touching anything
    from gpt3lab.data.shards import ShardWriter
    if not isinstance(value, str) and value < 1:  # the writer itself refuses too (it would loop forever)
        with pytest.raises(DataError, match="shard_tokens"):
            ShardWriter(tmp_path, "train", 300, value)


@pytest.mark.parametrize("argv,expect", [(["--shard-tokens", "0"], "--shard-tokens: 0 is out of range"),
                                         (["--shard-tokens", "-3"], "--shard-tokens: -3 is out of range"),
                                         (["--workers", "0"], "--workers"),
                                         (["--workers", "x"], "--workers")])
def test_cli_rejects_bad_counts_at_once(argv, expect, tmp_path, capsys):
    from gpt3lab.cli import main
    src = tmp_path / "a.txt"
    src.write_text("hello world\n")
    try:
        rc = main(["prepare", str(src), "--out", str(tmp_path / "o"), "--no-progress", *argv])
    except SystemExit as e:  # argparse's own range check
        rc = e.code
    assert rc == 2 and expect in capsys.readouterr().err and not list(tmp_path.glob("o/*.bin"))


def test_split_warnings(tmp_path):
    from gpt3lab.data.prepare import SplitWarning
    d = tmp_path / "c"
    d.mkdir()
    (d / "a.txt").write_text("small one\n")
    (d / "b.txt").write_text("small two\n")
    with pytest.warns(SplitWarning, match="val is empty: 2 document"):
        prepare([str(d)], tmp_path / "o1", val_fraction=0.1, seed=0, progress=False)
    (d / "c.txt").write_text("big " * 1000 + "\n")  # document 2 is val at f=0.3, seed 0
    with pytest.warns(SplitWarning, match=r"val holds 9\d\.\d% of the text, more than the 30.0% asked"):
        prepare([str(d)], tmp_path / "o2", val_fraction=0.3, seed=0, progress=False)
