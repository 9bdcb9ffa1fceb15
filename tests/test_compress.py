"""gpt3lab compress: range coder exactness, quantisation, round trips, size vs cross-entropy, errors, CLI."""
import bz2
import gzip
import random
import struct
import zlib

import pytest
import torch

from gpt3lab.checkpoint import save_checkpoint
from gpt3lab.cli import main
from gpt3lab.compress import compress_bytes, decompress_bytes, read_header, to_tokens
from gpt3lab.compress.coder import MAX_TOTAL, RangeDecoder, RangeEncoder
from gpt3lab.compress.model import TOTAL, quantise
from gpt3lab.config import ModelConfig
from gpt3lab.errors import CheckpointError, DataError
from gpt3lab.model import GPT
from gpt3lab.tokenizer import Tokenizer

TEXT = ("The quick brown fox jumps over the lazy dog. What is 12 plus 34? A: 46. "
        "To be, or not to be, that is the question. ")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([TEXT * 20], 300)


def make_model(tok, seed=0, context=16):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, context=context, n_layer=2, n_head=2, d_model=32,
                      attention_pattern="alternating", local_window=8)
    return GPT(cfg).eval(), cfg


@pytest.fixture(scope="module")
def model(tok):
    return make_model(tok)[0]


# ---- coder and quantisation ----------------------------------------------------------------------

@pytest.mark.parametrize("total", [2, 3, 1 << 16, TOTAL, MAX_TOTAL])
def test_range_coder_round_trips_random_tables(total):
    rng = random.Random(total)
    for _ in range(20):
        syms = []
        for _ in range(rng.randint(0, 400)):
            # a mix of likely and very unlikely symbols drives both carries and long renormalisations
            f = rng.randint(1, total) if rng.random() < 0.5 else rng.randint(1, max(1, total >> 20))
            syms.append((rng.randint(0, total - f), f))
        enc = RangeEncoder()
        for c, f in syms:
            enc.encode(c, f, total)
        dec = RangeDecoder(enc.finish())
        for c, f in syms:
            t = dec.target(total)
            assert c <= t < c + f
            dec.consume(c, f)


def test_range_coder_size_matches_information():
    rng = random.Random(1)
    syms = [(rng.randint(0, 1000), 1) for _ in range(1000)]   # p = 1/1024 each -> exactly 10 bits
    enc = RangeEncoder()
    for c, f in syms:
        enc.encode(c, f, 1024)
    assert abs(len(enc.finish()) - 1250) <= 2


def test_quantise_sums_to_total_with_floor_of_one():
    for logits in (torch.zeros(300), torch.randn(300) * 5, torch.tensor([1e4] + [0.0] * 299),
                   torch.tensor([-1e4] * 299 + [50.0])):
        cum = quantise(logits)
        freq = torch.diff(cum, prepend=torch.zeros(1, dtype=torch.int64))
        assert int(cum[-1]) == TOTAL and int(freq.min()) >= 1
    p = torch.softmax(torch.randn(300), -1)
    freq = torch.diff(quantise(p.log()), prepend=torch.zeros(1, dtype=torch.int64))
    assert torch.allclose(freq.double() / TOTAL, p.double(), atol=2e-5)


# ---- round trips -----------------------------------------------------------------------------------

TEXTS = {
    "ascii": "To be, or not to be, that is the question.",
    "empty": "",
    "unicode": "Grüße aus Köln — naïve café, Ελληνικά, русский, 日本語のテキスト.",
    "emoji": "emoji 🙂🎉👩‍👩‍👧 flags 🇫🇷 and a lone 🐍",
    "eot_literal": "one<|endoftext|>two",
    "long": TEXT * 3,                                           # ~100 tokens >> context 16: slides
}


@pytest.mark.parametrize("name", list(TEXTS))
def test_round_trip_is_exact(tok, model, name):
    data = TEXTS[name].encode()
    blob, stats = compress_bytes(model, tok, data)
    assert decompress_bytes(model, tok, blob) == data
    assert stats.n_bytes == len(data) and stats.file_bytes == len(blob)


def test_non_utf8_bytes_round_trip_losslessly(tok, model):
    data = b"caf\xe9 \xff\xfe ok \xed\xa0\x80 end" + bytes(range(256))
    assert tok.decode_bytes(to_tokens(tok, data)) == data
    blob, _ = compress_bytes(model, tok, data)
    assert decompress_bytes(model, tok, blob) == data


