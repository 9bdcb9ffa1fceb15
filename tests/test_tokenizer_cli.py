"""`gpt3lab tokenizer encode TEXT` (ids next to their pieces), `tokenizer train --text-field` over the same
inputs as `prepare`, and the warning when a trained BPE comes out smaller than asked (also from `prepare`)."""
import gzip
import io
import json

import pytest

from gpt3lab.cli import main
from gpt3lab.tokenizer import Tokenizer

CORPUS = ("It is the east, and Juliet is the sun. Arise, fair sun, and kill the envious moon, who is already "
          "sick and pale with grief. ") * 40


def test_encode_takes_text_as_an_argument_and_shows_the_pieces(capsys):
    assert main(["tokenizer", "encode", "Hello world\n"]) == 0
    assert capsys.readouterr().out.splitlines() == ["15496  'Hello'", "  995  ' world'", "  198  '\\n'"]
    assert main(["tokenizer", "encode", "--ids-only", "Hello world"]) == 0
    assert capsys.readouterr().out == "15496 995\n"


def test_encode_reads_stdin_and_shows_split_characters_as_bytes(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("😀"))
    assert main(["tokenizer", "encode"]) == 0
    lines = capsys.readouterr().out.splitlines()
    tok = Tokenizer.gpt2()
    ids = [int(ln.split()[0]) for ln in lines]
    assert tok.decode(ids) == "😀" and len(ids) > 1 and all(" b'\\x" in ln for ln in lines)


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "parquet"])
def test_train_takes_text_field_and_prepares_input_kinds(tmp_path, capsys, kind):
    rows = [{"id": i, "body": CORPUS} for i in range(3)]
    src = tmp_path / f"docs.{kind}"
    if kind == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), src)
    else:
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        src.write_bytes(gzip.compress(data) if kind.endswith(".gz") else data)
    assert main(["tokenizer", "train", str(src), "--vocab-size", "300", "--text-field", "body",
                 "--out", str(tmp_path / "tok")]) == 0
    tok = Tokenizer.load(tmp_path / "tok")
    assert tok.vocab_size == 300 and len(tok.encode(CORPUS)) < len(CORPUS.encode()) / 2
    assert main(["tokenizer", "train", str(src), "--vocab-size", "300", "--out", str(tmp_path / "t2")]) == 2
    err = capsys.readouterr().err
    assert "'text'" in err and "--text-field" in err and err.count("\n") == 1


def test_a_bpe_smaller_than_asked_is_said(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("the cat sat on the mat. " * 50)
    assert main(["tokenizer", "train", str(tmp_path / "c.txt"), "--vocab-size", "512", "--out", str(tmp_path / "t")]) == 0
    err = capsys.readouterr().err
    n = Tokenizer.load(tmp_path / "t").vocab_size
    assert n < 512 and f"asked for a 512-id BPE but the text yields only {n - 257} merges" in err
    assert f"the vocabulary has {n} ids" in err
    assert main(["prepare", str(tmp_path / "c.txt"), "--out", str(tmp_path / "d"), "--tokenizer", "bpe:512",
                 "--no-progress"]) == 0
    assert "gpt3lab: warning: asked for a 512-id BPE" in capsys.readouterr().err
    assert main(["tokenizer", "train", str(tmp_path / "c.txt"), "--vocab-size", str(n), "--out", str(tmp_path / "u")]) == 0
    assert "warning" not in capsys.readouterr().err