def test_threads_are_restored_and_recorded(tok, model):
    before = torch.get_num_threads()
    blob, _ = compress_bytes(model, tok, b"abc", threads=2)
    assert torch.get_num_threads() == before and read_header(blob)["threads"] == 2
    assert decompress_bytes(model, tok, blob) == b"abc"


def test_coded_size_matches_cross_entropy(tok, model):
    data = (TEXT * 4).encode()
    blob, s = compress_bytes(model, tok, data)
    header = len(blob) - s.payload_bytes
    assert s.n_tokens > 100
    assert s.ideal_bits * 0.99 - 16 <= 8 * s.payload_bytes <= s.ideal_bits * 1.02 + 16
    assert header < 120


def markov_text(n_words: int, seed: int = 0) -> bytes:
    """Words where each one allows two successors: 1 bit of information per ~6 bytes. gzip sees no long
    repeats to exploit; a model that learns the transitions codes each word in about one bit."""
    words = ["quick", "brown", "fox", "jumps", "over", "lazy", "dog", "What", "plus", "question",
             "To", "be", "not", "that", "the", "is"]
    rng, i, out = random.Random(seed), 0, []
    for _ in range(n_words):
        out.append(words[i])
        i = (3 * i + 1) % 16 if rng.random() < 0.5 else (5 * i + 2) % 16
    return " ".join(out).encode()


def test_trained_model_beats_gzip(tok):
    text = markov_text(600)
    m, cfg = make_model(tok, seed=1, context=16)
    ids = torch.tensor(tok.encode(text.decode()))
    opt = torch.optim.AdamW(m.parameters(), lr=5e-3)
    torch.manual_seed(0)
    m.train()
    for _ in range(120):                     # ~2-4 s on an idle 2-core CPU: the transitions are learnt
        starts = torch.randint(0, len(ids) - 17, (8,))
        x = torch.stack([ids[s:s + 16] for s in starts])                      # (8, 16)
        y = torch.stack([ids[s + 1:s + 17] for s in starts])
        _, loss = m(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    blob, s = compress_bytes(m, tok, text)
    assert decompress_bytes(m, tok, blob) == text
    assert len(blob) < len(gzip.compress(text, 9)) and len(blob) < len(bz2.compress(text, 9))


# ---- errors ---------------------------------------------------------------------------------------

def test_wrong_checkpoint_is_refused(tok, model):
    blob, _ = compress_bytes(model, tok, TEXT.encode())
    assert not read_header(blob)["raw"]                 # model-coded: raw files need no model at all
    other = make_model(tok, seed=5)[0]
    with pytest.raises(CheckpointError, match="different model"):
        decompress_bytes(other, tok, blob, name="x.g3lz")


def test_corrupt_truncated_and_foreign_files_are_refused(tok, model):
    blob, _ = compress_bytes(model, tok, TEXT.encode())
    bad = bytearray(blob)
    bad[-10] ^= 0x40
    with pytest.raises(DataError, match="x.g3lz: corrupt"):
        decompress_bytes(model, tok, bytes(bad), name="x.g3lz")
    with pytest.raises(DataError, match="truncated"):
        decompress_bytes(model, tok, blob[:-7], name="x.g3lz")
    with pytest.raises(DataError, match="not a gpt3lab compressed file"):
        decompress_bytes(model, tok, b"\x1f\x8b" + blob, name="x.g3lz")


def test_desynchronised_decoder_reports_sha_mismatch(tok, model):
    """A payload that decodes (CRC fixed up) to other tokens must fail the SHA-256 check, not return them."""
    blob, _ = compress_bytes(model, tok, TEXT.encode())
    body = bytearray(blob[:-4])
    body[-3] ^= 0x10
    forged = bytes(body) + struct.pack("<I", zlib.crc32(body))
    with pytest.raises(DataError, match="SHA-256.*same checkpoint, torch version and machine"):
        decompress_bytes(model, tok, forged)


# ---- CLI ------------------------------------------------------------------------------------------

def test_cli_round_trip_and_errors(tok, model, tmp_path, capsys):
    _, cfg = make_model(tok)
    ck = save_checkpoint(tmp_path / "ck", model, cfg, tok)
    other_m, other_cfg = make_model(tok, seed=3)
    other = save_checkpoint(tmp_path / "other", other_m, other_cfg, tok)
    src, packed, back = tmp_path / "in.txt", tmp_path / "in.g3lz", tmp_path / "back.txt"
    src.write_bytes((TEXT * 2 + TEXTS["unicode"]).encode() + b"\n\xff")
    assert main(["compress", str(ck), str(src), str(packed), "--no-progress"]) == 0
    assert "bits/byte" in capsys.readouterr().out
    assert main(["compress", "-d", str(ck), str(packed), str(back), "--no-progress"]) == 0
    assert back.read_bytes() == src.read_bytes() and not read_header(packed.read_bytes())["raw"]
    assert main(["compress", "--decompress", str(other), str(packed), str(back), "--no-progress"]) == 2
    assert "different model" in capsys.readouterr().err
    packed.write_bytes(packed.read_bytes()[:-1])
    assert main(["compress", "-d", str(ck), str(packed), str(back), "--no-progress"]) == 2
    assert "truncated" in capsys.readouterr().err
    assert main(["compress", str(ck), str(tmp_path / "missing.txt"), str(packed)]) == 2
    assert "cannot read" in capsys.readouterr().err


# ---- issue 11 / 14: empty and incompressible input, crafted headers --------------------------------

def _forge(blob: bytes, **fields) -> bytes:
    """`blob` with header fields replaced (by _HEAD field name) and the CRC32 recomputed."""
    from gpt3lab.compress import _HEAD
    names = ["magic", "version", "flags", "total_bits", "threads", "fp", "n_tokens", "n_bytes", "sha", "n_payload"]
    values = dict(zip(names, _HEAD.unpack_from(blob)))
    values.update(fields)
    body = _HEAD.pack(*(values[n] for n in names)) + blob[_HEAD.size:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_empty_input_reports_no_rate_and_round_trips(tok, model, tmp_path, capsys):
    blob, s = compress_bytes(model, tok, b"")
    assert s.raw and s.n_bytes == 0 and s.file_bytes == len(blob) < 120
    assert s.bits_per_byte != s.bits_per_byte                  # NaN: there is no rate for 0 bytes
    assert decompress_bytes(model, tok, blob) == b""
    _, cfg = make_model(tok)
    ck = save_checkpoint(tmp_path / "ck", model, cfg, tok)
    (tmp_path / "empty").write_bytes(b"")
    assert main(["compress", str(ck), str(tmp_path / "empty"), str(tmp_path / "e.g3lz"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "empty input" in out and "bits/byte" not in out


def test_incompressible_input_is_stored_raw_and_needs_no_model(tok, model):
    data = random.Random(0).randbytes(3000)
    blob, s = compress_bytes(model, tok, data)
    h = read_header(blob)
    assert s.raw and h["raw"] and h["n_tokens"] == 0 and h["payload"] == data
    assert len(blob) <= len(data) + 120                        # the header only, never 2.2x
    assert decompress_bytes(None, None, blob) == data          # raw: no model needed


def test_header_meta_is_extensible(tok, model):
    blob, _ = compress_bytes(model, tok, TEXT.encode(), meta={"quant": "int8"})
    assert read_header(blob)["meta"] == {"quant": "int8"}
    assert decompress_bytes(model, tok, blob) == TEXT.encode()


def test_forged_token_count_fails_fast(tok, model):
    blob, _ = compress_bytes(model, tok, TEXT.encode())
    with pytest.raises(DataError, match="corrupt header: 1,000,000,000 tokens"):
        decompress_bytes(model, tok, _forge(blob, n_tokens=10 ** 9))
    forged = _forge(blob, n_tokens=10 ** 9, n_bytes=10 ** 9)   # both counts forged: the payload runs out
    with pytest.raises(DataError, match="payload ends after .* of the 1,000,000,000 tokens"):
        decompress_bytes(model, tok, forged)
    with pytest.raises(DataError, match="raw payload"):
        decompress_bytes(model, tok, _forge(blob, flags=1))


def test_truncated_and_overlong_fields_are_reported_as_such(tok, model):
    blob, _ = compress_bytes(model, tok, TEXT.encode())
    with pytest.raises(DataError, match="truncated: 60 bytes"):
        read_header(blob[:60])
    from gpt3lab.compress import _HEAD
    body = bytearray(blob[:-4])
    body[_HEAD.size] = 255                                     # the torch-version string runs past the end
    body = bytes(body[:_HEAD.size + 20])
    with pytest.raises(DataError, match="truncated or corrupt: a header field of 255 bytes"):
        read_header(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(DataError, match="not a gpt3lab compressed file"):
        read_header(b"")


def test_int8_round_trip_and_wrong_mode_is_refused(tok, model, tmp_path, capsys):
    import copy

    from gpt3lab.model.quant import prepare_for_inference

    q = prepare_for_inference(copy.deepcopy(model), "int8")
    blob, _ = compress_bytes(q, tok, TEXT.encode())
    assert read_header(blob)["meta"]["quantize"] == "int8"
    assert decompress_bytes(q, tok, blob) == TEXT.encode()
    with pytest.raises(CheckpointError, match="compressed with --quantize int8, not --quantize none; "
                                              "decompress with --quantize int8"):
        decompress_bytes(model, tok, blob, name="x.g3lz")
    ck = save_checkpoint(tmp_path / "ck", model, make_model(tok)[1], tok)
    src, packed, back = tmp_path / "in.txt", tmp_path / "in.g3lz", tmp_path / "back.txt"
    src.write_bytes(TEXT.encode())
    assert main(["compress", str(ck), str(src), str(packed), "--no-progress", "--quantize", "int8"]) == 0
    assert main(["compress", "-d", str(ck), str(packed), str(back), "--no-progress"]) == 2
    assert "compressed with --quantize int8, not --quantize none" in capsys.readouterr().err
    assert main(["compress", "-d", str(ck), str(packed), str(back), "--no-progress", "--quantize", "int8"]) == 0
    assert back.read_bytes() == src.read_bytes()


# ---- issue 23: every header field is bounded before use -----------------------------------------------

def _forge_strings(blob: bytes, torch_version: bytes | None = None, meta: bytes | None = None) -> bytes:
    """`blob` with its torch-version or meta field replaced (raw bytes) and the CRC32 recomputed."""
    from gpt3lab.compress import _HEAD
    h = read_header(blob)
    pos = _HEAD.size
    tv = blob[pos + 1:pos + 1 + blob[pos]] if torch_version is None else torch_version
    pos += 1 + blob[pos]
    machine = blob[pos:pos + 1 + blob[pos]]
    meta = json_bytes(h["meta"]) if meta is None else meta
    body = blob[:_HEAD.size] + bytes([len(tv)]) + tv + machine + struct.pack("<H", len(meta)) + meta + h["payload"]
    return body + struct.pack("<I", zlib.crc32(body))


def json_bytes(obj) -> bytes:
    import json
    return json.dumps(obj, sort_keys=True).encode()


@pytest.mark.parametrize("threads", [0, 1025])        # 65535 crashed the process: tested below
def test_a_forged_thread_count_is_a_clear_error(tok, model, threads):
    blob, _ = compress_bytes(model, tok, TEXT.encode())
    with pytest.raises(DataError, match=rf"x.g3lz: corrupt header: {threads} threads is outside \[1, 1024\]"):
        decompress_bytes(model, tok, _forge(blob, threads=threads), name="x.g3lz")
    with pytest.raises(Exception, match=r"threads=0 must be a whole number in \[1, 1024\]"):
        compress_bytes(model, tok, b"x", threads=0)


def test_65535_threads_through_the_cli_is_one_line_not_a_crash(tok, model, tmp_path):
    """torch cannot start 65535 threads: before the bound the process died of SIGSEGV."""
    import subprocess
    import sys
    ck = save_checkpoint(tmp_path / "ck", model, make_model(tok)[1], tok)
    blob, _ = compress_bytes(model, tok, TEXT.encode())
    (tmp_path / "x.g3lz").write_bytes(_forge(blob, threads=65535))
    r = subprocess.run([sys.executable, "-m", "gpt3lab", "compress", "-d", str(ck), str(tmp_path / "x.g3lz"),
                        str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True, timeout=300)
    lines = [x for x in r.stderr.splitlines() if not x.startswith("gpt3lab: allocator")]
    assert r.returncode == 2 and len(lines) == 1 and "65535 threads is outside" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_deep_meta_escape_codes_and_unknown_modes_are_refused(tok, model):
    blob, _ = compress_bytes(model, tok, TEXT.encode())
    deep = b'{"a":' + b"[" * 30000 + b"]" * 30000 + b"}"
    with pytest.raises(DataError, match="meta field is not a JSON object of at most 8 levels"):
        read_header(_forge_strings(blob, meta=deep), "x.g3lz")
    assert read_header(_forge_strings(blob, meta=b'{"a": [[[1]]]}'))["meta"] == {"a": [[[1]]]}   # shallow: fine
    evil = "\x1b[2J\x1b[31mint8"
    with pytest.raises(DataError) as e:
        decompress_bytes(model, tok, _forge_strings(blob, meta=json_bytes({"quantize": evil})), name="x.g3lz")
    assert "\x1b" not in str(e.value) and "meta quantize '\\x1b[2J" in str(e.value)
    with pytest.raises(DataError, match="torch version field holds non-printable bytes") as e:
        decompress_bytes(model, tok, _forge_strings(blob, torch_version=b"2.0\x1b[31m"), name="x.g3lz")
    assert "\x1b" not in str(e.value)
